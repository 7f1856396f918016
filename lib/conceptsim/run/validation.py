"""One validation pass over a study file, before anything runs.

:func:`validate_study` checks the whole mapping -- keys, types, ranges, allowed values, per-dataset
parameters -- and reports *every* problem at once, each naming the file, the key, the value and what is
accepted. What the selected runs then need from this machine (data, weight files, the device, writable
output folders) is checked by :func:`conceptsim.run.preflight.check_inputs`, again all at once, so a study that
cannot run fails before the first notebook starts. :func:`load_yaml` reads study files with a loader that rejects duplicate keys.

The schema is data (:data:`SECTIONS`, :data:`DATASET_RULES`): a new option is one entry with its default
and its rule; a new check on the whole study is one function called from :func:`validate_study`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from conceptsim.concepts.net2vec import LOSSES, SOLVERS
from conceptsim.extraction.store import COMPRESSORS, STORE_DTYPES


class StudyError(ValueError):
    """A study file is invalid or cannot run here; the message names the file, key, value and what is accepted."""


# ----------------------------------------------------------------------------------------------- YAML
class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a mapping holding the same key twice (YAML says keys are unique)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {seen[key]}); each key may appear once",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: the base class reports it
                continue
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Path) -> Any:
    """Parse a YAML file; every failure (missing, unreadable, not UTF-8, bad syntax, duplicate key) is a StudyError."""
    if not path.exists():
        raise StudyError(f"study file {path} does not exist")
    if not path.is_file():
        raise StudyError(f"study file {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise StudyError(f"{path}: not a UTF-8 text file ({exc})") from None
    except OSError as exc:
        raise StudyError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context = f" ({exc.context})" if exc.context else ""
        raise StudyError(f"{path}: not valid YAML{where}: {exc.problem}{context}") from None
    except yaml.YAMLError as exc:
        raise StudyError(f"{path}: not valid YAML ({exc})") from None


# ----------------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """A predicate on a value and the words that say what it accepts; ``explain(value, key)``, where given,
    says what is wrong with a rejected value (naming the dotted ``key`` in quotes), or returns None."""

    accepted: str
    ok: Callable[[Any], bool]
    explain: Callable[[Any, str], str | None] | None = None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(low: int | None = None) -> Rule:
    return Rule("an integer" + (f" >= {low}" if low is not None else ""), lambda v: _is_int(v) and (low is None or v >= low))


def number(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False) -> Rule:
    if high is None:
        words = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        words = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def ok(v: Any) -> bool:
        if not _is_number(v):
            return False
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    return Rule(words, ok)


def one_of(*values: str) -> Rule:
    return Rule(f"one of {list(values)}", lambda v: isinstance(v, str) and v in values)


BOOLEAN = Rule("true or false", lambda v: isinstance(v, bool))
DEVICE = Rule("cpu, cuda, cuda:N (N a GPU index) or auto",
              lambda v: isinstance(v, str) and re.fullmatch(r"cpu|cuda|cuda:\d+|auto", v) is not None)
FRACTIONS = Rule(
    "three positive numbers summing to 1 (train, val, test: every split needs images)",
    lambda v: isinstance(v, list) and len(v) == 3 and all(_is_number(f) and f > 0 for f in v) and abs(sum(v) - 1) <= 1e-6,
)

#: The most bootstrap resamples a stage accepts: the resamples are held in memory (about 48 bytes each: 10**6
#: take about 48 MB; 10**12 asked for 43.7 TiB and failed with a MemoryError inside the notebook).
MAX_BOOTSTRAP = 10**6
BOOTSTRAP = Rule(f"an integer in [1, {MAX_BOOTSTRAP}] (the resamples are held in memory: about 48 MB at "
                 f"{MAX_BOOTSTRAP}, 44 TiB at 10**12)", lambda v: _is_int(v) and 1 <= v <= MAX_BOOTSTRAP)

#: Every stage option: name -> (default, rule). The one place where options, defaults and accepted values live.
SECTIONS: dict[str, dict[str, tuple[Any, Rule]]] = {
    "split": {
        "fractions": ([0.6, 0.2, 0.2], FRACTIONS),
        "seed": (0, integer(0)),
        "min_area": (0.005, number(0, 1, high_open=True)),
    },
    "extraction": {
        "batch_size": (8, integer(1)),
        "grid_cap": (40, integer(1)),
        "eval_grid": (112, integer(1)),
        "dtype": ("float16", one_of(*STORE_DTYPES)),
        "device": ("cpu", DEVICE),
        "num_workers": (0, integer(0)),
        "max_layers": (0, integer(0)),
        "compression": ("none", one_of(*COMPRESSORS)),
    },
    "concepts": {
        "loss": ("balanced_bce", one_of(*LOSSES)),
        "lr": (0.01, number(0, low_open=True)),
        "epochs": (30, integer(1)),
        "patience": (5, integer(0)),
        "bootstrap": (1000, BOOTSTRAP),
        "dissection": (True, BOOLEAN),
        "seg_solver": ("reference", one_of(*SOLVERS)),
        "cls_solver": ("lbfgs", one_of(*SOLVERS)),
    },
    "comparison": {
        "permutations": (10000, integer(1)),
        "bootstrap": (10000, BOOTSTRAP),
    },
}
SECTION_DEFAULTS = {s: {k: d for k, (d, _) in opts.items()} for s, opts in SECTIONS.items()}

TOP_RULES: dict[str, Rule] = {
    "name": Rule("a simple identifier (letters, digits, - and _) of at most 100 characters (it names folders and "
                 "files; the file system allows 255 characters a name)",
                 lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,100}", v) is not None),
    "description": Rule("text", lambda v: isinstance(v, str)),
    "seed": integer(0),
}
TOP_KEYS = {*TOP_RULES, "device", "datasets", "models", "layers", "smoke", *SECTIONS}
REQUIRED = ("name", "datasets", "models")

CONCEPTS_RULE = Rule(
    "null, a list of category or supercategory names, or a mapping concept -> category name(s) "
    "or {categories: [...], category: ...}",
    lambda v: v is None
    or (isinstance(v, list) and all(isinstance(x, str) for x in v))
    or (isinstance(v, dict) and all(isinstance(k, str) and _concept_definition(d) for k, d in v.items())),
)


def _concept_definition(d: Any) -> bool:
    if isinstance(d, str):
        return True
    if isinstance(d, list):
        return bool(d) and all(isinstance(x, str) for x in d)
    if isinstance(d, dict):
        return set(d) <= {"categories", "category"} and _concept_definition(d.get("categories", "x")) \
            and isinstance(d.get("category", ""), str)
    return False


#: Per-dataset options (any dataset): name -> rule. ``build`` and ``root`` depend on the dataset's kind.
def _split_rule_ok(v: Any) -> bool:
    return _split_rule_problem(v, "split") is None


def _split_rule_problem(v: Any, key: str) -> str | None:
    """What :func:`conceptsim.data.splits.check_split` finds wrong with a split rule, naming ``key`` (or its
    ``key.by``, ``key.test``, ``key.val``) in quotes, or None."""
    from conceptsim.data.splits import check_split

    try:
        check_split(v, "\0")
    except ValueError as exc:
        return re.sub(r"\0(\.\w+)?", lambda m: f"'{key}{m.group(1) or ''}'", str(exc))
    return None


DATASET_RULES: dict[str, Rule] = {
    "max_images": Rule("a positive integer or null (all images)", lambda v: v is None or (_is_int(v) and v >= 1)),
    "concepts": CONCEPTS_RULE,
    "split": Rule("'random', or {by: an image field (style, background, source), test: [values], val: [values]} "
                  "with test/val optional and disjoint (see conceptsim.data.splits)", _split_rule_ok,
                  _split_rule_problem),
    "bootstrap_by": Rule("an image field whose values group the test images (e.g. source), or null",
                         lambda v: v is None or (isinstance(v, str) and bool(v))),
}
DATASET_KEYS = {*DATASET_RULES, "build", "root"}


# ----------------------------------------------------------------------------------------------- problems
class Problems:
    """Collects every problem of one file, then raises them together."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.messages: list[str] = []
        self.smoke: set[str] = set()  # dotted keys whose value comes from the study's smoke: section

    def key(self, key: str) -> str:
        """``key`` as the user wrote it: ``smoke.<key>`` when the value comes from the smoke: section (the smoke:
        section has the key, or replaces a mapping above it by a value that is no mapping). The study's other keys
        of a mapping that the smoke: section also sets (``concepts.epochs`` beside ``smoke.concepts.lr``) keep
        their names."""
        parts = key.split(".")
        for i in range(len(parts), 0, -1):
            above = ".".join(parts[:i])
            if above in self.smoke:
                whole = i == len(parts) or not any(k.startswith(above + ".") for k in self.smoke)
                return f"smoke.{key}" if whole else key
        return key

    def add(self, message: str) -> None:
        self.messages.append(message)

    def bad_value(self, key: str, value: Any, accepted: str) -> None:
        self.add(f"'{self.key(key)}' is {value!r}; accepted: {accepted}")

    def check(self, key: str, value: Any, rule: Rule) -> None:
        """Record a problem if ``rule`` rejects ``value``: what is wrong, where the rule can say, and what it accepts."""
        if rule.ok(value):
            return
        why = rule.explain(value, self.key(key)) if rule.explain else None
        if why:
            self.add(f"{why}; accepted: {rule.accepted}")
        else:
            self.bad_value(key, value, rule.accepted)

    def unknown_keys_in(self, key: str, got: Iterable, allowed: Iterable) -> list:
        """:meth:`unknown_keys` of the mapping at dotted ``key``, each named where the user wrote it (the study's
        mapping, or the same mapping in its smoke: section)."""
        allowed = set(allowed)
        unknown = [k for k in got if k not in allowed]
        by_place: dict[str, list] = {}
        for k in unknown:
            place = self.key(f"{key}.{k}")[: -len(f".{k}")]
            by_place.setdefault(place, []).append(k)
        for place, keys in by_place.items():
            self.unknown_keys(f"'{place}'", keys, allowed)
        return sorted(unknown, key=str)

    def unknown_keys(self, where: str, got: Iterable, allowed: Iterable) -> list:
        unknown = sorted((k for k in got if k not in set(allowed)), key=str)
        if unknown:
            self.add(f"unknown key(s) {unknown} in {where}; accepted keys: {sorted(allowed)}")
        return unknown

    def mapping(self, key: str, value: Any) -> dict | None:
        """``value`` if it is a mapping (``None`` counts as empty), else record a problem and return None."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.bad_value(key, value, "a mapping (key: value, ...)")
            return None
        return value

    def raise_if_any(self, note: str = "") -> None:
        if not self.messages:
            return
        where = str(self.path or "study")
        if len(self.messages) == 1:
            raise StudyError(f"{where}: {self.messages[0]}{note}")
        lines = "\n".join("  - " + m.replace("\n", "\n    ") for m in self.messages)
        raise StudyError(f"{where}: {len(self.messages)} problems{note}:\n{lines}")


# ----------------------------------------------------------------------------------------------- the study
def _deep_merge(base: dict, over: dict) -> dict:
    import copy

    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def validate_study(raw: Any, path: Path | None = None, smoke: bool = False) -> dict[str, Any]:
    """Validate a study mapping; return its normalised parts or raise :class:`StudyError` listing every problem.

    Returns a dict with ``name`` (``-smoke`` appended under ``smoke``), ``description``, ``seed``,
    ``datasets`` (name -> options), ``models``, ``layers`` and ``sections`` (defaults filled in).
    """
    p = Problems(path)
    if not isinstance(raw, dict):
        raise StudyError(f"{path or 'study'}: a study file must be a YAML mapping (name:, datasets:, models:, ...), "
                         f"got {type(raw).__name__}")
    p.unknown_keys("the study", raw, TOP_KEYS)
    for req in REQUIRED:
        if req not in raw:
            p.add(f"missing required key '{req}'")
    if smoke and raw.get("smoke") is None:
        raise StudyError(f"{path or 'study'}: --smoke, but the study has no 'smoke:' section (the tiny parameters "
                         "to use, e.g. smoke: {concepts: {epochs: 1, bootstrap: 10}}); add one or run without --smoke")
    if smoke:
        over = p.mapping("smoke", raw.get("smoke"))
        if over:
            bad = p.unknown_keys("'smoke'", over, TOP_KEYS - {"smoke", "name"})
            over = {k: v for k, v in over.items() if k not in bad}
            p.smoke = set(dotted_keys(over))
            raw = _deep_merge(raw, over)
    for key, rule in TOP_RULES.items():
        if key in raw and not rule.ok(raw[key]):
            p.bad_value(key, raw[key], rule.accepted)
    base_dir = path.resolve().parent if path else None  # declared models' and datasets' paths are relative to it
    datasets = _check_datasets(p, raw.get("datasets"), base_dir) if "datasets" in raw else {}
    models, model_specs = _check_models(p, raw.get("models"), base_dir) if "models" in raw else ([], {})
    layers = _check_layers(p, raw.get("layers"), models)
    sections = {name: _check_section(p, name, raw.get(name)) for name in SECTIONS}
    _check_device_key(p, raw, sections)
    _check_split_sizes(p, datasets)
    p.raise_if_any()
    name = raw["name"] + ("-smoke" if smoke else "")  # smoke results never mix with the full study's
    return {"name": name, "description": str(raw.get("description", "")), "seed": raw.get("seed", 0),
            "datasets": datasets, "models": models, "layers": layers, "sections": sections,
            "model_specs": model_specs}


def dotted_keys(tree: dict, prefix: str = "") -> Iterable[str]:
    for k, v in tree.items():
        yield prefix + str(k)
        if isinstance(v, dict):
            yield from dotted_keys(v, f"{prefix}{k}.")


def _check_split_sizes(p: Problems, datasets: dict) -> None:
    """``max_images`` caps the images of each split; the classification probes need, in every split, an image
    with a concept and one without, so fewer than 2 per split can never work, whatever the dataset (a named
    dataset's exact limit is checked against its annotations by :func:`conceptsim.run.preflight.check_inputs`)."""
    for ds, opts in datasets.items():
        n = opts.get("max_images") if isinstance(opts, dict) else None
        if _is_int(n) and n == 1:
            p.add(f"'{p.key(f'datasets.{ds}.max_images')}' is 1: max_images caps the images of each split (train, val "
                  "and test), and every split needs an image with a concept and one without for the classification "
                  "probes; accepted: max_images >= 2 (or null)")


def _check_device_key(p: Problems, raw: dict, sections: dict) -> None:
    """Top-level ``device`` is the study's one device (extraction and concepts): ``extraction.device``'s alias."""
    if "device" not in raw:
        return
    device = raw["device"]
    given = (raw.get("extraction") or {}).get("device") if isinstance(raw.get("extraction"), dict) else None
    if not DEVICE.ok(device):
        p.bad_value("device", device, DEVICE.accepted)
    elif given is not None and given != device:
        p.add(f"'device' ({device!r}) and 'extraction.device' ({given!r}) differ; give one device "
              "(extraction and concept learning both use it)")
    else:
        sections["extraction"]["device"] = device


def _check_section(p: Problems, name: str, values: Any) -> dict:
    values = p.mapping(name, values)
    if values is None:
        return dict(SECTION_DEFAULTS[name])
    p.unknown_keys_in(name, values, SECTIONS[name])
    for key, value in values.items():
        if key in SECTIONS[name]:
            p.check(f"{name}.{key}", value, SECTIONS[name][key][1])
    return {**SECTION_DEFAULTS[name], **{k: v for k, v in values.items() if k in SECTIONS[name]}}


def _check_datasets(p: Problems, datasets: Any, base_dir: Path | None = None) -> dict:
    from conceptsim.data.coco import DatasetError
    from conceptsim.data.registry import DATASETS, option_problems
    from conceptsim.data.user_datasets import is_user_dataset, parse_dataset

    if not isinstance(datasets, dict) or not datasets:
        p.bad_value("datasets", datasets, f"a non-empty mapping of dataset name -> options; datasets: {sorted(DATASETS)}")
        return {}
    out = {}
    for ds, opts in datasets.items():
        if is_user_dataset(opts):  # the user's own COCO-format folder
            try:
                out[ds] = parse_dataset(ds, opts, base_dir)
            except DatasetError as exc:
                p.add(str(exc))
            continue
        if ds not in DATASETS:
            p.add(f"unknown dataset {ds!r} in 'datasets'; accepted: {sorted(DATASETS)} or your own "
                  "{coco: {images: DIR, annotations: FILE}}")
            continue
        opts = p.mapping(f"datasets.{ds}", opts)
        if opts is None:
            continue
        spec = DATASETS[ds]
        p.unknown_keys_in(f"datasets.{ds}", opts, DATASET_KEYS)
        for key, rule in DATASET_RULES.items():
            if key in opts:
                p.check(f"datasets.{ds}.{key}", opts[key], rule)
        if "root" in opts:
            if spec.kind != "online":
                p.add(f"'datasets.{ds}.root' does not apply: {ds} is built here, not fetched (root: is accepted "
                      f"for {sorted(n for n, s in DATASETS.items() if s.kind == 'online')})")
            elif not isinstance(opts["root"], str) or not opts["root"]:
                p.bad_value(f"datasets.{ds}.root", opts["root"], "the path of a local copy (text)")
        if "build" in opts:
            _check_build(p, ds, spec, opts["build"])
        for problem in option_problems(ds, opts):  # concepts, split and bootstrap fields, styles
            p.add(problem)
        out[ds] = opts
    return out


def build_rules(ds: str) -> dict[str, Rule]:
    """Rules of an embedded dataset's build parameters: the builder's defaults give the type, its limits the range."""
    from conceptsim.data.registry import DATASETS, build_parameters

    rules = {}
    for key, default in build_parameters(ds).items():
        low, high = DATASETS[ds].limits.get(key, (None, None))
        if isinstance(default, float):
            rules[key] = number(low if low is not None else -math.inf, high)
        elif isinstance(default, str):  # an option by name (coco-icons' mode)
            names = tuple(DATASETS[ds].choices.get(key, (default,)))
            rules[key] = Rule(f"one of {list(names)}", lambda v, names=names: isinstance(v, str) and v in names)
        elif default is None:  # a subset by name (coco-icons styles, categories), checked against the builder's names
            rules[key] = _subset_rule(ds, DATASETS[ds].choices.get(key))
        else:
            rules[key] = integer(low)
            if high is not None:
                rules[key] = Rule(f"an integer in [{low}, {high}]", lambda v, lo=low, hi=high: _is_int(v) and lo <= v <= hi)
    return rules


def _subset_rule(ds: str, names: Iterable[str] | None) -> Rule:
    """A build parameter that picks distinct names among ``names`` (None: any names), or null (all of them)."""
    names = tuple(names) if names is not None else None

    def listed(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v)

    def ok(v: Any) -> bool:
        return v is None or (listed(v) and len(set(v)) == len(v) and (names is None or set(v) <= set(names)))

    def explain(v: Any, key: str) -> str | None:
        if not listed(v):
            return None
        unknown = [x for x in v if names is not None and x not in names]
        if unknown:
            return f"'{key}' names {unknown}, which {ds} does not have"
        twice = sorted({x for x in v if v.count(x) > 1})
        return f"'{key}' names {twice} more than once" if twice else None

    words = "a non-empty list of distinct names" + (f" among {list(names)}" if names is not None else "")
    return Rule(f"{words}, or null (all)", ok, explain)


def _check_build(p: Problems, ds: str, spec, build: Any) -> None:
    if spec.kind != "embedded":
        p.add(f"'datasets.{ds}.build' does not apply: {ds} is fetched, not built (use root: for a local copy)")
        return
    build = p.mapping(f"datasets.{ds}.build", build)
    if build is None:
        return
    rules = build_rules(ds)
    p.unknown_keys_in(f"datasets.{ds}.build", build, rules)
    for key, value in build.items():
        if key in rules:
            p.check(f"datasets.{ds}.build.{key}", value, rules[key])


def _check_models(p: Problems, models: Any, base_dir: Path | None = None) -> tuple[list[str], dict[str, dict]]:
    from conceptsim.models.registry import UnknownModelError, parse_model_name
    from conceptsim.models.user_models import UserModelError, declared_model_specs, declared_models

    if not isinstance(models, list) or not models:
        p.bad_value("models", models, "a non-empty list of model names (`conceptsim models list`) or NAME: SPEC mappings")
        return [], {}
    problems: list[str] = []  # every declared model's problem, not only the first one's
    entries = models
    models, specs = declared_models(entries, base_dir, problems)  # registry names, twins, NAME: SPEC mappings
    for problem in problems:
        p.add(problem)
    user_models = {}
    for name, spec in list(specs.items()):
        try:
            user_models.update(declared_model_specs({name: spec}))
        except UserModelError as exc:
            p.add(str(exc))
            del specs[name]
    declared = {next(iter(e)) for e in entries if isinstance(e, dict) and len(e) == 1}
    failed = declared - set(specs)  # declared models whose problem is named above: not "unknown" as well
    twice = sorted({m for m in models if models.count(m) > 1})
    if twice:
        p.add(f"'models' lists {twice} more than once")
    for m in models:
        try:
            if _base_name(m) in failed:
                continue
            parse_model_name(m, user_models)
        except UnknownModelError as exc:
            p.add(f"in 'models': {exc}")
    for name, spec in specs.items():
        if "python" in spec:  # the builder must be importable before any run starts
            from conceptsim.models.user_models import python_builder

            try:
                python_builder(spec)
            except UserModelError as exc:
                p.add(f"'models.{name}': {exc}")
    return list(dict.fromkeys(models)), specs


def _base_name(model: str) -> str | None:
    from conceptsim.models.names import base_name

    try:
        return base_name(model)
    except ValueError:
        return None  # a malformed name: parse_model_name names it


def _check_layers(p: Problems, layers: Any, models: list[str]) -> dict[str, list[str]]:
    from conceptsim.models.user_models import is_layer_pattern

    layers = p.mapping("layers", layers)
    if layers is None:
        return {}
    out = {}
    for m, names in layers.items():
        if m not in models:
            p.add(f"'layers' names model {m!r}, which is not in 'models' {models}")
        elif isinstance(names, str) and (names == "auto" or is_layer_pattern(names)):
            out[m] = names  # "auto" or a glob (models.user_models.choose_layers)
        elif not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            p.bad_value(f"layers.{m}", names, "a list of dotted module paths, a glob pattern or 'auto' "
                                              "(`conceptsim models inspect SPEC`)")
        else:
            out[m] = list(names)
    return out
