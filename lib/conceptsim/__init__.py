"""conceptsim: interpretable, concept-based comparison of CNN feature spaces.

The package is laid out as the pipeline runs:

- :mod:`conceptsim.data` -- COCO-format concept datasets, embedded offline datasets, model-input geometry;
- :mod:`conceptsim.models` -- model registry, pinned weights, model names and twins;
- :mod:`conceptsim.extraction` -- forward hooks, relative depth and the Zarr activation and mask stores;
- :mod:`conceptsim.concepts` -- Net2Vec segmentation probes, TCAV-style classification probes,
  Network Dissection, controls;
- :mod:`conceptsim.comparison` -- concept-output similarity, CKA, the tests of the paper's findings;
- :mod:`conceptsim.study` and :mod:`conceptsim.runner` -- study files and the papermill runner;
- :mod:`conceptsim.book` -- the generated book pages and the book's assets;
- :mod:`conceptsim.paths` (result layout) and :mod:`conceptsim.runtime` (process tuning) -- infrastructure.
"""

import os as _os

from conceptsim import paths as _paths

_paths.configure_environment()
if _os.environ.get("CONCEPTSIM_FORBID_NETWORK") == "1":
    from conceptsim import netguard as _netguard

    _netguard.install()

__version__ = "0.1.0"
