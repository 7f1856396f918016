"""Two helper threads that overlap the extraction's input and output with the forward pass.

* :func:`prefetched` prepares the next batches (image decoding, mask rasterising, target pooling) in a
  thread while the model runs on the current one;
* :class:`BackgroundCalls` runs the store writes of a batch in a thread while the model runs on the next.

Both hold at most ``depth`` batches, so memory stays bounded by the batch size, not the dataset. An
exception in a helper thread is raised again in the caller (at the next item or call, or at exit), and
leaving the ``with`` block early (an error in the caller) stops the helper without leaving it blocked.
Decoding, numpy, zarr's compression and torch release the GIL, so the threads run in parallel.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Callable, Iterable, Iterator

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; True when it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class prefetched:
    """Context manager iterating ``fn(item)`` for ``item`` in ``items``, computed ``depth`` ahead in a thread.

    >>> with prefetched(range(3), lambda i: i * i) as it:
    ...     list(it)
    [0, 1, 4]
    """

    def __init__(self, items: Iterable, fn: Callable[[Any], Any] = lambda x: x, depth: int = 2) -> None:
        self._items, self._fn = items, fn
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="conceptsim-prefetch", daemon=True)

    def _run(self) -> None:
        try:
            for item in self._items:
                if not _put(self._q, self._fn(item), self._stop):
                    return
            _put(self._q, _DONE, self._stop)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            _put(self._q, _Failure(e), self._stop)

    def __enter__(self) -> Iterator:
        self._thread.start()
        return self._iterate()

    def _iterate(self) -> Iterator:
        while True:
            item = self._q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class BackgroundCalls:
    """Context manager running ``fn(*args, **kwargs)`` calls in order in one thread, ``depth`` queued at most.

    :meth:`submit` returns at once (blocking only while ``depth`` calls wait); :meth:`submit_call` queues
    another callable in the same order (e.g. opening what ``fn`` writes to). Leaving the block waits for
    every call and raises the first exception any of them raised (later calls are skipped).
    """

    def __init__(self, fn: Callable[..., Any], depth: int = 2) -> None:
        self._fn = fn
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="conceptsim-writer", daemon=True)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _DONE:
                return
            if self._error is None:
                try:
                    item[0](*item[1], **item[2])
                except BaseException as e:  # noqa: BLE001 - raised again in the caller
                    self._error = e

    def submit(self, *args, **kwargs) -> None:
        self.submit_call(self._fn, *args, **kwargs)

    def submit_call(self, fn: Callable[..., Any], *args, **kwargs) -> None:
        if self._error is not None:
            raise self._error
        if not _put(self._q, (fn, args, kwargs), self._stop):
            raise RuntimeError("background calls were stopped")

    def __enter__(self) -> "BackgroundCalls":
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._q.put(_DONE)  # the thread drains what is queued (skipping it after an error), then ends
        self._thread.join()
        if exc_type is None and self._error is not None:
            raise self._error


@contextlib.contextmanager
def helper_libraries_single_threaded() -> Iterator[None]:
    """Hold OpenCV and the BLAS libraries to one thread each inside the block (restored on exit).

    The forward pass already keeps the cores busy with torch's threads; OpenCV's resize and numpy's
    matrix products in the prefetch thread would otherwise start thread pools of their own that spin
    while waiting and take more CPU time for the same work (Performance page, "Design measurements").
    """
    import cv2
    from threadpoolctl import threadpool_limits

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    blas = threadpool_limits(limits=1, user_api="blas")
    try:
        yield
    finally:
        blas.restore_original_limits()
        cv2.setNumThreads(before)
