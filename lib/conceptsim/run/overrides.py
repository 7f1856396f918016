"""Command-line adjustments of a loaded study, made before its inputs are checked
(:func:`conceptsim.run.preflight.check_inputs`): local copies of downloadable datasets (``--root``) and a
rehearsal with the random-init twins only (``--twins-only``)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from conceptsim.models.names import is_twin
from conceptsim.run.study import Study, StudyError


def apply_roots(study: Study, roots: Mapping[str, str]) -> None:
    """``--root NAME=DIR``: read the named online dataset from a local copy at ``DIR``."""
    from conceptsim.data.registry import DATASETS

    for name, root in roots.items():
        spec = DATASETS.get(name)
        if name not in study.datasets or spec is None or spec.kind != "online":
            online = sorted(d for d in study.datasets if d in DATASETS and DATASETS[d].kind == "online")
            raise StudyError(f"--root {name}=...: the study has no downloadable dataset {name!r}; it has {online}")
        if not Path(root).is_dir():
            raise StudyError(f"--root {name}={root}: no such folder")
        study.datasets[name] = {**study.datasets[name], "root": str(Path(root).resolve())}


def keep_random_twins(study: Study) -> None:
    """``--twins-only``: keep only the random-init twins (a rehearsal of the study without trained weights)."""
    twins = [m for m in study.models if is_twin(m)]
    if not twins:
        raise StudyError(f"{study.path or 'study'}: --twins-only, but the study lists no random-init twin")
    study.models = twins
    study.layers = {m: v for m, v in study.layers.items() if m in twins}
