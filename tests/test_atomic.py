"""Atomic writes of figures: the PNG carries its smallest font size, which the book's browser test reads."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from conceptsim.atomic import FONT_FLOOR_KEY, save_figure, smallest_font_pt  # noqa: E402


def _figure(title_pt: float, tick_pt: float) -> Figure:
    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1])
    ax.set_title("a title", fontsize=title_pt)
    ax.tick_params(labelsize=tick_pt)
    return fig


def test_smallest_font_is_the_smallest_visible_text():
    assert smallest_font_pt(_figure(12, 7)) == 7
    assert smallest_font_pt(_figure(6, 11)) == 6
    empty = Figure()
    assert smallest_font_pt(empty) is None


def test_saved_png_carries_font_floor_and_dpi(tmp_path):
    path = save_figure(_figure(12, 7.5), tmp_path / "f.png", dpi=120)
    with Image.open(path) as im:
        assert im.text[FONT_FLOOR_KEY] == "7.5" and im.text["conceptsim-dpi"] == "120"
        assert im.size[0] == 360  # 3 in at 120 dpi
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]  # no temporary left beside it
