"""Grounding: planted matches (``grounding/planted``), precision and recall of every method per noise level.

Synthetic feature spaces from shared and unique concept directions under a unit permutation or a random
rotation, at the noise levels of :data:`conceptsim.comparison.planted.NOISE_LEVELS`
(:mod:`conceptsim.comparison.planted`; graded concept maps); the methods are unit best buddies, concept
matching with the suite's segmentation probes (Method A: seg_kappa, S_seg) and classification probes (S_cls,
cls_partial), and CKA as a layer-level score. The figure is the wall time; the precision/recall table is in
the entry's details (``scores``), the answer the benchmark exists for.
"""

from __future__ import annotations

import time

import numpy as np

from common import Context, entry

NAME = "grounding"
OPT_IN = False

#: the planted-match benchmark at its default sizes should stay a few minutes on 2 cores
PLANTED_SECONDS = 300.0


def run(ctx: Context) -> list[dict]:
    from conceptsim.comparison.planted import NOISE_LEVELS, TRANSFORMS, planted_match_scores

    sizes = dict(n_layers=2, n_shared=3, n_unique=1, n_images=240) if ctx.quick else {}
    noise = NOISE_LEVELS[:1] if ctx.quick else NOISE_LEVELS
    times, scores = [], None
    for _ in range(ctx.repeat):
        t0 = time.perf_counter()
        scores = planted_match_scores(TRANSFORMS, noise, seed=0, **sizes)
        times.append(time.perf_counter() - t0)
    for (transform, level), g in scores.groupby(["transform", "noise"], sort=False):
        ctx.log(f"grounding/planted {transform} noise {level}: " + ", ".join(
            f"{r.method} P={r.precision:.2f} R={r.recall:.2f}" for r in g.itertuples()))
    details = {"sizes": sizes or "defaults of planted_spaces", "noise_levels": list(noise), "transforms": list(TRANSFORMS),
               "scores": scores.round(4).to_dict(orient="records")}
    exact = scores[(scores["transform"] == "permutation") & (scores["noise"] == min(noise))]
    recovered = float(np.minimum(exact["precision"].fillna(0.0), exact["recall"].fillna(0.0)).min())
    return [entry("grounding/planted", "Planted matches: precision and recall of every method per noise level", "wall time",
                  "s", times, PLANTED_SECONDS, "lower", details, benchmark=NAME,
                  notes="precision/recall per transform, noise level and method in details.scores"),
            entry("grounding/planted_exact", "Planted matches under a pure permutation (lowest noise): the worst method's "
                  "min(precision, recall)", "min(P, R)", "", [recovered], 1.0, "higher", details, benchmark=NAME)]
