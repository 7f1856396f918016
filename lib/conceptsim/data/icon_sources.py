"""Emoji art of COCO object categories, from pinned npm packages: the sources of ``coco-icons``.

Each *style* is one emoji design (Fluent modern and flat, OpenMoji colour and outline, Noto, Twemoji),
read straight from its npm tarball in the git-ignored cache (``cache_dir()/icons/``). ``make setup`` (or
``conceptsim data fetch-icons``) downloads the tarballs with ``npm pack`` and checks their pinned sha256;
the builder checks the hash again before it reads one, so a build never uses other art than the pinned
one. The tarballs are never committed.

:data:`CATEGORIES` is the reviewed mapping from COCO categories (their 2017 ids and supercategories) to
the emoji that depict them, every variant with its Unicode code point(s) and CLDR name. A variant is
listed only if the whole picture is the object (no person riding it, no second object of another
category beside it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from conceptsim.atomic import sha256_file
from conceptsim.paths import cache_dir


class IconSourceError(ValueError):
    """An icon package is missing, does not match its pinned hash, or holds an unusable SVG."""


@dataclass(frozen=True)
class IconPackage:
    """A pinned npm tarball that carries emoji SVGs."""

    key: str
    package: str
    version: str
    sha256: str
    licence: str  # licence of the artwork (SPDX id)
    attribution: str  # the credit line the licence asks for

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def file_name(self) -> str:
        return f"{self.key}-{self.version}.tgz"


PACKAGES: dict[str, IconPackage] = {p.key: p for p in (
    IconPackage(
        "fluentui-emoji", "fluentui-emoji", "1.3.0",
        "ec892e607e854859b812c7d827801756adc19955b0ef56d4ae8afcddd19492c5", "MIT",
        "Fluent Emoji by Microsoft (github.com/microsoft/fluentui-emoji), MIT licence; packaged for npm as "
        "fluentui-emoji by Mohammad Abu Mattar (MIT).",
    ),
    IconPackage(
        "openmoji", "openmoji", "17.0.0",
        "55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68", "CC-BY-SA-4.0",
        "All emojis designed by OpenMoji (openmoji.org), the open-source emoji and icon project. "
        "Licence: CC BY-SA 4.0.",
    ),
    IconPackage(
        "svgmoji-noto", "@svgmoji/noto", "3.2.0",
        "4bd1ef9824efaa08f124541a4c3420899a273333169aada20761384f9c7a35d0", "Apache-2.0",
        "Noto Emoji by Google (github.com/googlefonts/noto-emoji), Apache licence 2.0; sprite packaged "
        "for npm as @svgmoji/noto by KickJump Ltd (MIT).",
    ),
    IconPackage(
        "twemoji-svg", "@twemoji/svg", "15.0.0",
        "1d2907557a422c7c4e3feca50ef915c39da1db3d76b4a4d7e73fb59bce4403c3", "CC-BY-4.0",
        "Twemoji graphics by Twitter, Inc. and other contributors (github.com/jdecked/twemoji), "
        "CC BY 4.0; optimised SVGs packaged for npm as @twemoji/svg by Samuel Kopp (MIT).",
    ),
)}


@dataclass(frozen=True)
class Style:
    """One art style: where its SVG for an emoji lies in its package.

    ``layout`` is ``"files"`` (one SVG per emoji; ``path`` has ``{slug}``, ``{HEX}`` or ``{hex}``) or
    ``"sprite"`` (one SVG whose nested ``<svg id="HEX">`` elements are the emoji; ``path`` is the sprite).
    """

    name: str
    package: str
    layout: str
    path: str


STYLES: dict[str, Style] = {s.name: s for s in (
    Style("fluent-modern", "fluentui-emoji", "files", "package/icons/modern/{slug}.svg"),
    Style("fluent-flat", "fluentui-emoji", "files", "package/icons/flat/{slug}.svg"),
    Style("openmoji", "openmoji", "files", "package/color/svg/{HEX}.svg"),
    Style("openmoji-outline", "openmoji", "files", "package/black/svg/{HEX}.svg"),
    Style("noto", "svgmoji-noto", "sprite", "package/sprites/all.svg"),
    Style("twemoji", "twemoji-svg", "files", "package/{hex}.svg"),
)}


@dataclass(frozen=True)
class Emoji:
    """One emoji: its code point sequence (hex, ``-``-joined, no trailing FE0F) and CLDR name."""

    code: str
    name: str

    @property
    def slug(self) -> str:
        """Fluent Emoji's file name: the CLDR name, lower case, hyphenated."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower().replace("'", "").replace("’", "")).strip("-")


@dataclass(frozen=True)
class Category:
    """A COCO category (2017 id, name, supercategory) and the emoji that depict it."""

    id: int
    name: str
    supercategory: str
    emoji: tuple[Emoji, ...]


def _cat(cid: int, name: str, sup: str, *emoji: tuple[str, str]) -> Category:
    return Category(cid, name, sup, tuple(Emoji(c, n) for c, n in emoji))


#: The reviewed mapping, in COCO id order. Fluent Emoji draws people in skin tones; its "default"
#: (yellow) figure is used (file ``<slug>-default.svg``).
CATEGORIES: tuple[Category, ...] = (
    _cat(1, "person", "person", ("1F9CD", "person standing"), ("1F6B6", "person walking"), ("1F3C3", "person running")),
    _cat(2, "bicycle", "vehicle", ("1F6B2", "bicycle")),
    _cat(3, "car", "vehicle", ("1F697", "automobile"), ("1F695", "taxi"), ("1F693", "police car"),
         ("1F699", "sport utility vehicle"), ("1F3CE", "racing car"), ("1F698", "oncoming automobile")),
    _cat(4, "motorcycle", "vehicle", ("1F3CD", "motorcycle"), ("1F6F5", "motor scooter")),
    _cat(5, "airplane", "vehicle", ("2708", "airplane"), ("1F6E9", "small airplane"),
         ("1F6EB", "airplane departure"), ("1F6EC", "airplane arrival")),
    _cat(6, "bus", "vehicle", ("1F68C", "bus"), ("1F68D", "oncoming bus"), ("1F68E", "trolleybus"), ("1F690", "minibus")),
    _cat(7, "train", "vehicle", ("1F682", "locomotive"), ("1F683", "railway car"), ("1F684", "high-speed train"),
         ("1F685", "bullet train"), ("1F686", "train"), ("1F688", "light rail")),
    _cat(8, "truck", "vehicle", ("1F69A", "delivery truck"), ("1F69B", "articulated lorry"), ("1F6FB", "pickup truck")),
    _cat(9, "boat", "vehicle", ("26F5", "sailboat"), ("1F6A4", "speedboat"), ("1F6F6", "canoe"), ("1F6E5", "motor boat"),
         ("1F6A2", "ship"), ("26F4", "ferry")),
    _cat(10, "traffic light", "outdoor", ("1F6A6", "vertical traffic light"), ("1F6A5", "horizontal traffic light")),
    _cat(13, "stop sign", "outdoor", ("1F6D1", "stop sign")),
    _cat(16, "bird", "animal", ("1F426", "bird"), ("1F414", "chicken"), ("1F413", "rooster"), ("1F54A", "dove"),
         ("1F985", "eagle"), ("1F986", "duck"), ("1F989", "owl"), ("1F99C", "parrot"), ("1F427", "penguin"),
         ("1F9A2", "swan"), ("1F99A", "peacock"), ("1F9A9", "flamingo")),
    _cat(17, "cat", "animal", ("1F408", "cat"), ("1F408-200D-2B1B", "black cat")),
    _cat(18, "dog", "animal", ("1F415", "dog"), ("1F429", "poodle"), ("1F9AE", "guide dog"),
         ("1F415-200D-1F9BA", "service dog")),
    _cat(19, "horse", "animal", ("1F40E", "horse")),
    _cat(20, "sheep", "animal", ("1F411", "ewe"), ("1F40F", "ram")),
    _cat(21, "cow", "animal", ("1F404", "cow"), ("1F402", "ox"), ("1F403", "water buffalo")),
    _cat(22, "elephant", "animal", ("1F418", "elephant")),
    _cat(24, "zebra", "animal", ("1F993", "zebra")),
    _cat(25, "giraffe", "animal", ("1F992", "giraffe")),
    _cat(28, "umbrella", "accessory", ("2602", "umbrella"), ("2614", "umbrella with rain drops"), ("1F302", "closed umbrella")),
    _cat(31, "handbag", "accessory", ("1F45C", "handbag"), ("1F45B", "purse"), ("1F45D", "clutch bag")),
    _cat(33, "suitcase", "accessory", ("1F9F3", "luggage")),
    _cat(37, "sports ball", "sports", ("26BD", "soccer ball"), ("1F3C0", "basketball"), ("26BE", "baseball"),
         ("1F3BE", "tennis"), ("1F3D0", "volleyball"), ("1F3C8", "american football"), ("1F3C9", "rugby football"),
         ("1F94E", "softball")),
    _cat(44, "bottle", "kitchen", ("1F37E", "bottle with popping cork"), ("1F37C", "baby bottle")),
    _cat(46, "wine glass", "kitchen", ("1F377", "wine glass")),
    _cat(47, "cup", "kitchen", ("2615", "hot beverage"), ("1F375", "teacup without handle"), ("1F964", "cup with straw")),
    _cat(52, "banana", "food", ("1F34C", "banana")),
    _cat(53, "apple", "food", ("1F34E", "red apple"), ("1F34F", "green apple")),
    _cat(55, "orange", "food", ("1F34A", "tangerine")),
    _cat(56, "broccoli", "food", ("1F966", "broccoli")),
    _cat(57, "carrot", "food", ("1F955", "carrot")),
    _cat(59, "pizza", "food", ("1F355", "pizza")),
    _cat(60, "donut", "food", ("1F369", "doughnut")),
    _cat(61, "cake", "food", ("1F370", "shortcake"), ("1F382", "birthday cake"), ("1F9C1", "cupcake")),
    _cat(62, "chair", "furniture", ("1FA91", "chair")),
    _cat(63, "couch", "furniture", ("1F6CB", "couch and lamp")),
    _cat(64, "potted plant", "furniture", ("1FAB4", "potted plant")),
    _cat(72, "tv", "electronic", ("1F4FA", "television")),
    _cat(73, "laptop", "electronic", ("1F4BB", "laptop")),
    _cat(77, "cell phone", "electronic", ("1F4F1", "mobile phone")),
    _cat(84, "book", "indoor", ("1F4D5", "closed book"), ("1F4D6", "open book"), ("1F4D7", "green book"),
         ("1F4D8", "blue book"), ("1F4D9", "orange book")),
    _cat(85, "clock", "indoor", ("23F0", "alarm clock"), ("1F570", "mantelpiece clock")),
    _cat(88, "teddy bear", "indoor", ("1F9F8", "teddy bear")),
)


def category(name: str) -> Category:
    for c in CATEGORIES:
        if c.name == name:
            return c
    raise KeyError(f"unknown coco-icons category {name!r}; known: {', '.join(c.name for c in CATEGORIES)}")


def style(name: str) -> Style:
    if name not in STYLES:
        raise KeyError(f"unknown coco-icons style {name!r}; known: {', '.join(STYLES)}")
    return STYLES[name]


# ---------------------------------------------------------------------------------------------- packages
def icons_dir() -> Path:
    """Where the icon tarballs are kept (``cache_dir()/icons``)."""
    return cache_dir() / "icons"


def package_path(key: str, verify: bool = True) -> Path:
    """The pinned tarball of package ``key``, hash-checked. Raises :class:`IconSourceError` naming the fix."""
    pkg = PACKAGES[key]
    path = icons_dir() / pkg.file_name
    fix = f"run `conceptsim data fetch-icons` (or `make setup`) to download {pkg.spec} with npm"
    if not path.is_file():
        raise IconSourceError(f"icon package {pkg.spec} is missing: {path} not found; {fix}")
    if verify:
        digest = sha256_file(path)
        if digest != pkg.sha256:
            raise IconSourceError(f"icon package {path} has sha256 {digest}, expected the pinned {pkg.sha256} "
                                  f"of {pkg.spec}; delete it and {fix}")
    return path


def fetch_icon_packages(keys: list[str] | None = None) -> list[Path]:
    """Download the pinned tarballs that are absent (``npm pack``), verify every one. Idempotent."""
    keys = list(keys or PACKAGES)
    unknown = [k for k in keys if k not in PACKAGES]
    if unknown:
        raise KeyError(f"unknown icon package(s) {unknown}; known: {sorted(PACKAGES)}")
    out = []
    for key in keys:
        pkg = PACKAGES[key]
        dst = icons_dir() / pkg.file_name
        if not dst.is_file() or sha256_file(dst) != pkg.sha256:
            npm = shutil.which("npm")
            if npm is None:
                raise IconSourceError(f"npm is needed to fetch {pkg.spec}; install Node.js/npm")
            dst.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="conceptsim-icons-", dir=dst.parent) as tmp:
                proc = subprocess.run([npm, "pack", "--silent", pkg.spec, "--pack-destination", tmp],
                                      capture_output=True, text=True, cwd=tmp)
                got = sorted(Path(tmp).glob("*.tgz"))
                if proc.returncode != 0 or not got:
                    raise IconSourceError(f"could not download {pkg.spec} with `npm pack`: {proc.stderr.strip()[-1000:]}")
                got[0].replace(dst)
        out.append(package_path(key))
    return out


# ---------------------------------------------------------------------------------------------- SVGs
def _code_variants(code: str) -> list[str]:
    """Spellings to try: as listed, with FE0F appended (a few packages keep it)."""
    return [code, f"{code}-FE0F"]


@lru_cache(maxsize=None)
def _members(key: str, wanted: frozenset[str] | None = None) -> dict[str, bytes]:
    """SVG members of a package's tarball (all, or only the ``wanted`` paths), read once per process."""
    out = {}
    with tarfile.open(package_path(key)) as t:
        for m in t:
            if m.isfile() and m.name.endswith(".svg") and (wanted is None or m.name in wanted):
                f = t.extractfile(m)
                if f is not None:
                    out[m.name] = f.read()
    return out


def _sprite_entry(key: str, path: str, ids: list[str]) -> bytes | None:
    """The first of ``ids`` in a sprite SVG, as a stand-alone SVG document.

    The sprite's emoji are sibling ``<svg id="...">`` elements; the element is cut out at its opening tag
    and the next ``</svg>``, then checked to be well-formed XML (a nested ``<svg>`` or a damaged sprite
    gives a parse error, reported as :class:`IconSourceError`).
    """
    data = _members(key, frozenset([path])).get(path)
    if data is None:
        raise IconSourceError(f"{PACKAGES[key].spec}: sprite {path} not found in the tarball")
    for i in ids:
        at = data.find(f' id="{i}"'.encode())
        if at < 0:
            continue
        start = data.rfind(b"<svg", 0, at)
        end = data.find(b"</svg>", at)
        if start < 0 or end < 0:
            raise IconSourceError(f"{PACKAGES[key].spec}: sprite {path}: entry {i} is not an <svg> element")
        doc = data[start:end + len(b"</svg>")]
        head = doc[:doc.find(b">")]
        if b' xmlns="' not in head:
            doc = doc.replace(b"<svg", b'<svg xmlns="http://www.w3.org/2000/svg"', 1)
        if b"xlink:" in doc and b"xmlns:xlink" not in head:
            doc = doc.replace(b"<svg", b'<svg xmlns:xlink="http://www.w3.org/1999/xlink"', 1)
        try:
            ET.fromstring(doc)
        except ET.ParseError as e:
            raise IconSourceError(f"{PACKAGES[key].spec}: sprite {path}: entry {i} is not well-formed XML ({e})") from e
        return doc
    return None


def _candidates(st: Style, emoji: Emoji) -> list[str]:
    return [st.path.format(slug=emoji.slug + suffix, HEX=c, hex=c.lower())
            for c in _code_variants(emoji.code) for suffix in ("", "-default")]


@lru_cache(maxsize=None)
def _wanted_paths(package: str) -> frozenset[str]:
    """Every path any style of ``package`` may read for the emoji of :data:`CATEGORIES`."""
    return frozenset(p for st in STYLES.values() if st.package == package and st.layout == "files"
                     for c in CATEGORIES for e in c.emoji for p in _candidates(st, e))


def svg_of(style_name: str, emoji: Emoji) -> bytes | None:
    """The SVG document of ``emoji`` in a style, or ``None`` when the style does not draw it."""
    st = style(style_name)
    if st.layout == "sprite":
        return _sprite_entry(st.package, st.path, _code_variants(emoji.code))
    members = _members(st.package, _wanted_paths(st.package))
    return next((members[n] for n in _candidates(st, emoji) if n in members), None)


def available(style_name: str, cat: Category) -> list[Emoji]:
    """The emoji of ``cat`` that a style draws."""
    return [e for e in cat.emoji if svg_of(style_name, e) is not None]
