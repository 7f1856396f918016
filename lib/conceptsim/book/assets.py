"""Static assets of the book that come from a package registry: MathJax, served locally.

MathJax's SVG build is self-contained (no web fonts), so math renders when the site is opened from disk
with no network. ``make setup`` calls :func:`fetch_mathjax`.
"""

from __future__ import annotations

from pathlib import Path

from conceptsim.models.weights import Carrier, WeightFile, fetch_carrier
from conceptsim.paths import project_root

MATHJAX = Carrier(
    "mathjax", "npm", "mathjax", "3.2.2",
    (WeightFile("tex-svg.js", "package/es5/tex-svg.js",
                "d4295dc33744836935c1399feece5159577b34c5c8ffb9f1c6324cd82e03a882", 2108580),),
)


def mathjax_dir() -> Path:
    return project_root() / "book" / "_static" / "mathjax"


def fetch_mathjax() -> Path:
    return fetch_carrier(MATHJAX, out=mathjax_dir())[0]


if __name__ == "__main__":
    print(fetch_mathjax())
