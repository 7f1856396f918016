"""The order of a study's runs: dependency order, the critical path that decides which ready run a worker
takes first, and the ``--only`` selection (the chosen runs plus what they depend on)."""

from __future__ import annotations

from conceptsim.run.study import Run


def topological(runs: list[Run]) -> list[Run]:
    by_id = {r.id: r for r in runs}
    done: dict[str, Run] = {}

    def visit(r: Run, stack: tuple[str, ...]) -> None:
        if r.id in done:
            return
        if r.id in stack:
            raise ValueError(f"dependency cycle: {' -> '.join(stack + (r.id,))}")
        for d in r.depends_on:
            if d in by_id:
                visit(by_id[d], stack + (r.id,))
        done[r.id] = r

    for r in runs:
        visit(r, ())
    return list(done.values())


def critical_path(runs: list[Run], expected: dict[str, float | None]) -> dict[str, float]:
    """Each run's expected time from its start to the end of the study along its longest chain of dependents.

    Workers take the ready run with the longest chain first, so the long chains start early and the short
    runs (a dataset's comparisons) fill the time while they work, instead of one worker finishing a long
    run alone at the end. ``expected`` gives each run's time (:func:`conceptsim.run.progress.expected_seconds`);
    a run without one counts as the mean of the known times, or as 1 when none is known (a first run: the
    longest chain of runs).
    """
    by_id = {r.id: r for r in runs}
    known = [s for s in (expected.get(r.id) for r in runs) if s is not None]
    default = sum(known) / len(known) if known else 1.0
    dependents: dict[str, list[str]] = {r.id: [] for r in runs}
    for r in runs:
        for d in r.depends_on:
            if d in by_id:
                dependents[d].append(r.id)
    chain: dict[str, float] = {}
    for r in reversed(topological(runs)):  # dependents first
        own = expected.get(r.id)
        chain[r.id] = (default if own is None else own) + max((chain[c] for c in dependents[r.id]), default=0.0)
    return chain


def select(runs: list[Run], only: dict[str, str | list[str]]) -> list[Run]:
    """Keep runs matching every key (keys: stage, dataset, model; a key given several values matches any
    of them) plus what they depend on."""
    allowed = {"stage", "dataset", "model"}
    bad = set(only) - allowed
    if bad:
        raise ValueError(f"--only accepts keys {sorted(allowed)}, got {sorted(bad)}")
    wanted = {k: {v} if isinstance(v, str) else set(v) for k, v in only.items()}
    by_id = {r.id: r for r in runs}
    for key, values in wanted.items():
        present = {getattr(r, key) for r in runs}
        for value in sorted(values - present):
            raise ValueError(f"--only {key}={value}: no such {key} in the study; accepted: {sorted(v for v in present if v)}")
    chosen = {r.id for r in runs if all(getattr(r, k) in v for k, v in wanted.items())}
    if wanted and not chosen:  # each value exists, but no run has them all (e.g. a model in a per-dataset stage)
        asked = " ".join(f"{k}={','.join(sorted(v))}" for k, v in wanted.items())
        stages = sorted({r.stage for r in runs if all(getattr(r, k) in v for k, v in wanted.items() if k != "stage")})
        raise ValueError(f"--only {asked}: no run of the study matches all of these"
                         + (f" (the runs with the other keys are of the stages {stages}; the per-dataset stages "
                            "have no model)" if "stage" in wanted and stages else ""))
    stack = list(chosen)
    while stack:
        for d in by_id[stack.pop()].depends_on:
            if d in by_id and d not in chosen:
                chosen.add(d)
                stack.append(d)
    return [r for r in runs if r.id in chosen]
