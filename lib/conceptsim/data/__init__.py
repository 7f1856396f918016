"""The data stage: COCO-format concept datasets, the embedded offline datasets, the paper's fetchers.

- :mod:`~conceptsim.data.coco` -- the reader (:class:`ConceptDataset`), splits, the COCO writer;
- :mod:`~conceptsim.data.shapes`, :mod:`~conceptsim.data.photo_colors` -- embedded dataset builders;
- :mod:`~conceptsim.data.fetch` -- COCO val2017 and Pascal VOC 2012 (download or local copy);
- :mod:`~conceptsim.data.registry` -- named datasets and :func:`ensure_dataset`;
- :mod:`~conceptsim.data.summary` -- summary table and example figure;
- :mod:`~conceptsim.data.geometry` -- model-input geometry shared with the models stage.
"""

from conceptsim.data.coco import Concept, ConceptDataset, DatasetError, DatasetSource, collate, make_loader

__all__ = ["Concept", "ConceptDataset", "DatasetError", "DatasetSource", "collate", "make_loader"]
