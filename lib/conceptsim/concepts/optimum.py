"""Full-batch L-BFGS for the concept probes' convex losses (methods.md, "Solving the probes").

:func:`minimise` runs L-BFGS (two-loop recursion, ``history`` pairs) with a backtracking Armijo line search
(quadratic interpolation, first trial step 1) on a flat float64 parameter vector, given
``fun(theta) -> (loss, gradient)`` in float64. For a smooth convex loss the accepted steps decrease the loss
and the iterates reach its minimiser. Stopping rule, the stated tolerance: the largest absolute gradient
entry ``<= gtol``; or no decrease left at float64 resolution (the line search cannot make progress); or
``max_iter`` iterations. :class:`Solution` says which (``converged``).

L-BFGS's steps use only inner products of parameter vectors (and the first step's ``|gradient|_1``), so they
are the same under any isometric change of coordinates; its stopping rule and that first step are not (an
infinity norm and a 1-norm). :class:`GradientNorms` measures the gradient for both; a caller that minimises
in other coordinates (e.g. Method B's row space of the features, :mod:`conceptsim.concepts.tcav`) passes one
that measures it in the coordinates the tolerance is stated in.

It is written out here rather than taken from :class:`torch.optim.LBFGS`, whose first step imports
``torch._dynamo`` (about 4 s per process) and whose line search is shared by all parameters anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

#: ``lbfgs``: full-batch L-BFGS to the loss's optimum; ``reference``: the published solver (Adam with early
#: stopping on val IoU for Method A, scikit-learn for Method B)
SOLVERS = ("lbfgs", "reference")
#: tolerance on the largest absolute gradient entry of the loss (a sum of per-concept mean losses)
GTOL = 1e-5
MAX_ITER = 500
HISTORY = 10
ARMIJO = 1e-4


@dataclass
class Solution:
    """The minimiser found, its loss, iterations, function evaluations and largest |gradient| entry."""

    theta: torch.Tensor
    loss: float
    iterations: int
    evaluations: int
    grad_max: float
    converged: bool


class GradientNorms:
    """The gradient's largest absolute entry and its 1-norm, here in the parameters' own coordinates."""

    def largest(self, g: torch.Tensor) -> float:
        return float(g.abs().max())

    def total(self, g: torch.Tensor) -> float:
        return float(g.abs().sum())

    def above(self, g: torch.Tensor, gtol: float) -> bool:
        """Whether the largest absolute entry exceeds ``gtol`` (the stopping test, once per iteration)."""
        return self.largest(g) > gtol


def _direction(g: torch.Tensor, pairs: list, gamma: float) -> torch.Tensor:
    """``-H g`` by the two-loop recursion over the stored ``(s, y, 1/(y.s))`` pairs."""
    q, alphas = g.clone(), []
    for s, y, rho in reversed(pairs):
        a = rho * float(s @ q)
        alphas.append(a)
        q.sub_(y, alpha=a)
    q.mul_(gamma)
    for (s, y, rho), a in zip(pairs, reversed(alphas)):
        q.add_(s, alpha=a - rho * float(y @ q))
    return q.neg_()


def minimise(fun: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], theta0: torch.Tensor, *,
             gtol: float = GTOL, max_iter: int = MAX_ITER, history: int = HISTORY,
             norms: GradientNorms | None = None) -> Solution:
    """Minimise a smooth convex ``fun`` from ``theta0`` (a float64 vector) by L-BFGS; see the module docstring.

    ``norms``: how the stopping rule and the first step measure the gradient (default: its own entries).
    """
    if gtol <= 0 or max_iter < 0:
        raise ValueError(f"gtol must be > 0 and max_iter >= 0, got gtol={gtol}, max_iter={max_iter}")
    norms = GradientNorms() if norms is None else norms
    x = theta0.detach().to(torch.float64).clone()
    f, g = fun(x)
    f, evals, it, pairs = float(f), 1, 0, []
    while norms.above(g, gtol) and it < max_iter:
        if pairs:
            s, y, _ = pairs[-1]
            gamma = float(s @ y) / float(y @ y)
        else:
            gamma = min(1.0, 1.0 / norms.total(g))
        d = _direction(g, pairs, gamma)
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction (rounding): restart from steepest descent
            pairs.clear()
            d, slope = -gamma * g, -gamma * float(g @ g)
        t, accepted = 1.0, False
        while t > 1e-10:
            fn, gn = fun(x + t * d)
            fn, evals = float(fn), evals + 1
            if fn <= f + ARMIJO * t * slope:
                accepted = True
                break
            # minimiser of the quadratic through f, slope and fn, kept within [0.1 t, 0.5 t]
            t = min(max(-slope * t * t / (2 * (fn - f - slope * t)), 0.1 * t), 0.5 * t)
        if not accepted:
            break  # no decrease left at float64 resolution
        step, dy = t * d, gn - g
        sy = float(step @ dy)
        if sy > 1e-12 * float(dy @ dy):
            pairs.append((step, dy, 1.0 / sy))
            del pairs[:-history]
        x, f, g, it = x + step, fn, gn, it + 1
    gmax = norms.largest(g)
    return Solution(x, f, it, evals, gmax, gmax <= gtol)


class Adam:
    """:class:`torch.optim.Adam`'s update on CPU tensors, written out: the same element-wise operations in the same
    order as its single-tensor path (the one PyTorch takes on CPU; no weight decay, no AMSGrad), so the same numbers.

    Like :func:`minimise`, written out because :class:`torch.optim.Adam`'s first step imports ``torch._dynamo``
    (about 1.2 CPU seconds per process: once per concept-stage run). :meth:`step` updates every parameter whose
    ``grad`` is set, from its own step count (PyTorch's float32 step counter holds integers exactly).
    """

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if any(p.device.type != "cpu" for p in params):
            raise ValueError("Adam is PyTorch's CPU update; on other devices use torch.optim.Adam")
        self.params, self.lr, self.betas, self.eps = list(params), float(lr), betas, float(eps)
        self.state: dict[int, list] = {}

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                continue
            if i not in self.state:
                self.state[i] = [0, torch.zeros_like(p, memory_format=torch.preserve_format),
                                 torch.zeros_like(p, memory_format=torch.preserve_format)]
            st = self.state[i]
            st[0] += 1
            step, exp_avg, exp_avg_sq = float(st[0]), st[1], st[2]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = self.lr / bias_correction1
            denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)

    def zero_grad(self) -> None:
        """Set every parameter's ``grad`` to ``None`` (``torch.optim``'s ``set_to_none=True``)."""
        for p in self.params:
            p.grad = None
