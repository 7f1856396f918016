"""CPU seconds of the concept stage's parts on real layers of a finished study, one thread (as the study runs).

Usage (from the repository root, with the library on the path)::

    python benchmarks/concept_parts.py [--results results/default] [--reps 2] DATASET/MODEL:LAYER ...

For each layer: loading the splits (:func:`conceptsim.concepts.stage.load_layer`), Method A with its control
as :func:`~conceptsim.concepts.stage.run_seg` trains and counts them (probes, shuffled-label probes, their
test and val IoU counts; no bootstrap, nothing written), Method B with its control
(:func:`~conceptsim.concepts.stage.run_cls`, written to a scratch folder), and Network Dissection's two parts,
the unit thresholds and the val + test IoU counts (:mod:`conceptsim.concepts.dissection`). Prints one JSON
line per layer with the CPU seconds of every repetition and SHA-256s of Method A's outputs (weights, biases,
best epochs, val IoUs, histories, counts) and of the dissection numbers (thresholds, IoU counts), so two
checkouts can be compared for speed and for equal results (run it once per checkout, e.g. with
``PYTHONPATH`` pointing at each one's ``lib``). The store is only read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def seg_outputs(inp, info, data: dict, params) -> list[np.ndarray]:
    """Method A's probes and shuffled-label probes as ``run_seg`` trains them, with their test and val counts."""
    from conceptsim.concepts import stage
    from conceptsim.concepts.net2vec import split_counts, train_probes_and_control

    sel = np.flatnonzero(inp.include["seg"])
    if not len(sel):
        return []
    targets = torch.from_numpy(stage.read_selected(inp.store.targets(info.name), inp.rows["train"], inp.cidx[sel]))
    evs = {s: inp.eval_sets[s].subset(sel) for s in ("val", "test")}
    perm = stage.permutations(inp, params.seed)
    probes = train_probes_and_control(data["train"], targets, data["val"], evs["val"], perm["train"], perm["val"],
                                      **params.seg_kwargs())
    out = [a for q in probes for a in (q.weight, q.bias, q.best_epoch, q.val_iou, np.array(q.history))]
    for q in probes:
        for s in ("test", "val"):
            out += split_counts(torch.from_numpy(q.weight), torch.from_numpy(q.bias), data[s], evs[s])
    return out


def measure(results: Path, case: str, reps: int) -> dict:
    from conceptsim.concepts import dissection as dis
    from conceptsim.concepts import stage
    from conceptsim.extraction.store import ActivationStore

    model, layer = case.split(":")
    store = ActivationStore(results / model / "activations.zarr")
    inp, _ = stage.prepare(store, None, 1000, 0)
    info = store.layer(layer)
    params = stage.Params("balanced_bce", 1e-2, 30, 5, 32, 0, "cpu")
    sel = np.flatnonzero(inp.include["seg"])
    n_values = int(store.activations(info.name).shape[0]) * int(np.prod(info.grid))
    seconds: dict[str, list[float]] = {}
    digest, seg_digest = hashlib.sha256(), hashlib.sha256()

    def timed(part, fn):
        t = time.process_time()
        out = fn()
        seconds.setdefault(part, []).append(round(time.process_time() - t, 3))
        return out

    for rep in range(reps):
        data = timed("load", lambda: stage.load_layer(inp, info, 4 * 2**30))
        seg = timed("seg", lambda: seg_outputs(inp, info, data, params))
        if rep == 0:
            for a in seg:
                seg_digest.update(np.ascontiguousarray(a).tobytes())
        with tempfile.TemporaryDirectory() as scratch:
            timed("cls", lambda: stage.run_cls(inp, info, data, params, Path(scratch)))
        all_batches, split_batches, _ = dis.dissection_batches(inp, info, data)
        thr, err = timed("dissection_threshold", lambda: dis.unit_thresholds(all_batches, info.channels, values_per_unit=n_values))
        counts = timed("dissection_iou", lambda: [dis.unit_iou_counts(split_batches(s), thr, inp.eval_sets[s].subset(sel))
                                                  for s in ("val", "test")])
        if rep == 0:
            for a in (thr, err, *[c for pair in counts for c in pair]):
                digest.update(np.ascontiguousarray(a).tobytes())
    return {"layer": case, "channels": info.channels, "grid": list(info.grid), "cpu_s": seconds,
            "seg_sha256": seg_digest.hexdigest()[:16], "dissection_sha256": digest.hexdigest()[:16]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("layers", nargs="+", help="DATASET/MODEL:LAYER, e.g. coco-icons/ssd_mobilenet_v2_coco:stem")
    ap.add_argument("--results", type=Path, default=Path("results/default"))
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from conceptsim.runtime import configure_process

    configure_process()
    for case in args.layers:
        print(json.dumps(measure(args.results, case, args.reps)), flush=True)


if __name__ == "__main__":
    main()
