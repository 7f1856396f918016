"""Concept outputs of the comparison stage: vector files, folded probes, chunked reading."""

import numpy as np
import pytest
import torch

from conceptsim.comparison.outputs import ComparisonError, LinearProbe, StudyOutputs, load_vectors
from conceptsim.comparison.synthetic import build_synthetic_study
from conceptsim.concepts.vectors import save_npz, vector_path
from conceptsim.paths import vectors_dir

LAYERS = [("L0", 0.3, 4, 5), ("L1", 0.9, 2, 5)]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs") / "ds"
    build_synthetic_study(root, {"a": LAYERS, "b": LAYERS}, n_images=12, seed=1)
    return root


def test_folded_probe_equals_standardised_probe():
    rng = np.random.default_rng(0)
    vec = {"weight": rng.normal(size=(3, 4)), "bias": rng.normal(size=3), "mean": rng.normal(size=4),
           "std": np.array([1.5, 0.5, 0.0, 2.0]), "concepts": ["x", "y", "z"]}
    probe = LinearProbe.from_vectors(vec, "seg")
    acts = rng.normal(size=(2, 4, 3, 3))
    std = np.where(vec["std"] > 0, vec["std"], 1.0)
    z = (acts - vec["mean"][None, :, None, None]) / std[None, :, None, None]
    ref = np.einsum("kc,nchw->nkhw", vec["weight"], z) + vec["bias"][None, :, None, None]
    got = probe.maps(torch.from_numpy(acts.astype(np.float32))).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert probe.concepts == ("x", "y", "z")


def test_chunk_size_does_not_change_the_outputs(study):
    so = StudyOutputs(study, ["a", "b"])
    whole = list(so.iter_chunks(chunk_images=so.n_test, read_images=so.n_test))
    parts = list(so.iter_chunks(chunk_images=2, read_images=4))
    assert sum(len(c.rows) for c in parts) == so.n_test and len(whole) == 1
    np.testing.assert_allclose(torch.cat([c.cls for c in parts], dim=1).numpy(), whole[0].cls.numpy(), atol=1e-5)
    np.testing.assert_allclose(torch.cat([c.seg for c in parts], dim=2).numpy(), whole[0].seg.numpy(), atol=1e-5)


def test_damaged_vector_files_are_named(study, tmp_path):
    mdir = tmp_path / "m"
    vectors_dir(mdir).mkdir(parents=True)
    path = vector_path(vectors_dir(mdir), "seg", "L0")
    save_npz(path, weight=np.zeros((2, 3), np.float32), bias=np.zeros(2, np.float32),
             mean=np.zeros(3, np.float32), std=np.ones(3, np.float32), concepts=np.array(["a"]))
    with pytest.raises(ComparisonError, match="inconsistent shapes"):
        load_vectors(mdir, "L0", "seg")
    save_npz(path, weight=np.zeros((2, 3), np.float32), concepts=np.array(["a", "b"]))
    with pytest.raises(ComparisonError, match=r"lack keys \['bias', 'mean', 'std'\]"):
        load_vectors(mdir, "L0", "seg")
    with pytest.raises(ValueError, match="kind must be"):
        load_vectors(mdir, "L0", "tcav")
    assert load_vectors(study / "a", "L1", "cls")["concepts"] == ["sky", "dog", "red"]


def test_chunk_blocks_read_every_stored_chunk_once():
    from conceptsim.comparison.outputs import chunk_blocks

    interleaved = np.arange(4, 200, 6)  # one row in six, as the test split of a store written image by image
    for rows, chunk, want in ((interleaved, 32, 16), (np.arange(360, 480), 32, 16), (np.arange(5), 32, 16)):
        blocks = chunk_blocks(rows, chunk, want)
        assert np.array_equal(np.concatenate(blocks), np.arange(len(rows)))  # every position once, in order
        chunks = [set(rows[b] // chunk) for b in blocks]
        assert all(not (a & b) for i, a in enumerate(chunks) for b in chunks[i + 1:])  # no chunk in two blocks
        assert all(len(b) >= want for b in blocks[:-1])
    assert chunk_blocks(np.array([], dtype=np.int64), 32, 16) == []


def test_blocks_follow_store_chunks(study):
    so = StudyOutputs(study, ["a", "b"])
    assert so.chunk_rows == 12  # 16 images per chunk, capped at the store's 12 images
    blocks = so.read_blocks(4)
    assert np.array_equal(np.concatenate(blocks), np.arange(so.n_test))


def test_grid4_grams_in_small_blocks_equal_one_block(tmp_path):
    """The grid-4 pass reads blocks of ``read_images`` (one stored chunk each) instead of all images of a
    layer at once: the Gram matrices and the pooled features unit matching receives are bit-identical."""
    from conceptsim.comparison.stage import grid4_grams

    root = tmp_path / "ds"
    build_synthetic_study(root, {"a": LAYERS, "b": LAYERS}, n_images=64, test_fraction=0.75, seed=2)
    so = StudyOutputs(root, ["a", "b"])
    assert len(so.read_blocks(16)) > 1 and len(so.read_blocks(so.n_test)) == 1  # the two readings differ
    seen: dict[int, list] = {16: [], so.n_test: []}
    grams = {k: grid4_grams(so, k, lambda li, x, k=k: seen[k].append(x.clone())) for k in seen}
    assert np.array_equal(grams[16], grams[so.n_test])
    assert all(torch.equal(a, b) for a, b in zip(seen[16], seen[so.n_test], strict=True))
