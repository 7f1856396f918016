"""Linear and debiased CKA: direct formulas, invariances, and the all-pairs matrix form."""

import numpy as np
import pytest
from scipy.stats import ortho_group

from conceptsim.comparison.cka import cka_matrices, debiased_cka, gram, hsic_unbiased, linear_cka


def kernel_cka(x, y):
    """CKA straight from its definition with the centring matrix H."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    return np.sum(k * l) / (np.linalg.norm(k) * np.linalg.norm(l))


def hsic1_loops(k, l):
    """Song et al. (2012) unbiased HSIC written term by term."""
    n = len(k)
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    t1 = np.trace(kt @ lt)
    t2 = (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    t3 = 2.0 / (n - 2) * (one @ kt @ lt @ one)
    return (t1 + t2 - t3) / (n * (n - 3))


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12))
    y = x @ rng.normal(size=(12, 7)) + 0.5 * rng.normal(size=(40, 7))
    return x, y


def test_linear_cka_equals_kernel_formula(xy):
    x, y = xy
    assert linear_cka(x, y) == pytest.approx(kernel_cka(x, y), rel=1e-10)


def test_cka_invariances_and_identity(xy):
    x, y = xy
    q = ortho_group.rvs(12, random_state=1)
    base = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(7.5 * x, 0.1 * y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert debiased_cka(x, x) == pytest.approx(1.0)
    assert debiased_cka(x @ q, 3.0 * y) == pytest.approx(debiased_cka(x, y), rel=1e-9)


def test_debiased_hsic_formula(xy):
    x, y = xy
    k, l = gram(x), gram(y)
    assert hsic_unbiased(k, l) == pytest.approx(hsic1_loops(k, l), rel=1e-10)
    ref = hsic1_loops(k, l) / np.sqrt(hsic1_loops(k, k) * hsic1_loops(l, l))
    assert debiased_cka(x, y) == pytest.approx(ref, rel=1e-10)


def test_cka_matrices_match_pairwise(xy):
    x, y = xy
    rng = np.random.default_rng(5)
    feats = [x, y, rng.normal(size=(40, 3))]
    m = cka_matrices(np.stack([gram(f) for f in feats]))
    for i, a in enumerate(feats):
        for j, b in enumerate(feats):
            assert m["cka"][i, j] == pytest.approx(linear_cka(a, b), rel=1e-9)
            assert m["cka_debiased"][i, j] == pytest.approx(debiased_cka(a, b), rel=1e-9)
    const = cka_matrices(np.stack([gram(x), gram(np.ones((40, 2)))]))
    assert np.isnan(const["cka"][0, 1])
