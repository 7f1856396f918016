"""The detection figure's PNG is drawn once per model, weights and photos, and read back from the cache after."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from conceptsim.atomic import figure_png  # noqa: E402
from conceptsim.extraction import figures  # noqa: E402


def _detector(weights: str) -> SimpleNamespace:
    def detect(module, x, score_threshold):
        return [{"boxes": torch.tensor([[0.1, 0.2, 0.6, 0.7]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}
                for _ in range(len(x))]

    prep = SimpleNamespace(size=(16, 16), apply_image=lambda img: torch.zeros(3, 16, 16))
    spec = SimpleNamespace(detect=detect, label_name=lambda lab: f"class {lab}")
    return SimpleNamespace(name="toy_detector", weights_sha256=weights, spec=spec, module=torch.nn.Linear(1, 1),
                           preprocessing=prep)


PHOTOS = {"a": np.full((20, 30, 3), 120, np.uint8), "b": np.zeros((24, 24, 3), np.uint8)}


def test_detections_png_is_the_figure_png_and_is_cached(tmp_path, monkeypatch):
    fig = figures.plot_detections(_detector("w1"), PHOTOS)
    direct = figure_png(fig, dpi=fig.dpi, bbox_inches="tight")
    plt.close(fig)
    first = figures.detections_png(_detector("w1"), PHOTOS, cache=tmp_path)
    assert first == direct and first[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(tmp_path.iterdir())) == 1 and plt.get_fignums() == []  # nothing left for the inline backend

    def not_again(*args, **kwargs):
        raise AssertionError("drawn again although cached")

    monkeypatch.setattr(figures, "plot_detections", not_again)
    assert figures.detections_png(_detector("w1"), PHOTOS, cache=tmp_path) == first
    with pytest.raises(AssertionError, match="drawn again"):  # other weights, other photos: other keys
        figures.detections_png(_detector("w2"), PHOTOS, cache=tmp_path)
    with pytest.raises(AssertionError, match="drawn again"):
        figures.detections_png(_detector("w1"), {"a": PHOTOS["a"]}, cache=tmp_path)
