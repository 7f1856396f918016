"""Split rules that keep whole groups of images together: by art style, by background, by source photo.

A random split by image (:func:`conceptsim.data.coco.split_assignment`) lets near-copies of one picture
land in train and test. A *grouped* split names a field of the COCO image records (``style``,
``background``, ``source``, ...) and keeps every value of it in one split:

- ``{by: style, test: [noto], val: [twemoji]}``: the images whose ``style`` is listed go to test (val);
  all others to train. Every test number then measures transfer to a style the probe never saw.
- ``{by: source}``: the values themselves are split at random (seeded permutation of the sorted values,
  cut at the split fractions of the number of values, each split getting at least one value when there
  are three or more).
- ``random`` (or ``None``): the random split by image.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: Split names in the order fractions are given (as :data:`conceptsim.data.coco.SPLITS`).
SPLITS = ("train", "val", "test")
RULE_KEYS = {"by", "test", "val"}


def check_split(rule: Any, where: str = "split") -> dict | None:
    """A validated split rule: ``None`` for the random split, else ``{"by", "test", "val"}``.

    ``test`` and ``val`` are lists of field values (absent: the values are split at random). Raises
    ``ValueError`` naming ``where`` and the offending key.
    """
    if rule is None or rule == "random":
        return None
    if not isinstance(rule, Mapping):
        raise ValueError(f"{where} must be 'random' or a mapping like {{by: style, test: [...], val: [...]}}, got {rule!r}")
    unknown = sorted(set(rule) - RULE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; accepted keys: {sorted(RULE_KEYS)}")
    by = rule.get("by")
    if not isinstance(by, str) or not by:
        raise ValueError(f"{where}.by must name an image field (e.g. style, background, source), got {by!r}")
    out: dict = {"by": by}
    for key in ("test", "val"):
        vals = rule.get(key)
        if vals is None:
            continue
        if isinstance(vals, str):
            vals = [vals]
        if not isinstance(vals, (list, tuple)) or not all(isinstance(v, str) for v in vals):
            raise ValueError(f"{where}.{key} must be a list of {by} values, got {vals!r}")
        out[key] = list(vals)
    if "val" in out and "test" not in out:
        raise ValueError(f"{where}: 'val' given without 'test'")
    both = sorted(set(out.get("test", [])) & set(out.get("val", [])))
    if both:
        raise ValueError(f"{where}: {by} value(s) {both} are in both test and val")
    return out


def grouped_assignment(images: Mapping[int, dict], rule: Mapping, seed: int = 0,
                       fractions: Sequence[float] = (0.6, 0.2, 0.2), source: str = "") -> dict[int, str]:
    """Image id -> split under a grouped ``rule`` (see :func:`check_split`); ``images``: id -> COCO record.

    Raises ``ValueError`` naming ``source`` when an image lacks the field or the rule names a value that no
    image has (the reader turns it into a :class:`~conceptsim.data.coco.DatasetError`).
    """
    rule = check_split(rule)
    if rule is None:
        raise ValueError("grouped_assignment needs a grouped rule; the random split is coco.split_assignment")
    by = rule["by"]
    value_of = {}
    for iid, im in images.items():
        if by not in im:
            raise ValueError(f"{source}: split by {by!r}, but image {iid} ({im.get('file_name')}) has no {by!r} field")
        value_of[int(iid)] = str(im[by])
    values = sorted(set(value_of.values()))
    if "test" in rule:
        for key in ("test", "val"):
            listed = rule.get(key, [])
            unknown = sorted(set(listed) - set(values))
            if listed and len(unknown) == len(set(listed)):
                raise ValueError(f"{source}: split names {by} value(s) {unknown} for {key} that no image has, "
                                 f"so {key} would be empty; values: {values}")
            if unknown:  # a small build may lack some listed values; the split is still well defined
                log.warning("%s: split %s lists %s value(s) %s that no image has", source, key, by, unknown)
        if not set(values) - set(rule["test"]) - set(rule.get("val", [])):
            raise ValueError(f"{source}: split by {by} leaves no value for train; values: {values}")
        group = {v: "test" if v in rule["test"] else "val" if v in rule.get("val", []) else "train" for v in values}
    else:
        group = _split_values(values, seed, fractions)
    return {iid: group[v] for iid, v in value_of.items()}


def _split_values(values: list[str], seed: int, fractions: Sequence[float]) -> dict[str, str]:
    fr = [float(f) for f in fractions]
    n = len(values)
    perm = [values[i] for i in np.random.default_rng(seed).permutation(n)]
    counts = [int(round(f * n)) for f in fr]
    if n >= 3:  # every split that should get something gets at least one value
        for k in (1, 2):
            if fr[k] > 0 and counts[k] == 0:
                counts[k] = 1
    counts[0] = n - counts[1] - counts[2]
    out, at = {}, 0
    for split, c in zip(SPLITS, counts):
        for v in perm[at : at + c]:
            out[v] = split
        at += c
    return out
