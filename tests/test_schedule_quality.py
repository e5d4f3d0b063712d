"""Schedules near the lower bound: critical-path ranking, slot re-sharing, balanced piles,
and estimates learned from past runs. Pure scheduler and the fake executor on a
virtual clock: no real time."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

from guildrun import Plan
from guildrun._clock import VirtualClock
from guildrun._engine import run_prepared
from guildrun._estimates import estimate
from guildrun._executors.fake import Act, FakeExecutor
from guildrun._journal import journal_path
from guildrun._metrics import Summary
from guildrun._prepare import Prepared, prepare
from guildrun._schedule import LongestFirst, Retired, Scheduler, Spawned, Started, balanced
from guildrun._simulate import simulate

from .conftest import compiled


def _started(decisions: list[Any]) -> list[str]:
    return [d.task for d in decisions if isinstance(d, Started)]


class _NoReshare(LongestFirst):
    """Longest-first as it was before re-sharing, to show what re-sharing buys."""

    reshares = False


# ------------------------------------------------------------------ the pure scheduler


CHAIN: dict[str, Any] = {
    "specialists": {"w": {"run": ["true"]}},
    "tasks": [
        {"id": "big1", "specialist": "w", "estimate": 2},
        {"id": "big2", "specialist": "w", "estimate": 2},
        {"id": "a", "specialist": "w", "estimate": 1},
        {"id": "b", "specialist": "w", "estimate": 1, "depends_on": ["a"]},
        {"id": "c", "specialist": "w", "estimate": 1, "depends_on": ["b"]},
    ],
}


def test_critical_path_ranking_starts_the_head_of_a_chain_first() -> None:
    plan = compiled(CHAIN)
    sched = Scheduler(plan, limits={"w": 2}, total=2, strategy=LongestFirst())
    by_id = plan.by_id
    assert sched.rank(by_id["a"].index) == 3.0  # a, then b and c wait on it
    assert sched.rank(by_id["big1"].index) == 2.0
    first = _started(sched.dispatch())
    assert "a" in first and len(first) == 2
    # Ranked by own length, the two 2 s tasks would start first and the chain end at 5.
    durations = {t["id"]: float(t["estimate"]) for t in CHAIN["tasks"]}
    sim = simulate(plan, durations, limits={"w": 2}, total=2, strategy=LongestFirst())
    assert sim.wall == 4.0


def test_rank_ignores_dependents_in_a_later_phase() -> None:
    data = {
        "specialists": {"w": {"run": ["true"]}},
        "tasks": [
            {"id": "a", "specialist": "w", "estimate": 1},
            {
                "id": "b",
                "specialist": "w",
                "estimate": 5,
                "depends_on": ["a"],
                "phase": "validation",
            },
        ],
    }
    plan = compiled(data)
    sched = Scheduler(plan, limits={"w": 1}, total=1, strategy=LongestFirst())
    assert sched.rank(plan.by_id["a"].index) == 1.0  # the phase barrier waits for all anyway


# x: six tasks of 1 s; y: two of 3 s. Three slots: D'Hondt gives x two and y one at the
# phase's start (equal work, tie to the first), so without re-sharing y runs its two tasks
# one after the other and the phase takes 6 s.
SHARED: dict[str, Any] = {
    "specialists": {"x": {"run": ["true"]}, "y": {"run": ["true"]}},
    "tasks": [{"id": f"x{i}", "specialist": "x", "estimate": 1} for i in range(1, 7)]
    + [{"id": f"y{i}", "specialist": "y", "estimate": 3} for i in (1, 2)],
}


def test_a_freed_slot_goes_to_the_specialist_with_the_most_work_left() -> None:
    plan = compiled(SHARED)
    now = 0.0
    sched = Scheduler(
        plan, limits={"x": 3, "y": 3}, total=3, strategy=LongestFirst(), clock=lambda: now
    )
    assert sorted(_started(sched.dispatch())) == ["x1", "x2", "y1"]
    now = 1.0
    sched.finish("x1", True)
    # x has 4 s left for its 2 instances (one would do it in 4 s); y has 5 s left (y1's
    # remaining 2 s and y2's 3 s) on one instance: the free slot is y's.
    decisions = sched.finish("x2", True) + sched.dispatch()
    retired = [d.instance for d in decisions if isinstance(d, Retired)]
    spawned = [d.instance for d in decisions if isinstance(d, Spawned)]
    assert len(retired) == 1 and retired[0].startswith("x#")
    assert spawned == ["y#2"]
    assert ("y2", "y#2") in [(d.task, d.instance) for d in decisions if isinstance(d, Started)]
    # The remaining x instance goes on with x's work: it keeps its slot (n(x) = 1).
    assert sched.running_by == {"x": 1, "y": 2}

    durations = {t["id"]: float(t["estimate"]) for t in SHARED["tasks"]}
    limits = {"x": 3, "y": 3}
    with_reshare = simulate(plan, durations, limits=limits, total=3, strategy=LongestFirst())
    without = simulate(plan, durations, limits=limits, total=3, strategy=_NoReshare())
    # With re-sharing the phase ends at its lower bound, 12 s of work / 3 slots (y's slot
    # returns to x when y1 ends at 3 s and y has nothing left to start).
    assert (with_reshare.wall, without.wall) == (4.0, 6.0)


def test_without_estimates_no_slot_moves() -> None:
    data = {
        **SHARED,
        "tasks": [{k: v for k, v in t.items() if k != "estimate"} for t in SHARED["tasks"]],
    }
    plan = compiled(data)
    durations = {t.id: (1.0 if t.specialist == "x" else 3.0) for t in plan.tasks}
    limits = {"x": 3, "y": 3}
    sim = simulate(plan, durations, limits=limits, total=3, strategy=LongestFirst())
    # Every task's weight is 0: nothing to share by, so slots move only as before (a
    # specialist that runs out of ready work gives its idle slot away).
    same = simulate(plan, durations, limits=limits, total=3, strategy=_NoReshare())
    assert sim.wall == same.wall
    assert [(iv.task, iv.instance, iv.start) for iv in sim.intervals] == [
        (iv.task, iv.instance, iv.start) for iv in same.intervals
    ]


def test_balanced_piles_beat_plain_lpt() -> None:
    # LPT puts 3, 3 then 2, 2, 2 on two piles as [3, 2, 2] and [3, 2]: 7 against 5. Two
    # piles of 6 exist ([3, 3] and [2, 2, 2]).
    weights = [3.0, 3.0, 2.0, 2.0, 2.0]
    piles = balanced(range(5), 2, weights.__getitem__)
    assert sorted(sum(weights[t] for t in p) for p in piles) == [6.0, 6.0]
    assert sorted(t for p in piles for t in p) == [0, 1, 2, 3, 4]


def test_balanced_piles_keep_every_task_once_and_heaviest_first() -> None:
    rng = random.Random(5)
    for _ in range(200):
        n, k = rng.randint(0, 25), rng.randint(1, 5)
        weights = [rng.choice([0.0, 0.5, 1.0, 2.0, 7.0]) for _ in range(n)]
        piles = balanced(range(n), k, weights.__getitem__, effort=rng.choice([0, 50, 10_000]))
        assert len(piles) == k
        assert sorted(t for p in piles for t in p) == list(range(n))
        for p in piles:
            assert [weights[t] for t in p] == sorted((weights[t] for t in p), reverse=True)


# ------------------------------------------------------------------ learned, on the engine

# One specialist with two instances; four 1 s tasks, then a 4 s one last in plan order.
LATE_GIANT: dict[str, Any] = {
    "settings": {"per_agent_type": 2, "sample_interval": 0},
    "specialists": {"w": {"run": ["never-run"]}},
    "tasks": [
        {"id": f"s{i}", "specialist": "w", "files": [f"s{i}.txt"], "prompt": f"small {i}"}
        for i in range(1, 5)
    ]
    + [{"id": "g", "specialist": "w", "files": ["g.txt"], "prompt": "giant"}],
}
ACTS = {**{f"s{i}": Act(duration=1.0) for i in range(1, 5)}, "g": Act(duration=4.0)}


def _run(root: Path, data: dict[str, Any]) -> tuple[Prepared, Summary]:
    prepared = prepare(Plan.model_validate(data), root=root)
    clock = VirtualClock()
    try:
        summary = clock.run(
            run_prepared(prepared, handle_signals=False, executor=FakeExecutor(ACTS), clock=clock)
        )
    finally:
        clock.close()
    assert summary.ok
    return prepared, summary


def _settings_strategy(root: Path, run_id: str) -> str:
    db = sqlite3.connect(journal_path(root))
    try:
        (settings,) = db.execute("SELECT settings_json FROM runs WHERE id=?", (run_id,)).fetchone()
    finally:
        db.close()
    return str(json.loads(settings)["strategy"])


def test_the_second_run_uses_what_the_first_measured(project: Path) -> None:
    first_p, first = _run(project, LATE_GIANT)
    # Nothing known: the default is work stealing, and the giant, dealt last, ends alone.
    assert first_p.settings.strategy == "work-stealing" and first_p.expected() is None
    assert first.wall_s == 6.0
    second_p, second = _run(project, LATE_GIANT)
    assert second_p.settings.strategy == "longest-first"
    assert _settings_strategy(project, second.run_id) == "longest-first"
    assert second_p.estimates is not None
    assert second_p.estimates.origin == dict.fromkeys(["s1", "s2", "s3", "s4", "g"], "learned")
    assert second_p.expected() == {"s1": 1.0, "s2": 1.0, "s3": 1.0, "s4": 1.0, "g": 4.0}
    assert any("5 learned from past runs" in n for n in second_p.notes)
    # The giant starts first: the lower bound, max(8 s / 2, 4 s).
    assert second.wall_s == 4.0


def test_a_plan_with_no_history_runs_as_work_stealing_did(project: Path) -> None:
    explicit = {**LATE_GIANT, "settings": {**LATE_GIANT["settings"], "strategy": "work-stealing"}}
    for sub in ("a", "b"):
        (project / sub).mkdir()
    _, default = _run(project / "a", LATE_GIANT)
    _, given = _run(project / "b", explicit)
    assert default.wall_s == given.wall_s == 6.0

    def placed(root: Path, run_id: str) -> list[tuple[str, str, float]]:
        db = sqlite3.connect(journal_path(root))
        try:
            rows = db.execute(
                "SELECT task_id, instance, started FROM attempts WHERE run_id=? ORDER BY task_id",
                (run_id,),
            ).fetchall()
        finally:
            db.close()
        zero = min(float(r[2]) for r in rows)
        return [(str(t), str(i), float(s) - zero) for t, i, s in rows]

    assert placed(project / "a", default.run_id) == placed(project / "b", given.run_id)


def test_learned_estimates_match_the_most_specific_past_work(project: Path) -> None:
    _run(project, LATE_GIANT)
    changed = {
        **LATE_GIANT,
        "tasks": [
            # The same task, reworded: found by its id.
            {"id": "g", "specialist": "w", "files": ["g.txt"], "prompt": "giant, reworded"},
            # Another id, the same files and prompt as s1: the same work.
            {"id": "s1-again", "specialist": "w", "files": ["s1.txt"], "prompt": "small 1"},
            # Nothing alike but its specialist: the median of all its past tasks.
            {"id": "new", "specialist": "w", "files": ["new.txt"], "prompt": "?"},
            {"id": "given", "specialist": "w", "estimate": 9},
        ],
    }
    model = Plan.model_validate(changed)
    plan = compiled(changed, project)
    found = estimate(plan, journal_path(project), {t.id: t.prompt for t in model.tasks})
    assert found.seconds == {"g": 4.0, "s1-again": 1.0, "new": 1.0, "given": 9.0}
    assert found.origin == {
        "g": "learned",
        "s1-again": "learned",
        "new": "learned",
        "given": "given",
    }
    assert found.describe() == "1 from the plan, 3 learned from past runs"


def test_without_estimates_the_deal_is_round_robin() -> None:
    piles = balanced(range(7), 3, lambda _t: 0.0)
    assert piles == [[0, 3, 6], [1, 4], [2, 5]]
