"""Shared fixtures. Every test runs with the network cut: any connection to a non-loopback address fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# inherited by every process the tests start: papermill kernels (whose notebooks call runtime.setup) are cut off too
os.environ["CONCEPTSIM_FORBID_NETWORK"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

from conceptsim import netguard, runtime  # noqa: E402

# the test process is set up as the command line sets up its own: cache folders (inherited by the kernels
# the tests start), threads, allocator; importing the library sets nothing (tests/test_runtime.py)
runtime.setup()

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def network_cut():
    netguard.install()
    yield
    netguard.uninstall()


# what `conceptsim run`, `make report` and `make book` write in the user's checkout: tests must not touch them
USER_OUTPUTS = ("results", "book/results", "book/_generated", "_build")


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under the user's output folders with its size and modification time."""
    state = {}
    for name in USER_OUTPUTS:
        folder = root / name
        if folder.is_dir():
            for path in folder.rglob("*"):
                if path.is_file() or path.is_symlink():
                    st = path.lstat()
                    state[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return state


@pytest.fixture(autouse=True, scope="session")
def user_outputs_untouched():
    """Fails the session when a test wrote, changed or removed anything in the checkout's results/, book/results/,
    book/_generated/ or _build/ (tests work in temporary project roots: conftest.make_project)."""
    before = tree_state(ROOT)
    yield
    after = tree_state(ROOT)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        pytest.fail(f"the tests changed {len(changed)} file(s) in the user's project, e.g. {changed[:5]}", pytrace=False)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one torch thread (tiny tensors: a second thread only adds sync cost)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def make_project(root: Path) -> Path:
    """A project root in ``root`` that shares the repository's sources (symlinks) but owns its outputs:
    ``results/``, ``book/results/``, ``book/_generated/`` and ``_build/`` are created there, never in the
    user's checkout."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("notebooks", "studies", "lib", "pyproject.toml", "_config.yml", "_toc.yml"):
        (root / name).symlink_to(ROOT / name)
    (root / "book").mkdir()
    for entry in (ROOT / "book").iterdir():
        if entry.name not in ("results", "_generated"):
            (root / "book" / entry.name).symlink_to(entry)
    return root


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A temporary project root (see :func:`make_project`) set as CONCEPTSIM_ROOT, with its own results folder."""
    root = make_project(tmp_path / "project")
    monkeypatch.setenv("CONCEPTSIM_ROOT", str(root))
    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(root / "results"))
    monkeypatch.setenv("CONCEPTSIM_DATA", str(tmp_path / "datasets"))
    monkeypatch.setenv("CONCEPTSIM_CACHE", str(tmp_path / "cache"))  # no weights: what is missing is known
    monkeypatch.chdir(root)
    return root


@pytest.fixture(scope="module")
def small_dataset_and_model():
    """A random-init MobileNetV2 and a 24-image shapes dataset in its input geometry (extraction tests)."""
    from conceptsim import pipeline
    from conceptsim.models.registry import build_model

    loaded = build_model("mobilenet_v2_imagenet:random")
    ds, source = pipeline.open_dataset("shapes", {"build": {"n": 24, "size": 96, "seed": 3}},
                                       {"fractions": [0.6, 0.2, 0.2], "seed": 0, "min_area": 0.005},
                                       loaded.preprocessing, 16)
    return loaded, ds


@pytest.fixture(scope="module")
def comparison_run(tmp_path_factory):
    """``(findings document, similarity table)`` of the comparison stage run on a small synthetic study."""
    import json

    import pandas as pd

    from conceptsim.comparison.stage import run_comparison_stage
    from conceptsim.comparison.synthetic import build_synthetic_study

    root = tmp_path_factory.mktemp("rep") / "ds"
    spec = {"a": [("l1", 0.3, 4, 4), ("l2", 1.0, 2, 4)], "b": [("m1", 0.5, 4, 3), ("m2", 1.0, 2, 3)]}
    spec.update({f"{m}:random": v for m, v in list(spec.items())})
    build_synthetic_study(root, spec, n_images=20, signal=lambda m, i, d, c: 0.1 if ":random" in m else 1.0)
    paths = run_comparison_stage(root, root, models=list(spec), permutations=200, bootstrap=100)
    return json.loads(paths["findings"].read_text()), pd.read_csv(paths["similarity"])


def planted_layer(tmp_path_factory, **kw):
    """One layer of a planted synthetic store (``concepts.synthetic.planted_store`` options), prepared as the
    concept stage prepares it: ``(inputs, layer data, train targets)``."""
    import torch

    from conceptsim.concepts import stage
    from conceptsim.concepts.synthetic import planted_store
    from conceptsim.extraction.store import ActivationStore

    path, _ = planted_store(tmp_path_factory.mktemp("p") / "s.zarr", **kw)
    store = ActivationStore(path)
    inp, _ = stage.prepare(store, None, 20, 0)
    info = store.layers[0]
    data = stage.load_layer(inp, info, 1e9)
    targets = torch.from_numpy(stage.read_selected(store.targets(info.name), inp.rows["train"], inp.cidx))
    return inp, data, targets
