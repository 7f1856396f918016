"""The concept stage: concept vectors per layer, their quality with controls, and single-unit baselines.

- :mod:`~conceptsim.concepts.net2vec` -- Method A, Net2Vec segmentation probes (joint C -> K training);
- :mod:`~conceptsim.concepts.tcav` -- Method B, TCAV-style classification probes on pooled activations;
- :mod:`~conceptsim.concepts.dissection` -- Network Dissection units (streaming top-0.5 % thresholds);
- :mod:`~conceptsim.concepts.controls` -- shuffled labels, paired bootstrap, the ``represented`` rule;
- :mod:`~conceptsim.concepts.metrics` -- set IoU, AP, balanced accuracy (bootstrap-friendly);
- :mod:`~conceptsim.concepts.vectors` -- the ``.npz`` vector files the comparison stage reads;
- :mod:`~conceptsim.concepts.stage` -- :func:`run_concept_stage`, the orchestration and output schemas;
- :mod:`~conceptsim.concepts.figures` -- plots for the ``02_concepts`` notebook.
"""

from conceptsim.concepts.stage import GeometryError, run_concept_stage
from conceptsim.concepts.vectors import ConceptVectors, vector_path

__all__ = ["GeometryError", "run_concept_stage", "ConceptVectors", "vector_path"]
