"""Concept-output comparison of layers and models, the CKA baseline, and the tests of the two findings.

- :mod:`~conceptsim.comparison.outputs` -- concept outputs of every probed layer on the shared test images,
  streamed by image chunks (:class:`StudyOutputs`, :func:`load_vectors`);
- :mod:`~conceptsim.comparison.similarity` -- S_seg, S_cls and secondary variants: :func:`concept_similarity`
  (one layer pair and concept, the reference) and the streamed exact Gram products of the stage;
- :mod:`~conceptsim.comparison.cka` -- linear and debiased CKA;
- :mod:`~conceptsim.comparison.agreement` -- agreement beyond accuracy (``seg_kappa``, ``cls_partial``);
- :mod:`~conceptsim.comparison.finding1` -- finding 1: learned-concept filter, val selection, hierarchical
  bootstrap, its record type; :mod:`~conceptsim.comparison.finding2` and
  :mod:`~conceptsim.comparison.alignment` -- finding 2: three depth tests (aligned, beyond resolution, from
  training), predictors, positive control; :mod:`~conceptsim.comparison.verdicts`,
  :mod:`~conceptsim.comparison.power` -- verdicts and power; :mod:`~conceptsim.comparison.multiplicity` -- Holm;
- :mod:`~conceptsim.comparison.units`, :mod:`~conceptsim.comparison.grounding`,
  :mod:`~conceptsim.comparison.planted` -- label-free unit matching and the grounding tests;
- :mod:`~conceptsim.comparison.document` -- ``findings.json`` (selection on val, report on test);
- :mod:`~conceptsim.comparison.findings` -- shared helpers (seeded generators, emergence depth) and the
  first-version finding statistics;
- :mod:`~conceptsim.comparison.stage` -- :func:`run_comparison_stage` writing ``similarity.csv``,
  ``layer_similarity.csv`` and ``findings.json`` (schemas in its docstring);
- :mod:`~conceptsim.comparison.figures` and :mod:`~conceptsim.comparison.report` -- figures and the
  generated markdown of the Findings page;
- :mod:`~conceptsim.comparison.synthetic` -- synthetic studies with planted concepts (tests, benchmark).
"""

__all__ = ["ComparisonError", "StudyOutputs", "concept_similarity", "load_vectors", "run_comparison_stage"]


def __getattr__(name: str):
    """The package's names, imported on first use: importing one submodule (``figures`` in a notebook, say)
    does not run the stage's imports, nor put the stage's code in that notebook's run key (the static import
    graph of :func:`conceptsim.atomic.closure` counts these imports only where the package itself is used)."""
    if name in ("ComparisonError", "StudyOutputs", "load_vectors"):
        from conceptsim.comparison import outputs as module
    elif name == "concept_similarity":
        from conceptsim.comparison import similarity as module
    elif name == "run_comparison_stage":
        from conceptsim.comparison import stage as module
    else:
        raise AttributeError(f"module 'conceptsim.comparison' has no attribute {name!r}")
    return getattr(module, name)
