"""Zarr plumbing shared by the activation store and the mask store.

Errors (:class:`StoreError`), array handles opened once (:class:`ArrayHandles`), opening a finished store
with its checks (:func:`open_checked`), batched concurrent writes (:func:`write_together`,
:class:`ChunkedRows`) and bounded reads (:func:`read_rows`).
Both :mod:`conceptsim.extraction.store` and :mod:`conceptsim.extraction.maskstore` build on this module;
neither imports the other's internals.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr
from zarr.core.sync import sync

# Zarr by default scans every chunk before writing it, to skip chunks that hold only the fill value;
# activations, masks and targets practically never do, and the scan cost several times the write itself
# (the book's Performance page, "Design measurements").
# :func:`write_together` writes with this runtime setting.
WRITE_EVERY_CHUNK = {"write_empty_chunks": True}


class StoreError(RuntimeError):
    """A store is missing, incomplete, corrupt, or was made for other inputs."""


class ArrayHandles:
    """The arrays of one opened store group, each opened once.

    Opening a Zarr array reads and parses its metadata (milliseconds); readers that ask for the same
    arrays block after block (the comparison stage) keep the handles instead.
    """

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        self._open: dict[tuple[str, ...], zarr.Array] = {}

    def __call__(self, *path: str) -> zarr.Array:
        """The array at ``group[path[0]][path[1]]...`` (names may contain any character but ``/``)."""
        if path not in self._open:
            node = self.group
            for part in path:
                node = node[part]
            self._open[path] = node
        return self._open[path]


def write_together(assignments: Sequence[tuple[zarr.Array, Any, np.ndarray]]) -> None:
    """``array[selection] = value`` for every triple, as one batch of concurrent Zarr writes.

    One round trip to Zarr's event loop instead of one per array, the chunks of all arrays encoded in
    parallel by Zarr's thread pool, and no fill-value scan (:data:`WRITE_EVERY_CHUNK`).
    """
    async def write_all() -> None:
        await asyncio.gather(*(array.async_array.with_config(WRITE_EVERY_CHUNK).setitem(sel, value)
                               for array, sel, value in assignments))

    if assignments:
        sync(write_all())


class ChunkedRows:
    """Appends rows (images) to several Zarr arrays, one whole chunk per write.

    Rows are buffered until a chunk of ``per_chunk`` rows is full, so every chunk is encoded and written
    once (Zarr's per-call cost is paid once per chunk, not per batch). Memory: at most one chunk plus
    one batch per array.
    """

    def __init__(self, arrays: dict[str, zarr.Array], n_rows: int, per_chunk: int) -> None:
        self.arrays, self.n, self.per_chunk = arrays, int(n_rows), int(per_chunk)
        self.cursor = 0  # rows written
        self._buf: dict[str, list[np.ndarray]] = {name: [] for name in arrays}
        self._buffered = 0

    @property
    def count(self) -> int:
        """Rows appended so far (written or buffered)."""
        return self.cursor + self._buffered

    def append(self, rows: dict[str, np.ndarray]) -> None:
        b = len(next(iter(rows.values())))
        if set(rows) != set(self.arrays):
            raise StoreError(f"rows for {sorted(rows)} given, arrays are {sorted(self.arrays)}")
        if self.count + b > self.n:
            raise StoreError(f"{self.count + b} rows given for arrays of {self.n}")
        for name, v in rows.items():
            self._buf[name].append(np.asarray(v))
        self._buffered += b
        while self._buffered >= self.per_chunk:
            self._flush(self.per_chunk)

    def _flush(self, count: int, also: Sequence[tuple[zarr.Array, Any, np.ndarray]] = ()) -> None:
        s = slice(self.cursor, self.cursor + count)
        blocks = []
        for name, arr in self.arrays.items():
            block = np.concatenate(self._buf[name]) if len(self._buf[name]) > 1 else self._buf[name][0]
            blocks.append((arr, s, block[:count]))
            self._buf[name] = [block[count:]] if len(block) > count else []
        write_together(blocks + list(also))
        self.cursor += count
        self._buffered -= count

    def finish(self, also: Sequence[tuple[zarr.Array, Any, np.ndarray]] = ()) -> None:
        """Write the buffered rows, together with the writes in ``also`` (same form as :func:`write_together`)."""
        if self.count != self.n:
            raise StoreError(f"{self.count} of {self.n} rows given")
        if self._buffered:
            self._flush(self._buffered, also)
        else:
            write_together(also)


def open_checked(path: Path, what: str, schema: int, expected_key: str | None, missing_hint: str) -> tuple[zarr.Group, dict]:
    """Open a store read-only and check it is complete, of ``schema`` and (optionally) of ``expected_key``."""
    if not path.exists():
        raise StoreError(f"{what} {path} does not exist; {missing_hint}")
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:  # zarr raises several types for corrupt metadata
        raise StoreError(f"{what} {path} is unreadable ({exc}); delete it to recompute") from exc
    if attrs.get("schema") != schema or not attrs.get("complete"):
        raise StoreError(
            f"{what} {path} is incomplete or of another schema "
            f"(schema={attrs.get('schema')}, complete={attrs.get('complete')}); delete it to recompute"
        )
    if expected_key is not None and attrs.get("key") != expected_key:
        raise StoreError(f"{what} {path} was made for other inputs (key mismatch)")
    return group, attrs


def read_rows(array: zarr.Array, rows: np.ndarray, batch: int = 64):
    """Yield ``(row_indices, block)`` for the given rows, reading at most ``batch`` images at a time.

    Contiguous runs are read as slices (fast chunk access); memory is bounded by ``batch``.
    """
    rows = np.asarray(rows)
    for start in range(0, len(rows), batch):
        idx = rows[start : start + batch]
        if len(idx) and idx[-1] - idx[0] == len(idx) - 1:
            block = array[int(idx[0]) : int(idx[-1]) + 1]
        else:
            block = array.get_orthogonal_selection((idx,))
        yield idx, np.asarray(block)
