"""The ``shapes`` builder: exact rasterisation, occlusion, determinism, COCO round trip."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from conceptsim.data.coco import ConceptDataset
from conceptsim.data.photo_colors import COLOUR_NAMES, name_colours
from conceptsim.data.shapes import (
    COLOUR_RGB,
    RING_INNER,
    SHAPE_KINDS,
    TEXTURES,
    build_shapes,
    disc_mask,
    polygon_mask,
    render_image,
    shape_mask,
    visible_masks,
)


def _lattice_disc(cx, cy, r, h, w):
    """Independent count: pixel centres within r, by a plain loop."""
    return sum((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 <= r * r for y in range(h) for x in range(w))


def test_axis_aligned_square_is_exact():
    m = shape_mask("square", 15.0, 15.0, 5 * np.sqrt(2), 0.0, (40, 40))
    assert m.sum() == 100 and m[10:20, 10:20].all()


def test_concave_polygon_and_clipping():
    ell = np.array([[0, 0], [4, 0], [4, 2], [2, 2], [2, 4], [0, 4]], float)
    assert polygon_mask(ell, (10, 10)).sum() == 12
    # a square half outside the image keeps only its inside pixels
    sq = np.array([[-5, -5], [5, -5], [5, 5], [-5, 5]], float)
    assert polygon_mask(sq, (10, 10)).sum() == 25


def test_circle_and_ring_counts():
    assert disc_mask(10.0, 10.0, 6.0, (20, 20)).sum() == _lattice_disc(10, 10, 6, 20, 20) == 112  # 4 x 28 by hand
    ring = shape_mask("ring", 10.0, 10.0, 8.0, 0.0, (20, 20))
    assert ring.sum() == _lattice_disc(10, 10, 8, 20, 20) - _lattice_disc(10, 10, 8 * RING_INNER, 20, 20)


def test_every_shape_kind_rasterises():
    assert len(SHAPE_KINDS) >= 5 and len(TEXTURES) >= 8 and {"brick", "grass", "gravel"} <= set(TEXTURES)
    for kind in SHAPE_KINDS:
        m = shape_mask(kind, 32.0, 32.0, 20.0, 0.3, (64, 64))
        assert 0 < m.sum() < np.pi * 20 * 20 + 40, kind


def test_occlusion():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:6, 0:6] = True
    b[3:9, 3:9] = True
    va, vb = visible_masks([a, b])  # b painted last, on top
    assert vb.sum() == 36 and va.sum() == 36 - 9 and not (va & vb).any()


def test_colour_prototypes_are_named_as_themselves():
    assert len(COLOUR_RGB) >= 8
    for name, rgb in COLOUR_RGB.items():
        assert COLOUR_NAMES[name_colours(np.array([[rgb]], np.uint8))[0, 0]] == name


def test_render_masks_are_exact_and_disjoint_per_category():
    image, concepts = render_image(0, 7, 96)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    shape_masks = [m for n, m in concepts if n in SHAPE_KINDS]
    background = concepts[-1][1]
    stack = np.stack(shape_masks + [background]).astype(int)
    assert (stack.sum(0) == 1).all()  # visible shapes and background tile the image exactly


def _tree_hash(root):
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def test_build_deterministic_and_round_trip(tmp_path):
    a = build_shapes(tmp_path / "a", n=8, size=64, seed=3, workers=1)
    b = build_shapes(tmp_path / "b", n=8, size=64, seed=3, workers=2)
    c = build_shapes(tmp_path / "c", n=8, size=64, seed=4, workers=1)
    assert _tree_hash(a.parent) == _tree_hash(b.parent) != _tree_hash(c.parent)
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-built left behind
    coco = COCO(str(a))
    d = json.loads(a.read_text())
    cats = {c["name"]: c["supercategory"] for c in d["categories"]}
    assert set(cats.values()) == {"shape", "colour", "texture"}
    for iid in (1, 5):
        _, concepts = render_image(3, iid - 1, 64)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[iid]))
        got = [(coco.cats[x["category_id"]]["name"], coco.annToMask(x)) for x in anns]
        want = [(n, m.astype(np.uint8)) for n, m in concepts if m.any()]
        assert [n for n, _ in got] == [n for n, _ in want]
        assert all(np.array_equal(g, w) for (_, g), (_, w) in zip(got, want))
    ds = ConceptDataset(a, concepts=["grass", "red"] if "grass" in cats else None, fractions=(1.0, 0.0, 0.0))
    assert len(ds) == 8


def test_bad_build_parameters(tmp_path):
    with pytest.raises(ValueError, match="n >= 1"):
        build_shapes(tmp_path / "x", n=0)
