"""Atomic writes of figures: the PNG carries its smallest font size, which the book's browser test reads."""

from __future__ import annotations

import io

import matplotlib
import pytest

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from conceptsim.atomic import FONT_FLOOR_KEY, figure_png, save_figure, smallest_font_pt  # noqa: E402


def _figure(title_pt: float, tick_pt: float, layout: str | None = None) -> Figure:
    fig = Figure(figsize=(3, 2), layout=layout)
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


def _png_with_a_draw_first(fig: Figure, dpi: float) -> bytes:
    """The plain computation: a layout draw for the font floor, then savefig with that metadata."""
    floor = smallest_font_pt(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight",
                metadata={"conceptsim-dpi": f"{dpi:g}", FONT_FLOOR_KEY: f"{floor:g}"})
    return buf.getvalue()


@pytest.mark.parametrize("layout", [None, "constrained", "tight"])
def test_figure_png_equals_a_draw_then_savefig(layout):
    """Reading the font floor from savefig's own drawing gives the same bytes (tick labels, the smallest text,
    only have their text once drawn; a constrained layout is refined at every draw)."""
    def make():
        fig = _figure(12, 7, layout)
        fig.colorbar(fig.axes[0].imshow([[0, 1], [1, 0]]), ax=fig.axes[0], label="a colorbar")
        fig.suptitle("a figure title")
        return fig

    got = figure_png(make(), dpi=90, bbox_inches="tight")
    assert got == _png_with_a_draw_first(make(), 90)
    with Image.open(io.BytesIO(got)) as im:
        assert im.text[FONT_FLOOR_KEY] == "7" and im.text["conceptsim-dpi"] == "90"
