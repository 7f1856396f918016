"""Concept-output comparison of layers and models, the CKA baseline, and the tests of the two findings.

- :mod:`~conceptsim.comparison.outputs` -- concept outputs of every probed layer on the shared test images,
  streamed by image chunks (:class:`StudyOutputs`, :func:`load_vectors`);
- :mod:`~conceptsim.comparison.similarity` -- S_seg, S_cls and secondary variants: :func:`concept_similarity`
  (one layer pair and concept, the reference) and the streamed exact Gram products of the stage;
- :mod:`~conceptsim.comparison.cka` -- linear and debiased CKA;
- :mod:`~conceptsim.comparison.agreement` -- agreement beyond accuracy (``seg_kappa``, ``cls_partial``);
- :mod:`~conceptsim.comparison.learned` -- finding 1: learned-concept filter, val selection, hierarchical
  bootstrap; :mod:`~conceptsim.comparison.alignment` -- finding 2: one combined depth test, oracle and twin
  nulls, predictors, positive control; :mod:`~conceptsim.comparison.multiplicity` -- Holm;
- :mod:`~conceptsim.comparison.document` -- ``findings.json`` (selection on val, report on test);
- :mod:`~conceptsim.comparison.findings` -- shared helpers (seeded generators, emergence depth) and the
  first-version finding statistics;
- :mod:`~conceptsim.comparison.stage` -- :func:`run_comparison_stage` writing ``similarity.csv``,
  ``layer_similarity.csv`` and ``findings.json`` (schemas in its docstring);
- :mod:`~conceptsim.comparison.figures` and :mod:`~conceptsim.comparison.report` -- figures and the
  generated markdown of the Findings page;
- :mod:`~conceptsim.comparison.synthetic` -- synthetic studies with planted concepts (tests, benchmark).
"""

from conceptsim.comparison.outputs import ComparisonError, StudyOutputs, load_vectors
from conceptsim.comparison.similarity import concept_similarity
from conceptsim.comparison.stage import run_comparison_stage

__all__ = ["ComparisonError", "StudyOutputs", "concept_similarity", "load_vectors", "run_comparison_stage"]
