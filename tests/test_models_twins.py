"""Random-init twins: names with seeds, and every probed layer of every registry twin carries signal."""

import numpy as np
import pytest
import torch

from conceptsim.concepts.stage import DegenerateLayerError, check_constant_channels
from conceptsim.extraction.hooks import record_activations
from conceptsim.models.names import base_name, is_twin, split_twin_name, twin_name, twin_names
from conceptsim.models.registry import UnknownModelError, build_model, parse_model_name, shared_blocks
from conceptsim.models.twins import TWIN_INIT_VERSION, calibrate, calibration_images, twin_init_seed

REGISTRY_TWINS = ["ssd_mobilenet_v2_coco:random", "centernet_mobilenet_v3_coco:random", "mobilenet_v2_imagenet:random"]
FLOAT16_TINY = 6.1e-5  # smallest normal float16
FLOAT16_MAX = 65504.0


def test_twin_names_with_seeds():
    assert split_twin_name("m") == ("m", False, 0)
    assert split_twin_name("m:random") == ("m", True, 0)
    assert split_twin_name("m:random@3") == ("m", True, 3)
    assert twin_name("m") == "m:random" and twin_name("m", 2) == "m:random@2" and twin_name("m:random@2") == "m:random"
    assert twin_names("m", 3) == ["m:random", "m:random@1", "m:random@2"]
    assert is_twin("m:random@1") and not is_twin("m") and base_name("m:random@7") == "m"
    with pytest.raises(ValueError, match="NAME:random@SEED"):
        split_twin_name("m:random@x")
    spec, random_init = parse_model_name("mobilenet_v2_imagenet:random@4")
    assert spec.name == "mobilenet_v2_imagenet" and random_init
    with pytest.raises(UnknownModelError, match="NAME:random@SEED"):
        parse_model_name("mobilenet_v2_imagenet:random@")


def test_twin_seeds_differ_and_repeat():
    a, b, a2 = (build_model(n) for n in ("mobilenet_v2_imagenet:random", "mobilenet_v2_imagenet:random@1",
                                          "mobilenet_v2_imagenet:random"))
    w = "features.0.0.weight"
    assert not torch.equal(a.module.state_dict()[w], b.module.state_dict()[w])
    for (_, pa), (_, pb) in zip(a.module.state_dict().items(), a2.module.state_dict().items()):
        assert torch.equal(pa, pb)
    assert b.weights_sha256 == f"random-init-v{TWIN_INIT_VERSION}-seed-1"


def test_twin_init_seed_mixes_seed_and_architecture():
    seeds = {twin_init_seed(arch, s) for arch in ("ssd_mobilenet_v2_coco", "mobilenet_v2_imagenet") for s in range(3)}
    assert len(seeds) == 6 and twin_init_seed("mobilenet_v2_imagenet", 1) == twin_init_seed("mobilenet_v2_imagenet", 1)
    with pytest.raises(ValueError, match="non-negative"):
        twin_init_seed("m", -1)


def _block_convolutions(module: torch.nn.Module, block: str) -> list[torch.nn.Conv2d]:
    return [m for m in dict(module.named_modules())[block].modules() if isinstance(m, torch.nn.Conv2d)]


def test_twins_of_architectures_that_share_blocks_share_no_random_weights():
    """SSD-MobileNetV2's and MobileNetV2's twins of the same seed: every corresponding convolution
    (registry.shared_blocks) uncorrelated, |r| < 0.1; the same twin built twice is identical."""
    ssd_name, mobilenet_name = "ssd_mobilenet_v2_coco", "mobilenet_v2_imagenet"
    blocks = {a: b for a, b in shared_blocks(ssd_name, mobilenet_name).items() if not a.endswith(".expand")}
    for seed in (0, 1, 2):
        ssd, mobilenet = build_model(twin_name(ssd_name, seed)), build_model(twin_name(mobilenet_name, seed))
        r = []
        for a, b in blocks.items():
            convs_a, convs_b = _block_convolutions(ssd.module, a), _block_convolutions(mobilenet.module, b)
            assert len(convs_a) == len(convs_b) > 0, (a, b)
            for ca, cb in zip(convs_a, convs_b):
                assert ca.weight.shape == cb.weight.shape, (a, b)
                r.append(np.corrcoef(ca.weight.flatten().numpy(), cb.weight.flatten().numpy())[0, 1])
        assert len(r) == 52 and np.max(np.abs(r)) < 0.1, (seed, np.max(np.abs(r)))
    again = build_model(twin_name(ssd_name, 2))
    for (k, pa), (_, pb) in zip(ssd.module.state_dict().items(), again.module.state_dict().items()):
        assert torch.equal(pa, pb), k


def test_calibration_images_are_seeded_and_image_like():
    a, b = calibration_images((64, 48), 3, 0), calibration_images((64, 48), 3, 0)
    assert a.shape == (3, 64, 48, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, calibration_images((64, 48), 3, 1))
    # smooth like photographs: neighbouring pixels are strongly correlated
    x = a[0, :, :, 0].astype(float)
    assert np.corrcoef(x[:, :-1].ravel(), x[:, 1:].ravel())[0, 1] > 0.5


def test_calibration_standardises_a_convolution_that_reduces_a_map_to_one_pixel_but_not_squeeze_excitation():
    """Without batch norm (VGG, folded graphs) every biased convolution is standardised on the batch, also
    one whose output is 1 x 1 (SSD300's last extra layer); a convolution reading a pooled 1 x 1 map
    (squeeze-excitation) keeps its weights."""
    torch.manual_seed(0)
    reduce = torch.nn.Conv2d(4, 8, 3)  # 3 x 3 -> 1 x 1
    excite = torch.nn.Conv2d(8, 8, 1)  # 1 x 1 -> 1 x 1
    net = torch.nn.Sequential(reduce, torch.nn.ReLU(), excite)
    before = excite.weight.clone()
    batch = torch.randn(32, 4, 3, 3) * 3 + 2
    calibrate(net, batch)
    out = reduce(batch).flatten(1)
    assert torch.allclose(out.mean(0), torch.zeros(8), atol=1e-4)
    assert torch.allclose(out.std(0), torch.ones(8), atol=1e-4)
    assert torch.equal(excite.weight, before)


@pytest.fixture(scope="module")
def photos():
    from PIL import Image

    from conceptsim.data.photo_colors import source_photos

    return [np.asarray(Image.open(p).convert("RGB")) for p in source_photos()]


@pytest.mark.slow  # builds the three registry twins and runs them on 12 photos (about 20 s CPU each)
@pytest.mark.parametrize("name", REGISTRY_TWINS)
def test_every_probed_twin_layer_carries_signal_on_real_photos(name, photos):
    """No constant channel (a 1 x 1 map, one value per photo, may have the few dead units the concept stage
    allows there: SSD's extras.3 in the seed-0 twin has 3 of 128 on these 12 photos) and per-channel spreads well inside
    float16's normal range, on the real photos that ship with the installed packages."""
    loaded = build_model(name)
    x = torch.stack([loaded.preprocessing.apply_image(p) for p in photos])
    layers = loaded.spec.default_layers
    with torch.no_grad(), record_activations(loaded.module, layers, model_name=name) as rec:
        loaded.features(x)
        acts = {k: v.float() for k, v in rec.items()}
    for layer in layers:
        a = acts[layer]
        sd = a.transpose(0, 1).reshape(a.shape[1], -1).std(dim=1)
        constant = int((sd == 0).sum())
        if a.shape[-2:] == (1, 1):  # one value per photo: the concept stage's rule for few observations
            check_constant_channels(name, layer, constant, a.shape[1], "error_for_twins", observations=a.shape[0])
        else:
            assert constant == 0, f"{name} {layer}: {constant} of {a.shape[1]} channels constant"
        live = sd[sd > 0]
        assert live.min() > 100 * FLOAT16_TINY, f"{name} {layer}: smallest channel spread {live.min():.2e}"
        assert a.abs().max() < FLOAT16_MAX / 100, f"{name} {layer}: values up to {a.abs().max():.2e}"


def test_constant_channels_fail_loudly_in_twins():
    with pytest.raises(DegenerateLayerError, match="320 of 320 channels"):
        check_constant_channels("ssd_mobilenet_v2_coco:random", "blocks.16", 320, 320, "error_for_twins")
    check_constant_channels("ssd_mobilenet_v2_coco", "blocks.16", 320, 320, "error_for_twins")  # trained: recorded
    check_constant_channels("m:random@2", "l", 1, 320, "error_for_twins")  # one dead unit: a warning
    with pytest.raises(DegenerateLayerError):
        check_constant_channels("m", "l", 30, 320, "error")
    check_constant_channels("m:random", "l", 320, 320, "allow")
    # few values per channel (a 1 x 1 map on 6 train images): a few units zero on all of them by chance
    check_constant_channels("m:random", "extra.4", 9, 256, "error_for_twins", observations=6)
    with pytest.raises(DegenerateLayerError, match="at most 2 allowed"):
        check_constant_channels("m:random", "extra.4", 9, 256, "error_for_twins", observations=6 * 49)
    with pytest.raises(DegenerateLayerError, match="128 of 256"):
        check_constant_channels("m:random", "extra.4", 128, 256, "error_for_twins", observations=6)
    with pytest.raises(ValueError, match="constant_channels"):
        check_constant_channels("m", "l", 0, 3, "sometimes")


def test_shared_backbone_blocks():
    ssd = shared_blocks("ssd_mobilenet_v2_coco", "mobilenet_v2_imagenet:random")
    assert ssd["blocks.0"] == "features.1" and ssd["last_conv"] == "features.18"
    assert ssd["blocks.13.expand"] == "features.14.conv.0"
    assert shared_blocks("mobilenet_v2_imagenet", "ssd_mobilenet_v2_coco")["features.17"] == "blocks.16"
    assert shared_blocks("centernet_mobilenet_v3_coco", "mobilenet_v2_imagenet") == {}


# ----------------------------------------------------------------------------- the twin cache
TWIN = "mobilenet_v2_imagenet:random@3"


@pytest.fixture
def twin_cache(tmp_path, monkeypatch):
    """An empty cache folder, and a count of the twins constructed (not loaded) since."""
    from conceptsim.models import registry

    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path))
    monkeypatch.delenv("CONCEPTSIM_TWIN_CACHE", raising=False)
    built = []

    def counting(*args, **kw):
        built.append(args[2])
        return initialise(*args, **kw)

    initialise = registry.initialise_twin
    monkeypatch.setattr(registry, "initialise_twin", counting)
    return tmp_path / "twins", built


@pytest.fixture(scope="module")
def fresh_twin():
    return build_model(TWIN, cache=False).module.state_dict()


def assert_same_bits(state, reference):
    assert state.keys() == reference.keys()
    for k, v in reference.items():
        assert state[k].dtype == v.dtype and state[k].shape == v.shape, k
        assert state[k].numpy().tobytes() == v.numpy().tobytes(), k


def test_a_cached_twin_loads_every_parameter_and_buffer_bit_for_bit(twin_cache, fresh_twin):
    folder, built = twin_cache
    first = build_model(TWIN)
    (cached,) = folder.glob("mobilenet_v2_imagenet-seed3-init*.pt")
    second = build_model(TWIN)
    assert len(built) == 1  # the second build loaded the file
    assert any("running_var" in k for k in fresh_twin)  # buffers (batch-norm statistics) are compared too
    assert_same_bits(first.module.state_dict(), fresh_twin)
    assert_same_bits(second.module.state_dict(), fresh_twin)
    assert not second.module.training and not any(p.requires_grad for p in second.module.parameters())
    assert cached.stat().st_size > 0 and not list(folder.glob(".*.tmp-*"))


@pytest.mark.parametrize("damage", ["garbage", "missing tensor", "other key"])
def test_an_unusable_twin_cache_file_is_rebuilt_with_a_warning(twin_cache, fresh_twin, damage):
    folder, built = twin_cache
    build_model(TWIN)
    (cached,) = folder.glob("*.pt")
    saved = torch.load(cached, weights_only=True)
    if damage == "garbage":
        cached.write_bytes(cached.read_bytes()[:1000])
    elif damage == "missing tensor":
        saved["state"].pop(next(k for k in saved["state"] if k.endswith("running_mean")))
        torch.save(saved, cached)
    else:
        torch.save({"key": "0" * 64, "state": saved["state"]}, cached)
    with pytest.warns(RuntimeWarning, match="twin cache file .* unusable"):
        again = build_model(TWIN)
    assert len(built) == 2
    assert_same_bits(again.module.state_dict(), fresh_twin)
    build_model(TWIN)  # the rebuilt file was written back whole
    assert len(built) == 2


def test_a_code_change_misses_the_twin_cache(twin_cache, monkeypatch):
    from conceptsim.models import registry

    folder, built = twin_cache
    build_model(TWIN)
    monkeypatch.setattr(registry, "twin_code_hash", lambda spec: "changed source")
    build_model(TWIN)
    assert len(built) == 2 and len(list(folder.glob("*.pt"))) == 2
    build_model("mobilenet_v2_imagenet:random@4")  # another seed is another file
    assert len(built) == 3 and len(list(folder.glob("mobilenet_v2_imagenet-seed4-*.pt"))) == 1


def test_the_twin_cache_can_be_turned_off(twin_cache, monkeypatch):
    folder, built = twin_cache
    build_model(TWIN, cache=False)
    monkeypatch.setenv("CONCEPTSIM_TWIN_CACHE", "0")
    build_model(TWIN)
    assert len(built) == 2 and not folder.exists()


def test_two_processes_building_the_same_twin_at_once_both_end_with_its_weights(twin_cache, fresh_twin):
    import hashlib
    import os
    import subprocess
    import sys

    folder, _ = twin_cache
    code = ("import hashlib, torch; from conceptsim.models.registry import build_model; torch.set_num_threads(1); "
            f"s = build_model({TWIN!r}).module.state_dict(); "
            "print(hashlib.sha256(b''.join(k.encode() + v.numpy().tobytes() for k, v in s.items())).hexdigest())")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
             for _ in range(2)]
    digests = {p.communicate(timeout=240)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    expected = hashlib.sha256(b"".join(k.encode() + v.numpy().tobytes() for k, v in fresh_twin.items())).hexdigest()
    assert digests == {expected}
    (cached,) = folder.glob("*.pt")  # one whole file, no temporaries left
    assert not list(folder.glob(".*.tmp-*"))
    assert_same_bits(build_model(TWIN).module.state_dict(), fresh_twin)
