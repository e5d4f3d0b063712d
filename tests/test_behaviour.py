"""The engine's behaviour, on every executor (as anyio runs its tests on every backend).

Each test describes its tasks as `Act`s (how long, how each attempt ends, what it
writes). On the fake executor they are played on a virtual clock, in no real time; on
the local executor the same acts are real shell processes (`sleep`, `printf`, `exit`),
so both paths through the engine are held to the same facts, read from the journal.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from guildrun import Plan
from guildrun._clock import VirtualClock
from guildrun._engine import Engine, run_prepared
from guildrun._executors.base import Ending
from guildrun._executors.fake import Act, FakeExecutor
from guildrun._journal import Event, Journal, journal_path
from guildrun._metrics import Summary
from guildrun._prepare import prepare
from guildrun._reporter import Reporter
from guildrun._resume import resume_async

KINDS = [
    "fake",
    pytest.param("local", marks=pytest.mark.slow),
    # Actors on a real 2-node Ray cluster on loopback, in worktree mode on a git repository
    # the harness makes (the Ray backend's files come back as patches).
    pytest.param("ray", marks=pytest.mark.slow),
]


def _shell(acts: Sequence[Act]) -> str:
    """The same acts as a shell script that picks its act by $GUILDRUN_ATTEMPT."""
    cases = []
    for n, act in enumerate(acts, 1):
        body = [f"sleep {act.duration}"] if act.duration else []
        for rel, data in act.writes.items():
            assert data is not None and b"'" not in data
            body.append(f"mkdir -p \"$(dirname '{rel}')\"; printf '%s' '{data.decode()}' > '{rel}'")
        if act.ending is Ending.DONE:
            body.append("exit 0")
        else:
            body.append(f"exit {act.exit_code or 1}")
        label = str(n) if n < len(acts) else "*"
        cases.append(f"{label}) {'; '.join(body)};;")
    return f"case $GUILDRUN_ATTEMPT in {' '.join(cases)} esac"


@dataclass
class Ran:
    """What a run did, from its journal."""

    summary: Summary
    attempts: list[sqlite3.Row]
    tasks: dict[str, sqlite3.Row]
    events: list[sqlite3.Row]

    def spans(self, *, specialist: str | None = None) -> list[tuple[float, float]]:
        return [
            (a["started"], a["ended"])
            for a in self.attempts
            if specialist is None or self.tasks[a["task_id"]]["specialist"] == specialist
        ]

    def by_instance(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for a in sorted(self.attempts, key=lambda a: (a["started"], a["task_id"])):
            out.setdefault(a["instance"], []).append(a["task_id"])
        return out


def most_at_once(spans: Sequence[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, d in edges:
        now += d
        most = max(most, now)
    return most


class Harness:
    """Runs a plan on one kind of executor and reads back what happened."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root

    def plan(self, data: dict[str, Any], acts: Mapping[str, Sequence[Act]]) -> Plan:
        data = {**data, "settings": {"sample_interval": 0, **data.get("settings", {})}}
        if self.kind == "ray":
            data["settings"] = {**data["settings"], "backend": "ray"}
        if self.kind in ("local", "ray"):
            data["specialists"] = {
                name: {**spec, "run": 'eval "$GUILDRUN_PROMPT"', "shell": True}
                for name, spec in data["specialists"].items()
            }
            data["tasks"] = [
                {**t, "prompt": _shell(acts.get(t["id"], [Act()]))} for t in data["tasks"]
            ]
        else:
            data["specialists"] = {
                name: {**spec, "run": ["never-run"]} for name, spec in data["specialists"].items()
            }
        return Plan.model_validate(data)

    def run(
        self,
        data: dict[str, Any],
        acts: Mapping[str, Sequence[Act]] | None = None,
        *,
        reporter: Reporter | None = None,
        crash_after_commit: int | None = None,
    ) -> Ran:
        acts = acts or {}
        if self.kind == "ray":
            _commit_all(self.root)  # worktree mode starts from a clean commit
        prepared = prepare(self.plan(data, acts), root=self.root)
        if self.kind == "fake":
            clock = VirtualClock()
            executor = FakeExecutor(acts)
            try:
                summary = clock.run(
                    run_prepared(
                        prepared,
                        reporter=reporter,
                        handle_signals=False,
                        executor=executor,
                        clock=clock,
                        journal=_CrashingJournal(self.root, crash_after_commit),
                    )
                )
            finally:
                clock.close()
        else:
            summary = asyncio.run(
                run_prepared(
                    prepared,
                    reporter=reporter,
                    handle_signals=False,
                    journal=_CrashingJournal(self.root, crash_after_commit),
                )
            )
        return self.read(summary)

    def resume(self, acts: Mapping[str, Sequence[Act]] | None = None) -> Ran:
        if self.kind == "fake":
            clock = VirtualClock()
            try:
                summary = clock.run(
                    resume_async(
                        root=self.root,
                        handle_signals=False,
                        executor=FakeExecutor(acts or {}),
                        clock=clock,
                    )
                )
            finally:
                clock.close()
        else:
            summary = asyncio.run(resume_async(root=self.root, handle_signals=False))
        return self.read(summary)

    def read(self, summary: Summary) -> Ran:
        db = sqlite3.connect(journal_path(self.root))
        db.row_factory = sqlite3.Row
        try:
            rid = summary.run_id
            attempts = list(
                db.execute("SELECT * FROM attempts WHERE run_id=? ORDER BY started", (rid,))
            )
            tasks = {r["id"]: r for r in db.execute("SELECT * FROM tasks WHERE run_id=?", (rid,))}
            events = list(db.execute("SELECT * FROM events WHERE run_id=? ORDER BY seq", (rid,)))
        finally:
            db.close()
        return Ran(summary, attempts, tasks, events)


class PowerLoss(BaseException):
    """The engine's process dies here: nothing after this commit happens."""


class _CrashingJournal(Journal):
    def __init__(self, root: Path, crash_after: int | None) -> None:
        super().__init__(journal_path(root))
        self._loss_after = crash_after
        self._count = 0

    def commit_hook(self) -> None:
        self._count += 1
        if self._loss_after is not None and self._count >= self._loss_after:
            raise PowerLoss


def _commit_all(root: Path) -> None:
    """The project as one commit of a git repository (worktree mode's base)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t.invalid")
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t.invalid")
    if not (root / ".git").exists():
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, env=env, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, env=env, check=True)
    subprocess.run(
        ["git", "commit", "-q", "--allow-empty", "-m", "base"], cwd=root, env=env, check=True
    )


@pytest.fixture(params=KINDS)
def harness(request: pytest.FixtureRequest, project: Path) -> Iterator[Harness]:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")  # one cluster per test worker, joined here
    yield Harness(request.param, project)


def tasks(n: int, specialist: str = "w", **extra: Any) -> list[dict[str, Any]]:
    return [{"id": f"{specialist}{i}", "specialist": specialist, **extra} for i in range(1, n + 1)]


# ---------------------------------------------------------------- limits and distribution


def test_limits_hold_per_specialist_and_in_total(harness: Harness) -> None:
    ran = harness.run(
        {
            "settings": {"per_agent_type": 3, "total_parallel": 4},
            "specialists": {"a": {}, "b": {}},
            "tasks": tasks(6, "a") + tasks(6, "b"),
        },
        {f"{s}{i}": [Act(0.3)] for s in "ab" for i in range(1, 7)},
    )
    assert ran.summary.done == 12
    assert most_at_once(ran.spans(specialist="a")) <= 3
    assert most_at_once(ran.spans(specialist="b")) <= 3
    assert most_at_once(ran.spans()) <= 4
    assert most_at_once(ran.spans()) >= 3  # and it did run in parallel


def test_round_robin_deals_the_seeds_piles(harness: Harness) -> None:
    ran = harness.run(
        {
            "settings": {"per_agent_type": 3, "strategy": "round-robin"},
            "specialists": {"w": {}},
            "tasks": tasks(7),
        },
        {f"w{i}": [Act(0.2)] for i in range(1, 8)},
    )
    piles = sorted(ran.by_instance().values())
    assert piles == [["w1", "w4", "w7"], ["w2", "w5"], ["w3", "w6"]]


def test_an_idle_instance_steals_from_the_back_of_the_busiest(harness: Harness) -> None:
    # w1 is long: its instance's pile [w1, w4, w7] is taken over by the others. On Ray
    # each instance first starts an actor (a second or more on a busy machine): longer.
    long = 6.0 if harness.kind == "ray" else 2.0
    acts = {f"w{i}": [Act(0.2)] for i in range(1, 8)} | {"w1": [Act(long)]}
    ran = harness.run(
        {"settings": {"per_agent_type": 3}, "specialists": {"w": {}}, "tasks": tasks(7)}, acts
    )
    stolen = {t: r["stolen_from"] for t, r in ran.tasks.items() if r["stolen_from"]}
    assert stolen == {"w7": "w#1", "w4": "w#1"}
    assert ran.summary.done == 7


# ---------------------------------------------------------------- independence


def test_shared_files_and_locks_exclude_each_other(harness: Harness) -> None:
    ran = harness.run(
        {
            "settings": {"per_agent_type": 3},
            "specialists": {"w": {}},
            "tasks": [
                {"id": "a", "specialist": "w", "files": ["x.txt"]},
                {"id": "b", "specialist": "w", "files": ["x.txt"]},
                {"id": "c", "specialist": "w", "locks": ["db"]},
                {"id": "d", "specialist": "w", "locks": ["db"]},
            ],
        },
        {t: [Act(0.3)] for t in "abcd"},
    )
    span = {a["task_id"]: (a["started"], a["ended"]) for a in ran.attempts}
    assert span["b"][0] >= span["a"][1]  # plan order goes first
    assert span["d"][0] >= span["c"][1]
    assert span["c"][0] < span["a"][1]  # independent pairs overlap


def test_phases_are_boundaries_and_dependencies_order(harness: Harness) -> None:
    ran = harness.run(
        {
            "settings": {"per_agent_type": 3},
            "specialists": {"w": {}},
            "tasks": [
                {"id": "impl1", "specialist": "w"},
                {"id": "impl2", "specialist": "w"},
                {"id": "after", "specialist": "w", "depends_on": ["impl1"]},
                {"id": "check", "specialist": "w", "phase": "validation"},
            ],
        },
        {"impl1": [Act(0.2)], "impl2": [Act(0.6)], "after": [Act(0.2)], "check": [Act(0.1)]},
    )
    span = {a["task_id"]: (a["started"], a["ended"]) for a in ran.attempts}
    assert span["after"][0] >= span["impl1"][1]
    assert span["check"][0] >= max(span[t][1] for t in ("impl1", "impl2", "after"))


# ---------------------------------------------------------------- failures


def test_retry_with_backoff_then_success(harness: Harness) -> None:
    ran = harness.run(
        {
            "settings": {"retry": {"attempts": 3, "base": 0.3, "jitter": 0}},
            "specialists": {"w": {}},
            "tasks": tasks(2),
        },
        {"w1": [Act(0.1, Ending.FAILED, 1), Act(0.1)], "w2": [Act(0.1)]},
    )
    w1 = [a for a in ran.attempts if a["task_id"] == "w1"]
    assert [a["status"] for a in w1] == ["failed", "ok"]
    assert w1[1]["started"] - w1[0]["ended"] >= 0.3 - 0.01  # the backoff was waited out
    assert ran.tasks["w1"]["state"] == "done"


def test_timeout_ends_the_attempt(harness: Harness) -> None:
    ran = harness.run(
        {"specialists": {"w": {"timeout": 0.5}}, "tasks": tasks(1)}, {"w1": [Act(30.0)]}
    )
    (attempt,) = ran.attempts
    assert attempt["status"] == "timeout"
    assert attempt["ended"] - attempt["started"] < 10
    assert ran.summary.failed == 1


def test_a_failure_skips_dependents_and_stops_its_scope(harness: Harness) -> None:
    ran = harness.run(
        {
            "settings": {"per_agent_type": 1, "isolation": "scope"},
            "specialists": {"w": {}},
            "tasks": [
                {"id": "bad", "specialist": "w", "scope": "pay"},
                {"id": "later", "specialist": "w", "scope": "pay"},
                {"id": "child", "specialist": "w", "scope": "auth", "depends_on": ["bad"]},
                {"id": "other", "specialist": "w", "scope": "auth"},
            ],
        },
        {"bad": [Act(0.1, Ending.FAILED, 3)]},
    )
    states = {t: r["state"] for t, r in ran.tasks.items()}
    assert states == {"bad": "failed", "later": "skipped", "child": "skipped", "other": "done"}


def test_ownership_violation_is_undone_and_fails_the_task(harness: Harness) -> None:
    (harness.root / "mine.txt").write_text("mine")
    (harness.root / "theirs.txt").write_text("theirs")
    ran = harness.run(
        {
            "specialists": {"w": {}},
            "tasks": [{"id": "w1", "specialist": "w", "files": ["mine.txt"]}],
        },
        {"w1": [Act(0.1, writes={"mine.txt": b"new", "theirs.txt": b"stolen"})]},
    )
    assert ran.attempts[0]["status"] == "violation"
    assert (harness.root / "theirs.txt").read_text() == "theirs"
    assert (harness.root / "mine.txt").read_text() == "mine"  # the failed attempt is undone


# ---------------------------------------------------------------- resume


def test_resume_after_power_loss_finishes_every_task_once(harness: Harness) -> None:
    data = {"settings": {"per_agent_type": 2}, "specialists": {"w": {}}, "tasks": tasks(5)}
    acts = {f"w{i}": [Act(0.2 * i)] for i in range(1, 6)}
    with pytest.raises(PowerLoss):
        harness.run(data, acts, crash_after_commit=6)
    ran = harness.resume(acts)
    assert ran.summary.done == 5
    oks = [a["task_id"] for a in ran.attempts if a["status"] == "ok"]
    assert sorted(oks) == [f"w{i}" for i in range(1, 6)]  # each done exactly once


# ---------------------------------------------------------------- admission


class _Lower(Reporter):
    """Lowers the specialist's limit to 1 as soon as three of its tasks run."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.running = 0
        self.lowered_at: float | None = None

    def events(self, events: Iterable[Event]) -> None:
        for ev in events:
            if ev.kind == "task_started":
                self.running += 1
                if self.running == 3 and self.lowered_at is None:
                    assert self.engine is not None
                    self.engine.set_limit("w", 1)
                    self.lowered_at = ev.time


def test_lowering_a_limit_mid_run_throttles_at_the_next_start(project: Path) -> None:
    harness = Harness("fake", project)
    acts = {f"w{i}": [Act(1.0 + i / 10)] for i in range(1, 10)}
    data = {"settings": {"per_agent_type": 3}, "specialists": {"w": {}}, "tasks": tasks(9)}
    prepared = prepare(harness.plan(data, acts), root=project)
    reporter = _Lower()
    clock = VirtualClock()
    journal = Journal(journal_path(project))
    engine = Engine(prepared, journal, FakeExecutor(acts), reporter=reporter, clock=clock)
    reporter.engine = engine
    try:
        summary = clock.run(engine.execute())
    finally:
        clock.close()
        journal.close()
    ran = harness.read(summary)
    assert reporter.lowered_at is not None
    assert ran.summary.done == 9
    first_three_end = max(e for s, e in ran.spans() if s <= reporter.lowered_at)
    later = [(s, e) for s, e in ran.spans() if s > reporter.lowered_at]
    # Nothing new started until the three running ones had all ended, then one at a time.
    assert all(s >= first_three_end for s, _ in later)
    assert most_at_once(later) == 1


def test_a_running_tasks_temporary_file_is_not_undone(project: Path) -> None:
    """`sed -i` style: a temp file next to the owned one, renamed over it at the end,
    while a sibling task ends (and triggers a check) in the middle."""
    (project / "a.txt").write_text("old")
    plan = Plan.model_validate(
        {
            "settings": {"sample_interval": 0, "per_agent_type": 2},
            "specialists": {"w": {"run": 'eval "$GUILDRUN_PROMPT"', "shell": True}},
            "tasks": [
                {
                    "id": "edit",
                    "specialist": "w",
                    "files": ["a.txt"],
                    "prompt": "printf new > .tmp.a; sleep 0.8; mv .tmp.a a.txt",
                },
                {"id": "quick", "specialist": "w", "prompt": "sleep 0.2"},
            ],
        }
    )
    summary = asyncio.run(run_prepared(prepare(plan, root=project), handle_signals=False))
    assert summary.done == 2, summary
    assert (project / "a.txt").read_text() == "new"
    assert not (project / ".tmp.a").exists()


def test_strategy_and_retry_objects_given_in_code_reach_the_run(project: Path) -> None:
    import guildrun

    harness = Harness("fake", project)
    acts = {f"w{i}": [Act(0.2)] for i in range(1, 8)}
    acts["w2"] = [Act(0.1, Ending.FAILED, 1), Act(0.1, Ending.FAILED, 1), Act(0.1)]
    plan = harness.plan(
        {"settings": {"per_agent_type": 3}, "specialists": {"w": {}}, "tasks": tasks(7)}, acts
    )
    clock = VirtualClock()
    try:
        summary = clock.run(
            guildrun.run_async(
                plan,
                root=project,
                env={},
                strategy=guildrun.RoundRobin(),
                retry=guildrun.RetryPolicy(attempts=3, wait=guildrun.wait_exponential(0.5)),
                executor=FakeExecutor(acts),
                clock=clock,
                handle_signals=False,
            )
        )
    finally:
        clock.close()
    ran = harness.read(summary)
    assert ran.summary.done == 7  # the plan allows one try; the policy object three
    assert [a["status"] for a in ran.attempts if a["task_id"] == "w2"] == ["failed"] * 2 + ["ok"]
    firsts = {a["task_id"]: a["instance"] for a in ran.attempts if a["attempt"] == 1}
    # Round robin keeps the static deal: w1, w4, w7 on one instance (nobody steals).
    assert firsts["w1"] == firsts["w4"] == firsts["w7"]


def test_a_rate_limit_holds_the_provider_and_is_retried_without_counting(project: Path) -> None:
    harness = Harness("fake", project)
    acts = {
        "w1": [Act(1.0, Ending.RATE_LIMITED, 1, retry_after=10.0), Act(1.0)],
        "w2": [Act(0.5)],
        "w3": [Act(20.0)],
        "w4": [Act(2.0)],  # ends inside the hold: without it, w5 would start then
        "w5": [Act(0.5)],
    }
    plan = Plan.model_validate(
        {
            "settings": {"per_agent_type": 2, "retry": {"attempts": 1}, "sample_interval": 0},
            # The fake executor never runs the agent; `program` only passes the PATH check.
            "specialists": {"w": {"agent": "claude", "program": "/bin/true"}},
            "tasks": tasks(5),
        }
    )
    prepared = prepare(plan, root=project)
    clock = VirtualClock()
    try:
        summary = clock.run(
            run_prepared(prepared, handle_signals=False, executor=FakeExecutor(acts), clock=clock)
        )
    finally:
        clock.close()
    ran = harness.read(summary)
    assert ran.summary.done == 5  # one try allowed, yet w1 is done: a rate limit does not count
    w1 = [a for a in ran.attempts if a["task_id"] == "w1"]
    assert [a["status"] for a in w1] == ["rate_limited", "ok"]
    limited_at = w1[0]["ended"]
    # Nothing of the provider started while it was held (10 s and up to 25% jitter).
    starts = sorted(a["started"] for a in ran.attempts)
    assert not [s for s in starts if limited_at < s < limited_at + 10.0]
    assert summary.rate_limited >= 1
    kinds = [e["kind"] for e in ran.events]
    assert "rate_limited" in kinds and "throttle_released" in kinds


def test_keep_context_continues_the_instances_last_session_and_reports_it(
    project: Path,
) -> None:
    acts = {f"w{i}": [Act(1.0, session_id=f"S{i}")] for i in range(1, 4)}
    plan = Plan.model_validate(
        {
            "settings": {"per_agent_type": 1, "sample_interval": 0},
            # The fake executor never runs the agent; `program` only passes the PATH check.
            "specialists": {"w": {"agent": "claude", "program": "/bin/true", "keep_context": True}},
            "tasks": tasks(3),
        }
    )
    clock = VirtualClock()
    executor = FakeExecutor(acts)
    try:
        summary = clock.run(
            run_prepared(
                prepare(plan, root=project), handle_signals=False, executor=executor, clock=clock
            )
        )
    finally:
        clock.close()
    assert summary.done == 3
    assert summary.shared_sessions == [
        {"task": "w2", "continued": "w1", "session": "S1"},
        {"task": "w3", "continued": "w2", "session": "S2"},
    ]
