"""Running a study: one module per idea.

:mod:`~conceptsim.run.study` (the study model: a study file expanded into runs), :mod:`~conceptsim.run.validation`
(the study file's schema), :mod:`~conceptsim.run.preflight` (what the runs need from this machine, checked before
any starts), :mod:`~conceptsim.run.overrides` (``--root``, ``--twins-only``), :mod:`~conceptsim.run.keys` (run
keys, records, what is complete), :mod:`~conceptsim.run.scheduling` (dependency order, critical path,
``--only``), :mod:`~conceptsim.run.execution` (one run in papermill), :mod:`~conceptsim.run.kernels` (warm
kernels), :mod:`~conceptsim.run.progress` (the display), :mod:`~conceptsim.run.lock` (one run of a study at a
time), :mod:`~conceptsim.run.orchestrate` (:func:`run_study`) and :mod:`~conceptsim.run.cluster` (Dask; imported
only by ``--cluster``). What the command line and :mod:`conceptsim.api` use is importable from here.
"""

from conceptsim.run.keys import pending, run_keys
from conceptsim.run.lock import StudyBusy, study_lock
from conceptsim.run.orchestrate import StudyInterrupted, StudyOutcome, run_study
from conceptsim.run.overrides import apply_roots, keep_random_twins
from conceptsim.run.preflight import check_inputs
from conceptsim.run.scheduling import select
from conceptsim.run.study import Run, Study, load_study, parse_study
from conceptsim.run.validation import StudyError

__all__ = ["Run", "Study", "StudyBusy", "StudyError", "StudyInterrupted", "StudyOutcome", "apply_roots", "check_inputs",
           "keep_random_twins", "load_study", "parse_study", "pending", "run_keys", "run_study", "select", "study_lock"]
