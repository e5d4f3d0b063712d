"""The run analysis against real runs whose ideal figures are known by hand.

Tasks sleep for set durations, so each plan's wall time, parallelism, lower bound and
critical path can be worked out on paper; the measured figures must land near them.
Margins are generous: CI machines are small and noisy, and sleeps overshoot.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import guildrun
from guildrun import Plan, Settings, Specialist, Task, TaskContext
from guildrun._analysis import Analysis, PhaseStats, SpecialistStats, analyze
from guildrun._clock import VirtualClock
from guildrun._journal import Journal, journal_path
from guildrun._metrics import Summary


async def sleeper(ctx: TaskContext) -> str:
    """A stand-in agent that works for `scope` seconds."""
    await asyncio.sleep(float(ctx.scope or 0))
    return ctx.task_id


def tasks(prefix: str, n: int, seconds: float, **extra: Any) -> list[Task]:
    return [Task(id=f"{prefix}{i}", scope=str(seconds), **extra) for i in range(1, n + 1)]


def run_plan(
    root: Path,
    work: list[Task],
    specialists: dict[str, Specialist] | None = None,
    **settings: Any,
) -> tuple[Summary, Analysis]:
    plan = Plan(
        settings=Settings(**settings),
        specialists=specialists or {"w": Specialist(func=sleeper)},
        tasks=work,
    )
    # env={}: GUILDRUN_* variables of whoever runs the tests must not change the limits.
    if specialists is not None:  # real processes: real time
        summary = guildrun.run(plan, root=root, env={})
    else:
        # The sleepers sleep on a virtual clock: the figures are exact, in no real time.
        clock = VirtualClock()
        try:
            summary = clock.run(guildrun.run_async(plan, root=root, env={}, clock=clock))
        finally:
            clock.close()
    journal = Journal(journal_path(root), readonly=True)
    try:
        return summary, analyze(journal, summary.run_id)
    finally:
        journal.close()


def near(measured: float, expected: float, below: float = 0.03, above: float = 0.12) -> bool:
    """Within a few percent; real runs overshoot more than they undershoot."""
    return expected * (1 - below) <= measured <= expected * (1 + above)


def phase(a: Analysis, name: str) -> PhaseStats:
    return next(p for p in a.phases if p.phase == name)


def specialist(a: Analysis, name: str) -> SpecialistStats:
    return next(s for s in a.specialists if s.name == name)


def test_six_half_second_tasks_on_three_instances(tmp_path: Path) -> None:
    # 6 x 0.5 s on 3 instances: two rounds, wall 1.0 s, parallelism 3, bound 3.0 / 3 = 1.0.
    summary, a = run_plan(tmp_path, tasks("t", 6, 0.5, specialist="w"), per_agent_type=3)
    assert summary.done == 6
    assert near(a.task_s, 3.0, above=0.05)
    assert near(a.wall_s, 1.0)
    assert 3.0 * 0.88 <= a.parallelism <= 3.0 * 1.01
    assert a.utilization > 0.9
    assert a.utilization == pytest.approx(summary.utilization, abs=1e-9)
    assert near(a.lower_bound_s, 1.0, above=0.05)
    assert a.efficiency > 0.88
    assert a.slots == 3
    w = specialist(a, "w")
    assert (w.limit, w.instances) == (3, 3)
    assert all(i.attempts == 2 and near(i.busy_s, 1.0, above=0.05) for i in a.instances)
    assert w.imbalance == pytest.approx(1.0, abs=0.05)
    # Three tasks waited 0.5 s for one of the three busy instances.
    assert near(w.saturated_s, 0.5, below=0.1, above=0.2)
    assert a.saturated == ["w"]
    assert a.idle_instances == [] and a.idle_specialists == []
    assert [t.duration_s >= 0.5 for t in a.slowest] == [True] * 5
    # The engine may or may not time its steps yet; either way the ratio is the definition.
    if a.timings:
        assert a.overhead == pytest.approx(sum(a.timings.values()) / a.wall_s)
    else:
        assert a.overhead is None and a.overhead_s is None


def test_chain_is_the_critical_path(tmp_path: Path) -> None:
    # a -> b -> c (0.3 s each, real `sleep` processes) beside d (0.2 s): wall 0.9 s,
    # bounded by the chain, not by the slots; two of w's three instances mostly wait.
    chain = [
        Task(id="a", specialist="w", scope="0.3"),
        Task(id="b", specialist="w", scope="0.3", depends_on=["a"]),
        Task(id="c", specialist="w", scope="0.3", depends_on=["b"]),
        Task(id="d", specialist="x", scope="0.2"),
    ]
    sleep = Specialist(run=["sleep", "{scope}"])
    _, a = run_plan(tmp_path, chain, {"w": sleep, "x": sleep}, per_agent_type=3)
    assert a.critical_path == ["a", "b", "c"]
    assert near(a.critical_path_s, 0.9, above=0.1)
    impl = phase(a, "implementation")
    assert impl.bound_by == "chain"
    assert impl.critical_path == ["a", "b", "c"]
    assert near(a.wall_s, 0.9, above=0.15)
    assert a.efficiency > 0.85
    assert near(a.parallelism, 1.1 / 0.9, below=0.12, above=0.05)
    assert {s.task for s in a.attempts if s.critical} == {"a", "b", "c"}
    # w: 0.9 s of work over three instances alive ~0.9 s each.
    assert specialist(a, "w").utilization == pytest.approx(1 / 3, abs=0.06)
    assert "w" in a.idle_specialists and "x" not in a.idle_specialists
    assert len([n for n in a.idle_instances if n.startswith("w#")]) >= 2
    assert a.slowest[0].task in {"a", "b", "c"} and a.slowest[-1].task == "d"


def test_phase_figures(tmp_path: Path) -> None:
    # research: 4 x 0.3 s on 2 instances of r: wall 0.6, parallelism 2, bound 1.2 / 2 = 0.6.
    # implementation: 3 x 0.25 s on w (3 instances) and 2 x 0.25 s on `one` (1 instance):
    # slots 4, work 1.25 / 4 = 0.31, but `one` alone needs 0.5: bound 0.5, parallelism 2.5.
    work = tasks("r", 4, 0.3, specialist="r", phase="research")
    work += tasks("w", 3, 0.25, specialist="w") + tasks("o", 2, 0.25, specialist="one")
    specs = {
        "r": Specialist(func=sleeper, instances=2),
        "w": Specialist(func=sleeper),
        "one": Specialist(func=sleeper, instances=1),
    }
    _, a = run_plan(tmp_path, work, specs, per_agent_type=3)
    research, impl = phase(a, "research"), phase(a, "implementation")
    assert [p.phase for p in a.phases] == ["research", "implementation"]
    assert (research.tasks, research.slots, impl.tasks, impl.slots) == (4, 2, 5, 4)
    assert near(research.wall_s, 0.6)
    assert near(research.parallelism, 2.0, below=0.1, above=0.03)
    assert near(research.lower_bound_s, 0.6, above=0.05)
    assert research.efficiency > 0.88
    assert research.claimed_speedup == (3.0, 5.0)
    assert impl.bound_by == "specialist:one"
    assert near(impl.lower_bound_s, 0.5, above=0.05)
    assert near(impl.wall_s, 0.5, above=0.15)
    assert near(impl.parallelism, 2.5, below=0.12, above=0.03)
    assert impl.efficiency > 0.85
    assert impl.claimed_speedup == (4.0, 6.0)
    assert research.end <= impl.start + 0.05
    # The run's bound is the phases' bounds in turn.
    assert a.lower_bound_s == pytest.approx(research.lower_bound_s + impl.lower_bound_s)
    assert near(a.wall_s, 1.1, above=0.15)
    assert a.efficiency > 0.85
    assert len(a.critical_path) == 2 and a.critical_path[0].startswith("r")
    assert near(specialist(a, "one").saturated_s, 0.25, below=0.15, above=0.25)
    assert near(specialist(a, "r").saturated_s, 0.3, below=0.15, above=0.25)
    assert specialist(a, "w").saturated_s < 0.05
    assert set(a.saturated) == {"one", "r"}


def test_round_robin_imbalance(tmp_path: Path) -> None:
    # A static deal of 4 tasks on 3 instances: [t1, t4] [t2] [t3]. One instance does twice
    # the mean's share (0.6 s against a mean of 0.4 s) and the run takes 0.6 s where the
    # bound (1.2 s of work on 3 slots) says 0.4 s.
    _, a = run_plan(
        tmp_path, tasks("t", 4, 0.3, specialist="w"), per_agent_type=3, strategy="round-robin"
    )
    w = specialist(a, "w")
    assert w.instances == 3
    assert near(w.busy_max_s, 0.6, above=0.08)
    assert near(w.busy_min_s, 0.3, above=0.1)
    assert w.imbalance == pytest.approx(1.5, abs=0.08)
    assert near(a.lower_bound_s, 0.4, above=0.05)
    assert a.efficiency == pytest.approx(2 / 3, abs=0.07)
    assert near(w.saturated_s, 0.3, below=0.1, above=0.2)


def test_overhead_and_cpu_come_from_timings_and_samples(tmp_path: Path) -> None:
    # Rows are added next to whatever the engine itself journaled for the run.
    summary, _ = run_plan(tmp_path, tasks("t", 2, 0.05, specialist="w"))
    journal = Journal(journal_path(tmp_path))
    try:
        rid = summary.run_id
        created = journal.run(rid)["created"]
        engine_steps = analyze(journal, rid).timings
        engine_cpu = [s.cpu for s in analyze(journal, rid).samples if s.cpu is not None]
        with journal.transaction():
            journal.db.executemany(
                "INSERT INTO timings(run_id, step, seconds, count) VALUES (?,?,?,?)",
                [(rid, "test-step-a", 0.004, 3), (rid, "test-step-b", 0.006, 5)],
            )
            journal.db.executemany(
                "INSERT INTO samples(run_id, time, cpu, running) VALUES (?,?,?,?)",
                [(rid, created + k * 0.02, 10.0 * k, k) for k in range(1, 4)],
            )
        a = analyze(journal, rid)
    finally:
        journal.close()
    assert a.timings == {**engine_steps, "test-step-a": 0.004, "test-step-b": 0.006}
    expected = sum(engine_steps.values()) + 0.01
    assert a.overhead_s == pytest.approx(expected)
    assert a.overhead == pytest.approx(expected / a.wall_s)
    cpu = [*engine_cpu, 10.0, 20.0, 30.0]
    assert a.cpu_mean == pytest.approx(sum(cpu) / len(cpu))
    assert {0.02, 0.04, 0.06} <= {round(s.time, 6) for s in a.samples}
    data = a.to_json()
    assert data["overhead_s"] == pytest.approx(expected, abs=1e-5)
    assert len(data["samples"]) == len(a.samples)
