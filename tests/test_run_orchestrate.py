"""The study runner on a fake project whose notebooks are tiny: resumability, staleness, failures."""

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from conceptsim.atomic import write_json
from conceptsim.book import toc as book_toc
from conceptsim.paths import executed_path
from conceptsim.run import orchestrate as runner
from conceptsim.run.keys import record_path
from conceptsim.run.study import NOTEBOOKS, parse_study

ROOT = Path(__file__).resolve().parents[1]

BODY = """
import os, pathlib, json
if os.environ.get("FAKE_FAIL_STAGE") == STAGE:
    raise RuntimeError("planted failure in " + STAGE)
out = pathlib.Path(os.environ["CONCEPTSIM_ROOT"]) / "results" / "executions.log"
out.parent.mkdir(parents=True, exist_ok=True)
with open(out, "a") as f:
    f.write(STAGE + " " + dataset + " " + str(os.getpid()) + "\\n")
"""


def make_notebook(path: Path, stage: str, extra: str = "") -> None:
    params = new_code_cell('dataset = "shapes"\nseed = 0')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell(f"STAGE = {stage!r}" + BODY + extra)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def fake_project(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    for stage, name in NOTEBOOKS.items():
        make_notebook(tmp_path / "notebooks" / name, stage)
    shutil.copy(ROOT / "_toc.yml", tmp_path / "_toc.yml")
    monkeypatch.setenv("CONCEPTSIM_ROOT", str(tmp_path))
    monkeypatch.delenv("CONCEPTSIM_RESULTS", raising=False)
    # the checkout's cache (weights fetched by make setup): the CLI's pre-run check looks for them there
    monkeypatch.setenv("CONCEPTSIM_CACHE", os.environ.get("CONCEPTSIM_CACHE") or str(ROOT / ".cache"))
    study = parse_study({"name": "fake", "datasets": {"shapes": {}}, "models": ["mobilenet_v2_imagenet"]})
    return tmp_path, study


def execution_lines(root: Path) -> list[list[str]]:
    """``[stage, dataset, kernel pid]`` of every execution, in order."""
    log = root / "results" / "executions.log"
    return [line.split() for line in log.read_text().split("\n")[:-1]] if log.exists() else []


def kernel_pids(root: Path) -> list[str]:
    return [pid for _, _, pid in execution_lines(root)]


def executions(root: Path) -> list[str]:
    return [f"{stage} {dataset}" for stage, dataset, _ in execution_lines(root)]


def test_resume_skip_and_stale_rerun(fake_project):
    root, study = fake_project
    out = runner.run_study(study, progress=False)
    assert not out.failed and len(out.executed) == 4
    assert len(executions(root)) == 4
    # executed copies and completion records exist; the generated toc lists the notebooks
    for r in study.runs():
        assert executed_path(r).exists()
        rec = json.loads(record_path(r).read_text())
        assert rec["status"] == "ok" and rec["seconds"] > 0
    toc = (root / "book" / "_generated" / "_toc.yml").read_text()
    assert "book/results/fake/shapes/mobilenet_v2_imagenet/01_extract" in toc
    # the navigation names the model and dataset of every executed page
    assert "title: 'Activation extraction: mobilenet_v2_imagenet on shapes'" in toc
    assert "title: 'Layer comparison: shapes'" in toc
    # the executed copy shows the injected parameters, the defaults cell is removed from the page
    nb = nbformat.read(executed_path(study.runs()[0]), as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert "remove-cell" in tags[0] and "parameters-note" in tags[1] and "injected-parameters" in tags[2]
    assert (root / "book" / "results" / "fake" / "reproducibility.md").exists()

    again = runner.run_study(study, progress=False)
    assert again.executed == [] and len(again.skipped_complete) == 4
    assert len(executions(root)) == 4

    # a changed notebook re-runs that stage and its dependents, nothing upstream
    make_notebook(root / "notebooks" / NOTEBOOKS["concepts"], "concepts", extra="x = 1\n")
    third = runner.run_study(study, progress=False)
    assert [r["stage"] for r in third.executed] == ["concepts", "compare_layers", "compare_models"]


def test_failure_keeps_traceback_and_skips_dependents(fake_project, monkeypatch):
    root, study = fake_project
    monkeypatch.setenv("FAKE_FAIL_STAGE", "concepts")
    out = runner.run_study(study, progress=False)
    assert [r["id"] for r in out.failed] == ["concepts/shapes/mobilenet_v2_imagenet"]
    assert out.failed[0]["error"] == "RuntimeError: planted failure in concepts"  # one line for the console
    assert "planted failure in concepts" in Path(out.failed[0]["log"]).read_text()  # the traceback: in the log
    assert set(out.skipped_dependency) == {"compare_layers/shapes", "compare_models/shapes"}
    failed_run = next(r for r in study.runs() if r.stage == "concepts")
    executed = executed_path(failed_run).read_text()
    assert "planted failure in concepts" in executed
    assert not record_path(failed_run).exists()
    # fixed: only the failed run and its dependents run again
    monkeypatch.delenv("FAKE_FAIL_STAGE")
    out = runner.run_study(study, progress=False)
    assert [r["stage"] for r in out.executed] == ["concepts", "compare_layers", "compare_models"]


def test_interrupted_run_is_redone(fake_project):
    root, study = fake_project
    runner.run_study(study, progress=False)
    # simulate a run killed before its completion record was written
    extract = next(r for r in study.runs() if r.stage == "extract")
    record_path(extract).unlink()
    out = runner.run_study(study, progress=False)
    assert out.executed[0]["id"] == extract.id


def test_parallel_jobs(fake_project):
    root, study = fake_project
    out = runner.run_study(study, jobs=2, progress=False)
    assert not out.failed and len(out.executed) == 4
    assert len(set(kernel_pids(root))) <= 2  # one kernel per worker process


def fake_execute(run, key, threads=None, fresh_kernel=False, force=False):
    """Stand-in for execute_run without a kernel: writes the executed copy and the completion record."""
    out = executed_path(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(new_notebook(cells=[new_code_cell("pass")]), out)
    record = {"id": run.id, "stage": run.stage, "dataset": run.dataset, "model": run.model, "key": key,
              "status": "ok", "error": None, "parameters": run.parameters, "notebook": run.notebook,
              "executed_notebook": str(out), "started": 0, "seconds": 0.0, "log": ""}
    write_json(record_path(run), record)
    return record


def dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_next_run_removes_debris_of_dead_processes_only(fake_project, monkeypatch):
    root, study = fake_project
    monkeypatch.setattr(runner, "execute_run", fake_execute)
    gone, alive = dead_pid(), os.getpid()
    model_dir = root / "results" / "fake" / "shapes" / "mobilenet_v2_imagenet"
    (model_dir / f".activations.zarr.tmp-{gone}" / "c").mkdir(parents=True)
    (model_dir / f".activations.zarr.tmp-{alive}").mkdir(parents=True)
    nb_dir = root / "book" / "results" / "fake" / "shapes" / "mobilenet_v2_imagenet"
    nb_dir.mkdir(parents=True)
    (nb_dir / f".tmp-{gone}-01_extract.ipynb").write_text("{}")
    (nb_dir / f".tmp-{alive}-02_concepts.ipynb").write_text("{}")
    (model_dir / "keep.tmp-1").write_text("not ours")  # no leading dot: not a name this package writes
    backup = root / "results" / "fake" / f".backup.tmp-{gone}"  # the user's folder: a target the package never writes
    (backup / "old.csv").parent.mkdir(parents=True)
    (backup / "old.csv").write_text("mine")
    runner.run_study(study, progress=False)
    assert (backup / "old.csv").read_text() == "mine"
    assert not (model_dir / f".activations.zarr.tmp-{gone}").exists()
    assert not (nb_dir / f".tmp-{gone}-01_extract.ipynb").exists()
    assert (model_dir / f".activations.zarr.tmp-{alive}").exists() and (nb_dir / f".tmp-{alive}-02_concepts.ipynb").exists()
    assert (model_dir / "keep.tmp-1").exists()


def test_toc_lists_every_study_with_results(fake_project, monkeypatch):
    root, study = fake_project
    monkeypatch.setattr(runner, "execute_run", fake_execute)
    other = parse_study({"name": "other", "datasets": {"shapes": {}}, "models": ["mobilenet_v2_imagenet"]})
    runner.run_study(study, progress=False)
    runner.run_study(other, progress=False)
    toc = (root / "book" / "_generated" / "_toc.yml").read_text()
    captions = [p["caption"] for p in yaml.safe_load(toc)["parts"]]
    for name in ("fake", "other"):
        assert f"Executed notebooks: study '{name}'" in captions
        assert f"book/results/{name}/shapes/mobilenet_v2_imagenet/01_extract" in toc
        assert f"book/results/{name}/reproducibility" in toc
    shutil.rmtree(root / "book" / "results" / "fake")  # a study whose pages are gone drops out
    book_toc.write_toc()
    captions = [p["caption"] for p in yaml.safe_load((root / "book" / "_generated" / "_toc.yml").read_text())["parts"]]
    assert "Executed notebooks: study 'fake'" not in captions and "Executed notebooks: study 'other'" in captions


def test_toc_lists_complete_studies_and_rehearsals_only_with_book_all(fake_project, monkeypatch):
    """Smoke studies and incomplete ones (a run failed) are rehearsals: not in the book's toc unless
    BOOK_ALL=1, and then under parts that say so, after the real studies."""
    root, study = fake_project
    monkeypatch.setattr(runner, "execute_run", fake_execute)
    monkeypatch.delenv("CONCEPTSIM_BOOK_ALL", raising=False)
    runner.run_study(study, progress=False)
    smoke = parse_study({"name": "fake", "datasets": {"shapes": {}}, "models": ["mobilenet_v2_imagenet"],
                         "smoke": {}}, smoke=True)
    assert smoke.name == "fake-smoke"
    runner.run_study(smoke, progress=False)
    broken = parse_study({"name": "broken", "datasets": {"shapes": {}}, "models": ["mobilenet_v2_imagenet"]})
    runner.run_study(broken, progress=False, only={"stage": "extract"})  # the other runs never ran

    def captions() -> list[str]:
        return [p["caption"] for p in yaml.safe_load((root / "book" / "_generated" / "_toc.yml").read_text())["parts"]]

    toc = (root / "book" / "_generated" / "_toc.yml").read_text()
    assert "Executed notebooks: study 'fake'" in captions() and "book/results/fake/reproducibility" in toc
    assert not any("smoke" in c or "broken" in c for c in captions())
    assert "fake-smoke" not in toc and "book/results/broken" not in toc
    monkeypatch.setenv("CONCEPTSIM_BOOK_ALL", "1")
    book_toc.write_toc()
    assert captions()[-3:] == ["Executed notebooks: study 'fake'", "Rehearsal (incomplete study): 'broken'",
                               "Rehearsal (smoke study): 'fake-smoke'"]
    assert book_toc.write_toc(rehearsals=False) and "fake-smoke" not in captions()[-1]


def test_progress_reports_runs_and_estimate_and_kernel_is_quiet(fake_project, capfd):
    _, study = fake_project
    runner.run_study(study, progress=True)
    first = capfd.readouterr().err
    assert "started extract/shapes/mobilenet_v2_imagenet | study fake:" in first
    assert "no estimate until the first run ends" in first  # no earlier records, nothing finished yet
    assert "finished extract/shapes/mobilenet_v2_imagenet in " in first and "left; about" in first  # then a range
    assert "without encryption" not in first  # kernel sockets are CurveZMQ-encrypted
    runner.run_study(study, progress=True, force=True)
    again = capfd.readouterr().err
    assert "left; about" in again  # estimated from the first run's records
    assert "without encryption" not in again


def test_the_cluster_gets_the_chain_as_priority(fake_project):
    root, study = fake_project
    seen = {}

    class Recorder:
        def execute(self, runs, keys, finish, skip, priority=None, progress=None, forced=None):
            seen.update(priority)

    runner.run_study(study, progress=False, executor=Recorder())
    assert seen == {"extract/shapes/mobilenet_v2_imagenet": 4.0, "concepts/shapes/mobilenet_v2_imagenet": 3.0,
                    "compare_layers/shapes": 2.0, "compare_models/shapes": 1.0}


SLEEPER = """
import time
if STAGE == "extract":
    marker = pathlib.Path(os.environ["CONCEPTSIM_ROOT"]) / "results" / "kernel.pids"
    marker.write_text(f"{os.getpid()} {os.getppid()}")
    time.sleep(120)
"""

STOP_STUDY = """\
name: fake
datasets:
  shapes: {build: {n: 20, size: 48}}
models: [mobilenet_v2_imagenet:random]
"""


def gone(pid: int, within: float) -> bool:
    import time

    from conceptsim.atomic import pid_alive

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:  # reap it if it is our child (a zombie counts as gone)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not pid_alive(pid) or _zombie(pid):
            return True
        time.sleep(0.2)
    return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False


def start_study(root: Path, jobs: int, cluster: str | None = None):
    """``conceptsim run`` of a study whose extraction sleeps, in a session of its own (a terminal's process
    group), once the extraction's kernel is up; with ``--cluster`` instead of ``--jobs`` when given."""
    import subprocess
    import sys
    import time

    for stage, name in NOTEBOOKS.items():
        make_notebook(root / "notebooks" / name, stage, SLEEPER)
    (root / "s.yml").write_text(STOP_STUDY)
    parallel = ["--cluster", cluster] if cluster else ["--jobs", str(jobs)]
    cmd = [sys.executable, "-m", "conceptsim.cli", "run", str(root / "s.yml"), "--quiet", *parallel]
    proc = subprocess.Popen(cmd, cwd=root, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    marker = root / "results" / "kernel.pids"
    deadline = time.monotonic() + 120
    while not (marker.exists() and marker.read_text()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    kernel, worker = (int(x) for x in marker.read_text().split())
    return proc, cmd, kernel, worker


@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_stops_workers_and_kernels_with_one_line_and_a_second_run_is_refused(fake_project, jobs):
    import signal
    import subprocess

    root, study = fake_project
    proc, cmd, kernel, worker = start_study(root, jobs)
    # a second run of the same study stops at once, naming the process that holds it
    second = subprocess.run(cmd, cwd=root, env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert second.returncode == 2 and f"already being run by process {proc.pid}" in second.stderr
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's process group: the study and its workers
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.strip() == ("conceptsim run: interrupted; stopped run(s): extract/shapes/mobilenet_v2_imagenet:random "
                           "(no record: the next run redoes them)")
    assert gone(kernel, 10) and gone(worker, 10)
    assert not list((root / "results" / "fake").rglob("_runs/*.json"))  # the stopped run left no record


def test_killed_study_takes_its_workers_and_kernels_along_and_no_record_is_written(fake_project):
    import signal

    root, study = fake_project
    proc, cmd, kernel, worker = start_study(root, 2)
    assert worker != proc.pid
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert gone(worker, 10) and gone(kernel, 15)
    assert not list((root / "results" / "fake").rglob("_runs/*.json"))


