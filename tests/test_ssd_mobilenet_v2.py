"""Parity of the PyTorch SSD-MobileNetV2 with OpenCV running the original TF frozen graph.

OpenCV is the oracle: it executes the graph layer by layer (classic engine) including the
``DetectionOutput`` post-processing, on five real photos that ship inside installed packages. Tolerances:
feature maps and head outputs within 1e-3 *absolute* (values reach about 25, so this is ~4e-5 relative;
measured differences are about 1e-4), detections with the same class ids, boxes within 1e-3 (normalised
coordinates) and scores within 1e-3.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from conceptsim.extraction.hooks import record_activations
from conceptsim.models import ssd_mobilenet_v2 as ssd
from conceptsim.models.weights import WeightsError

FEATURE_ATOL = 1e-3
BOX_ATOL = 1e-3
SCORE_ATOL = 1e-3


def _opencv_output(model: ssd.SSDMobileNetV2, module: str) -> str:
    """OpenCV layer whose output equals the output of ``module`` (a default probed layer)."""
    names = ssd.opencv_layer_names()
    if module.startswith("blocks.") and module.count(".") == 1:
        k = int(module.split(".")[1])
        scope = "FeatureExtractor/MobilenetV2/expanded_conv" + (f"_{k}" if k else "")
        # OpenCV drops the graph's Identity "output" nodes: a block ends in its skip-add or projection BN.
        return f"{scope}/add" if model.blocks[k].residual else names[f"{module}.project.bn"]
    if module.startswith("extras."):
        module = f"{module}.expand"
    return names[f"{module}.bn"].replace("/BatchNorm/batchnorm/add_1", "/Relu6")


def _photos() -> dict[str, np.ndarray]:
    """Real photographs bundled with scikit-image and ultralytics (read without importing ultralytics,
    whose import touches the network settings and $HOME)."""
    from skimage import data
    from skimage.io import imread

    photos = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee()}
    spec = importlib.util.find_spec("ultralytics")
    if spec is not None and spec.origin is not None:
        assets = Path(spec.origin).parent / "assets"
        for name in ("bus.jpg", "zidane.jpg"):
            if (assets / name).exists():
                photos[name.removesuffix(".jpg")] = imread(assets / name)
    return photos


@pytest.fixture(scope="module")
def opencv_net():
    try:
        return ssd.read_opencv_net()
    except WeightsError as err:
        pytest.skip(f"SSD weight files absent: {err}")


@pytest.fixture(scope="module")
def model(opencv_net):
    return ssd.build_ssd_mobilenet_v2(pretrained=True)


@pytest.fixture(scope="module")
def batch():
    photos = _photos()
    x = torch.stack([ssd.PREPROCESSING.apply_image(img) for img in photos.values()])
    return list(photos), x


@pytest.fixture(scope="module")
def reference(opencv_net, model, batch):
    """OpenCV's outputs per photo: probed layers, the twelve head convolutions, DetectionOutput."""
    _, x = batch
    layer_names = {m: _opencv_output(model, m) for m in ssd.DEFAULT_LAYERS}
    head_names = {
        (kind, i): f"BoxPredictor_{i}/{tf}/Conv2D"
        for kind, tf in (("cls_logits", "ClassPredictor"), ("box_regression", "BoxEncodingPredictor"))
        for i in range(6)
    }
    wanted = [*layer_names.values(), *head_names.values(), "detection_out"]
    refs = []
    for image in x:
        # The graph does its own pre-processing (x * 2/255 - 1), so OpenCV is fed 0..255 RGB values.
        opencv_net.setInput(((image[None].double() + 1) * 127.5).float().numpy())
        out = dict(zip(wanted, opencv_net.forward(wanted)))
        refs.append({
            "layers": {m: out[n] for m, n in layer_names.items()},
            "heads": {k: out[n] for k, n in head_names.items()},
            "detections": out["detection_out"][0, 0],
        })
    return refs


@pytest.fixture(scope="module")
def ours(model, batch):
    _, x = batch
    with record_activations(model, ssd.DEFAULT_LAYERS) as captured, torch.no_grad():
        heads = model(x)
    return dict(captured), heads


def test_preprocessing_gives_minus_one_to_one():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (300, 1))[:, :300]
    x = ssd.PREPROCESSING.apply_image(np.stack([ramp] * 3, -1))
    assert x.min().item() == pytest.approx(-1.0) and x.max().item() == pytest.approx(1.0)


def test_photos_present():
    assert len(_photos()) >= 3


def test_converted_weights_equal_graph(model, opencv_net):
    state = model.state_dict()
    direct = ssd.state_dict_from_opencv(opencv_net)
    assert set(direct) == set(state)
    for key, value in direct.items():
        assert torch.equal(state[key], value), key
    assert ssd.converted_weights_path().exists()


def test_feature_maps_match_opencv(ours, reference, batch):
    captured, _ = ours
    names, _ = batch
    worst = {}
    for layer in ssd.DEFAULT_LAYERS:
        for i, ref in enumerate(reference):
            mine = captured[layer][i].numpy()
            assert mine.shape == ref["layers"][layer].shape[1:], layer
            diff = float(np.abs(mine - ref["layers"][layer][0]).max())
            worst[layer] = max(worst.get(layer, 0.0), diff)
            assert diff <= FEATURE_ATOL, f"{layer} on {names[i]}: max abs diff {diff:.2e}"
    print("\nmax abs diff per probed layer:", {k: f"{v:.1e}" for k, v in worst.items()})


def test_heads_match_opencv(ours, reference, batch):
    _, heads = ours
    names, _ = batch
    worst = {}
    for kind in ("cls_logits", "box_regression"):
        for h in range(6):
            for i, ref in enumerate(reference):
                mine = heads[kind][h][i].numpy()
                diff = float(np.abs(mine - ref["heads"][(kind, h)][0]).max())
                worst[f"{kind}.{h}"] = max(worst.get(f"{kind}.{h}", 0.0), diff)
                assert diff <= FEATURE_ATOL, f"{kind} head {h} on {names[i]}: max abs diff {diff:.2e}"
    print("\nmax abs diff per head:", {k: f"{v:.1e}" for k, v in worst.items()})


def _match(mine: dict, theirs: np.ndarray, threshold: float, image: str) -> tuple[int, float, float]:
    """Assert two detection lists agree; ones within SCORE_ATOL of the threshold may be on one side only.

    Returns the number of matched detections and the largest box and score differences among them.
    """
    theirs = theirs[theirs[:, 2] > threshold]
    boxes, labels, scores = mine["boxes"].numpy(), mine["labels"].numpy(), mine["scores"].numpy()
    used = np.zeros(len(scores), bool)
    box_diff = score_diff = 0.0
    for _, label, score, *box in theirs:
        cand = np.flatnonzero((labels == int(label)) & ~used & (np.abs(scores - score) <= SCORE_ATOL))
        errors = np.abs(boxes[cand] - np.asarray(box)).max(1) if len(cand) else np.zeros(0)
        if not np.any(errors <= BOX_ATOL):
            assert score - threshold <= SCORE_ATOL, f"{image}: OpenCV's {int(label)} at {score:.3f} {box} not found"
            continue
        best = cand[errors <= BOX_ATOL][0]
        used[best] = True
        box_diff = max(box_diff, float(np.abs(boxes[best] - np.asarray(box)).max()))
        score_diff = max(score_diff, float(abs(scores[best] - score)))
    unmatched = scores[~used]
    assert np.all(unmatched - threshold <= SCORE_ATOL), f"{image}: extra detections with scores {unmatched}"
    return int(used.sum()), box_diff, score_diff


@pytest.mark.parametrize("threshold", [0.3, 0.01])
def test_detections_match_opencv(model, reference, batch, threshold):
    names, x = batch
    detections = ssd.detect(model, x, score_threshold=threshold)
    total = box_diff = score_diff = 0
    for name, det, ref in zip(names, detections, reference):
        assert det["boxes"].shape[1] == 4 and len(det["boxes"]) == len(det["labels"]) == len(det["scores"])
        assert set(det["labels"].tolist()) <= set(range(1, ssd.NUM_CLASSES))
        n, b, s = _match(det, ref["detections"], threshold, name)
        total, box_diff, score_diff = total + n, max(box_diff, b), max(score_diff, s)
    assert total > 0
    print(f"\nthreshold {threshold}: {total} detections matched, max box diff {box_diff:.1e}, score {score_diff:.1e}")


def test_known_objects_detected(model, batch):
    names, x = batch
    found = {n: {ssd.COCO_LABELS[int(k)] for k in d["labels"]} for n, d in zip(names, ssd.detect(model, x))}
    assert "person" in found["astronaut"]
    assert "cat" in found["chelsea"]
    if "bus" in found:
        assert {"bus", "person"} <= found["bus"]


def test_random_twin_layers_and_shapes():
    torch.manual_seed(0)
    model = ssd.build_ssd_mobilenet_v2(pretrained=False)
    names = dict(model.named_modules())
    assert 8 <= len(ssd.DEFAULT_LAYERS) <= 20
    captured = {}
    x = torch.rand(2, 3, 300, 300) * 2 - 1
    with torch.no_grad():
        plain = model(x)
    # blocks.13 also feeds a head from inside; hooks on the whole block must still fire.
    probed = [*ssd.DEFAULT_LAYERS, "blocks.13"]
    hooks = [names[n].register_forward_hook(lambda m, i, o, n=n: captured.__setitem__(n, o)) for n in probed]
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    assert tuple(captured["blocks.13"].shape) == (2, 160, 10, 10)
    assert all(torch.equal(a, b) for a, b in zip(plain["cls_logits"], out["cls_logits"]))
    assert model.blocks[13]._expansion is None
    for layer, shape in ssd.FEATURE_SHAPES.items():
        assert isinstance(captured[layer], torch.Tensor) and tuple(captured[layer].shape) == (2, *shape), layer
    grids = [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    for h, (grid, a) in enumerate(zip(grids, (3, 6, 6, 6, 6, 6))):
        assert tuple(out["cls_logits"][h].shape) == (2, a * ssd.NUM_CLASSES, *grid)
        assert tuple(out["box_regression"][h].shape) == (2, a * 4, *grid)
    assert ssd.prior_boxes().shape == (1917, 4)
    for module in ssd.HEAD_INPUTS:
        assert module in names
    for module in ssd.opencv_layer_names():
        assert module in names
    det = ssd.detect(model, torch.zeros(1, 3, 300, 300), score_threshold=0.9)
    assert len(det) == 1 and len(det[0]["boxes"]) <= 100


def test_same_padding_is_bottom_right():
    conv = ssd.SameConv2d(1, 1, 3, 2, bias=False)
    torch.nn.init.ones_(conv.weight)
    x = torch.ones(1, 1, 4, 4)
    y = conv(x)
    # TF pads 4 -> 5 with the single extra row/column at the end, so the first output sees no padding.
    assert y.shape[-2:] == (2, 2) and y[0, 0, 0, 0] == 9 and y[0, 0, 1, 1] == 4
