"""Model names: a registry entry ``NAME`` and its random-init twins ``NAME:random`` and ``NAME:random@SEED``.

Every module that needs to tell a twin from a trained model, or to name one from the other, asks here;
the suffix itself is written nowhere else. ``NAME:random`` is the twin of seed :data:`DEFAULT_TWIN_SEED`;
further seeds are ``NAME:random@SEED`` (a study lists as many as it wants in its models).
"""

from __future__ import annotations

import re

RANDOM_SUFFIX = ":random"
#: the registry model of the image's own pixels (:mod:`conceptsim.models.pixels`): the floor, with no twin
PIXELS_MODEL = "pixels"
DEFAULT_TWIN_SEED = 0

_TWIN = re.compile(r"^(?P<base>.+?)" + re.escape(RANDOM_SUFFIX) + r"(?:@(?P<seed>\d+))?$")


def split_twin_name(model: str) -> tuple[str, bool, int]:
    """``"NAME"`` -> ``(NAME, False, 0)``; ``"NAME:random"`` / ``"NAME:random@3"`` -> ``(NAME, True, seed)``.

    Raises
    ------
    ValueError
        For a malformed seed suffix (``NAME:random@x``).
    """
    m = _TWIN.match(model)
    if m is None:
        if RANDOM_SUFFIX + "@" in model:
            raise ValueError(
                f"model name {model!r}: a twin seed is written NAME{RANDOM_SUFFIX}@SEED with SEED a non-negative integer"
            )
        return model, False, DEFAULT_TWIN_SEED
    return m["base"], True, int(m["seed"]) if m["seed"] is not None else DEFAULT_TWIN_SEED


def is_twin(model: str) -> bool:
    """Whether ``model`` names a random-init twin (any seed)."""
    return split_twin_name(model)[1]


def base_name(model: str) -> str:
    """Architecture name of a model: the name without the twin suffix (and seed)."""
    return split_twin_name(model)[0]


def twin_name(model: str, seed: int = DEFAULT_TWIN_SEED) -> str:
    """The random-init twin of ``model`` of ``seed`` (``NAME:random`` for the default seed)."""
    suffix = RANDOM_SUFFIX if int(seed) == DEFAULT_TWIN_SEED else f"{RANDOM_SUFFIX}@{int(seed)}"
    return base_name(model) + suffix


def twin_names(model: str, n_seeds: int) -> list[str]:
    """The names of ``n_seeds`` twins of ``model`` (seeds 0, 1, ...)."""
    return [twin_name(model, s) for s in range(int(n_seeds))]
