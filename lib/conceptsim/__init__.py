"""conceptsim: interpretable, concept-based comparison of CNN feature spaces.

The public API (:mod:`conceptsim.api`, importable from here): :func:`open_results` reads a study's
results (and :func:`read_table` any result CSV), :func:`run_study` runs a study file (:class:`StudyError`:
the study file or its inputs are invalid), and the measures work on arrays you bring
(:func:`concept_similarity`, :func:`concept_agreement`, :func:`linear_cka`, the probes). Importing the
package changes nothing in your process; the command line and the stage notebooks prepare theirs with
:func:`conceptsim.runtime.setup`.

The package is laid out as the pipeline runs:

- :mod:`conceptsim.data` -- COCO-format concept datasets, embedded offline datasets, model-input geometry;
- :mod:`conceptsim.models` -- model registry, pinned weights, model names and twins;
- :mod:`conceptsim.extraction` -- forward hooks, relative depth and the Zarr activation and mask stores;
- :mod:`conceptsim.concepts` -- Net2Vec segmentation probes, TCAV-style classification probes,
  Network Dissection, controls;
- :mod:`conceptsim.comparison` -- concept-output similarity, CKA, the tests of the paper's findings;
- :mod:`conceptsim.run` -- study files, validation and pre-run checks, run keys, scheduling, papermill
  execution, kernels, the Dask executor and progress;
- :mod:`conceptsim.book` -- the generated book pages and the book's assets;
- :mod:`conceptsim.paths` (result layout) and :mod:`conceptsim.runtime` (process set-up) -- infrastructure.
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

# the public API, loaded on first use (it imports torch, pandas and scikit-learn)
_API = (
    "Results", "open_results", "read_table", "run_study", "StudyRunError", "StudyError",
    "concept_similarity", "concept_agreement", "linear_cka", "debiased_cka",
    "train_segmentation_probes", "SegProbes", "SplitData", "EvalSet", "Standardiser",
    "train_classification_probes", "ClsProbes",
)
__all__ = ["__version__", *_API]
#: public names defined outside :mod:`conceptsim.api` (the rest of ``_API`` is read from it)
_ELSEWHERE = {"read_table": "conceptsim.tables", "StudyError": "conceptsim.run.study"}

if TYPE_CHECKING:
    from conceptsim.api import (  # noqa: F401
        ClsProbes,
        EvalSet,
        Results,
        SegProbes,
        SplitData,
        Standardiser,
        StudyRunError,
        concept_agreement,
        concept_similarity,
        debiased_cka,
        linear_cka,
        open_results,
        run_study,
        train_classification_probes,
        train_segmentation_probes,
    )
    from conceptsim.run.study import StudyError  # noqa: F401
    from conceptsim.tables import read_table  # noqa: F401


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_ELSEWHERE.get(name, "conceptsim.api")), name)
    raise AttributeError(f"module 'conceptsim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
