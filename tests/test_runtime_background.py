"""The helper threads that overlap reading and writing with computing: order kept, errors raised in the caller."""

import pytest


def test_background_threads_keep_order_and_raise_errors():
    from conceptsim.runtime.background import BackgroundCalls, prefetched

    with prefetched(range(20), lambda i: i * i, depth=2) as it:
        assert list(it) == [i * i for i in range(20)]

    def boom(i):
        if i == 3:
            raise ValueError("item 3 is bad")
        return i

    with pytest.raises(ValueError, match="item 3"), prefetched(range(10), boom) as it:
        list(it)
    with prefetched(range(1000)) as it:  # leaving early does not hang the producer
        next(it)

    seen = []
    with BackgroundCalls(seen.append, depth=1) as calls:
        calls.submit_call(seen.append, "opened")  # another callable, in the same order
        for i in range(50):
            calls.submit(i)
    assert seen == ["opened", *range(50)]

    def fail(i):
        raise OSError(f"disk full at {i}")

    with pytest.raises(OSError, match="disk full at 0"), BackgroundCalls(fail) as calls:
        calls.submit(0)
