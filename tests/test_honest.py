"""Honest figures: parallelism is named as such, a speedup is reported only against a
measured run and says which, and a resumed run's wall time leaves out the time it sat
stopped. Journals here are real SQLite, written through the engine's own Journal API
with set times, or by real runs of the command line."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from guildrun._analysis import analyze
from guildrun._journal import Event, EventKind, Journal, journal_path
from guildrun._metrics import summarize
from guildrun._monitor import Sample

from .conftest import Runner, write_plan

RUN = "r1"


def _journal(root: Path) -> Journal:
    return Journal(journal_path(root))


def _open_run(j: Journal, now: float) -> None:
    with j.transaction():
        j.create_run(
            RUN,
            root=Path("/nowhere"),
            plan_source=None,
            plan_json='{"tasks": [{"id": "t1"}, {"id": "t2"}]}',
            settings_json='{"total_parallel": 2}',
            limits={"w": 2},
            tasks=[
                ("t1", 0, "w", "implementation", None, []),
                ("t2", 1, "w", "implementation", None, []),
            ],
            now=now,
        )
        j.event(RUN, Event(EventKind.RUN_STARTED, now))
        j.instance_spawned(RUN, "w#1", "w", now)


def _attempt(j: Journal, task: str, n: int, start: float, end: float | None) -> None:
    with j.transaction():
        j.task_started(RUN, task, n, "w#1", None, start, "out", "err")
        j.event(RUN, Event(EventKind.TASK_STARTED, start, task, "w#1"))
    if end is not None:
        with j.transaction():
            j.attempt_ended(
                RUN, task, n, status="ok", started=start, ended=end, exit_code=0, error=None
            )
            j.task_ended(RUN, task, "done", end)
            j.event(RUN, Event(EventKind.TASK_FINISHED, end, task, data={"status": "ok"}))


def _resume(j: Journal, now: float) -> None:
    with j.transaction():
        j.set_status(RUN, "running")
        j.event(RUN, Event(EventKind.RUN_RESUMED, now))
        j.instance_spawned(RUN, "w#1", "w", now)


def _end(j: Journal, now: float, status: str) -> None:
    with j.transaction():
        j.event(RUN, Event(EventKind.RUN_ENDED, now, data={"status": status}))
        j.end_run(RUN, status, now)


def test_a_run_stopped_and_resumed_counts_only_the_time_it_ran(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    _open_run(j, 100.0)
    _attempt(j, "t1", 1, 100.0, 108.0)
    _end(j, 110.0, "interrupted")  # Ctrl-C at 110
    _resume(j, 1000.0)  # resumed 15 minutes later
    _attempt(j, "t2", 1, 1000.0, 1004.0)
    _end(j, 1005.0, "done")
    s = summarize(j, RUN)
    assert s.wall_s == pytest.approx(15.0)  # 10 s, then 5 s; not 905 s
    assert s.task_s == pytest.approx(12.0)
    assert s.parallelism == pytest.approx(12.0 / 15.0)
    assert s.utilization == pytest.approx(12.0 / 15.0)  # w#1 alive 10 s + 5 s, busy 12 s
    a = analyze(j, RUN)
    assert a.wall_s == pytest.approx(15.0)
    # No phase events here: the phase spans its attempts, 100 to 1004, less the stop.
    assert a.phases[0].wall_s == pytest.approx(10.0 + 4.0)
    assert a.parallelism == pytest.approx(12.0 / 15.0)
    assert sum(i.alive_s for i in a.instances) == pytest.approx(15.0)
    j.close()


def test_a_killed_engine_counts_until_its_last_journaled_event(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    _open_run(j, 100.0)
    _attempt(j, "t1", 1, 100.0, 103.0)
    _attempt(j, "t2", 1, 103.0, None)  # running when the engine was killed
    with j.transaction():
        j.event(RUN, Event(EventKind.GUARD_HOLD, 104.0, data={"reason": "CPU"}))  # its last sign
    _resume(j, 500.0)
    _attempt(j, "t2", 2, 500.0, 502.0)
    _end(j, 502.0, "done")
    s = summarize(j, RUN)
    assert s.wall_s == pytest.approx(4.0 + 2.0)
    a = analyze(j, RUN)
    assert a.wall_s == pytest.approx(6.0)
    # The killed attempt died with its engine: counted to 104, not across the gap.
    killed = next(x for x in a.attempts if x.task == "t2" and x.attempt == 1)
    assert killed.end == pytest.approx(4.0)
    # end_run retired both w#1 rows at 502; the first lived only while its engine did.
    assert sum(i.alive_s for i in a.instances) == pytest.approx(6.0)
    j.close()


def test_a_killed_engines_last_sample_counts_as_a_sign_of_life(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    _open_run(j, 100.0)
    _attempt(j, "t1", 1, 100.0, None)  # one long task; no event for a while
    with j.transaction():
        j.sample(RUN, Sample(160.0, 50.0, 1e9, 1e9, 1, 100.0, 1e6))  # the monitor saw it
    _resume(j, 900.0)
    _attempt(j, "t1", 2, 900.0, 901.0)
    _end(j, 901.0, "done")
    assert summarize(j, RUN).wall_s == pytest.approx(60.0 + 1.0)
    j.close()


def test_a_run_never_resumed_is_measured_end_to_end(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    _open_run(j, 100.0)
    _attempt(j, "t1", 1, 100.5, 102.5)
    _attempt(j, "t2", 1, 100.5, 102.5)
    _end(j, 103.0, "done")
    s = summarize(j, RUN)
    assert s.wall_s == pytest.approx(3.0)
    assert s.parallelism == pytest.approx(4.0 / 3.0)
    assert s.speedup is None and s.speedup_vs is None  # nothing measured to compare with
    data = s.to_json()
    assert data["parallelism"] == pytest.approx(1.3333, abs=1e-4)
    assert data["speedup"] is None and data["speedup_vs"] is None
    j.close()


@pytest.mark.slow
def test_speedup_is_measured_against_a_sequential_run_of_the_same_plan(
    guildrun: Runner, project: Path
) -> None:
    write_plan(
        project,
        {
            "specialists": {"w": {"run": ["sleep", "0.4"]}},
            "tasks": [{"id": f"t{i}", "specialist": "w"} for i in range(4)],
        },
    )
    args = ("run", "plan.yaml", "--root", str(project), "--json")
    one = guildrun(*args, "--total-parallel", "1", cwd=project)
    assert one.returncode == 0, one.stderr
    seq = json.loads(one.stdout)
    assert seq["speedup"] is None and seq["speedup_vs"] is None  # it is the baseline
    assert seq["parallelism"] == pytest.approx(1.0, abs=0.15)
    four = guildrun(*args, "--per-agent-type", "4", "--total-parallel", "4", cwd=project)
    assert four.returncode == 0, four.stderr
    par = json.loads(four.stdout)
    assert par["speedup_vs"] == "measured sequential"
    assert par["baseline_run"] == seq["run_id"]
    assert par["speedup"] == pytest.approx(seq["wall_s"] / par["wall_s"], rel=1e-3)
    assert par["speedup"] > 1.5  # 1.6 s of sleeping one at a time, 0.4 s four at a time
    # The summary, the list of runs and the report say the same.
    status = guildrun("status", "--root", str(project), cwd=project)
    assert re.search(
        rf"speedup .* {par['speedup']:.2f}x vs measured sequential \(run {seq['run_id']}\)",
        status.stdout,
    ), status.stdout
    assert "parallelism" in status.stdout
    runs = guildrun("runs", "--root", str(project), cwd=project)
    assert f"speedup {par['speedup']:.2f}x vs measured sequential" in runs.stdout
    report = guildrun("report", "--root", str(project), "--json", cwd=project)
    data = json.loads(report.stdout)
    assert data["summary"]["speedup"] == par["speedup"]
    assert data["analysis"]["parallelism"] == pytest.approx(par["parallelism"], rel=0.05)
    assert "speedup" not in data["analysis"]
    html = project / "r.html"
    guildrun("report", "--root", str(project), "--html", str(html), cwd=project)
    page = html.read_text()
    assert "parallelism (task time / wall)" in page
    assert f"speedup vs measured sequential (run {seq['run_id']})" in page


@pytest.mark.slow
def test_a_crashed_and_resumed_run_leaves_out_the_time_it_sat_stopped(
    guildrun: Runner, project: Path
) -> None:
    write_plan(
        project,
        {
            "settings": {"total_parallel": 1},
            "specialists": {"w": {"run": ["sleep", "0.3"]}},
            "tasks": [{"id": f"t{i}", "specialist": "w"} for i in range(3)],
        },
    )
    crashed = guildrun(
        "run",
        "plan.yaml",
        "--root",
        str(project),
        "-q",
        cwd=project,
        env={"GUILDRUN_TEST_CRASH_AFTER_COMMIT": "3"},
    )
    assert crashed.returncode == 137, crashed.stderr
    time.sleep(2.0)  # the run sits stopped
    resumed = guildrun("resume", "--root", str(project), "--json", cwd=project)
    assert resumed.returncode == 0, resumed.stderr
    s = json.loads(resumed.stdout)
    j = Journal(journal_path(project), readonly=True)
    try:
        run = j.run(s["run_id"])
    finally:
        j.close()
    clock = run["ended"] - run["created"]
    assert clock > 2.0
    assert s["wall_s"] < clock - 1.5  # the 2 s stopped are not in it
    assert s["wall_s"] >= 0.85  # three 0.3 s tasks, one at a time, did run


def test_docs_define_every_figure_the_summary_prints(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    _open_run(j, 100.0)
    _end(j, 101.0, "done")
    data = summarize(j, RUN).to_json()
    j.close()
    docs = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    figures = [k for k, v in data.items() if k.endswith("_s") or isinstance(v, float)]
    figures += ["speedup", "speedup_vs", "baseline_run"]
    for key in figures:
        assert f"**{key}**" in docs or f"`{key}`" in docs, key
    assert "**speedup**: `task_s / wall_s`" not in docs  # the old, misleading definition
