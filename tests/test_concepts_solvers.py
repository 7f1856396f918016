"""The probes' L-BFGS solvers reach the optimum of their losses, agree with the reference, and ignore threads."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression

from conceptsim.concepts import net2vec
from conceptsim.concepts.metrics import average_precision, set_iou_from_counts
from conceptsim.concepts.net2vec import BalancedBCE, foreground_alpha, split_counts, train_segmentation_probes
from conceptsim.concepts.optimum import Adam, minimise
from conceptsim.concepts.tcav import BalancedLogistic, train_classification_probes
from conftest import planted_layer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors; the thread test sets its own counts


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """Weak planted signal in strong noise: not separable, so the loss has one finite minimiser."""
    return planted_layer(tmp_path_factory, n_split=(80, 30, 30), channels=12, grid=(8, 8), k=3, amplitude=1.5, noise=1.5)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """A smoke-sized layer: 64 channels on a 12 x 12 grid, 5 concepts."""
    return planted_layer(tmp_path_factory, n_split=(60, 20, 20), channels=64, grid=(12, 12), k=5, amplitude=2.0)


def _iou(probes, data, ev):
    return set_iou_from_counts(*split_counts(torch.from_numpy(probes.weight), torch.from_numpy(probes.bias),
                                             data["test"], ev))


def test_adam_equals_torch_adam_bit_for_bit():
    """The written-out update gives torch.optim.Adam's numbers exactly, with rows of zero gradient and a skipped grad."""
    gen = torch.Generator().manual_seed(3)
    ours = [torch.zeros(4, 6), torch.zeros(4)]
    theirs = [p.clone() for p in ours]
    opt_ours, opt_theirs = Adam(ours, lr=1e-2), torch.optim.Adam(theirs, lr=1e-2)
    for i in range(40):
        grads = [torch.randn(p.shape, generator=gen) * 10.0 ** (i % 5 - 2) for p in ours]
        grads[0][i % 4] = 0.0  # a frozen row
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            for p, g in zip(params, grads):
                p.grad = None if (i % 7 == 6 and p.dim() == 1) else g.clone()
            opt.step()
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b), i
    assert opt_ours.state[0][0] == 40 and opt_ours.state[1][0] == 40 - 40 // 7
    with pytest.raises(ValueError, match="CPU"):
        Adam([torch.zeros(2, device="meta")], lr=1e-2)


def test_minimise_quadratic_and_bad_arguments():
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    sol = minimise(lambda x: (0.5 * x @ a @ x - x.sum(), a @ x - 1), torch.zeros(2, dtype=torch.float64), gtol=1e-10)
    assert sol.converged and torch.allclose(sol.theta, torch.linalg.solve(a, torch.ones(2, dtype=torch.float64)))
    with pytest.raises(ValueError, match="gtol"):
        minimise(lambda x: (x.sum(), x), torch.zeros(2, dtype=torch.float64), gtol=0)


@pytest.mark.parametrize("method", ["newton", "lbfgs"])
def test_segmentation_lbfgs_reaches_the_optimum(noisy, method, monkeypatch):
    inp, data, targets = noisy
    if method == "lbfgs":  # the path of layers with many channels
        monkeypatch.setattr(net2vec, "NEWTON_FLOPS", 0)
    fast = train_segmentation_probes(data["train"], targets, data["val"], inp.eval_sets["val"], solver="lbfgs", gtol=1e-7)
    assert fast.grad_max <= 1e-7
    # an independent solver of the same loss (scipy's L-BFGS-B in float64, tight tolerance)
    fun = BalancedBCE(data["train"], targets, foreground_alpha(targets))
    res = minimize(lambda x: tuple(t.numpy() for t in fun(torch.from_numpy(x))), np.zeros(3 * 12 + 3), jac=True,
                   method="L-BFGS-B", options={"gtol": 1e-9, "ftol": 1e-15, "maxiter": 5000})
    assert abs(fast.loss.sum() - res.fun) < 1e-6
    np.testing.assert_allclose(fast.weight, res.x[:36].reshape(3, 12), atol=2e-3)
    # the reference (Adam, early stopping) does not go below the optimum, and its IoU is close on this problem
    ref = train_segmentation_probes(data["train"], targets, data["val"], inp.eval_sets["val"], solver="reference",
                                    batch_size=20, epochs=25, patience=25)
    theta = torch.cat([torch.from_numpy(ref.weight).double().flatten(), torch.from_numpy(ref.bias).double()])
    assert float(fun(theta)[0]) >= fast.loss.sum() - 1e-6
    np.testing.assert_allclose(_iou(fast, data, inp.eval_sets["test"]), _iou(ref, data, inp.eval_sets["test"]), atol=1e-2)


def test_classification_lbfgs_matches_scikit_learn_at_its_optimum(noisy):
    inp, data, _ = noisy
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((120, 10)), np.zeros((120, 3), np.uint8)
    for j in range(3):
        y[:, j] = (z[:, j] + rng.standard_normal(120) > 0.8).astype(np.uint8)
    zv, yv = z[:60], y[:60]
    fast = train_classification_probes(z, y, zv, yv, solver="lbfgs", c_grid=(1.0,), gtol=1e-9)
    for j in range(3):
        clf = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-10, max_iter=10000).fit(z, y[:, j])
        np.testing.assert_allclose(fast.coef[j], clf.coef_[0], atol=1e-5)
        np.testing.assert_allclose(fast.intercept[j], clf.intercept_[0], atol=1e-5)
    # over the whole grid (C chosen on val; near-ties may pick another C): AP within 1e-2 of the reference solver
    fast = train_classification_probes(z, y, zv, yv, solver="lbfgs")
    ref = train_classification_probes(z, y, zv, yv, solver="reference")
    np.testing.assert_allclose(average_precision(y.T, fast.decision(z).T), average_precision(y.T, ref.decision(z).T),
                               atol=1e-2)
    fun = BalancedLogistic(z, y)
    assert fun.k == 3 and fun.d == 10


def test_results_do_not_depend_on_the_thread_count(smoke):
    inp, data, targets = smoke
    before = torch.get_num_threads()
    out = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            seg = train_segmentation_probes(data["train"], targets, data["val"], inp.eval_sets["val"], solver="lbfgs")
            gap = {s: data[s].gap for s in ("train", "val")}
            cls = train_classification_probes(gap["train"], inp.labels["train"], gap["val"], inp.labels["val"])
            out[threads] = (_iou(seg, data, inp.eval_sets["test"]), seg.weight, cls.decision(data["test"].gap))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(out[1], out[2]):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_unknown_solver_and_nonconvex_loss_are_errors(noisy):
    inp, data, targets = noisy
    with pytest.raises(ValueError, match="solver must be one of"):
        train_segmentation_probes(data["train"], targets, data["val"], inp.eval_sets["val"], solver="adam")
    with pytest.raises(ValueError, match="balanced_bce"):
        train_segmentation_probes(data["train"], targets, data["val"], inp.eval_sets["val"], solver="lbfgs", loss="dice")
    with pytest.raises(ValueError, match="solver must be one of"):
        train_classification_probes(np.zeros((4, 2)), np.array([[0], [1], [0], [1]]), np.zeros((4, 2)),
                                    np.array([[0], [1], [0], [1]]), solver="newton")
