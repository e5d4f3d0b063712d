"""The scheduler alone: pure logic, a fake clock, no processes, no real time."""

from __future__ import annotations

import heapq
import itertools
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guildrun._plan import PHASES, CompiledPlan
from guildrun._schedule import (
    STRATEGY_NAMES,
    RoundRobin,
    Scheduler,
    Skipped,
    Started,
    State,
    WorkStealing,
    distribution,
    fair_share,
)
from guildrun._simulate import simulate

from .conftest import compiled, tasks_plan


def starts(decisions: list[Any]) -> list[tuple[str, str, str | None]]:
    return [(d.task, d.instance, d.stolen_from) for d in decisions if isinstance(d, Started)]


def test_seed_round_robin_example() -> None:
    plan = compiled(tasks_plan(7))
    sched = Scheduler(plan, limits={"interface": 3}, total=20)
    assert sched.plan_instances() == {"interface": [["1", "4", "7"], ["2", "5"], ["3", "6"]]}


def test_instances_are_min_of_tasks_and_limit() -> None:
    plan = compiled(tasks_plan(2))
    sched = Scheduler(plan, limits={"interface": 3}, total=20)
    assert sched.plan_instances() == {"interface": [["1"], ["2"]]}


def test_steal_takes_the_back_of_the_most_loaded_sibling() -> None:
    # Piles: #1 [1,4,7,10]  #2 [2,5,8,11]  #3 [3,6,9]
    plan = compiled(tasks_plan(11))
    sched = Scheduler(plan, limits={"interface": 3}, total=20)
    assert starts(sched.dispatch()) == [
        ("1", "interface#1", None),
        ("2", "interface#2", None),
        ("3", "interface#3", None),
    ]
    assert starts(sched.finish("1", True) + sched.dispatch()) == [("4", "interface#1", None)]
    assert starts(sched.finish("3", True) + sched.dispatch()) == [("6", "interface#3", None)]
    assert starts(sched.finish("6", True) + sched.dispatch()) == [("9", "interface#3", None)]
    # #3's pile is empty; #1 holds [7,10], #2 holds [5,8,11]: the busiest is #2, its back is 11.
    assert starts(sched.finish("9", True) + sched.dispatch()) == [
        ("11", "interface#3", "interface#2")
    ]
    # Now #1 [7,10] and #2 [5,8] tie; the lower number wins, and its back is 10.
    assert starts(sched.finish("11", True) + sched.dispatch()) == [
        ("10", "interface#3", "interface#1")
    ]


def test_round_robin_strategy_never_steals() -> None:
    plan = compiled(tasks_plan(7))
    sched = Scheduler(plan, limits={"interface": 3}, total=20, strategy=RoundRobin())
    sched.dispatch()
    # #3 finishes its pile [3,6] while #1 is stuck on task 1: #3 then idles.
    assert starts(sched.finish("3", True) + sched.dispatch()) == [("6", "interface#3", None)]
    assert starts(sched.finish("6", True) + sched.dispatch()) == []
    assert sched.running == 2


def test_idle_instance_skips_unready_task_and_steals_only_ready_ones() -> None:
    data = tasks_plan(6)
    data["tasks"][3]["depends_on"] = ["1"]  # task 4, first of #1's pile after 1, waits on 1
    plan = compiled(data)
    sched = Scheduler(plan, limits={"interface": 3}, total=20)
    sched.dispatch()  # 1, 2, 3 run; piles #1 [4]  #2 [5]  #3 [6]
    # #2 finishes: takes its own 5. #3 finishes: takes 6. Then #2 again: 4 is not ready.
    sched.finish("2", True)
    sched.dispatch()
    sched.finish("5", True)
    assert starts(sched.dispatch()) == [("6", "interface#2", "interface#3")]


def test_same_file_never_overlaps_and_plan_order_goes_first() -> None:
    data = tasks_plan(3)
    data["tasks"][0]["files"] = ["a.py"]
    data["tasks"][2]["files"] = ["./a.py"]
    plan = compiled(data)
    sched = Scheduler(plan, limits={"interface": 3}, total=20)
    assert [s[0] for s in starts(sched.dispatch())] == ["1", "2"]
    # Task 1 fails: a mutual exclusion is not a dependency, so 3 still runs.
    assert [s[0] for s in starts(sched.finish("1", False) + sched.dispatch())] == ["3"]


def test_exclusion_order_respects_dependencies() -> None:
    # Task 1 depends on 2 and they share a lock: 2 must go first, with no deadlock.
    data = tasks_plan(2)
    data["tasks"][0].update(depends_on=["2"], locks=["db"])
    data["tasks"][1].update(locks=["db"])
    plan = compiled(data)
    sim = simulate(plan, dict.fromkeys(["1", "2"], 1.0), limits={"interface": 3}, total=20)
    order = sorted(sim.intervals, key=lambda iv: iv.start)
    assert [iv.task for iv in order] == ["2", "1"]


def test_failure_skips_dependents_with_cause() -> None:
    data = tasks_plan(4)
    data["tasks"][1]["depends_on"] = ["1"]
    data["tasks"][2]["depends_on"] = ["2"]
    plan = compiled(data)
    sched = Scheduler(plan, limits={"interface": 3}, total=20)
    sched.dispatch()
    out = sched.finish("1", False)
    skipped = {d.task: d.cause for d in out if isinstance(d, Skipped)}
    assert skipped == {"2": "1", "3": "1"}
    assert sched.state[3] is State.RUNNING  # task 4, unrelated, goes on


def test_phases_are_boundaries() -> None:
    data = tasks_plan(6)
    for t, phase in zip(
        data["tasks"], ["validation", "research", "implementation"] * 2, strict=True
    ):
        t["phase"] = phase
    plan = compiled(data)
    durations = {"2": 5.0, "5": 1.0, "3": 1.0, "6": 1.0, "1": 1.0, "4": 1.0}
    sim = simulate(plan, durations, limits={"interface": 3}, total=20)
    by = {iv.task: iv for iv in sim.intervals}
    assert min(by[t].start for t in "36") >= max(by[t].end for t in "25") == 5.0
    assert min(by[t].start for t in "14") >= max(by[t].end for t in "36")


def test_fair_share_under_total() -> None:
    assert fair_share({"a": 3, "b": 3, "c": 3}, 4) == {"a": 2, "b": 1, "c": 1}
    assert fair_share({"a": 1, "b": 5}, 4) == {"a": 1, "b": 3}
    assert fair_share({"a": 2, "b": 2}, 20) == {"a": 2, "b": 2}


def test_more_specialists_than_slots_still_finishes() -> None:
    data: dict[str, Any] = {
        "specialists": {s: {"run": ["true"]} for s in "abc"},
        "tasks": [{"id": f"{s}{i}", "specialist": s} for s in "abc" for i in range(3)],
    }
    plan = compiled(data)
    walls = {}
    for strategy in (WorkStealing(), RoundRobin()):
        sim = simulate(
            plan, lambda _t: 1.0, limits=dict.fromkeys("abc", 3), total=2, strategy=strategy
        )
        assert len(sim.intervals) == 9
        walls[strategy.name] = sim.wall
    # Work stealing keeps both slots busy: 9 one-second tasks on 2 slots end at 5 s.
    # Static round-robin gives the parked specialist one instance when a slot frees: 6 s.
    assert walls == {"work-stealing": 5.0, "round-robin": 6.0}


def test_work_stealing_beats_round_robin_on_skew() -> None:
    plan = compiled(tasks_plan(9))
    durations = {str(i): (10.0 if i == 1 else 1.0) for i in range(1, 10)}
    ws = simulate(plan, durations, limits={"interface": 3}, total=20)
    rr = simulate(plan, durations, limits={"interface": 3}, total=20, strategy=RoundRobin())
    assert ws.wall == 10.0
    assert rr.wall == 12.0  # #1 must still do 4 and 7 after the 10-second task


# ------------------------------------------------------------------ properties


@st.composite
def random_plans(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, float], dict[str, int], int]:
    n = draw(st.integers(1, 30))
    specs = draw(st.lists(st.sampled_from("abcd"), min_size=1, max_size=4, unique=True))
    tasks: list[dict[str, Any]] = []
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set())
        phase = draw(st.sampled_from(PHASES))
        tasks.append(
            {
                "id": f"t{i}",
                "specialist": draw(st.sampled_from(specs)),
                "phase": phase,
                "depends_on": [f"t{d}" for d in deps],
                "files": draw(st.lists(st.sampled_from(["x.py", "y.py", "z.py"]), max_size=2)),
                "locks": draw(st.lists(st.sampled_from(["db"]), max_size=1)),
            }
        )
    # Dependencies must not point to a later phase: lift each task to its deps' phases.
    rank = {t["id"]: PHASES.index(t["phase"]) for t in tasks}
    for t in tasks:
        r = max([rank[t["id"]], *(rank[d] for d in t["depends_on"])])
        rank[t["id"]] = r
        t["phase"] = PHASES[r]
    durations = {t["id"]: draw(st.sampled_from([0.5, 1.0, 2.0, 3.0, 7.0])) for t in tasks}
    limits = {s: draw(st.integers(1, 4)) for s in specs}
    total = draw(st.integers(1, 8))
    data = {"specialists": {s: {"run": ["true"]} for s in specs}, "tasks": tasks}
    return data, durations, limits, total


def check_run(
    plan: CompiledPlan,
    durations: dict[str, float],
    limits: dict[str, int],
    total: int,
    strategy: Any,
    fails: set[str],
    estimates: dict[str, float] | None = None,
) -> None:
    now = 0.0
    sched = Scheduler(
        plan,
        limits=limits,
        total=total,
        strategy=strategy,
        clock=lambda: now,
        estimates=estimates,
    )
    heap: list[tuple[float, str]] = []
    intervals: dict[str, tuple[float, float, str]] = {}
    started_at: dict[str, tuple[float, str]] = {}
    skipped: set[str] = set()

    def take(decisions: list[Any]) -> None:
        for d in decisions:
            if isinstance(d, Started):
                assert d.task not in started_at, f"{d.task} started twice"
                started_at[d.task] = (now, d.instance)
                heapq.heappush(heap, (now + durations[d.task], d.task))
            elif isinstance(d, Skipped):
                skipped.add(d.task)

    take(sched.dispatch())
    while heap:
        # Work conservation: a ready task waits only when its specialist or the hall is full.
        if strategy.scales:
            for spec in plan.specialists:
                ready = any(
                    sched.state[t.index] is State.READY for t in plan.tasks if t.specialist == spec
                )
                if ready:
                    assert sched.running_by[spec] == limits[spec] or sched.running == total
        now, tid = heapq.heappop(heap)
        intervals[tid] = (started_at[tid][0], now, started_at[tid][1])
        take(sched.finish(tid, tid not in fails))
        take(sched.dispatch())
    assert sched.finished
    assert set(intervals) | skipped == set(plan.by_id)
    assert not set(intervals) & skipped
    # Limits hold at every instant: check at every start.
    for tid, (s, _e, _inst) in intervals.items():
        live = [t for t, (s2, e2, _) in intervals.items() if s2 <= s < e2]
        assert len(live) <= total, f"{len(live)} running at {s}, total {total}"
        spec = plan.by_id[tid].specialist
        same = [t for t in live if plan.by_id[t].specialist == spec]
        assert len(same) <= limits[spec]
        # Exclusion and phases.
        mine = plan.by_id[tid]
        for other in live:
            o = plan.by_id[other]
            if other != tid:
                assert not set(mine.resources) & set(o.resources)
                assert o.phase == mine.phase
        for dep in mine.depends_on:
            assert dep in intervals and intervals[dep][1] <= s and dep not in fails
    # Each instance runs one task at a time.
    per_instance: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for s, e, inst in intervals.values():
        per_instance[inst].append((s, e))
    for spans in per_instance.values():
        spans.sort()
        for (_, e1), (s2, _) in itertools.pairwise(spans):
            assert s2 >= e1


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(
    random_plans(), st.sampled_from(["work-stealing", "round-robin", "longest-first"]), st.data()
)
def test_properties_hold_for_random_plans(
    case: tuple[dict[str, Any], dict[str, float], dict[str, int], int],
    strategy_name: str,
    data: st.DataObject,
) -> None:
    plan_data, durations, limits, total = case
    plan = compiled(plan_data, Path.cwd())
    fails = data.draw(st.sets(st.sampled_from(sorted(durations))))
    strategy = distribution(strategy_name)
    # Longest-first is told estimates that may be wrong: exact, scaled, or any lengths.
    told = data.draw(st.sampled_from(["exact", "double", "random", "none"]))
    estimates = {
        "exact": durations,
        "double": {t: 2 * d for t, d in durations.items()},
        "random": {t: data.draw(st.sampled_from([0.1, 1.0, 9.0])) for t in durations},
        "none": None,
    }[told]
    check_run(plan, durations, limits, total, strategy, fails, estimates)


def test_fair_share_follows_the_work() -> None:
    # 32 coder tasks and 16 tester tasks, 4 instances allowed each, 6 slots in all.
    assert fair_share({"coder": 4, "tester": 4}, 6, {"coder": 32, "tester": 16}) == {
        "coder": 4,
        "tester": 2,
    }
    # Every specialist with work gets a slot while slots last, the biggest first.
    assert fair_share({"a": 3, "b": 3, "c": 3}, 2, {"a": 1, "b": 5, "c": 9}) == {
        "a": 0,
        "b": 1,
        "c": 1,
    }


def test_affinity_keeps_a_scope_on_one_instance_without_unbalancing() -> None:
    data = tasks_plan(9)
    data["settings"] = {"affinity": "scope"}
    for t, scope in zip(data["tasks"], "aaabbbbcc", strict=True):
        t["scope"] = scope
    sched = Scheduler(compiled(data), limits={"interface": 3}, total=20)
    piles = sched.plan_instances()["interface"]
    assert sorted(len(p) for p in piles) == [3, 3, 3]  # as balanced as round-robin
    scopes = [{data["tasks"][int(t) - 1]["scope"] for t in p} for p in piles]
    # a (3) and c (2) each stay whole; b (4) cannot fit one pile of 3, so it is split once.
    assert {"a"} in scopes
    assert sum(1 for s in scopes if "c" in s) == 1
    assert sum(1 for s in scopes if "b" in s) == 2


def test_affinity_by_folder() -> None:
    data = tasks_plan(4)
    data["settings"] = {"affinity": "folder"}
    for t, f in zip(data["tasks"], ["x/1.py", "y/1.py", "x/2.py", "y/2.py"], strict=True):
        t["files"] = [f]
    sched = Scheduler(compiled(data), limits={"interface": 2}, total=20)
    assert sorted(sched.plan_instances()["interface"]) == [["1", "3"], ["2", "4"]]


def test_can_help_takes_overflow_of_a_busy_specialist() -> None:
    data: dict[str, Any] = {
        "specialists": {
            "writer": {"run": ["true"], "instances": 1},
            "tester": {"run": ["true"], "instances": 1, "can_help": ["writer"]},
        },
        "tasks": [
            *({"id": f"w{i}", "specialist": "writer"} for i in range(4)),
            {"id": "t0", "specialist": "tester"},
        ],
    }
    plan = compiled(data)
    sim = simulate(plan, lambda _t: 1.0, limits={"writer": 1, "tester": 1}, total=20)
    by = {iv.task: iv for iv in sim.intervals}
    helped = [iv for iv in sim.intervals if iv.task.startswith("w") and iv.instance == "tester#1"]
    assert helped and all(iv.stolen for iv in helped)
    assert sim.wall == 3.0  # 5 one-second tasks on 2 instances, not 4 s on the writer alone
    assert by["t0"].instance == "tester#1"


# ------------------------------------------------------------------ random operations


def _random_plan(rng: random.Random) -> dict[str, Any]:
    names = [f"s{k}" for k in range(rng.randint(1, 4))]
    specs = {
        s: {
            "run": ["true"],
            "can_help": [o for o in names if o != s and rng.random() < 0.3],
            "affinity": rng.choice([None, "scope", "folder"]),
        }
        for s in names
    }
    tasks: list[dict[str, Any]] = []
    for k in range(rng.randint(1, 12)):
        phase = rng.choice(PHASES[: rng.randint(1, 4)])
        deps = [
            t["id"]
            for t in tasks
            if rng.random() < 0.2 and PHASES.index(t["phase"]) <= PHASES.index(phase)
        ]
        tasks.append(
            {
                "id": f"t{k}",
                "specialist": rng.choice(names),
                "files": [
                    f"d{rng.randint(0, 2)}/f{rng.randint(0, 4)}" for _ in range(rng.randint(0, 2))
                ],
                "locks": ["L"] if rng.random() < 0.15 else [],
                "depends_on": deps,
                "phase": phase,
                "scope": rng.choice([None, "a", "b"]),
                "estimate": rng.choice([None, 1, 5, 10]),
            }
        )
    return {"specialists": specs, "tasks": tasks}


def _check_books(s: Scheduler, limits: dict[str, int], total: int) -> None:
    assert s.running <= total and s.alive <= total
    assert s.alive == sum(len(v) for v in s.instances.values())
    for spec, insts in s.instances.items():
        assert len(insts) <= limits[spec]
        mine = [t for t in s.tasks if t.specialist == spec]
        assert s._ready_count[spec] == sum(s.state[t.index] is State.READY for t in mine)
        owned = sum(s._owner[t.index] is not None for t in mine)
        assert s._remaining[spec] == owned + len(s._orphans[spec])
        for inst in insts:
            assert inst.remaining == sum(s._owner[i] is inst for i in range(len(s.tasks)))
        # The estimated work not started yet, kept up to date for re-sharing.
        todo = sum(s.weight(t.index) for t in mine if s._todo[t.index])
        assert abs(s._todo_work[spec] - todo) < 1e-9
        assert all(not s._todo[t.index] or not s.state[t.index].terminal for t in mine)


def test_random_operations_keep_the_books_and_never_stall() -> None:
    """Random plans, finished, failed, retried, run alone, abandoned and resumed at random."""
    for seed in range(400):
        rng = random.Random(seed)
        plan = compiled(_random_plan(rng))
        total = rng.randint(1, 4)
        limits = {s: min(rng.randint(1, 3), total) for s in plan.specialists}
        done = [t.id for t in plan.tasks if rng.random() < 0.1]
        s = Scheduler(
            plan,
            limits=limits,
            total=total,
            strategy=distribution(rng.choice(list(STRATEGY_NAMES))),
            done=done,
        )
        sleeping: list[str] = []
        tries: dict[str, int] = {}
        s.dispatch()
        for _ in range(500):
            _check_books(s, limits, total)
            if s.finished:
                break
            running = sorted(t.id for t in s.tasks if s.state[t.index] is State.RUNNING)
            assert running or sleeping, f"seed {seed}: stalled"
            if sleeping and (not running or rng.random() < 0.3):
                s.wake(sleeping.pop(rng.randrange(len(sleeping))))
                s.dispatch()
                continue
            tid = rng.choice(running)
            tries[tid] = tries.get(tid, 0) + 1
            r = rng.random()
            if r < 0.15 and tries[tid] < 4:
                s.finish(tid, False, retry=True)
                sleeping.append(tid)
            elif r < 0.25 and tries[tid] < 4:
                s.finish(tid, False, solo=True)
            elif r < 0.4:
                s.finish(tid, False)
                if rng.random() < 0.2:
                    s.abandon("stopped", scope=rng.choice(["a", "b"]))
            else:
                s.finish(tid, True)
            s.dispatch()
        assert s.finished, f"seed {seed}"


def test_revoke_fails_a_done_task_and_skips_its_dependents_not_yet_started() -> None:
    # A quality gate blamed `a` after it was done: `b` (waiting on it, next phase) is
    # skipped, `c` (independent) still runs, and the run can finish.
    plan = compiled(
        {
            "specialists": {"s": {"run": ["true"]}},
            "tasks": [
                {"id": "a", "specialist": "s"},
                {"id": "b", "specialist": "s", "phase": "validation", "depends_on": ["a"]},
                {"id": "c", "specialist": "s", "phase": "validation"},
            ],
        }
    )
    sched = Scheduler(plan, limits={"s": 2}, total=4)
    assert starts(sched.dispatch()) == [("a", "s#1", None)]
    sched.finish("a", True)
    out = sched.revoke("a")
    assert [(d.task, d.cause) for d in out if isinstance(d, Skipped)] == [("b", "a")]
    assert sched.state[0] is State.FAILED and sched.state[1] is State.SKIPPED
    assert [t for t, _, _ in starts(sched.dispatch())] == ["c"]
    sched.finish("c", True)
    assert sched.finished
    try:
        sched.revoke("b")
    except ValueError as exc:
        assert "not done" in str(exc)
    else:
        raise AssertionError("a task that is not done cannot be revoked")
