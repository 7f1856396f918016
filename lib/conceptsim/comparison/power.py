"""The power check of finding 1 (methods.md, "Testing the findings, third version": controls that must answer).

Synthetic layer outputs at a study's sizes go through the comparison stage's own functions
(:class:`~conceptsim.comparison.similarity.SegAccumulator` with per-image strata, the image bootstrap of
``seg_kappa``, the concept level, the t interval, Holm over a family and the verdict rule):

- per concept, a ground-truth mask per image (a rectangle covering 10-40 % of it);
- every probe errs on a share of pixels (15-30 %, per concept) independently given the truth;
- a pair of probes *shares* decisions: with probability ``s`` a pixel of B copies A's decision, otherwise B
  decides on its own. Within strata, Cohen's kappa of such a pair is ``s``. The twins' pairs share
  ``u_c`` (per concept, 0.05-0.35: concepts differ), the trained pair ``u_c + d + e_c`` with ``e_c`` normal
  of standard deviation ``concept_sd`` (concepts differ in how much training made them agree; 0.1 gives
  standard errors like the default study's): ``d`` is the planted mean effect in kappa units;
- the rest of the family: ``family_size - 1`` other tests whose p-values are uniform (null).

:func:`simulate_power` returns the share of "supported" verdicts at each effect and the median minimum
detectable effect the verdicts state; at ``d = 0`` the share is the false-positive rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from conceptsim.atomic import save_figure
from conceptsim.comparison.agreement import kappa_from_strata
from conceptsim.comparison.finding1 import concept_level_means, image_weights, nanmean_rows, seg_kappa_replicates
from conceptsim.comparison.similarity import SegAccumulator
from conceptsim.comparison.verdicts import FindingTest, assign_verdicts, t_summary


@dataclass
class PowerPoint:
    """Simulated studies at one planted effect."""

    effect: float
    supported: float  # share of studies whose finding-1 verdict is "supported"
    contradicted: float
    median_mde: float
    median_estimate: float
    n_studies: int


def _shared_pair(truth: np.ndarray, err: float, share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two probes of ``truth`` (``n x P`` bool) that err independently at rate ``err``; B copies A's decision
    with probability ``share``."""
    a = truth ^ (rng.random(truth.shape) < err)
    own = truth ^ (rng.random(truth.shape) < err)
    b = np.where(rng.random(truth.shape) < share, a, own)
    return a, b


def simulate_study(effect: float, *, n_concepts: int, n_images: int, n_seeds: int = 3, family_size: int = 8,
                   n_boot: int = 1000, grid: tuple[int, int] = (8, 8), concept_sd: float = 0.1,
                   rng: np.random.Generator) -> FindingTest:
    """One simulated finding-1 test at planted ``effect``; returns its record with verdict and MDE."""
    gh, gw = grid
    pixels = gh * gw
    rows = 2 + 2 * n_seeds
    logits = np.empty((rows + 1, n_concepts, n_images, gh, gw), np.float32)
    for k in range(n_concepts):
        truth = np.zeros((n_images, gh, gw), bool)
        for i in range(n_images):
            h, w = rng.integers(max(1, gh // 3), gh - 1), rng.integers(max(1, gw // 3), gw - 1)
            y, x = rng.integers(0, gh - h + 1), rng.integers(0, gw - w + 1)
            truth[i, y : y + h, x : x + w] = True
        t = truth.reshape(n_images, pixels)
        err, base = rng.uniform(0.15, 0.30), rng.uniform(0.05, 0.35)
        masks = list(_shared_pair(t, err, float(np.clip(base + effect + rng.normal(0.0, concept_sd), 0.0, 1.0)), rng))
        for _ in range(n_seeds):
            masks += list(_shared_pair(t, err, base, rng))
        masks.append(t)
        for r, m in enumerate(masks):
            logits[r, k] = np.where(m, 5.0, -5.0).reshape(n_images, gh, gw)
    pairs = np.array([[2 * j, 2 * j + 1] for j in range(1 + n_seeds)])
    acc = SegAccumulator(rows + 1, n_concepts, grid, track={k: pairs for k in range(n_concepts)}, truth_row=rows)
    acc.update(torch.from_numpy(logits))
    counts = acc.per_image()
    w = image_weights(rng, n_boot, n_images)
    obs, reps = [], []
    for k in range(n_concepts):
        pooled = counts[k].sum(axis=0)  # P x 5
        values = kappa_from_strata(*pooled.T[:4])[0]
        obs.append(values[0] - np.nanmean(values[1:]))
        r = seg_kappa_replicates(counts[k])(w)
        reps.append(r[:, 0] - nanmean_rows(r[:, 1:]))
    test = t_summary("finding1", "agreement", np.array(obs), concept_level_means(np.stack(reps, axis=1), rng))
    others = [FindingTest("other", "agreement", effect=0.0, ci_low=-1.0, ci_high=1.0, se=1.0, n=n_concepts,
                         p_value=float(rng.random())) for _ in range(family_size - 1)]
    assign_verdicts([test] + others, "simulated")
    return test


def simulate_power(effects, *, n_concepts: int, n_images: int, n_studies: int = 200, n_seeds: int = 3,
                   family_size: int = 8, n_boot: int = 1000, grid: tuple[int, int] = (8, 8), concept_sd: float = 0.1,
                   seed: int = 0) -> list[PowerPoint]:
    """Share of supported verdicts and median stated MDE at each planted effect (seeded)."""
    out = []
    for i, d in enumerate(effects):
        rng = np.random.default_rng([seed, i])
        tests = [simulate_study(float(d), n_concepts=n_concepts, n_images=n_images, n_seeds=n_seeds,
                                family_size=family_size, n_boot=n_boot, grid=grid, concept_sd=concept_sd, rng=rng)
                 for _ in range(n_studies)]
        verdicts = [t.verdict for t in tests]
        mdes = [t.mde for t in tests if t.mde is not None]
        ests = [t.effect for t in tests if t.effect is not None]
        out.append(PowerPoint(float(d), verdicts.count("supported") / n_studies, verdicts.count("contradicted") / n_studies,
                              float(np.median(mdes)) if mdes else float("nan"),
                              float(np.median(ests)) if ests else float("nan"), n_studies))
    return out


def eighty_percent_point(points: list[PowerPoint], power: float = 0.8) -> float:
    """The planted effect where the share of supported verdicts crosses ``power`` (linear interpolation)."""
    e = np.array([p.effect for p in points])
    s = np.array([p.supported for p in points])
    order = np.argsort(e)
    e, s = e[order], np.maximum.accumulate(s[order])
    if s[-1] < power:
        return float("nan")
    j = int(np.argmax(s >= power))
    if j == 0:
        return float(e[0])
    return float(e[j - 1] + (power - s[j - 1]) * (e[j] - e[j - 1]) / max(s[j] - s[j - 1], 1e-12))


def main(argv=None) -> int:
    """``python -m conceptsim.comparison.power --out FIGURE.png``: the power curve at the default study's sizes."""
    import argparse
    import json
    from pathlib import Path

    from conceptsim.comparison.figures import power_plot

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--out", type=Path, required=True, help="PNG path; the numbers go beside it as .json")
    # the default study's finding-1 tests: 7-22 concepts (median 14) on 100-120 test images, families of 7
    ap.add_argument("--concepts", type=int, default=14)
    ap.add_argument("--images", type=int, default=110)
    ap.add_argument("--studies", type=int, default=200)
    ap.add_argument("--family", type=int, default=7)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    effects = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    points = simulate_power(effects, n_concepts=args.concepts, n_images=args.images, n_studies=args.studies,
                            family_size=args.family)
    stated = float(np.median([p.median_mde for p in points]))
    fig = power_plot(points, stated)
    fig.suptitle(f"finding 1: {args.concepts} concepts, {args.images} images, 3 twin seeds, family of {args.family}",
                 fontsize=10)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, args.out, dpi=100)
    summary = {"points": [p.__dict__ for p in points], "stated_mde": stated, "eighty_percent": eighty_percent_point(points)}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"stated MDE {stated:.3f}, simulated 80 % point {summary['eighty_percent']:.3f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
