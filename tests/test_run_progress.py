"""The run progress display: counts, clocks of executing runs, and the time-left estimate from records."""

import io

import pytest

from conceptsim.run.progress import StudyProgress, expected_seconds, format_duration, stage_of, time_left


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_format_duration():
    assert format_duration(0.4) == "0 s"
    assert format_duration(59) == "59 s"
    assert format_duration(185) == "3 min 05 s"
    assert format_duration(3720) == "1 h 02 min"


def test_expected_seconds_own_record_then_stage_mean_then_none():
    records = [
        {"id": "extract/shapes/a", "stage": "extract", "seconds": 100.0, "status": "ok"},
        {"id": "extract/shapes/b", "stage": "extract", "seconds": 60.0, "status": "ok"},
        {"id": "concepts/shapes/a", "stage": "concepts", "seconds": 30.0, "status": "ok"},
        {"id": "concepts/shapes/b", "seconds": "broken"},  # ignored: no number
    ]
    exp = expected_seconds(records, ["extract/shapes/a", "extract/photo/c", "concepts/shapes/b", "compare_layers/shapes"])
    assert exp == {"extract/shapes/a": 100.0, "extract/photo/c": 80.0, "concepts/shapes/b": 30.0,
                   "compare_layers/shapes": None}
    assert stage_of("compare_models/shapes") == "compare_models"


def test_time_left_schedules_on_the_workers():
    assert time_left([10, 20, 30], [], jobs=1) == 60
    assert time_left([10, 20, 30], [5], jobs=1) == 65
    # two workers: 30 on one, 10 + 20 on the other; a running run's remainder occupies its worker first
    assert time_left([30, 10, 20], [], jobs=2) == 30
    assert time_left([10], [25, 5], jobs=2) == 25
    assert time_left([], [-3], jobs=2) == 0  # a run past its expected time still counts as about done


def make(clock, stream=None, **kw):
    return StudyProgress("demo", total=5, skipped=1, jobs=1, stream=stream or io.StringIO(), clock=clock, **kw)


def test_text_names_running_runs_elapsed_and_counts():
    clock = Clock()
    p = make(clock, expected={"extract/s/a": 100.0, "concepts/s/a": 50.0, "compare_layers/s": 20.0,
                              "compare_models/s": 10.0})
    p.started("extract/s/a")
    clock.t += 40
    lines = p.lines()
    assert lines[0] == ("study demo: 0 done, 1 skipped (complete), 1 running, 3 left; "
                        "about 2 min 20 s left")  # 60 s of the running one + 50 + 20 + 10
    assert lines[1] == "  extract/s/a: 40 s of about 1 min 40 s"
    p.finished("extract/s/a", True, 40)
    p.started("concepts/s/a")
    clock.t += 10
    assert p.lines()[0] == "study demo: 1 done, 1 skipped (complete), 1 running, 2 left; about 1 min 10 s left"
    p.finished("concepts/s/a", False, 10)
    p.skipped_dependency("compare_layers/s")
    p.skipped_dependency("compare_models/s")
    assert p.summary() == ("study demo: 1 done, 1 skipped (complete), 1 failed, 2 skipped (failed dependency), "
                           "0 running, 0 left")


def test_no_estimate_before_any_time_then_a_range_for_untimed_stages():
    clock = Clock()
    p = make(clock, expected={"extract/s/a": None, "concepts/s/a": None})
    assert p.estimate() is None and p.estimate_range() is None
    assert p.summary().endswith("; no estimate until the first run ends")
    # one stage timed (records): the untimed one is taken as long as it, and the display says which is untimed
    p = make(clock, expected={"extract/s/a": None, "concepts/s/a": 50.0})
    assert p.estimate() is None and p.estimate_range() == (100.0, 100.0)
    assert p.summary().endswith("; about 1 min 40 s left; not yet timed: extract")
    # two stages timed: an untimed run lies between the shortest and the longest stage mean
    p = make(clock, expected={"extract/s/a": 100.0, "concepts/s/a": 20.0, "compare_layers/s": None,
                              "compare_models/s": None})
    assert p.estimate_range() == (160.0, 320.0)  # 120 + 2 x 20 .. 120 + 2 x 100
    assert p.summary().endswith("; about 2 min 40 s to 5 min 20 s left; not yet timed: compare_layers, compare_models")


def test_log_output_one_line_per_event_and_quiet_prints_nothing():
    out = io.StringIO()
    p = make(Clock(), stream=out, expected={"extract/s/a": 12.0}).start()
    p.started("extract/s/a")
    p.finished("extract/s/a", True, 12.4)
    p.close()
    text = out.getvalue().splitlines()
    assert text[1].startswith("started extract/s/a | study demo: 0 done, 1 skipped (complete), 1 running")
    assert text[2].startswith("finished extract/s/a in 12 s | study demo: 1 done")
    assert "\x1b[" not in out.getvalue()  # not a terminal: no cursor movement
    quiet = io.StringIO()
    q = make(Clock(), stream=quiet, enabled=False).start()
    q.started("extract/s/a")
    q.finished("extract/s/a", True, 1)
    q.close()
    assert quiet.getvalue() == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_redraws_the_block_in_place():
    out = Terminal()
    p = make(Clock(), stream=out, expected={"extract/s/a": 12.0})
    p.started("extract/s/a")  # two lines drawn: summary and the running run
    p.finished("extract/s/a", True, 3)
    assert out.getvalue().count("\x1b[2F") == 1  # the second draw moves up over the first block
    assert "extract/s/a: 0 s of about 12 s" in out.getvalue()


@pytest.mark.parametrize("jobs", [1, 3])
def test_estimate_counts_pending_runs_on_jobs_workers(jobs):
    p = make(Clock(), expected={f"extract/s/{i}": 30.0 for i in range(3)})
    p.jobs = jobs
    assert p.estimate() == (90.0 if jobs == 1 else 30.0)


def test_first_run_of_a_study_learns_from_its_own_finished_runs():
    """Without records, a run's expectation is the mean of the finished runs of its stage in this session."""
    clock = Clock()
    p = make(clock, expected={"extract/s/a": None, "extract/s/b": None, "concepts/s/a": None})
    assert p.estimate() is None
    p.started("extract/s/a")
    clock.t += 30
    assert "no estimate until the first run ends" in p.summary()
    p.finished("extract/s/a", True, 30.0)
    assert p.estimate() is None  # no concept run has finished yet: a range (here one value) instead
    assert p.estimate_range() == (60.0, 60.0) and "about 1 min 00 s left; not yet timed: concepts" in p.summary()
    p.expected["concepts/s/a"] = 50.0
    assert p.estimate() == pytest.approx(80.0)  # extract/s/b (30, learnt) then concepts/s/a (50) on one worker
    p.started("extract/s/b")
    clock.t += 10
    assert "extract/s/b: 10 s of about 30 s" in "\n".join(p.lines())


def test_default_study_first_run_has_an_estimate_from_the_first_finished_run_on():
    """A first run of a study shaped like the default one (3 datasets x 3 models and twins: 42 runs, no
    records): after the first extraction ends, every summary has a time left, untimed stages named."""
    clock = Clock()
    ids = [f"{stage}/{ds}/{m}" for ds in ("a", "b", "c") for m in ("m1", "m1:random", "m2", "m2:random", "m3", "m3:random")
           for stage in ("extract", "concepts")] + [f"{stage}/{ds}" for ds in ("a", "b", "c")
                                                    for stage in ("compare_layers", "compare_models")]
    assert len(ids) == 42
    p = StudyProgress("default", total=42, jobs=2, expected=dict.fromkeys(ids), stream=io.StringIO(), clock=clock)
    without = 0
    for rid in ids:
        p.started(rid)
        without += "no estimate" in p.summary()
        clock.t += 20.0 if rid.startswith("extract") else 40.0
        p.finished(rid, True, 20.0 if rid.startswith("extract") else 40.0)
        if p.left:
            assert "left" in p.summary() and "no estimate" not in p.summary()
    assert without == 1  # only while the very first run executes


def test_cluster_runs_show_their_worker_and_a_retry_moves_the_run():
    clock = Clock()
    out = io.StringIO()
    p = make(clock, stream=out, expected={"extract/s/a": 60.0, "extract/s/b": 60.0, "concepts/s/a": 30.0}).start()
    p.set_workers(2)
    p.started("extract/s/a", "tcp://10.0.0.1:4001")
    p.started("extract/s/b", "tcp://10.0.0.2:4002")
    clock.t += 20
    lines = p.lines()
    assert lines[0].startswith("study demo: 0 done, 1 skipped (complete), 2 running, 2 left; about 1 min 10 s left")
    assert lines[1:] == ["  extract/s/a on tcp://10.0.0.1:4001: 20 s of about 1 min 00 s",
                         "  extract/s/b on tcp://10.0.0.2:4002: 20 s of about 1 min 00 s"]
    p.started("extract/s/a", "tcp://10.0.0.3:4003")  # its worker died: Dask runs it again elsewhere
    assert p.lines()[1] == "  extract/s/a on tcp://10.0.0.3:4003: 0 s of about 1 min 00 s"
    assert "started extract/s/a on tcp://10.0.0.3:4003 (retried)" in out.getvalue()
    p.finished("extract/s/b", True, 20)
    p.started("extract/s/b", "tcp://10.0.0.2:4002")  # a start report that arrives after the result: ignored
    assert len(p.running) == 1 and "extract/s/b" not in "\n".join(p.lines())
