"""Model registry: every entry and its random-init twin; paper models offline; relative depth."""

import pytest
import torch

from conceptsim.extraction.depth import trace_depth
from conceptsim.extraction.hooks import UnknownLayerError, resolve_layers
from conceptsim.models import registry
from conceptsim.models.registry import (
    PretrainedWeightsUnavailable,
    UnknownModelError,
    build_model,
    parse_model_name,
)
from conceptsim.models.twins import TWIN_INIT_VERSION

# documented output shapes (C, H, W) at each paper model's input size, for two layers each
PAPER_SHAPES = {
    "yolov8n": {"model.0": (16, 320, 320), "model.21": (256, 20, 20)},
    "yolov5su": {"model.0": (32, 320, 320), "model.23": (512, 20, 20)},
    "ssd300_vgg16": {"backbone.features.22": (512, 38, 38), "backbone.extra.0": (1024, 19, 19)},
}


@pytest.mark.parametrize("name", ["yolov8n", "yolov5su", "ssd300_vgg16"])
def test_paper_random_twins_build_and_trace(name):
    loaded = build_model(name + ":random")
    spec = loaded.spec
    assert 8 <= len(spec.default_layers) <= 20
    h, w = spec.preprocessing.size
    traced, total = trace_depth(loaded.module, spec.default_layers, torch.zeros(1, 3, h, w),
                                forward=spec.full_forward, model_name=name)
    shapes = {t.name: t.shape for t in traced}
    for layer, shape in PAPER_SHAPES[name].items():
        assert shapes[layer] == shape
    depths = [t.relative_depth for t in traced]
    assert all(0 < d <= 1 for d in depths) and total > 20
    assert depths[0] < 0.1 < 0.5 < max(depths)  # the probed layers span the depth


def test_fasterrcnn_twin_layers_exist():
    loaded = build_model("fasterrcnn_resnet50_fpn:random")
    resolve_layers(loaded.module, loaded.spec.default_layers, "fasterrcnn")


@pytest.mark.parametrize("name", ["yolov8n", "yolov5su", "ssd300_vgg16", "fasterrcnn_resnet50_fpn"])
def test_paper_pretrained_fails_at_once_offline_with_instructions(name, monkeypatch, tmp_path):
    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path))
    with pytest.raises(PretrainedWeightsUnavailable, match="place the file at"):
        build_model(name)


def test_random_twin_is_deterministic_and_differs_from_trained():
    a = build_model("mobilenet_v2_imagenet:random")
    b = build_model("mobilenet_v2_imagenet:random")
    trained = build_model("mobilenet_v2_imagenet")
    for (_, pa), (_, pb), (_, pt) in zip(a.module.state_dict().items(), b.module.state_dict().items(),
                                         trained.module.state_dict().items()):
        assert torch.equal(pa, pb)
    w = "features.0.0.weight"
    assert not torch.equal(a.module.state_dict()[w], trained.module.state_dict()[w])
    assert trained.weights_sha256.startswith("b0353104")
    assert a.weights_sha256 == f"random-init-v{TWIN_INIT_VERSION}-seed-0"


def test_mobilenet_pretrained_classifies_a_real_photo():
    from skimage import data

    loaded = build_model("mobilenet_v2_imagenet")
    x = loaded.preprocessing.apply_image(data.chelsea())[None]
    with torch.no_grad():
        top = loaded.module(x).softmax(1).argmax().item()
    assert 281 <= top <= 285  # ImageNet's cat classes (tabby, tiger cat, Persian, Siamese, Egyptian)


def test_unknown_names_list_alternatives():
    with pytest.raises(UnknownModelError, match="did you mean"):
        parse_model_name("yolov8m")
    loaded = build_model("mobilenet_v2_imagenet:random")
    with pytest.raises(UnknownLayerError, match="closest valid names"):
        resolve_layers(loaded.module, ["features.1.conv.99"], "m")


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        build_model("mobilenet_v2_imagenet:random", device="cuda")


def test_every_registry_entry_is_described():
    for name, spec in registry.MODELS.items():
        assert spec.task in ("detector", "classifier", "baseline") and spec.description and spec.weights_source


def test_offline_models_name_their_weight_package():
    from conceptsim.models.weights import CARRIERS

    for name, spec in registry.MODELS.items():
        assert (spec.carrier is not None) == (spec.offline and spec.has_twin), name  # pixels: no weights at all
        assert spec.carrier is None or spec.carrier in CARRIERS, f"{name}: unknown carrier {spec.carrier!r}"


def test_pixels_model_is_registered_without_weights_or_twin():
    from conceptsim.models.names import PIXELS_MODEL

    assert PIXELS_MODEL in registry.model_names() and PIXELS_MODEL + ":random" not in registry.model_names()
    assert registry.missing_weights(PIXELS_MODEL) == []
    for twin in (PIXELS_MODEL + ":random", PIXELS_MODEL + ":random@2"):
        with pytest.raises(UnknownModelError, match="no random-init twin"):
            parse_model_name(twin)
    loaded = build_model(PIXELS_MODEL)
    x = torch.rand(2, 3, 224, 224)
    out = loaded.features(x)
    assert [tuple(o.shape) for o in out] == [(2, 3, 56, 56), (2, 3, 28, 28), (2, 3, 14, 14), (2, 3, 7, 7)]
    z = (x - torch.tensor(registry.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(registry.IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(out[3], z.reshape(2, 3, 7, 32, 7, 32).mean(dim=(3, 5)), atol=1e-5)
    traced, total = trace_depth(loaded.module, list(loaded.spec.default_layers), x[:1])
    assert total == 0 and {t.relative_depth for t in traced} == {0.0}
    with pytest.raises(RuntimeError, match="no Conv2d"):  # any other model without convolutions: an error
        trace_depth(torch.nn.Sequential(torch.nn.AvgPool2d(2)), ["0"], x[:1])
