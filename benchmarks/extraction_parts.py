"""CPU seconds of one extraction's parts, one torch thread (as the study runs), and a hash of its store chunks.

Usage (from the repository root, with the library on the path)::

    python benchmarks/extraction_parts.py [--study studies/default.yml] [--scratch DIR] DATASET/MODEL ...

For each run: the study's layers and extraction settings, the mask store built first (not timed) in the
scratch folder, then ``extract(..., force=True)`` timed as process CPU seconds and split by per-thread CPU
time into the model's forward passes (``forward``, hooks included), the pooling hooks (``hooks``), image
read and pre-processing in the prefetch thread (``images``) and the rest (``other``: Zarr writes, threads,
set-up). Prints one JSON line per run with a SHA-256 of every chunk file of the store, so two checkouts can
be compared for speed and for identical bytes (run it once per checkout, ``PYTHONPATH`` at each one's ``lib``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import threading
import time
from pathlib import Path

import torch


def chunk_sha256(store: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(store.rglob("*")):
        if f.is_file() and f.name != "zarr.json":  # the chunks (metadata holds timings)
            h.update(str(f.relative_to(store)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def measure(study: dict, case: str, scratch: Path) -> dict:
    import conceptsim.data.coco as coco
    import conceptsim.extraction.extract as ex
    from conceptsim.models.registry import build_model
    from conceptsim.pipeline import open_dataset, probed_layers

    dataset, model = case.split("/", 1)
    cpu: dict[str, float] = {}
    lock = threading.Lock()

    def timed(part, fn):
        def call(*args, **kwargs):
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    cpu[part] = cpu.get(part, 0.0) + time.thread_time() - t
        return call

    sx = study["extraction"]
    loaded = build_model(model, device="cpu")
    ds, source = open_dataset(dataset, study["datasets"][dataset], study["split"], loaded.preprocessing, sx["eval_grid"])
    layers = probed_layers(model, (study.get("layers") or {}).get(model.split(":")[0]), sx["max_layers"])
    kwargs = dict(layers=layers, batch_size=sx["batch_size"], grid_cap=sx["grid_cap"], dtype=sx["dtype"],
                  metadata={"dataset_sha256": source.sha256}, masks_dir=scratch / f"{dataset}-masks", progress=False)
    ex.extract(loaded, ds, scratch / "warm.zarr", **kwargs)  # the mask store, not timed
    plain = (coco._Images.__getitem__, ex.record_activations, loaded.features)
    coco._Images.__getitem__ = timed("images", plain[0])
    ex.record_activations = lambda module, names, transform, name, **kw: plain[1](module, names, timed("hooks", transform), name, **kw)
    loaded.features = timed("forward", plain[2])
    try:
        store = scratch / f"{dataset}-{model}.zarr"
        t = time.process_time()
        ex.extract(loaded, ds, store, force=True, **kwargs)
        total = time.process_time() - t
    finally:
        coco._Images.__getitem__, ex.record_activations, loaded.features = plain
    parts = {"total": total, "forward_without_hooks": cpu["forward"] - cpu["hooks"], "hooks": cpu["hooks"],
             "images": cpu["images"], "other": total - cpu["forward"] - cpu["images"]}
    return {"case": case, "images": len(ds), "cpu_s": {k: round(v, 3) for k, v in parts.items()},
            "forward_share": round(parts["forward_without_hooks"] / total, 3), "chunks_sha256": chunk_sha256(store)}


def main() -> None:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", help="DATASET/MODEL, e.g. coco-icons/centernet_mobilenet_v3_coco:random")
    parser.add_argument("--study", default="studies/default.yml")
    parser.add_argument("--scratch", default=None, help="folder for the stores (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    study = yaml.safe_load(Path(args.study).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(args.scratch or tmp)
        for case in args.cases:
            print(json.dumps(measure(study, case, scratch)), flush=True)


if __name__ == "__main__":
    main()
