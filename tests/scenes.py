"""Synthetic scenes shared by tests: images of a few objects, one of them the concept's."""

import numpy as np


def object_scene(seed: int = 7, n: int = 60, g: int = 12):
    """``(truth, objects, (a, b))``: ``n`` images of ``g x g`` with three 4 x 4 objects each (the first is the
    concept's: ``truth``; all of them: ``objects``) and the logits of two probes that fire on every object,
    whatever its category, so they share their false positives on the image's other objects."""
    rng = np.random.default_rng(seed)
    objects = np.zeros((n, g, g), bool)
    truth = np.zeros((n, g, g), bool)
    for i in range(n):
        for j in range(3):
            y, x = rng.integers(0, g - 4, 2)
            objects[i, y : y + 4, x : x + 4] = True
            if j == 0:
                truth[i, y : y + 4, x : x + 4] = True
    truth &= objects
    finders = [np.where(objects, rng.random(objects.shape) < 0.8, rng.random(objects.shape) < 0.05) for _ in range(2)]
    return truth, objects, tuple(np.where(f, 5.0, -5.0) for f in finders)
