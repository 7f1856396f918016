"""Zarr helpers: rows buffered into whole chunks and written together."""

import numpy as np
import pytest

from conceptsim.extraction.zarrio import StoreError


def test_chunked_rows(tmp_path):
    import zarr

    from conceptsim.extraction.store import ChunkedRows, write_together

    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    arr = g.create_array("x", shape=(10, 2), chunks=(4, 2), dtype="int64")
    ids = g.create_array("ids", shape=(10,), chunks=(10,), dtype="int64")
    rows = ChunkedRows({"x": arr}, 10, 4)
    data = np.arange(20).reshape(10, 2)
    for s in (slice(0, 3), slice(3, 6), slice(6, 10)):
        rows.append({"x": data[s]})
    rows.finish(also=[(ids, slice(None), np.arange(10) * 7)])  # written in the same round as the last rows
    assert np.array_equal(arr[:], data)
    assert np.array_equal(ids[:], np.arange(10) * 7)
    zero = g.create_array("z", shape=(4, 2), chunks=(2, 2), dtype="float16")
    write_together([(zero, slice(None), np.zeros((4, 2), np.float16))])  # fill-value chunks are still written
    assert sorted(p.name for p in (tmp_path / "g.zarr" / "z" / "c").iterdir()) == ["0", "1"]
    with pytest.raises(StoreError, match="rows given"):
        ChunkedRows({"x": arr}, 10, 4).append({"x": np.zeros((11, 2))})
    short = ChunkedRows({"x": arr}, 10, 4)
    short.append({"x": data[:3]})
    with pytest.raises(StoreError, match="3 of 10 rows"):
        short.finish()
