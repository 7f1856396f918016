"""Models declared in a study file, beside the registry's names.

A study's ``models`` list may hold, besides registry names, one-key mappings ``NAME: SPEC``::

    models:
      - my_frcnn: {torchvision: fasterrcnn_mobilenet_v3_large_fpn, weights: path/to/file.pth, num_classes: 7}
      - my_yolo: {ultralytics: path/to/best.pt}          # or a model yaml (random init)
      - my_net: {python: "mypkg.models:build", weights: path/to/file.pth}
      - my_frcnn:random                                  # the random-init twin, as for registry models

Spec keys (paths are relative to the study file's folder):

- ``torchvision: NAME`` (a name of ``torchvision.models.list_models()``), ``num_classes: N``;
- ``ultralytics: FILE`` (a ``.pt`` checkpoint, behind ``CONCEPTSIM_TRUST_ULTRALYTICS_CHECKPOINTS=1``, or a
  model ``.yaml``, randomly initialised);
- ``small_cnn: {cue: P, labels: true|shuffled, seed: S, ...}``: a small CNN trained here on coco-icons'
  dominant-object label, its checkpoint hashed and reused (:mod:`conceptsim.models.small_cnn`; the shortcut
  test of the grounding study);
- ``python: "package.module:function"``: ``function()`` returns an ``nn.Module``; ``python_path: DIR`` is
  searched first (default: the study file's folder). A ``preprocessing`` attribute (a dict of
  :class:`~conceptsim.data.geometry.Preprocessing` fields) of the builder's module describes its input; the
  returned network may carry one too, whose fields win over the module's (:func:`preprocessing_of`);
- ``weights: FILE`` (torchvision, python): a ``state_dict`` saved with ``torch.save``, loaded with
  ``weights_only=True`` and ``strict=True``; without it the model is randomly initialised (seed
  :data:`~conceptsim.models.registry.RANDOM_INIT_SEED`) and its weights hash says ``random-init``;
- ``input_size: N`` (all kinds), ``mean``, ``std``, ``resize`` (python): the input geometry where the model
  does not say it itself.

Each spec becomes a :class:`~conceptsim.models.registry.ModelSpec`: the module, its preprocessing (read
from the model: torchvision's detection transform, ultralytics' letterbox and stride), its random-init twin
(``NAME:random``), and a default layer choice spread over the depth (:func:`auto_layers`).
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from conceptsim.atomic import sha256_file, write_json
from conceptsim.data.geometry import Preprocessing
from conceptsim.models import registry
from conceptsim.models.names import base_name, is_twin
from conceptsim.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDOM_INIT_SEED,
    ModelSpec,
    PretrainedWeightsUnavailable,
)
from conceptsim.models.trace import trace_conv_positions
from conceptsim.paths import study_results

KINDS = ("torchvision", "ultralytics", "python", "small_cnn")
KIND_KEYS = {
    "torchvision": {"torchvision", "weights", "num_classes", "input_size"},
    "ultralytics": {"ultralytics", "input_size"},
    "python": {"python", "weights", "input_size", "mean", "std", "resize", "python_path"},
    "small_cnn": {"small_cnn"},
}
#: layers chosen by ``"auto"`` (and for a declared model without a ``layers`` entry)
AUTO_LAYERS = 8
NO_WEIGHTS = f"random-init-seed-{RANDOM_INIT_SEED} (no weights file)"
NO_WEIGHTS_LABEL = "random init (no weights)"
#: why a declared model without weights is left out of finding 1 (read by the findings through :func:`read_model_listing`)
NO_WEIGHTS_REASON = ("declared without weights: randomly initialised (seed 0), so it is no trained model and has no "
                     "random-init twin to compare with; finding 1 (trained vs twin) does not apply to it")
MODEL_LISTING = "models.json"
TRAINED_HERE = "trained here by conceptsim.models.small_cnn (checkpoint hashed in the weights cache)"


class UserModelError(ValueError):
    """A model spec is invalid; the message names the key and what was expected."""


# ----------------------------------------------------------------------------------------- parsing
def parse_spec(name: str, raw: Any, base_dir: str | Path | None = None, where: str = "models") -> dict:
    """Validate one spec and return it normalised (paths absolute). Errors name ``where.name.key``."""
    key = f"{where}.{name}"
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise UserModelError(f"'{where}': model name {name!r} must be letters, digits, - and _")
    if not isinstance(raw, Mapping):
        raise UserModelError(f"'{key}' must be a mapping with one of the keys {list(KINDS)}, got {raw!r}")
    kinds = [k for k in KINDS if k in raw]
    if len(kinds) != 1:
        raise UserModelError(f"'{key}' must have exactly one of the keys {list(KINDS)}, got {sorted(raw)}")
    kind = kinds[0]
    unknown = sorted(set(raw) - KIND_KEYS[kind])
    if unknown:
        raise UserModelError(f"unknown key(s) {unknown} in '{key}'; a {kind} model accepts {sorted(KIND_KEYS[kind])}")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if kind == "small_cnn":
        from conceptsim.models.small_cnn import SmallCNNError, check_config

        try:
            return {"small_cnn": check_config(raw[kind], f"{key}.small_cnn")}
        except SmallCNNError as exc:
            raise UserModelError(str(exc)) from None
    spec: dict[str, Any] = {kind: raw[kind]}
    if not isinstance(raw[kind], str) or not raw[kind]:
        raise UserModelError(f"'{key}.{kind}' must be a non-empty string, got {raw[kind]!r}")
    if kind == "torchvision":
        _torchvision_builder(raw[kind], f"{key}.torchvision")
    elif kind == "ultralytics":
        path = _existing(base, raw[kind], f"{key}.ultralytics")
        if path.suffix not in (".pt", ".yaml", ".yml"):
            raise UserModelError(f"'{key}.ultralytics' must be a .pt checkpoint or a model .yaml, got {path.name}")
        spec["ultralytics"] = str(path)
    else:
        if raw[kind].count(":") != 1 or not all(raw[kind].split(":")):
            raise UserModelError(f"'{key}.python' must be 'package.module:function', got {raw[kind]!r}")
        spec["python_path"] = str((base / raw.get("python_path", ".")).resolve())
        for k in ("mean", "std"):
            if k in raw:
                v = raw[k]
                if not isinstance(v, list) or len(v) != 3 or not all(isinstance(x, (int, float)) for x in v):
                    raise UserModelError(f"'{key}.{k}' must be a list of three numbers, got {v!r}")
                spec[k] = [float(x) for x in v]
        if "resize" in raw:
            if raw["resize"] not in ("stretch", "letterbox"):
                raise UserModelError(f"'{key}.resize' must be 'stretch' or 'letterbox', got {raw['resize']!r}")
            spec["resize"] = raw["resize"]
    if "weights" in raw:
        spec["weights"] = str(_existing(base, raw["weights"], f"{key}.weights"))
    for k in ("num_classes", "input_size"):
        if k in raw:
            v = raw[k]
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise UserModelError(f"'{key}.{k}' must be a positive integer, got {v!r}")
            spec[k] = v
    return spec


def _existing(base: Path, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise UserModelError(f"'{key}' must be a file path, got {value!r}")
    path = (base / value).resolve()
    if not path.is_file():
        raise UserModelError(f"'{key}': file {path} does not exist")
    return path


def spec_kind(spec: Mapping) -> str:
    return next(k for k in KINDS if k in spec)


def parse_model_arg(text: str, base_dir: str | Path | None = None) -> tuple[str, dict | None]:
    """A command-line model: a registry name (``NAME[:random]``) or a YAML spec such as
    ``'{torchvision: resnet18}'``, ``'{small_cnn: {cue: 0.5, seed: 1}}'`` or ``'my_net: {python: "pkg.mod:build"}'``
    (a one-key mapping is ``NAME: SPEC`` unless its key is a kind of :data:`KINDS`). Returns (name, spec or None)."""
    import yaml

    text = text.strip()
    if not text.startswith("{") and ": " not in text and not text.endswith(":"):
        return text, None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserModelError(f"model spec {text!r} is not valid YAML ({exc})") from None
    # ``NAME: SPEC`` is a one-key mapping to a mapping, unless its key is a kind: ``{small_cnn: {cue: 0.5}}``
    # is a spec itself (the small CNN's configuration is a mapping)
    if isinstance(raw, dict) and len(raw) == 1 and isinstance(next(iter(raw.values())), dict) \
            and next(iter(raw)) not in KINDS:
        name, raw = next(iter(raw.items()))
    else:
        name = "user_model"
    return str(name), parse_spec(str(name), raw, base_dir, where="model")


# ----------------------------------------------------------------------------------------- building
def _torchvision_builder(name: str, key: str) -> Callable[..., nn.Module]:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        raise UserModelError(
            f"'{key}': {name!r} is not a torchvision model (see torchvision.models.list_models())"
            + (f"; did you mean {close}?" if close else ""))
    return torchvision.models.get_model_builder(name)


def _is_torchvision_detector(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models.detection)


def _build_torchvision(spec: Mapping) -> nn.Module:
    import inspect

    fn = _torchvision_builder(spec["torchvision"], "torchvision")
    kwargs: dict[str, Any] = {"weights": None}
    if "weights_backbone" in inspect.signature(fn).parameters:
        kwargs["weights_backbone"] = None
    if "num_classes" in spec:
        kwargs["num_classes"] = spec["num_classes"]
    return fn(**kwargs)


def python_builder(spec: Mapping) -> Callable[[], nn.Module]:
    """The function named by ``python: "package.module:function"`` (imported with ``python_path`` searched first)."""
    mod_name, fn_name = spec["python"].split(":")
    module = _python_module(spec)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UserModelError(f"python builder {spec['python']!r}: {mod_name} has no function {fn_name!r}")
    return fn


def _python_module(spec: Mapping) -> Any:
    """The builder's Python module (``package.module`` of ``python:``), where its ``preprocessing`` attribute lives."""
    mod_name = spec["python"].split(":")[0]
    search = spec.get("python_path")
    added = search is not None and search not in sys.path
    if added:
        sys.path.insert(0, search)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise UserModelError(f"python builder {spec['python']!r}: cannot import {mod_name!r} ({exc}); "
                             f"searched {search} and the installed packages") from None
    finally:
        if added:
            sys.path.remove(search)
    return module


def _build_python(spec: Mapping) -> nn.Module:
    module = python_builder(spec)()
    if not isinstance(module, nn.Module):
        raise UserModelError(f"python builder {spec['python']!r} returned {type(module).__name__}, not an nn.Module")
    return module


def _ultralytics_model(path: Path) -> nn.Module:
    from ultralytics import YOLO

    return YOLO(str(path)).model


def _build_ultralytics(spec: Mapping, pretrained: bool) -> tuple[nn.Module, str]:
    path = Path(spec["ultralytics"])
    if path.suffix in (".yaml", ".yml"):
        return _ultralytics_model(path), ""  # a model definition: random init under the caller's seed
    if not _trusted():
        raise PretrainedWeightsUnavailable(registry.ultralytics_untrusted(path))
    model = _ultralytics_model(path)
    if pretrained:
        return model, sha256_file(path)
    # the twin: the checkpoint's own architecture (its yaml), freshly initialised
    return type(model)(copy.deepcopy(model.yaml), verbose=False), ""


def load_state_dict_file(module: nn.Module, path: str | Path, key: str) -> str:
    """Load a ``state_dict`` file into ``module`` (``weights_only=True``, strict); return its sha256."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unpickling problem becomes one clear message
        raise UserModelError(
            f"'{key}': {path} cannot be loaded with torch.load(weights_only=True) ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); save the weights as a state_dict: "
            "torch.save(model.state_dict(), path)") from None
    if isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in ("model", "state_dict", "model_state_dict") if isinstance(state.get(k), Mapping)), None)
        state = inner if inner is not None else state
    if not isinstance(state, Mapping) or not state:
        raise UserModelError(f"'{key}': {path} holds {type(state).__name__}, not a state_dict of tensors")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:600]
        raise UserModelError(f"'{key}': {path} does not fit the model ({detail})") from None
    return sha256_file(path)


def _seeded(fn: Callable[[], Any], seed: int = RANDOM_INIT_SEED) -> Any:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return fn()
    finally:
        torch.random.set_rng_state(state)


def _builder(spec: Mapping) -> Callable[[bool], tuple[nn.Module, str]]:
    kind = spec_kind(spec)

    def build(pretrained: bool) -> tuple[nn.Module, str]:
        if kind == "ultralytics":
            if pretrained and Path(spec["ultralytics"]).suffix in (".yaml", ".yml"):
                return _seeded(lambda: _build_ultralytics(spec, True))[0], NO_WEIGHTS
            return _build_ultralytics(spec, pretrained)
        if kind == "small_cnn":
            from conceptsim.models import small_cnn

            return small_cnn.load_trained(spec["small_cnn"]) if pretrained else (small_cnn.network(spec["small_cnn"]), "")
        make = (lambda: _build_torchvision(spec)) if kind == "torchvision" else (lambda: _build_python(spec))
        if not pretrained:
            return make(), ""
        if "weights" not in spec:
            return _seeded(make), NO_WEIGHTS
        module = make()
        return module, load_state_dict_file(module, spec["weights"], "weights")

    return build


def _trusted() -> bool:
    return os.environ.get("CONCEPTSIM_TRUST_ULTRALYTICS_CHECKPOINTS") == "1"


def _weight_gaps(spec: Mapping) -> Callable[[], list[str]]:
    def gaps() -> list[str]:
        path = Path(spec.get("weights") or spec.get("ultralytics") or "")
        if str(path) != "." and not path.is_file():
            return [f"weight file {path} does not exist"]
        if "ultralytics" in spec and path.suffix == ".pt" and not _trusted():
            return [registry.ultralytics_untrusted(path)]
        if "weights" in spec and spec_kind(spec) in ("torchvision", "python"):
            try:  # opened and loaded into the model now, not inside the extraction notebook
                _builder(spec)(True)
            except UserModelError as exc:
                return [str(exc)]
        return []

    return gaps


def preprocessing_of(spec: Mapping, module: nn.Module) -> Preprocessing:
    """The input geometry: what the model says (transform, stride, ``preprocessing``), then the spec's keys.

    A python builder's input is described by a ``preprocessing`` attribute of the builder's Python module
    (``package.module`` of ``python:``; the README's way) and/or of the network it returns (one module may
    build several networks): fields of the network's attribute win over the module's, and the spec's
    ``input_size``, ``mean``, ``std`` and ``resize`` win over both. Without either: 224 x 224, stretched.
    """
    kind = spec_kind(spec)
    size = spec.get("input_size")
    if kind == "ultralytics":
        stride = int(max(getattr(module, "stride", torch.tensor([32.0])).max().item(), 1))
        args = getattr(module, "args", None) or {}
        imgsz = size or (args.get("imgsz") if isinstance(args, dict) else None) or 640
        imgsz = int(imgsz if isinstance(imgsz, int) else max(imgsz))
        side = -(-imgsz // stride) * stride  # ultralytics rounds the input up to a multiple of the stride
        return Preprocessing(size=(side, side), resize="letterbox", scale=1 / 255.0)
    if kind == "torchvision":
        t = getattr(module, "transform", None)
        if t is not None and hasattr(t, "image_mean"):  # a detector: its GeneralizedRCNNTransform
            fixed = getattr(t, "fixed_size", None)
            side = size or (fixed[0] if fixed else int(t.min_size[0]))
            return Preprocessing(size=(side, side), resize="stretch", scale=1 / 255.0,
                                 mean=tuple(t.image_mean), std=tuple(t.image_std))
        return Preprocessing(size=(size or 224,) * 2, resize="stretch", scale=1 / 255.0, mean=IMAGENET_MEAN,
                             std=IMAGENET_STD)
    # a python builder's module, then the network (a small CNN's network carries its own Preprocessing)
    where = f"python builder {spec['python']!r}" if kind == "python" else f"{kind} model"
    carriers = [(module, f"{where} (the network it returns)" if kind == "python" else where)]
    if kind == "python":
        carriers.insert(0, (_python_module(spec), f"{where} (module {spec['python'].split(':')[0]})"))
    fields: dict[str, Any] = {}
    for carrier, what in carriers:
        own = getattr(carrier, "preprocessing", None)
        fields.update(own.to_dict() if isinstance(own, Preprocessing) else check_preprocessing(own, what))
    fields.setdefault("size", (224, 224))
    if size:
        fields["size"] = (size, size)
    for k in ("mean", "std", "resize"):
        if k in spec:
            fields[k] = spec[k]
    try:
        return Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    except (TypeError, ValueError) as exc:
        raise UserModelError(f"{where}: bad preprocessing {fields} ({exc})") from None


PREPROCESSING_FIELDS = {  # a python builder's ``preprocessing`` dict: field -> (what is expected, an example)
    "size": ("[H, W]: the input height and width in pixels, two positive integers", "[128, 128]"),
    "resize": ("'stretch' or 'letterbox'", "'letterbox'"),
    "scale": ("a positive number multiplying the 0-255 pixels", "0.00392156862745098 (1/255)"),
    "mean": ("three numbers, one per channel (after scale)", "[0.485, 0.456, 0.406]"),
    "std": ("three positive numbers, one per channel", "[0.229, 0.224, 0.225]"),
    "channels": ("'RGB' or 'BGR'", "'RGB'"),
    "pad_value": ("a number on the 0-255 scale (letterbox padding)", "114"),
}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_preprocessing(raw: Any, where: str) -> dict:
    """A builder's ``preprocessing`` dict, checked field by field: a bad one names the field, what is
    expected and an example (``size: 128`` -> "must be [H, W] ...")."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise UserModelError(f"{where}: its 'preprocessing' attribute must be a dict with keys "
                             f"{sorted(PREPROCESSING_FIELDS)}, got {raw!r}")
    fields = dict(raw)
    for k, v in fields.items():
        if k not in PREPROCESSING_FIELDS:
            raise UserModelError(f"{where}: unknown key {k!r} in its 'preprocessing'; accepted: {sorted(PREPROCESSING_FIELDS)}")
        ok = {
            "size": lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v),
            "resize": lambda v: v in ("stretch", "letterbox"),
            "scale": lambda v: _number(v) and v > 0,
            "mean": lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(_number(x) for x in v),
            "std": lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(_number(x) and x > 0 for x in v),
            "channels": lambda v: v in ("RGB", "BGR"),
            "pad_value": _number,
        }[k](v)
        if not ok:
            what, example = PREPROCESSING_FIELDS[k]
            raise UserModelError(f"{where}: preprocessing '{k}' must be {what} (e.g. {k}: {example}), got {v!r}")
    return fields


# ----------------------------------------------------------------------------------------- layers
def layer_candidates(module: nn.Module, example: torch.Tensor,
                     forward: Callable[[nn.Module, torch.Tensor], Any] | None = None) -> list[tuple[str, int, tuple]]:
    """Modules that produce one 4-D feature map per forward pass, in execution order.

    Each is ``(name, conv_position, (C, H, W))``: the number of Conv2d modules executed when its output
    was produced (its relative-depth numerator, :mod:`conceptsim.models.trace`).
    """
    def shape(_name, out):
        return tuple(out.shape[1:]) if isinstance(out, torch.Tensor) and out.dim() == 4 else None

    traced, _ = trace_conv_positions(module, {n: m for n, m in module.named_modules() if n}, example, shape, forward)
    out = [(n, t.position, t.summary) for n, t in traced.items()
           if t.calls == 1 and t.summary is not None and t.position > 0 and min(t.summary[1:]) >= 2]
    return sorted(out, key=lambda r: r[1])


def auto_layers(candidates: Sequence[tuple[str, int, tuple]], n: int = AUTO_LAYERS) -> list[str]:
    """``n`` layers spread evenly over the depth, at the coarsest block level that offers ``n``.

    Per conv position the outermost module represents it (fewest dots, then the last to finish). Only
    positions whose representative is at most ``L`` dots deep are kept, with the smallest ``L`` that keeps
    at least ``n / 2`` (block outputs before positions inside blocks: a ResNet gives its stem and four
    stages); then at most ``n`` of them, evenly spaced.
    """
    groups: dict[int, list[str]] = {}
    for name, pos, _shape in candidates:
        groups.setdefault(pos, []).append(name)
    reps = []
    for pos in sorted(groups):
        names = groups[pos]
        least = min(x.count(".") for x in names)
        reps.append([x for x in names if x.count(".") == least][-1])
    levels = sorted({r.count(".") for r in reps})
    for level in levels:
        chosen = [r for r in reps if r.count(".") <= level]
        if n <= 0 or 2 * len(chosen) >= n:
            break
    if n > 0 and len(chosen) > n:
        chosen = [chosen[i] for i in np.unique(np.round(np.linspace(0, len(chosen) - 1, n)).astype(int))]
    return chosen


#: a glob's character class: ``[12]``, ``[0-9]``, ``[!0]`` (one character of one name part)
_CHAR_CLASS = r"\[!?[^\]/.]+\]"


def is_layer_pattern(text: str) -> bool:
    """Whether a layer choice is a glob (``*``, ``?`` or a character class ``[...]``) rather than a module path."""
    return "*" in text or "?" in text or re.search(_CHAR_CLASS, text) is not None


def layer_pattern(pattern: str) -> "re.Pattern[str]":
    """A glob over dotted module paths: ``*`` and ``?`` stay within one name part, ``**`` spans parts, and a
    character class ``[12]`` / ``[0-9]`` / ``[!0]`` matches one character (never the dot) (``layer*.0`` matches
    ``layer1.0`` but not ``layer1.0.conv1``; ``features.[12]`` matches ``features.1`` and ``features.2``;
    ``backbone.**`` everything below)."""
    out = []
    for tok in re.split(rf"(\*\*|\*|\?|{_CHAR_CLASS})", pattern):
        if tok.startswith("[") and tok.endswith("]") and len(tok) > 2:
            body = tok[2:-1] if tok[1] == "!" else tok[1:-1]
            out.append(("[^." if tok[1] == "!" else "[") + body.replace("\\", "\\\\") + "]")
        else:
            out.append({"**": ".*", "*": "[^.]*", "?": "[^.]"}.get(tok, re.escape(tok)))
    return re.compile("".join(out))


def choose_layers(spec: ModelSpec, module: nn.Module, choice: str | Sequence[str] | None) -> list[str]:
    """A layer choice: a list (kept), ``None``/empty (the spec's default), ``"auto"`` or a glob pattern
    (:func:`layer_pattern`), whose matches are kept in execution order."""
    if not isinstance(choice, str):
        return list(choice) if choice else list(spec.default_layers)
    h, w = spec.preprocessing.size
    device = next(module.parameters()).device
    cands = layer_candidates(module, torch.zeros(1, 3, h, w, device=device), spec.feature_forward)
    if choice == "auto":
        return auto_layers(cands)
    rx = layer_pattern(choice)
    matched = [name for name, _, _ in cands if rx.fullmatch(name)]
    if not matched:
        raise UserModelError(f"layer pattern {choice!r} matches no module of {spec.name} with a feature-map output "
                             f"(e.g. {[c[0] for c in cands[:5]]})")
    return matched


# ----------------------------------------------------------------------------------------- specs
def user_model_spec(name: str, spec: Mapping) -> ModelSpec:
    """The :class:`ModelSpec` of a declared model (memoised per name and spec)."""
    return _spec_cached(name, json.dumps(dict(spec), sort_keys=True))


@functools.lru_cache(maxsize=64)
def _spec_cached(name: str, spec_json: str) -> ModelSpec:
    spec = json.loads(spec_json)
    kind = spec_kind(spec)
    build = _builder(spec)
    detector = kind == "ultralytics" or (kind == "torchvision" and _is_torchvision_detector(spec["torchvision"]))
    backbone = kind == "torchvision" and detector

    @functools.lru_cache(maxsize=1)
    def skeleton() -> nn.Module:  # the architecture, for geometry and layer names (weights irrelevant)
        return _seeded(lambda: build(False)[0]).eval()

    def preprocessing() -> Preprocessing:
        return preprocessing_of(spec, skeleton())

    feature_forward = registry._torchvision_backbone if backbone else registry._call
    full_forward = registry._torchvision_full if backbone else registry._call

    def layers() -> tuple[str, ...]:
        h, w = preprocessing().size
        return tuple(auto_layers(layer_candidates(skeleton(), torch.zeros(1, 3, h, w), feature_forward)))

    task = "detector" if detector else "classifier" if kind in ("torchvision", "small_cnn") else "model"
    return ModelSpec(
        name, task, f"user:{kind}", f"declared in the study file: {describe_spec(spec)}",
        TRAINED_HERE if kind == "small_cnn" else spec.get("weights") or (
            spec["ultralytics"] if Path(spec.get("ultralytics", "")).suffix == ".pt" else f"none: {NO_WEIGHTS_LABEL}"),
        True, build, preprocessing, layers, feature_forward=feature_forward, full_forward=full_forward,
        weight_gaps=_weight_gaps(spec),
    )


def declared_model_specs(specs: Mapping[str, Mapping] | None) -> dict[str, ModelSpec]:
    """A study's declared models (name -> parsed spec, as :func:`declared_models` returns them) as the
    ``user_models`` that :func:`conceptsim.models.registry.parse_model_name` and
    :func:`~conceptsim.models.registry.build_model` resolve ``NAME`` and ``NAME:random`` against.

    Nothing is registered: the caller passes the result to the functions that need it.
    """
    out = {}
    for name, spec in (specs or {}).items():
        _not_a_registry_name(name)
        out[name] = user_model_spec(name, spec)
    return out


def _not_a_registry_name(name: str) -> None:
    if name in registry.MODELS:
        raise UserModelError(f"'models.{name}': model name {name!r} is a registry model; choose another name for your model")


def describe_spec(spec: Mapping) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in spec.items() if k != "python_path") + "}"


def weights_file(spec: Mapping) -> str | None:
    """A declared model's weight file (``weights``, or an ultralytics ``.pt`` checkpoint); None: random init."""
    return spec.get("weights") or (spec["ultralytics"] if Path(spec.get("ultralytics", "")).suffix == ".pt" else None)


def is_trained(spec: Mapping) -> bool:
    """A declared model with trained weights: a weight file, or a small CNN trained here."""
    return "small_cnn" in spec or weights_file(spec) is not None


def weights_record(spec: Mapping) -> str:
    """What the reproducibility page lists for a declared model's weights: file sha256 or random init."""
    if "small_cnn" in spec:
        from conceptsim.models.small_cnn import training_record

        rec = training_record(spec["small_cnn"])
        return f"sha256 {rec['sha256']} ({TRAINED_HERE})" if rec else f"not trained yet ({TRAINED_HERE})"
    path = weights_file(spec)
    if path is None:
        return f"none (random init, seed {RANDOM_INIT_SEED})"
    return f"sha256 {sha256_file(path)}" if Path(path).is_file() else f"missing: {path}"


def model_status(model: str, model_specs: Mapping[str, Mapping] | None = None) -> dict[str, Any]:
    """What a study's model is: ``trained`` (bool), ``label`` ("trained", "random-init twin" or
    :data:`NO_WEIGHTS_LABEL`), ``in_finding1`` (bool) and ``exclusion_reason`` (why not, else None).

    ``model_specs`` are the study's declared models (a registry model is trained; a declared one is trained
    when it has a weight file)."""
    spec = (model_specs or {}).get(model)
    if is_twin(model):
        return {"model": model, "trained": False, "label": "random-init twin", "twin_of": base_name(model),
                "in_finding1": True, "exclusion_reason": None}
    if spec is not None and not is_trained(spec):
        return {"model": model, "trained": False, "label": NO_WEIGHTS_LABEL, "twin_of": None,
                "in_finding1": False, "exclusion_reason": NO_WEIGHTS_REASON}
    out = {"model": model, "trained": True, "label": "trained", "twin_of": None, "in_finding1": True,
           "exclusion_reason": None}
    if spec is not None and "small_cnn" in spec:  # its group in the shortcut test (comparison.grounding)
        from conceptsim.models.small_cnn import group_of

        out["group"] = group_of(spec["small_cnn"])
    return out


def model_listing(models: Sequence[str], model_specs: Mapping[str, Mapping] | None = None) -> dict[str, dict]:
    """:func:`model_status` of each of a study's models, by name (what ``results/<study>/models.json`` holds)."""
    return {m: model_status(m, model_specs) for m in models}


def write_model_listing(study: str, models: Sequence[str], model_specs: Mapping[str, Mapping] | None = None) -> Path:
    """Write ``results/<study>/models.json`` (:func:`model_listing`), atomically; the runner does before any run."""
    path = study_results(study) / MODEL_LISTING
    write_json(path, {"schema": 1, "models": model_listing(models, model_specs)})
    return path


def read_model_listing(study: str) -> dict[str, dict]:
    """The study's ``models.json`` as model -> :func:`model_status` (empty when the runner has not written it:
    then every model that is not a twin counts as trained)."""
    path = study_results(study) / MODEL_LISTING
    return json.loads(path.read_text())["models"] if path.is_file() else {}


def declared_models(entries: Any, base_dir: str | Path | None = None,
                    problems: list[str] | None = None) -> tuple[list[str], dict[str, dict]]:
    """A study's ``models`` list -> (model names, declared specs); :func:`declared_model_specs` turns the
    specs into the models that the registry's functions resolve names against.

    Entries are registry names, ``NAME:random`` twins, or one-key mappings ``NAME: SPEC``. A bad entry raises
    :class:`UserModelError`; with ``problems`` (a list) every bad entry's message is appended to it instead
    and the entry is left out (so that a study's validation names them all at once).
    """
    def bad(message: str) -> None:
        if problems is None:
            raise UserModelError(message)
        problems.append(message)

    if not isinstance(entries, list) or not entries:
        raise UserModelError("'models' must be a non-empty list of model names or NAME: SPEC mappings")
    names: list[str] = []
    specs: dict[str, dict] = {}
    declared: set = set()
    for entry in entries:
        if isinstance(entry, Mapping) and len(entry) == 1:
            name, raw = next(iter(entry.items()))
            if name in declared:
                bad(f"'models' declares {name!r} twice")
                continue
            declared.add(name)
            try:
                specs[name] = parse_spec(name, raw, base_dir)
            except UserModelError as exc:
                bad(str(exc))
                continue
            names.append(name)
        elif isinstance(entry, str):
            names.append(entry)
        else:
            bad(f"'models' entries are model names or one-key mappings NAME: SPEC, got {entry!r}")
    for name in names:
        try:
            base = base_name(name)
        except ValueError:
            continue  # a malformed name: the study's validation names it (parse_model_name)
        if is_twin(name) and base in specs and not is_trained(specs[base]):
            bad(f"'models': {name!r} is the random-init twin of {base!r}, which is declared without "
                f"weights and so is randomly initialised itself ({NO_WEIGHTS_LABEL}); a twin needs a "
                f"model with weights (add 'weights: FILE' to '{base}', or drop {name!r})")
    for name in list(specs):
        try:
            _not_a_registry_name(name)
        except UserModelError as exc:
            bad(str(exc))
            del specs[name]
    return names, specs
