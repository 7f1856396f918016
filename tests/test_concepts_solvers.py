"""The probes' L-BFGS solvers reach the optimum of their losses, agree with the reference, and ignore threads."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression

from conceptsim.concepts import net2vec, tcav
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


def _wide_problem(seed=0, n=40, channels=120, k=3, rank=10):
    """More channels than images, rank-deficient features (rank 10, seven constant channels, centred), noisy labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, channels)) / np.sqrt(rank)
    x[:, :7] = 0.0
    x -= x.mean(0)
    y = (x[:, 7 : 7 + k] + 1.5 * rng.standard_normal((n, k)) > 0).astype(np.uint8)
    return x, y


def test_classification_row_space_takes_the_plain_iterates():
    """In the features' row space L-BFGS takes the plain path's iterates and stops where it does, C after C (warm start)."""
    x, y = _wide_problem()
    k, d = y.shape[1], x.shape[1]
    space = tcav.RowSpace(x, k)
    assert space.r == 10  # the numerical rank: directions without extent are left out
    plain, reduced = BalancedLogistic(x, y), BalancedLogistic(space.scores, y)
    t_plain, t_reduced = torch.zeros(k * d + k, dtype=torch.float64), torch.zeros(k * space.r + k, dtype=torch.float64)
    t_naive, naive_differs = t_reduced.clone(), False
    for c in (0.01, 0.1, 1.0, 10.0):
        plain.c = reduced.c = c
        a = minimise(plain, t_plain, gtol=1e-6)
        b = minimise(reduced, t_reduced, gtol=1e-6, norms=space)
        naive = minimise(reduced, t_naive, gtol=1e-6)  # max|g| and |g|_1 in beta coordinates: not the stated rule
        t_plain, t_reduced, t_naive = a.theta, b.theta, naive.theta
        assert a.converged and b.converged and (a.iterations, a.evaluations) == (b.iterations, b.evaluations), c
        np.testing.assert_allclose(space.weights(b.theta), a.theta[: k * d].view(k, d), rtol=0, atol=1e-10)
        np.testing.assert_allclose(b.theta[-k:], a.theta[-k:], rtol=0, atol=1e-10)
        # the reported largest |gradient| entry is the plain objective's, in W coordinates
        g = plain(torch.cat([space.weights(b.theta).flatten(), b.theta[-k:]]))[1]
        assert b.grad_max == pytest.approx(float(g.abs().max()), rel=1e-6) and b.grad_max <= 1e-6
        naive_differs |= naive.iterations != a.iterations
    assert naive_differs
    # the probes: row space (chosen automatically, n <= 0.75 D) and the plain path give the same coefficients
    zv, yv = x[:20], y[:20]
    fast = tcav.solve_classification_probes(x, y, zv, yv)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tcav, "ROW_SPACE_SHARE", 0.0)
        slow = tcav.solve_classification_probes(x, y, zv, yv)
    np.testing.assert_allclose(fast.coef, slow.coef, rtol=0, atol=1e-8)
    np.testing.assert_allclose(fast.intercept, slow.intercept, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(fast.chosen_c, slow.chosen_c)
    np.testing.assert_allclose(fast.val_ap, slow.val_ap, rtol=0, atol=1e-12)


def test_row_space_measures_the_gradient_in_weight_coordinates():
    """The stopping test, the largest entry and the 1-norm are those of g_W = g_beta V^T, in every branch of the test."""
    x, y = _wide_problem(seed=1)
    space = tcav.RowSpace(x, 3)
    rng, disagree = np.random.default_rng(2), 0
    for i in range(300):
        g = torch.from_numpy(rng.standard_normal(3 * space.r + 3) * 10.0 ** rng.uniform(-8, -4))
        if i % 3 == 0:
            g[-3:] = 0.0  # intercepts pass: the weight rows decide
        if i % 5 == 0:
            g[: space.r] = 0.0  # a row that passes by its 2-norm alone
        full = torch.cat([space.weights(g).flatten(), g[-3:]])
        gtol = 1e-6
        assert space.above(g, gtol) == (float(full.abs().max()) > gtol), i
        assert space.largest(g) == pytest.approx(float(full.abs().max()), rel=1e-12)
        assert space.total(g) == pytest.approx(float(full.abs().sum()), rel=1e-12)
        disagree += (float(g.abs().max()) > gtol) != space.above(g, gtol)
    assert disagree > 0  # measured in beta coordinates, the test would stop elsewhere
