"""Executing a run on the fake project of :mod:`test_run_orchestrate`: warm kernels, the threads of every run,
and a full disk inside a notebook reported as one line naming the path."""

import os

import pytest

import test_run_orchestrate
from conceptsim.run import orchestrate as runner
from conceptsim.run.execution import RUN_THREADS
from test_run_orchestrate import NOTEBOOKS, STOP_STUDY, kernel_pids, make_notebook

fake_project = test_run_orchestrate.fake_project  # the fake project (tiny notebooks) of the runner's tests


def test_runs_share_a_warm_kernel_unless_fresh_kernels(fake_project):
    from conceptsim.run import kernels

    root, study = fake_project
    runner.run_study(study, progress=False)
    warm = kernel_pids(root)
    assert len(warm) == 4 and len(set(warm)) == 1
    assert kernels._all == []  # this process's kernel ended with the study
    with pytest.raises(ProcessLookupError):
        os.kill(int(warm[0]), 0)
    runner.run_study(study, force=True, fresh_kernels=True, progress=False)
    fresh = kernel_pids(root)[4:]
    assert len(set(fresh)) == 4 and not set(fresh) & set(warm)


THREADS = """
import os, pathlib
with open(pathlib.Path(os.environ["CONCEPTSIM_ROOT"]) / "results" / "threads.log", "a") as f:
    f.write(" ".join(os.environ.get(v, "-") for v in ("CONCEPTSIM_TORCH_THREADS", "OMP_NUM_THREADS")) + "\\n")
"""


@pytest.mark.parametrize("jobs", [1, 2])
def test_every_run_gets_the_same_threads_whatever_the_jobs(fake_project, jobs):
    root, study = fake_project
    for stage, name in NOTEBOOKS.items():
        make_notebook(root / "notebooks" / name, stage, THREADS)
    runner.run_study(study, jobs=jobs, progress=False)
    lines = (root / "results" / "threads.log").read_text().split("\n")[:-1]
    assert lines == [f"{RUN_THREADS} {RUN_THREADS}"] * 4
    # the runner's own process keeps its settings (a warm kernel sees the same environment every run)
    assert os.environ.get("CONCEPTSIM_TORCH_THREADS") != "set-by-the-runner"


DISK_FULL = """
if os.environ.get("FAKE_DISK_FULL") == STAGE:  # ENOSPC inside one of the library's writers: the write names no file
    import errno
    from conceptsim.atomic import write_json
    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    keep, pathlib.Path.write_text = pathlib.Path.write_text, full
    try:
        write_json(pathlib.Path(os.environ["CONCEPTSIM_ROOT"]) / "results" / "fake" / "concept_quality.json", {})
    finally:
        pathlib.Path.write_text = keep
if os.environ.get("FAKE_DISK_FULL") == STAGE + " outside":  # ENOSPC from code that names no file
    raise OSError(28, "No space left on device")
"""


@pytest.mark.parametrize("where", ["writer", "outside"])
def test_disk_full_inside_a_notebook_is_one_line_naming_the_path(fake_project, monkeypatch, capsys, where):
    from conceptsim.cli import main

    root, _ = fake_project
    for stage, name in NOTEBOOKS.items():
        make_notebook(root / "notebooks" / name, stage, DISK_FULL)
    (root / "s.yml").write_text(STOP_STUDY)
    monkeypatch.setenv("CONCEPTSIM_DATA", str(root / "datasets"))
    monkeypatch.setenv("FAKE_DISK_FULL", "concepts" + (" outside" if where == "outside" else ""))
    assert main(["run", str(root / "s.yml"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    failed = [line for line in err.splitlines() if line.startswith("FAILED")]
    run = "concepts/shapes/mobilenet_v2_imagenet:random"
    if where == "writer":  # the atomic writer names the file it was writing
        assert failed == [f"FAILED {run}: OSError: {root / 'results' / 'fake' / 'concept_quality.json'}: "
                          "No space left on device (errno 28)"]
        assert not list((root / "results" / "fake").glob(".concept_quality.json.tmp-*"))  # no half-written file
    else:  # no file named: the line says which notebook and the folder the run writes under
        folder = root / "results" / "fake" / "shapes" / "mobilenet_v2_imagenet__random"
        assert failed == [f"FAILED {run}: OSError: a file it does not name (a cell of 02_concepts.ipynb, writing "
                          f"under {folder}): No space left on device (errno 28)"]


def test_a_warm_kernel_writes_the_executed_copy_once_when_the_run_ends(fake_project, monkeypatch):
    """papermill's writes of the whole copy before and after every cell are skipped (nothing reads the
    temporary copy during the run): one at the start, one at the end, and the copy holds every cell's run."""
    import nbformat
    import papermill.engines

    from conceptsim.run.keys import executed_path

    root, study = fake_project
    written = []
    write = papermill.engines.write_ipynb
    monkeypatch.setattr(papermill.engines, "write_ipynb", lambda nb, path, **kw: (written.append(path), write(nb, path, **kw))[1])
    runner.run_study(study, progress=False)
    runs = study.runs()
    assert len(written) == 2 * len(runs)
    for run in runs:
        cells = [c for c in nbformat.read(executed_path(run), as_version=4).cells if c.cell_type == "code"]
        assert len(cells) == 3 and all(c.execution_count for c in cells)
        assert all(c.metadata.papermill.status == "completed" for c in cells)
