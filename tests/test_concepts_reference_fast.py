"""The reference solver's closed-form batch gradient equals autograd's, and training with it gives the same probes."""

import numpy as np
import pytest
import torch

from conceptsim.concepts import net2vec
from conceptsim.concepts.net2vec import BalancedBCEGradient, foreground_alpha, probe_logits, probe_loss
from conftest import planted_layer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    return planted_layer(tmp_path_factory, n_split=(48, 24, 24), channels=16, grid=(8, 8), k=4, amplitude=1.5,
                         noise=1.5)


@pytest.mark.parametrize("per_image", [False, True])
def test_closed_form_gradient_equals_autograd(per_image):
    g = torch.Generator().manual_seed(0)
    n, c, k = 10, 7, 3
    data = torch.randn(n, c, 5, 6, generator=g).contiguous(memory_format=torch.channels_last)
    targets = torch.rand(k, n, 5, 6, generator=g).half().transpose(0, 1)  # concept-major, as the stage reads them
    alpha = foreground_alpha(targets)
    w, b = 0.3 * torch.randn(k, c, generator=g), torch.randn(k, generator=g)
    grad = BalancedBCEGradient(targets, alpha, per_image=per_image)
    for concepts in (np.arange(k), np.array([0, 2])):  # every concept, then a compacted subset
        grad.select(concepts)
        rows = torch.from_numpy(concepts)
        pos = np.array([7, 2, 5, 0])
        images = data.permute(0, 2, 3, 1).reshape(n, -1, c) if per_image else None
        gw, gb = grad.step(w[rows], b[rows], pos, None if per_image else data[torch.from_numpy(pos)], images)
        wa, ba = w[rows].clone().requires_grad_(), b[rows].clone().requires_grad_()
        probe_loss(probe_logits(wa, ba, data[torch.from_numpy(pos)]), targets[torch.from_numpy(pos)][:, rows],
                   alpha[rows], "balanced_bce").backward()
        np.testing.assert_allclose(gw.numpy(), wa.grad.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(gb.numpy(), ba.grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("in_place", [False, True])
def test_training_with_the_closed_form_gradient_matches_autograd(layer, in_place, monkeypatch):
    inp, data, targets = layer
    if in_place:  # read the images in place, as on the study's large layers
        monkeypatch.setattr(net2vec, "IN_PLACE_IMAGE_BYTES", 0)
    kw = dict(batch_size=8, epochs=12, patience=2, seed=1, lr=0.5)  # large steps, short patience: concepts freeze early
    fast = net2vec.train_segmentation_probes_reference(data["train"], targets, data["val"], inp.eval_sets["val"], **kw)
    slow = net2vec.train_segmentation_probes_reference(data["train"], targets, data["val"], inp.eval_sets["val"],
                                                       analytic_gradient=False, **kw)
    assert len(set(slow.best_epoch.tolist())) > 1 or slow.epochs_run < kw["epochs"]
    np.testing.assert_array_equal(fast.best_epoch, slow.best_epoch)
    np.testing.assert_allclose(fast.val_iou, slow.val_iou, atol=1e-6)
    np.testing.assert_allclose(fast.weight, slow.weight, atol=1e-4)
    np.testing.assert_allclose(fast.bias, slow.bias, atol=1e-4)


def test_batch_positions_follow_the_batches(layer):
    _, data, _ = layer
    a = [p for p, _ in data["train"].batches(8, torch.Generator().manual_seed(4))]
    b = list(data["train"].batch_positions(8, torch.Generator().manual_seed(4)))
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    images = data["train"].image_matrices()
    x = next(data["train"].batches(8))[1]
    np.testing.assert_array_equal(images[:8].numpy(), x.permute(0, 2, 3, 1).reshape(8, -1, x.shape[1]).numpy())


def test_eval_logits_and_counts_equal_the_matrix_form(layer):
    inp, data, _ = layer
    g = torch.Generator().manual_seed(2)
    k, c = inp.eval_sets["val"].masks.shape[1], data["val"].c
    w, b = torch.randn(k, c, generator=g), torch.randn(k, generator=g)
    x = next(data["val"].batches(5))[1]
    np.testing.assert_allclose(net2vec.eval_logits(w, b, x).numpy(), probe_logits(w, b, x).numpy(), rtol=1e-5, atol=1e-5)
    ev = inp.eval_sets["val"]
    resample = ev.resampler(data["val"].spatial)
    inter, union = [], []
    for pos, x in data["val"].batches(7):  # the plain computation: matrix-form logits, whole batches
        i, u = net2vec.threshold_counts(resample(probe_logits(w, b, x), pos), 0.0, ev.masks[pos], ev.areas[pos])
        inter.append(i)
        union.append(u)
    fast = net2vec.split_counts(w, b, data["val"], ev)
    np.testing.assert_array_equal(fast[0], torch.cat(inter).numpy())
    np.testing.assert_array_equal(fast[1], torch.cat(union).numpy())


@pytest.mark.parametrize("in_place", [False, True])
def test_reference_results_do_not_depend_on_the_thread_count(layer, in_place, monkeypatch):
    inp, data, targets = layer
    if in_place:
        monkeypatch.setattr(net2vec, "IN_PLACE_IMAGE_BYTES", 0)
    before, out = torch.get_num_threads(), {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out[threads] = net2vec.train_segmentation_probes_reference(data["train"], targets, data["val"],
                                                                       inp.eval_sets["val"], batch_size=8, epochs=8)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(out[1].best_epoch, out[2].best_epoch)
    np.testing.assert_allclose(out[1].val_iou, out[2].val_iou, atol=1e-4)
    np.testing.assert_allclose(out[1].weight, out[2].weight, atol=1e-4)


@pytest.mark.parametrize("shape", [(3, 4, 56, 56), (2, 5, 7, 9), (1, 2, 8 * 255 * 2), (1, 1, 8 * 257), (0, 3, 16), (2, 3, 0)])
def test_count_true_equals_the_plain_sum(shape):
    """Packed-word counting gives the byte-by-byte sums exactly: random, all-true (byte lanes at their limit),
    all-false, a non-contiguous slice and an unaligned view."""
    gen = torch.Generator().manual_seed(1)
    plain = lambda f: f.flatten(2).to(torch.int64).sum(2)  # noqa: E731
    for flags in (torch.rand(shape, generator=gen) < 0.3, torch.ones(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)):
        got = net2vec.count_true(flags)
        assert got.dtype == torch.int32 and got.shape == flags.shape[:2]
        assert torch.equal(got.to(torch.int64), plain(flags))
    big = torch.rand((4, 3, 64), generator=gen) < 0.5
    for view in (big[:, 1:], big[1:2, :, :56], big.view(-1)[1:].view(1, 1, -1)[:, :, :184].view(1, 1, 184)):
        assert torch.equal(net2vec.count_true(view).to(torch.int64), plain(view))
