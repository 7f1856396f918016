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
