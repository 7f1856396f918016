"""Runs of a study as tasks of a Dask cluster (LocalCluster, 2 process workers) on the fake project of
test_run_orchestrate (tiny notebooks, real papermill): same records and results as --jobs 2, a killed worker's run
retried, failures and skipped dependents reported as with --jobs, unreachable scheduler and a worker that
cannot see the results folder refused with a clear message."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import test_run_orchestrate  # noqa: E402
from conceptsim import cli  # noqa: E402
from conceptsim.paths import executed_path  # noqa: E402
from conceptsim.run import orchestrate as runner  # noqa: E402
from conceptsim.run.cluster import ClusterError, DaskExecutor, needs_gpu  # noqa: E402
from conceptsim.run.keys import record_path  # noqa: E402
from conceptsim.run.study import NOTEBOOKS, parse_study  # noqa: E402
from conftest import make_project  # noqa: E402
from test_run_orchestrate import ROOT, executions, make_notebook  # noqa: E402

# every run writes a result file from its parameters (what --jobs and --cluster must agree on)
RESULT = """
results = os.environ.get("CONCEPTSIM_RESULTS") or os.environ["CONCEPTSIM_ROOT"] + "/results"
res = pathlib.Path(results) / "fake" / (STAGE + "-" + dataset + ".json")
res.parent.mkdir(parents=True, exist_ok=True)
res.write_text(json.dumps({"stage": STAGE, "dataset": dataset, "seed": seed, "pid_free": True}, sort_keys=True))
"""

# the first concepts run kills the worker process executing it (the kernel's parent), once
KILL = """
import signal, time
marker = pathlib.Path(os.environ["CONCEPTSIM_ROOT"]) / "killed-once"
if STAGE == "concepts" and not marker.exists():
    marker.write_text(str(os.getppid()))
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(30)  # ipykernel's parent poller ends this kernel once its worker is gone
"""


fake_project = test_run_orchestrate.fake_project  # the fake project (tiny notebooks) of the runner's tests


@pytest.fixture(scope="module")
def scheduler():
    """One LocalCluster (2 process workers, one run each at a time) for the tests that join it by address."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=0,
                      dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def with_extra(root: Path, extra: str) -> None:
    for stage, name in NOTEBOOKS.items():
        make_notebook(root / "notebooks" / name, stage, extra=extra)


def result_files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*.json")) if "_runs" not in p.parts}


def test_same_records_and_results_as_jobs(fake_project, monkeypatch, capsys):
    root, study = fake_project
    with_extra(root, RESULT)
    by_jobs = runner.run_study(study, jobs=2, progress=False)
    jobs_results, jobs_records = result_files(root / "results"), {
        r.id: json.loads(record_path(r).read_text()) for r in study.runs()}
    monkeypatch.setenv("CONCEPTSIM_RESULTS", str(root / "results-cluster"))
    capsys.readouterr()
    by_cluster = runner.run_study(study, progress=True, executor=DaskExecutor("local:2"))
    # the progress display shows each run as it starts, on its worker, as with --jobs
    shown = capsys.readouterr().err
    for r in study.runs():
        assert re.search(rf"started {re.escape(r.id)} on tcp://\S+ \| study fake: .* running", shown), shown
    assert not by_jobs.failed and not by_cluster.failed
    assert sorted(r["id"] for r in by_cluster.executed) == sorted(r["id"] for r in by_jobs.executed)
    assert result_files(root / "results-cluster") == jobs_results
    for r in study.runs():
        rec = json.loads(record_path(r).read_text())
        same = {k: v for k, v in rec.items() if k not in ("started", "seconds", "log")}
        assert same == {k: v for k, v in jobs_records[r.id].items() if k not in ("started", "seconds", "log")}
        assert rec["log"].startswith(str(root / "results-cluster"))
    # a dependency ran before its dependents
    order = {r["id"]: r["started"] for r in by_cluster.executed}
    for r in study.runs():
        assert all(order[d] < order[r.id] for d in r.depends_on)
    # resumable as with --jobs: nothing left to do, so no cluster is even started
    again = runner.run_study(study, progress=False, executor=DaskExecutor("local:2"))
    assert again.executed == [] and len(again.skipped_complete) == 4


def test_killed_worker_loses_only_its_run(fake_project, scheduler):
    root, study = fake_project
    with_extra(root, KILL)
    t0 = time.time()
    out = runner.run_study(study, progress=False, executor=DaskExecutor(scheduler))
    assert (root / "killed-once").exists()  # a worker really was killed mid-run
    assert not out.failed and not out.skipped_dependency and len(out.executed) == 4
    ran = executions(root)
    assert ran.count("concepts shapes") == 2  # the killed run, retried on a worker
    assert ran.count("extract shapes") == 1  # its finished dependency was not executed again
    concepts = next(r for r in study.runs() if r.stage == "concepts")
    rec = json.loads(record_path(concepts).read_text())
    assert rec["status"] == "ok" and rec["started"] > t0
    assert executed_path(concepts).exists()


def test_run_whose_workers_keep_dying_fails_after_bounded_retries(fake_project):
    root, study = fake_project
    make_notebook(root / "notebooks" / NOTEBOOKS["concepts"], "concepts",
                  extra="import signal, time\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(30)\n")
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):  # read by the in-process scheduler
        out = runner.run_study(study, progress=False, executor=DaskExecutor("local:2"))
    assert [r["id"] for r in out.failed] == ["concepts/shapes/mobilenet_v2_imagenet"]
    assert "its worker died each of the 2 times it ran" in out.failed[0]["error"]
    assert set(out.skipped_dependency) == {"compare_layers/shapes", "compare_models/shapes"}
    assert executions(root).count("concepts shapes") == 2


def test_failure_keeps_traceback_and_skips_dependents(fake_project, scheduler, capsys):
    root, study = fake_project
    make_notebook(root / "notebooks" / NOTEBOOKS["concepts"], "concepts",
                  extra='raise RuntimeError("planted failure in concepts")\n')
    code = cli.main(["run", str(study_file(root)), "--cluster", scheduler, "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "FAILED concepts/shapes/mobilenet_v2_imagenet: RuntimeError: planted failure in concepts" in err
    assert "SKIPPED compare_layers/shapes" in err and "SKIPPED compare_models/shapes" in err
    failed_run = next(r for r in study.runs() if r.stage == "concepts")
    assert "planted failure in concepts" in executed_path(failed_run).read_text()
    assert not record_path(failed_run).exists()
    assert executions(root).count("extract shapes") == 1


def study_file(root: Path) -> Path:
    path = root / "fake.yml"
    path.write_text("name: fake\ndatasets: {shapes: {build: {n: 20, size: 48}}}\nmodels: [mobilenet_v2_imagenet]\n")
    return path


def test_unreachable_scheduler_fails_at_once(fake_project, capsys):
    root, _ = fake_project
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    code = cli.main(["run", str(study_file(root)), "--cluster", f"tcp://127.0.0.1:{port}", "--quiet"])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 20
    assert "cannot reach a Dask scheduler there" in err and f"tcp://127.0.0.1:{port}" in err
    assert executions(root) == []


def test_bad_cluster_argument():
    for bad in ("local", "local:0", "local:two", "locals:2"):
        with pytest.raises(ClusterError, match="expected local:N"):
            DaskExecutor(bad)
    for bad in ("bogus", "tcp://host", "host:port", "tcp://:8786"):
        with pytest.raises(ClusterError, match="or a scheduler address such as tcp://HOST:8786"):
            DaskExecutor(bad)
    for good in ("tcp://127.0.0.1:8786", "10.0.0.2:8786", "tls://scheduler.example:8786"):
        assert DaskExecutor(good).local_workers == 0
    with pytest.raises(SystemExit):  # --jobs and --cluster exclude each other
        cli.build_parser().parse_args(["run", "s.yml", "--jobs", "2", "--cluster", "local:2"])


def test_a_malformed_cluster_address_is_refused_even_when_nothing_is_pending(capsys):
    # checked before the study is even loaded: the study file does not need to exist
    assert cli.main(["run", "no-such-study.yml", "--cluster", "bogus"]) == 2
    assert "--cluster 'bogus': expected local:N" in capsys.readouterr().err


def test_gpu_resource_only_for_cuda_extraction_and_concepts():
    def runs(device):
        return parse_study({"name": "g", "datasets": {"shapes": {}}, "models": ["mobilenet_v2_imagenet"],
                            "extraction": {"device": device}}).runs()

    assert {r.stage for r in runs("cuda") if needs_gpu(r)} == {"extract", "concepts"}
    assert not any(needs_gpu(r) for r in runs("cpu"))


def test_cuda_study_on_a_cluster_without_gpu_workers_is_refused(fake_project, scheduler):
    root, _ = fake_project
    study = parse_study({"name": "fake", "datasets": {"shapes": {}}, "models": ["mobilenet_v2_imagenet"],
                         "extraction": {"device": "cuda"}})
    with pytest.raises(ClusterError, match=r"2 run\(s\) need a GPU .* no worker offers one"):
        runner.run_study(study, progress=False, executor=DaskExecutor(scheduler))
    assert executions(root) == []


def test_jobs_path_imports_no_dask():
    code = ("import sys; from conceptsim import cli; from conceptsim.run import orchestrate as runner; cli.build_parser(); "
            "print('dask' in sys.modules or 'distributed' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (a worker with its own mounts)")
def test_worker_that_cannot_see_results_fails_clearly(fake_project, capsys):
    """A worker in its own mount namespace with an empty tmpfs over the results folder."""
    root, study = fake_project
    results = root / "results"
    results.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {results}"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"cannot mount in a new mount namespace: {probe.stderr.decode().strip()}")
    with LocalCluster(n_workers=0, processes=True, dashboard_address=":0") as cluster:
        worker = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {results} && exec {sys.executable} -m "
             f"distributed.cli.dask_worker {cluster.scheduler_address} --nthreads 1 --no-dashboard --no-nanny"],
            env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Client(cluster) as client:
                client.wait_for_workers(1, timeout=120)
            code = cli.main(["run", str(study_file(root)), "--cluster", cluster.scheduler_address, "--quiet"])
        finally:
            worker.terminate()
            worker.wait(30)
    err = capsys.readouterr().err
    assert code == 2
    assert "worker tcp://" in err and f"cannot see the results folder {results}" in err and "shared filesystem" in err
    assert executions(root) == []


def untimed(value):
    """A JSON value without its timings (keys ending in _s, seconds, started, timings)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items()
                if not (k.endswith("_s") or "seconds" in k or k in ("started", "timings"))}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


@pytest.mark.slow
def test_smoke_study_same_files_whatever_the_parallelism(tmp_path):
    """The default study's smoke mode on one dataset (shapes: every model, twin and stage) with --jobs 1,
    --jobs 2 and --cluster local:2, each in its own temporary project: the same CSVs byte for byte, the same
    JSON (zarr metadata included) apart from timings, the same run keys. The wall times are printed (-s)
    and written to ``walls.json`` beside the projects."""
    walls = {}
    for how in (["--jobs", "1"], ["--jobs", "2"], ["--cluster", "local:2"]):
        root = make_project(tmp_path / "-".join(h.strip("-").replace(":", "") for h in how))
        env = {**os.environ, "CONCEPTSIM_ROOT": str(root), "CONCEPTSIM_RESULTS": str(root / "results"),
               "CONCEPTSIM_CACHE": os.environ.get("CONCEPTSIM_CACHE") or str(ROOT / ".cache")}
        cmd = [str(Path(sys.executable).parent / "conceptsim"), "run", "studies/default.yml", "--smoke",
               "--only", "dataset=shapes", *how, "--quiet"]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=3600)
        walls[" ".join(how)] = round(time.monotonic() - t0, 1)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    print(f"\nsmoke study (shapes) wall seconds: {walls}")
    (tmp_path / "walls.json").write_text(json.dumps(walls))
    assert_same_results(tmp_path / "jobs-1", tmp_path / "jobs-2", "default-smoke")
    assert_same_results(tmp_path / "jobs-2", tmp_path / "cluster-local2", "default-smoke")


def assert_same_results(project_a: Path, project_b: Path, study: str) -> None:
    """Two projects' results of one study agree: the same files, CSVs byte for byte, run keys equal, other
    JSON equal apart from timings and the project's own folder (absolute paths name it)."""
    a, b = project_a / "results" / study, project_b / "results" / study

    def files(folder):
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in (".csv", ".json"))

    def document(project, rel):
        return untimed(json.loads((project / "results" / study / rel).read_text().replace(str(project), "<project>")))

    assert files(a) == files(b) and any(f.endswith("concept_quality.csv") for f in files(a))
    for rel in files(a):
        if rel.startswith("_runs"):
            assert json.loads((a / rel).read_text())["key"] == json.loads((b / rel).read_text())["key"], rel
        elif rel.endswith(".csv"):
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        else:
            assert document(project_a, rel) == document(project_b, rel), rel
    print(f"{project_a.name} and {project_b.name}: {len(files(a))} result files agree")


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl-c", "kill -9"])
def test_stopped_study_stops_the_local_cluster_with_one_line_and_no_record(fake_project, stop):
    import signal

    root, _ = fake_project
    proc, cmd, kernel, worker = test_run_orchestrate.start_study(root, 0, cluster="local:2")
    assert worker != proc.pid  # the kernel's parent is a Dask worker process
    t0 = time.monotonic()
    if stop == "ctrl-c":  # Ctrl-C reaches the terminal's process group: the study and its Dask workers
        os.killpg(proc.pid, signal.SIGINT)
    else:  # the study dies without a word: its workers must not go on and record the run
        os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    stopped = time.monotonic() - t0
    if stop == "ctrl-c":
        assert proc.returncode == 130, err
        assert err.strip() == ("conceptsim run: interrupted; stopped run(s): extract/shapes/mobilenet_v2_imagenet:random "
                               "(no record: the next run redoes them)")
        assert stopped < 15, f"the study took {stopped:.1f} s to stop"
    assert test_run_orchestrate.gone(worker, 10) and test_run_orchestrate.gone(kernel, 15)
    assert not list((root / "results" / "fake").rglob("_runs/*.json"))  # the stopped run left no record


def test_a_stopping_study_keeps_the_closing_clusters_info_messages_quiet():
    """On Ctrl-C the executor holds the ``distributed`` loggers to errors (:func:`quiet_distributed_logs`): a
    LocalCluster restores its handlers' levels as it closes, and a connection dropped after that printed an
    INFO traceback beside the command line's one line."""
    import io
    import logging

    from conceptsim.run.cluster import quiet_distributed_logs

    logger = logging.getLogger("distributed")
    level, out = logger.level, io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setLevel(logging.INFO)  # as the cluster leaves it when it closes
    logger.addHandler(handler)
    try:
        logger.setLevel(logging.INFO)
        logging.getLogger("distributed.batched").info("before: shown")
        quiet_distributed_logs()
        logging.getLogger("distributed.batched").info("Batched Comm Closed")
        logging.getLogger("distributed.batched").error("an error: shown")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert out.getvalue().splitlines() == ["before: shown", "an error: shown"]
