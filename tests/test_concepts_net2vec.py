"""Method A (Net2Vec) and Method B (TCAV-style) on stores with planted concepts."""

import numpy as np
import pytest
import torch

from conceptsim.concepts import controls, stage
from conceptsim.concepts.layerdata import SplitData, Standardiser
from conceptsim.concepts.metrics import set_iou_from_counts
from conceptsim.concepts.net2vec import EvalSet, probe_loss, split_counts, train_segmentation_probes, train_segmentation_probes_sequential
from conceptsim.concepts.synthetic import planted_store
from conceptsim.concepts.tcav import train_classification_probes
from conceptsim.extraction.store import ActivationStore

# tiny tensors: a second OpenMP thread only adds synchronisation cost
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path, directions = planted_store(tmp_path_factory.mktemp("p") / "s.zarr", n_split=(160, 40, 40),
                                     amplitude=6.0, channels=32, k=4, constant_channels=2)
    store = ActivationStore(path)
    inp, _ = stage.prepare(store, None, 200, 0)
    info = store.layers[0]
    data = stage.load_layer(inp, info, 1e9)
    targets = torch.from_numpy(stage.read_selected(store.targets(info.name), inp.rows["train"], inp.cidx))
    return inp, data, targets, directions[:, :-2]


def _test_iou(probes, data, inp):
    counts = split_counts(torch.from_numpy(probes.weight), torch.from_numpy(probes.bias), data["test"],
                          inp.eval_sets["test"])
    return set_iou_from_counts(*counts)


def test_planted_concepts_are_recovered(planted):
    inp, data, targets, directions = planted
    probes = train_segmentation_probes(data["train"], targets, data["val"], inp.eval_sets["val"], batch_size=8)
    assert (_test_iou(probes, data, inp) >= 0.9).all()
    w = probes.weight[:, :-2]
    cos = (w / np.linalg.norm(w, axis=1, keepdims=True) * directions).sum(1)
    assert (cos >= 0.95).all()
    assert np.abs(probes.weight[:, -2:]).max() == 0  # constant channels are zero after standardising


def test_shuffled_targets_fall_to_chance(planted):
    inp, data, targets, _ = planted
    perm = controls.shuffle_permutation(len(targets), 0)
    vperm = controls.shuffle_permutation(len(data["val"]), 1)
    ev = inp.eval_sets["val"]
    shuffled = train_segmentation_probes(data["train"], targets[perm], data["val"],
                                         EvalSet(ev.masks[vperm], ev.boxes, ev.input_size), batch_size=8)
    fg = inp.eval_sets["test"].masks.float().mean((0, 2, 3)).numpy()
    iou = _test_iou(shuffled, data, inp)
    assert (iou < 2 * fg + 0.05).all(), (iou, fg)


def test_joint_equals_separate(planted):
    inp, data, targets, _ = planted
    kw = dict(batch_size=16, epochs=6, seed=3)
    joint = train_segmentation_probes(data["train"], targets, data["val"], inp.eval_sets["val"], **kw)
    seq = train_segmentation_probes_sequential(data["train"], targets, data["val"], inp.eval_sets["val"], **kw)
    np.testing.assert_allclose(joint.weight, seq.weight, atol=1e-5)
    np.testing.assert_allclose(joint.bias, seq.bias, atol=1e-5)
    np.testing.assert_array_equal(joint.best_epoch, seq.best_epoch)
    np.testing.assert_allclose(_test_iou(joint, data, inp), _test_iou(seq, data, inp), atol=1e-3)


@pytest.mark.parametrize("loss", ["net2vec_soft", "dice"])
def test_alternative_losses_learn(planted, loss):
    inp, data, targets, _ = planted
    probes = train_segmentation_probes(data["train"], targets, data["val"], inp.eval_sets["val"], loss=loss,
                                       batch_size=8, epochs=10)
    assert (_test_iou(probes, data, inp) > 0.6).all()


def test_unknown_loss_errors():
    with pytest.raises(ValueError, match="loss must be one of"):
        probe_loss(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), torch.ones(1), "focal")


def test_standardiser_zero_variance_rule():
    x = np.random.default_rng(0).standard_normal((50, 4))
    x[:, 1] = 3.0
    st = Standardiser.fit(x)
    z = st.apply(torch.from_numpy(x).float())
    assert st.n_constant == 1 and torch.isfinite(z).all() and (z[:, 1] == 0).all()


def test_split_data_memory_modes_agree(planted):
    inp, data, _, _ = planted
    act = inp.store.activations(inp.store.layers[0].name)
    rows = inp.rows["val"]
    ref = torch.cat([x for _, x in data["val"].batches(7)])
    for budget in (ref.numel() * 2.5, 0):  # float16 in memory, then streamed
        d = SplitData(act, rows, budget_bytes=budget)
        d.set_standardiser(data["train"].moments)
        assert d.mode == ("float16" if budget else "stream")
        torch.testing.assert_close(torch.cat([x for _, x in d.batches(7)]), ref)


def test_shuffled_batches_equal_an_indexed_gather(planted):
    """A shuffled batch of a float32 split standardised in place (one block copy per image) has the values and the
    channels-last strides of indexing the held tensor."""
    _, data, _, _ = planted
    train = data["train"]
    assert train.image_matrices() is not None
    for pos, x in train.batches(9, torch.Generator().manual_seed(4)):
        ref = train.data[torch.from_numpy(pos)]
        assert torch.equal(x, ref) and x.stride() == ref.stride()


def test_split_data_holds_the_store_values_exactly(planted):
    """Held splits (float32 and float16) are re-laid out from the store's own values: nothing is rounded."""
    inp, _, _, _ = planted
    act = inp.store.activations(inp.store.layers[0].name)
    rows = inp.rows["val"]
    raw = torch.from_numpy(np.asarray(act.get_orthogonal_selection((rows,))))
    for budget, mode in ((1e9, "float32"), (raw.numel() * 2.5, "float16")):
        d = SplitData(act, rows, budget_bytes=budget)
        assert d.mode == mode and d.data.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(d.data.float(), raw.float())
        np.testing.assert_array_equal(d.gap, raw.float().flatten(2).mean(2).numpy())


def test_classification_probes_planted(planted):
    inp, data, _, directions = planted
    st = Standardiser.fit(data["train"].gap)
    z = {s: st.apply(torch.from_numpy(data[s].gap)).numpy() for s in ("train", "val", "test")}
    probes = train_classification_probes(z["train"], inp.labels["train"], z["val"], inp.labels["val"])
    scores = probes.decision(z["test"])
    iv = controls.cls_intervals(inp.labels["test"], scores, -scores, controls.bootstrap_indices(40, 200, 0))
    assert all(i.value > 0.9 for i in iv["ap"])
    assert set(probes.chosen_c) <= {0.01, 0.1, 1.0, 10.0}
    assert np.allclose(np.linalg.norm(probes.cav, axis=1), 1.0)


def test_streamed_pieces_equal_the_whole(planted, monkeypatch):
    """Reading, mask areas, subsets and in-place standardising, done a piece at a time, change no number."""
    import conceptsim.concepts.net2vec as n2v
    from conceptsim.extraction.store import read_rows

    inp, data, targets, _ = planted
    store = inp.store
    rows, cols = inp.rows["train"], inp.cidx[[2, 0, 3]]
    tgt = store.targets(store.layers[0].name)
    whole = np.concatenate([b[:, cols] for _, b in read_rows(tgt, rows, batch=64)])
    got = stage.read_selected(tgt, rows, cols)
    np.testing.assert_array_equal(got, whole)
    assert got.strides == whole.strides  # the layout the probes' loss reductions were measured with
    masks = stage.read_selected(store.masks, rows, cols, bool)
    np.testing.assert_array_equal(masks, whole_masks := np.concatenate(
        [b[:, cols] for _, b in read_rows(store.masks, rows, batch=64)]) != 0)
    assert masks.dtype == bool and whole_masks.any()

    ev = inp.eval_sets["val"]
    monkeypatch.setattr(n2v, "COUNT_FLOATS", 1)  # one image per block
    fresh = EvalSet(ev.masks, ev.boxes, ev.input_size)
    expected = ev.masks.flatten(2).sum(2, dtype=torch.int32)
    assert torch.equal(fresh.areas, expected)
    everything = fresh.subset(range(ev.masks.shape[1]))
    assert everything.masks is fresh.masks and torch.equal(everything.areas, expected)
    some = fresh.subset([3, 1])
    assert torch.equal(some.masks, ev.masks[:, [3, 1]]) and torch.equal(some.areas, expected[:, [3, 1]])

    act = store.activations(store.layers[0].name)
    held = SplitData(act, inp.rows["val"], budget_bytes=1e9)
    assert held.mode == "float32"
    raw = torch.cat([x for _, x in held.batches(5)]).clone()
    held.set_standardiser(data["train"].moments)
    assert torch.equal(torch.cat([x for _, x in held.batches(5)]), data["train"].moments.apply(raw))


def test_probes_and_control_in_one_run_equal_two_runs(planted):
    """The reference solver trains the probes and their shuffled-label control as one C -> 2K convolution:
    each half is the run on its own targets (same batches, same early stopping, same epochs and history)."""
    from conceptsim.concepts.net2vec import train_probes_and_control

    inp, data, targets, _ = planted
    ev = inp.eval_sets["val"]
    order_train = controls.shuffle_permutation(len(targets), 0)
    order_val = controls.shuffle_permutation(len(data["val"]), 1)
    kw = dict(batch_size=16, epochs=12, patience=2, seed=3)
    probes, control = train_probes_and_control(data["train"], targets, data["val"], ev, order_train, order_val, **kw)
    alone = [train_segmentation_probes(data["train"], targets, data["val"], ev, **kw),
             train_segmentation_probes(data["train"], targets[order_train], data["val"],
                                       EvalSet(ev.masks[order_val], ev.boxes, ev.input_size), **kw)]
    assert control.epochs_run < probes.epochs_run  # the control stops early: its history ends with its own run
    for joint, one in zip((probes, control), alone):
        np.testing.assert_allclose(joint.weight, one.weight, atol=1e-6)
        np.testing.assert_allclose(joint.bias, one.bias, atol=1e-6)
        np.testing.assert_array_equal(joint.best_epoch, one.best_epoch)
        np.testing.assert_array_equal(joint.val_iou, one.val_iou)
        assert joint.epochs_run == one.epochs_run and len(joint.history) == len(one.history)
        np.testing.assert_array_equal(np.isnan(np.array(joint.history)), np.isnan(np.array(one.history)))
    with pytest.raises(ValueError, match="alpha"):
        train_probes_and_control(data["train"], targets, data["val"], ev, order_train, order_val, alpha=torch.ones(4))


@pytest.mark.parametrize("in_place", [False, True])
def test_control_targets_train_as_their_joint_tensor(planted, in_place, monkeypatch):
    """ControlTargets hold the targets once; read image by image (in place) or materialised, training gives
    the same bits as the joint tensor built by hand, through concepts freezing at different epochs."""
    from conceptsim.concepts import net2vec
    from conceptsim.concepts.net2vec import ControlTargets, foreground_alpha

    if in_place:
        monkeypatch.setattr(net2vec, "IN_PLACE_IMAGE_BYTES", 0)
    inp, data, targets, _ = planted
    order = controls.shuffle_permutation(len(targets), 0)
    control = ControlTargets(targets, order)
    joint = torch.cat([targets, targets[torch.from_numpy(order)]], 1)
    assert control.shape == tuple(joint.shape) and torch.equal(control.materialise(), joint)
    for rows in ([0, 2, 5, 7], [1, 2], [5, 6], list(range(8))):
        out = control.image(3, control.halves(np.array(rows)), torch.empty((len(rows), joint[0, 0].numel())))
        assert torch.equal(out, joint[3, rows].reshape(len(rows), -1).float())
    ev = inp.eval_sets["val"]
    ev2 = ev.with_masks(torch.cat([ev.masks, ev.masks], 1))
    alpha = foreground_alpha(joint)
    kw = dict(batch_size=16, epochs=10, patience=2, seed=1, alpha=alpha)
    a = net2vec.train_segmentation_probes_reference(data["train"], control, data["val"], ev2, **kw)
    b = net2vec.train_segmentation_probes_reference(data["train"], joint, data["val"], ev2, **kw)
    assert np.array_equal(a.weight, b.weight) and np.array_equal(a.best_epoch, b.best_epoch)
    assert len(set(a.best_epoch.tolist())) > 1  # concepts froze at different epochs: the selected rows were read
    with pytest.raises(ValueError, match="permutation"):
        ControlTargets(targets, np.zeros(len(targets), dtype=int))
    with pytest.raises(ValueError, match="alpha"):
        net2vec.train_segmentation_probes_reference(data["train"], control, data["val"], ev2)


def test_control_targets_channels_last_is_the_joint_layout(planted):
    from conceptsim.concepts.net2vec import ControlTargets

    _, _, targets, _ = planted
    order = controls.shuffle_permutation(len(targets), 2)
    control = ControlTargets(targets, order)
    joint = control.materialise()
    n, k2 = joint.shape[:2]
    for concepts in (None, np.array([1, 3, k2 // 2, k2 - 1]), np.array([0, 1]), np.array([k2 - 2, k2 - 1])):
        idx = np.arange(k2) if concepts is None else concepts
        want = joint[:, torch.from_numpy(idx)].permute(0, 2, 3, 1).reshape(n, -1, len(idx))
        assert torch.equal(control.channels_last(concepts), want)
