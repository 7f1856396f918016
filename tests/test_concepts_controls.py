"""The bootstrap of the concept stage: plain over test images, or two-stage over groups (source photos)."""

from __future__ import annotations

import numpy as np
import pytest


def test_cluster_bootstrap_resamples_groups():
    from conceptsim.concepts.controls import bootstrap_indices

    groups = np.array(["a"] * 6 + ["b"] * 4)
    idx = bootstrap_indices(10, 400, seed=0, groups=groups)
    assert idx.shape == (400, 10)
    # with two groups, a quarter of the resamples draw group "a" twice: all their images come from it
    only_a = (idx < 6).all(1).mean()
    assert 0.15 < only_a < 0.35
    plain = bootstrap_indices(10, 400, seed=0)
    assert (plain < 6).all(1).mean() < 0.05
    with pytest.raises(ValueError, match="label the 10 test images"):
        bootstrap_indices(10, 5, seed=0, groups=groups[:3])


def test_bootstrap_groups_come_from_the_image_records(tmp_path):
    import json

    from conceptsim.pipeline import bootstrap_groups

    f = tmp_path / "a.json"
    f.write_text(json.dumps({"images": [{"id": 1, "source": "x.png"}, {"id": 2, "source": "y.png"}]}))
    assert bootstrap_groups(f, "source") == {"1": "x.png", "2": "y.png"}
    assert bootstrap_groups(f, None) is None
    with pytest.raises(ValueError, match="bootstrap_by 'style'"):
        bootstrap_groups(f, "style")


@pytest.mark.parametrize("chunk_values", [1, 37, 1 << 30])
def test_bootstrap_intervals_do_not_depend_on_the_resample_chunk(monkeypatch, chunk_values):
    """Intervals computed a few resamples at a time equal the all-at-once computation bit for bit."""
    from conceptsim.concepts import controls

    rng = np.random.default_rng(3)
    n, k = 23, 4
    y = (rng.random((n, k)) < 0.4).astype(np.uint8)
    y[0], y[1] = 1, 0
    score, control = rng.normal(size=(n, k)), rng.normal(size=(n, k))
    score[:5] = 0.5  # ties
    inter = rng.integers(0, 50, (n, k))
    union = inter + rng.integers(0, 50, (n, k))
    counts, ctrl = (inter, union), (inter // 2, union)
    idx = controls.bootstrap_indices(n, 61, seed=1)

    def both():
        return controls.cls_intervals(y, score, control, idx), controls.seg_intervals(counts, ctrl, idx)

    monkeypatch.setattr(controls, "BOOTSTRAP_CHUNK_VALUES", 1 << 40)
    whole_cls, whole_seg = both()
    monkeypatch.setattr(controls, "BOOTSTRAP_CHUNK_VALUES", chunk_values)
    assert len(controls.resample_chunks(idx, n * k)) == (61 if chunk_values < n * k else 1)
    chunked_cls, chunked_seg = both()
    assert chunked_seg == whole_seg  # dataclass equality: every float identical
    assert chunked_cls == whole_cls
    assert any(iv.ci_low < iv.ci_high for iv in whole_cls["ap"])  # the intervals are not degenerate
