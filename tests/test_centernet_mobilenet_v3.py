"""CenterNet-MobileNetV3 (COCO) in PyTorch against the original TFJS graph run by @tensorflow/tfjs.

The reference (``tests/data/centernet_reference.npz``) comes from ``scripts/tfjs_reference`` (see its
README): three real photos, a sub-grid of every compared node plus per-channel mean and max over the
whole map, the graph's own decoded ``tower_0/detections`` and the rows kept by human's NMS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conceptsim.extraction.hooks import record_activations
from conceptsim.models import centernet_mobilenet_v3 as cn
from conceptsim.models.weights import CARRIERS, is_fetched

REFERENCE = Path(__file__).parent / "data" / "centernet_reference.npz"
TOL = 1e-3  # max abs difference; for maps larger than 100 in magnitude, 1e-5 of their largest value
BOX_TOL = 1e-5 * 512  # boxes are in input pixels (up to 512): the relative 1e-5 rule


def _tol(scale: float) -> float:
    """Allowed max abs difference for a map whose largest magnitude is ``scale``.

    Both runtimes compute in float32, whose rounding grows with the values: the box head
    (``tower_0/wh`` = 16 x a conv output, up to about 300 input pixels) differs by up to about 8e-4.
    """
    return max(TOL, 1e-5 * scale)

pytestmark = pytest.mark.skipif(
    not is_fetched(CARRIERS[cn.CARRIER]),
    reason="centernet.json/.bin are not in the weight cache; run `conceptsim models fetch vladmandic-human`",
)


@pytest.fixture(scope="module")
def model() -> cn.CenterNetMobileNetV3:
    return cn.build_centernet_mobilenet_v3(pretrained=True)


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def run(model, ref):
    """The model's outputs on the reference photos, for every compared node (NCHW)."""
    images = np.repeat(np.repeat(ref["images_256"], 2, axis=1), 2, axis=2)  # exact 512 x 512 inputs
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    nodes = [str(n) for n in ref["node_names"]]
    with torch.no_grad():
        out = model.run_graph(x, keep=[n for n in nodes if n not in ("tower_0/keypoints", "tower_0/wh")])
    out["tower_0/keypoints"], out["tower_0/wh"] = out["heatmap"], out["boxes"]
    return x, out


def _node_index(ref) -> list[tuple[int, str]]:
    return list(enumerate(str(n) for n in ref["node_names"]))


def test_intermediate_maps_and_heads_match_tfjs(run, ref):
    _, out = run
    report = []
    for j, node in _node_index(ref):
        got = out[node].double().permute(0, 2, 3, 1).numpy()  # NHWC like the reference
        ys, xs = ref[f"node{j}_ys"].astype(int), ref[f"node{j}_xs"].astype(int)
        sample = got[:, ys][:, :, xs]
        d_sample = np.abs(sample - ref[f"node{j}_sample"]).max()
        d_mean = np.abs(got.mean(axis=(1, 2)) - ref[f"node{j}_chmean"]).max()
        d_max = np.abs(got.max(axis=(1, 2)) - ref[f"node{j}_chmax"]).max()
        scale = np.abs(ref[f"node{j}_chmax"]).max()
        report.append(f"{node}: sample {d_sample:.2e} mean {d_mean:.2e} max {d_max:.2e} (|x| <= {scale:.3g})")
        assert max(d_sample, d_mean, d_max) <= _tol(scale), report[-1]
    print("\n".join(report))


def test_graph_decoding_matches_tfjs_detections(run, ref):
    """decode_heads reproduces the graph's own tower_0/detections (top-100 peaks, boxes)."""
    _, out = run
    boxes, scores, labels = cn.decode_heads(out["heatmap"], out["boxes"])
    det = ref["detections"]
    strong = det[..., 4] > 0.05  # below, near-equal scores may legitimately swap ranks
    np.testing.assert_array_equal(labels.numpy()[strong], det[..., 5][strong].astype(int))
    np.testing.assert_allclose(scores.numpy()[strong], det[..., 4][strong], atol=TOL)
    np.testing.assert_allclose(boxes.numpy()[strong], det[..., :4][strong], atol=BOX_TOL, rtol=0)


def test_detect_equals_human_decoding(model, run, ref):
    """detect() gives the same boxes, labels and scores as human's NMS over the tfjs detections."""
    x, _ = run
    found = cn.detect(
        model, x, score_threshold=float(ref["score_threshold"]), iou_threshold=float(ref["iou_threshold"])
    )
    assert sum(len(f["scores"]) for f in found) >= 3  # the photos do give detections
    for i, f in enumerate(found):
        rows = ref["nms_index"][i]
        expected = ref["detections"][i][rows[rows >= 0]]
        assert f["labels"].tolist() == expected[:, 5].astype(int).tolist()
        np.testing.assert_allclose(f["scores"].numpy(), expected[:, 4], atol=TOL)
        np.testing.assert_allclose(f["boxes"].numpy(), expected[:, :4], atol=BOX_TOL, rtol=0)
    labels = [cn.COCO80_LABELS[k] for k in found[0]["labels"].tolist()]
    assert labels[0] == "person"  # the astronaut


def test_layers_exist_and_shapes_as_documented(model):
    assert 8 <= len(cn.DEFAULT_LAYERS) <= 20
    with record_activations(model, cn.DEFAULT_LAYERS) as seen, torch.no_grad():
        out = model(torch.zeros(1, 3, 512, 512))
    for name in cn.DEFAULT_LAYERS:
        assert isinstance(seen[name], torch.Tensor) and seen[name].ndim == 4, name
        assert tuple(seen[name].shape[1:]) == cn.LAYER_SHAPES[name], name
    assert tuple(out["heatmap"].shape) == (1, 80, 128, 128)
    assert tuple(out["boxes"].shape) == (1, 4, 128, 128)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) > 50  # every TF convolution is a real nn.Conv2d


def test_random_twin_builds_and_runs(model):
    torch.manual_seed(0)
    twin = cn.build_centernet_mobilenet_v3(pretrained=False)
    assert [n for n, _ in twin.named_modules()] == [n for n, _ in model.named_modules()]
    w, w0 = twin.MobilenetV3.Conv.BatchNorm.FusedBatchNorm.conv.weight, model.MobilenetV3.Conv.BatchNorm.FusedBatchNorm.conv.weight
    assert not torch.allclose(w, w0)
    x = torch.rand(1, 3, 512, 512) * 255
    with torch.no_grad():
        out = twin(x)
    assert tuple(out["heatmap"].shape) == (1, 80, 128, 128)
    # Activations stay inside float16 range (the activation store's default dtype).
    assert torch.isfinite(out["boxes"]).all() and out["boxes"].abs().max() < 6e4
    torch.manual_seed(0)
    again = cn.build_centernet_mobilenet_v3(pretrained=False)
    assert torch.equal(again.MobilenetV3.Conv.BatchNorm.FusedBatchNorm.conv.weight, w)


def test_preprocessing_and_labels():
    assert cn.PREPROCESSING.size == (512, 512)
    assert cn.PREPROCESSING.scale == 1.0 and cn.PREPROCESSING.mean == (0.0, 0.0, 0.0)
    assert len(cn.COCO80_LABELS) == 80 and cn.COCO80_LABELS[15] == "cat"


def test_backbone_runs_before_the_neck(model):
    """Relative depth counts executed convolutions: no neck conv may run amid the backbone's."""
    convs = [path for _, path, _ in model._plan if isinstance(model.get_submodule(path), cn.TFConv2d)]
    last_backbone = max(k for k, p in enumerate(convs) if p.startswith(("MobilenetV3.", "extern1.")))
    first_neck = min(k for k, p in enumerate(convs) if p.startswith("CenternetHead."))
    assert last_backbone < first_neck
