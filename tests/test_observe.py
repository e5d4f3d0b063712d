"""Observability with real runs: the event stream, samples, overhead, predictions."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import guildrun
from guildrun._engine import Engine, local_executor
from guildrun._journal import Journal, journal_path
from guildrun._prepare import prepare
from guildrun._schedule import RoundRobin, WorkStealing, distribution
from guildrun._simulate import predict, simulate

from .conftest import Runner, compiled, write_plan


def db(root: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(root / ".guildrun" / "journal.db")
    conn.row_factory = sqlite3.Row
    return conn


@pytest.mark.slow
def test_events_stream_while_the_run_goes_on(project: Path) -> None:
    write_plan(
        project,
        {
            "specialists": {"w": {"run": ["sleep", "{scope}"]}},
            "tasks": [
                {"id": "quick", "specialist": "w", "scope": "0.1"},
                {"id": "slow", "specialist": "w", "scope": "3", "depends_on": ["quick"]},
            ],
        },
    )
    events = project / "events.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "guildrun",
            "run",
            "plan.yaml",
            "--root",
            str(project),
            "--events",
            str(events),
            "-q",
        ],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        seen: list[dict[str, Any]] = []
        while not any(e["event"] == "task_started" and e["task"] == "slow" for e in seen):
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
            if events.exists():
                seen = [json.loads(line) for line in events.read_text().splitlines()]
        assert proc.poll() is None  # read while the run is still going
    finally:
        assert proc.wait(timeout=30) == 0
    seen = [json.loads(line) for line in events.read_text().splitlines()]
    kinds = [e["event"] for e in seen]
    for kind in (
        "run_started",
        "instance_spawned",
        "task_queued",
        "task_started",
        "task_finished",
        "instance_retired",
        "run_ended",
    ):
        assert kind in kinds
    for e in seen:
        assert isinstance(e["time"], float)
        if e["event"].startswith("task_"):
            assert "task" in e
        if e["event"].startswith("instance_"):
            assert "instance" in e


def test_events_to_stdout_send_the_human_output_to_stderr(guildrun: Runner, project: Path) -> None:
    write_plan(
        project,
        {"specialists": {"w": {"run": ["true"]}}, "tasks": [{"id": "a", "specialist": "w"}]},
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), "--events", "-", cwd=project)
    assert proc.returncode == 0
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert lines[0]["event"] == "run_started" and lines[-1]["event"] == "run_ended"
    assert "done" in proc.stderr


def test_task_resources_are_sampled(project: Path) -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.8: pass\n"
    plan = guildrun.Plan.model_validate(
        {
            "settings": {"sample_interval": 0.1},
            "specialists": {"w": {"run": [sys.executable, "-c", burn]}},
            "tasks": [{"id": "burn", "specialist": "w"}],
        }
    )
    assert guildrun.run(plan, root=project).ok
    with db(project) as conn:
        a = conn.execute("SELECT cpu_s, peak_rss FROM attempts").fetchone()
        samples = conn.execute("SELECT COUNT(*), MAX(running), MAX(cpu) FROM samples").fetchone()
    assert a["cpu_s"] > 0.3 and a["peak_rss"] > 1_000_000
    assert samples[0] >= 3 and samples[1] == 1 and samples[2] > 0


@pytest.mark.slow
def test_resource_guard_holds_back_starts_but_never_stalls(project: Path) -> None:
    plan = guildrun.Plan.model_validate(
        {
            # No machine has a petabyte free: the guard holds for the whole run.
            "settings": {"sample_interval": 0.05, "min_free_memory_mb": 1e9},
            "specialists": {"w": {"run": ["sleep", "0.3"]}},
            "tasks": [{"id": f"t{i}", "specialist": "w"} for i in range(4)],
        }
    )
    summary = guildrun.run(plan, root=project)
    assert summary.done == 4
    with db(project) as conn:
        held = conn.execute("SELECT data FROM events WHERE kind='guard_hold'").fetchone()
    assert "min_free_memory_mb" in json.loads(held["data"])["reason"]
    assert summary.parallelism < 1.3  # one task at a time, from the first start on


class SlowJournal(Journal):
    """A journal whose task_ended takes a known extra time: an injected engine delay."""

    delay = 0.08
    calls = 0

    def task_ended(self, *args: Any, **kwargs: Any) -> None:
        SlowJournal.calls += 1
        time.sleep(self.delay)
        super().task_ended(*args, **kwargs)


def overhead(root: Path, journal: Journal) -> float:
    plan = guildrun.Plan.model_validate(
        {
            "settings": {"per_agent_type": 4, "sample_interval": 0},
            "specialists": {"w": {"run": ["true"]}},
            "tasks": [{"id": f"t{i}", "specialist": "w"} for i in range(25)],
        }
    )
    prepared = prepare(plan, root=root)
    engine = Engine(prepared, journal, local_executor(prepared))
    summary = asyncio.run(engine.execute())
    journal.close()
    assert summary.done == 25
    with db(root) as conn:
        row = conn.execute(
            "SELECT SUM(seconds) FROM timings WHERE run_id=?", (summary.run_id,)
        ).fetchone()
    return float(row[0])


@pytest.mark.slow
def test_injected_engine_delay_is_recovered_in_the_overhead(tmp_path: Path) -> None:
    base_root, slow_root = tmp_path / "base", tmp_path / "slow"
    base_root.mkdir()
    slow_root.mkdir()
    base = overhead(base_root, Journal(journal_path(base_root)))
    SlowJournal.calls = 0
    slow = overhead(slow_root, SlowJournal(journal_path(slow_root)))
    injected = SlowJournal.calls * SlowJournal.delay
    assert SlowJournal.calls == 25
    assert abs((slow - base) - injected) <= 0.1 * injected, (slow, base, injected)


MIXED: dict[str, Any] = {
    "settings": {"per_agent_type": 3, "total_parallel": 4, "sample_interval": 0},
    "specialists": {"a": {"run": ["sleep", "{scope}"]}, "b": {"run": ["sleep", "{scope}"]}},
    "tasks": [
        *(
            {"id": f"a{i}", "specialist": "a", "scope": str(d), "estimate": d}
            for i, d in enumerate([0.9, 0.3, 0.3, 0.9, 0.3, 0.3, 0.3, 0.3, 0.3], 1)
        ),
        {"id": "b1", "specialist": "b", "scope": "0.6", "estimate": 0.6},
        {"id": "b2", "specialist": "b", "scope": "0.6", "estimate": 0.6, "depends_on": ["b1"]},
        {"id": "b3", "specialist": "b", "scope": "0.2", "estimate": 0.2},
        {
            "id": "v1",
            "specialist": "b",
            "scope": "0.3",
            "estimate": 0.3,
            "phase": "validation",
            "depends_on": ["a4"],
        },
    ],
}


def test_strategies_differ_on_mixed_work() -> None:
    plan = compiled(MIXED)
    durations = {t["id"]: t["estimate"] for t in MIXED["tasks"]}
    walls = {p.strategy: p.wall for p in predict(plan, durations, limits={"a": 3, "b": 3}, total=4)}
    assert walls["round-robin"] > 1.2 * walls["longest-first"], walls
    assert walls["work-stealing"] >= walls["longest-first"]


@pytest.mark.slow
def test_simulation_predicts_a_real_run_within_ten_percent(project: Path) -> None:
    # Tasks twice as long as MIXED's, so a process start on a busy machine weighs less.
    slow = {
        **MIXED,
        "tasks": [
            {**t, "scope": str(2 * t["estimate"]), "estimate": 2 * t["estimate"]}
            for t in MIXED["tasks"]
        ],
    }
    plan = guildrun.Plan.model_validate(
        {**slow, "settings": {**slow["settings"], "strategy": "longest-first"}}
    )
    durations = {t["id"]: t["estimate"] for t in slow["tasks"]}
    predicted = simulate(
        compiled(slow),
        durations,
        limits={"a": 3, "b": 3},
        total=4,
        strategy=distribution("longest-first"),
    ).wall
    summary = guildrun.run(plan, root=project)
    assert summary.ok
    assert abs(summary.wall_s - predicted) <= 0.1 * predicted, (summary.wall_s, predicted)


def test_round_robin_and_stealing_predictions_on_uniform_work() -> None:
    data = {
        "specialists": {"w": {"run": ["true"]}},
        "tasks": [{"id": str(i), "specialist": "w"} for i in range(9)],
    }
    plan = compiled(data)
    ws = simulate(plan, lambda _t: 1.0, limits={"w": 3}, total=20, strategy=WorkStealing())
    rr = simulate(plan, lambda _t: 1.0, limits={"w": 3}, total=20, strategy=RoundRobin())
    assert ws.wall == rr.wall == 3.0


def test_plan_simulate_and_auto(guildrun: Runner, project: Path) -> None:
    write_plan(project, {**MIXED, "settings": {**MIXED["settings"], "strategy": "auto"}})
    proc = guildrun(
        "plan", "plan.yaml", "--simulate", "--json", "--root", str(project), cwd=project
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["settings"]["strategy"] == "longest-first"
    assert any("strategy auto: longest-first" in n for n in data["notes"])
    names = [s["strategy"] for s in data["simulation"]["strategies"]]
    assert names == ["work-stealing", "round-robin", "longest-first"]
    assert data["simulation"]["best"] == "longest-first"
    # Without estimates, auto means work stealing.
    plain = {
        **MIXED,
        "settings": {"strategy": "auto"},
        "tasks": [{k: v for k, v in t.items() if k != "estimate"} for t in MIXED["tasks"]],
    }
    write_plan(project, plain)
    proc = guildrun("plan", "plan.yaml", "--json", "--root", str(project), cwd=project)
    assert json.loads(proc.stdout)["settings"]["strategy"] == "work-stealing"


@pytest.mark.slow
def test_adaptive_limits_follow_the_seed_table(guildrun: Runner, project: Path) -> None:
    expected = {3: ("simple", 2), 14: ("medium", 7), 60: ("large", 20), 150: ("enterprise", 20)}
    for n, (klass, total) in expected.items():
        write_plan(
            project,
            {
                "specialists": {"w": {"run": ["true"]}},
                "tasks": [{"id": str(i), "specialist": "w"} for i in range(n)],
            },
        )
        proc = guildrun(
            "plan", "plan.yaml", "--auto", "--json", "--root", str(project), cwd=project
        )
        data = json.loads(proc.stdout)
        assert data["settings"]["total_parallel"] == total, (n, data["notes"])
        assert klass in data["notes"][0]


def test_learned_estimates_from_past_runs(project: Path) -> None:
    data = {
        "settings": {"sample_interval": 0},
        "specialists": {"w": {"run": ["sleep", "{scope}"]}},
        "tasks": [
            {"id": "long", "specialist": "w", "scope": "0.6", "files": ["a.txt"]},
            {"id": "short", "specialist": "w", "scope": "0.1", "files": ["b.txt"]},
        ],
    }
    guildrun.run(guildrun.Plan.model_validate(data), root=project)
    from guildrun._simulate import estimates

    est, source = estimates(compiled(data, project), journal_path(project))
    assert "2 learned" in source
    assert 0.55 < est["long"] < 0.8 and 0.05 < est["short"] < 0.3


def test_guard_reasons() -> None:
    from guildrun._monitor import Monitor, Sample

    busy = Sample(
        0.0,
        cpu=97.0,
        mem_used=0.0,
        mem_available=512 * 2**20,
        running=3,
        agents_cpu=0.0,
        agents_rss=0.0,
    )
    assert Monitor(90, None).over(busy) == "CPU 97% > max_cpu 90%"
    assert Monitor(None, 1024).over(busy) == "free memory 512 MB < min_free_memory_mb 1024"
    assert Monitor(99, 256).over(busy) is None
