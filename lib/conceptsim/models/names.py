"""Model names: a registry entry ``NAME`` and its random-init twin ``NAME:random``.

Every module that needs to tell a twin from a trained model, or to name one from the other, asks here;
the suffix itself is written nowhere else.
"""

from __future__ import annotations

RANDOM_SUFFIX = ":random"


def is_twin(model: str) -> bool:
    """Whether ``model`` names a random-init twin."""
    return model.endswith(RANDOM_SUFFIX)


def base_name(model: str) -> str:
    """Architecture name of a model: the name without the twin suffix."""
    return model[: -len(RANDOM_SUFFIX)] if is_twin(model) else model


def twin_name(model: str) -> str:
    """The random-init twin of ``model`` (a twin is its own twin)."""
    return base_name(model) + RANDOM_SUFFIX
