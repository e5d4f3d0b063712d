"""Regressions from a review of the engine, on the fake executor and a virtual clock.

Each test pins down one behaviour a reviewer found broken (provider holds, stray
writes, sessions, timers, rate-limit counting, the engine lock, writes: globs); all of
them run in no real time.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from guildrun import Plan
from guildrun._agents.base import RateLimited
from guildrun._clock import VirtualClock
from guildrun._engine import Engine, run_prepared
from guildrun._errors import UsageError
from guildrun._executors.base import Ending, Job, Outcome
from guildrun._executors.fake import Act, FakeExecutor
from guildrun._journal import journal_path
from guildrun._metrics import Summary
from guildrun._prepare import prepare
from guildrun._resume import resume_async

CLAUDE = {"agent": "claude", "program": "/bin/true"}


def rows(root: Path, sql: str, *args: object) -> list[sqlite3.Row]:
    db = sqlite3.connect(journal_path(root))
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute(sql, args))
    finally:
        db.close()


def events(root: Path, kind: str) -> list[tuple[str | None, Any]]:
    """The journal's events of one kind, as (task, data)."""
    found = rows(root, "SELECT task, data FROM events WHERE kind = ? ORDER BY seq", kind)
    return [(r["task"], json.loads(r["data"]) if r["data"] else None) for r in found]


def attempts(root: Path, task: str) -> list[tuple[int, str]]:
    found = rows(
        root, "SELECT attempt, status FROM attempts WHERE task_id = ? ORDER BY attempt", task
    )
    return [(r["attempt"], r["status"]) for r in found]


class Start(NamedTuple):
    task: str
    attempt: int
    instance: str
    at: float  # seconds since the run's first start
    resume_session: str | None


class SignalingFake(FakeExecutor):
    """Records every start; `signals[(task, attempt)] = (after, retry_after)` makes that
    attempt's agent report a 429 live, `after` seconds into it."""

    def __init__(
        self,
        script: Mapping[str, Sequence[Act]],
        signals: Mapping[tuple[str, int], tuple[float, float]] | None = None,
    ) -> None:
        super().__init__(script)
        self.signals = dict(signals or {})
        self.starts: list[Start] = []
        self._t0: float | None = None

    async def run(self, job: Job) -> Outcome:
        ctx = job.context
        now = self.clock.now()
        if self._t0 is None:
            self._t0 = now
        self.starts.append(
            Start(ctx.task_id, ctx.attempt, ctx.instance, now - self._t0, job.resume_session)
        )
        signal = self.signals.get((ctx.task_id, ctx.attempt))
        if signal is not None:
            after, retry_after = signal
            listener = self.on_signal
            assert listener is not None
            asyncio.get_running_loop().call_later(
                after, listener, ctx.task_id, RateLimited(429, retry_after, 1)
            )
        return await super().run(job)


class SessionFake(SignalingFake):
    """Every attempt reports session `<task>.<attempt>`; `seen` keeps, per attempt, the
    session it resumed and its `a.txt` as the attempt left it."""

    def __init__(self, script: Mapping[str, Sequence[Act]]) -> None:
        super().__init__(script)
        self.seen: list[tuple[int, str | None, str | None]] = []

    async def run(self, job: Job) -> Outcome:
        out = await super().run(job)
        ctx = job.context
        a_txt = ctx.workdir / "a.txt"
        self.seen.append(
            (ctx.attempt, job.resume_session, a_txt.read_text() if a_txt.exists() else None)
        )
        out.session_id = f"{ctx.task_id}.{ctx.attempt}"
        return out


def run(project: Path, data: dict[str, Any], executor: FakeExecutor) -> Summary:
    prepared = prepare(Plan.model_validate(data), root=project)
    clock = VirtualClock()
    try:
        return clock.run(
            run_prepared(prepared, handle_signals=False, executor=executor, clock=clock)
        )
    finally:
        clock.close()


def retried_plan() -> dict[str, Any]:
    """One claude task, 2 tries, no backoff: a rate limit, a failure, then success."""
    return {
        "settings": {
            "per_agent_type": 1,
            "sample_interval": 0,
            "retry": {"attempts": 2, "base": 0, "jitter": 0},
        },
        "specialists": {"w": CLAUDE},
        "tasks": [{"id": "w1", "specialist": "w"}],
    }


RETRIED_ACTS = {
    "w1": [
        Act(1.0, Ending.RATE_LIMITED, 1, retry_after=5.0),
        Act(1.0, Ending.FAILED, 1),
        Act(1.0),
    ]
}


def test_a_helper_does_not_start_a_held_providers_tasks(project: Path) -> None:
    """While claude is held after a 429, no claude task starts, not even on a helper."""
    data = {
        "settings": {"per_agent_type": 1, "sample_interval": 0},
        "specialists": {"w": CLAUDE, "h": {"run": ["never-run"], "can_help": ["w"]}},
        "tasks": [
            {"id": "w1", "specialist": "w"},
            {"id": "w2", "specialist": "w"},
            {"id": "w3", "specialist": "w"},
            {"id": "h1", "specialist": "h"},
        ],
    }
    acts = {"w1": [Act(30.0)], "w2": [Act(1.0)], "w3": [Act(1.0)], "h1": [Act(3.0)]}
    ex = SignalingFake(acts, {("w1", 1): (2.0, 60.0)})  # a 429 at t=2: wait 60 s
    summary = run(project, data, ex)

    assert summary.status == "done"
    [(task, hold)] = events(project, "rate_limited")
    assert task == "w1"
    assert 60.0 <= hold["wait"] <= 75.0  # 60 s and up to 25 % jitter
    released = 2.0 + hold["wait"]
    assert [(s.task, s.instance, s.at) for s in ex.starts[:2]] == [
        ("w1", "w#1", 0.0),
        ("h1", "h#1", 0.0),
    ]
    later = sorted((s.task, s.instance) for s in ex.starts[2:])
    assert later == [("w2", "w#1"), ("w3", "h#1")]
    for s in ex.starts[2:]:
        assert released <= s.at + 1e-3  # not before the hold ends
        assert s.at == pytest.approx(released, abs=0.1)  # and at once when it does


def test_a_later_owner_does_not_accept_a_pending_stray_write(project: Path) -> None:
    """A stray write still awaiting judgement is undone, not made the baseline by its
    file's owner finishing later."""
    (project / "p.txt").write_text("original\n")
    data = {
        "settings": {"per_agent_type": 4, "sample_interval": 0},
        "specialists": {"s": {"run": ["never-run"]}},
        "tasks": [
            {"id": "c", "specialist": "s", "files": ["c.txt"]},
            {"id": "d", "specialist": "s", "files": ["d.txt"]},
            {"id": "g", "specialist": "s", "files": ["p.txt"], "depends_on": ["c"]},
        ],
    }
    acts = {
        "c": [Act(1.0, writes={"c.txt": b"c", "p.txt": b"HOSTILE\n"})],
        "d": [Act(10.0)],
        "g": [Act(1.0)],
    }
    summary = run(project, data, FakeExecutor(acts))

    assert (project / "p.txt").read_text() == "original\n"
    assert (project / "c.txt").read_text() == "c"
    assert summary.status == "done"
    assert events(project, "stray_changes_undone") == [
        (None, {"paths": ["p.txt"], "running": ["c", "d"]})
    ]


def test_a_run_stopped_by_fail_fast_still_undoes_a_pending_stray_write(project: Path) -> None:
    """When fail-fast stops a run, a stray write still awaiting judgement is undone and
    reported."""
    (project / "x.txt").write_text("original\n")
    data = {
        "settings": {"per_agent_type": 4, "sample_interval": 0, "fail_fast": True},
        "specialists": {"s": {"run": ["never-run"]}},
        "tasks": [
            {"id": "c", "specialist": "s", "files": ["c.txt"]},
            {"id": "d", "specialist": "s", "files": ["d.txt"]},
            {"id": "e", "specialist": "s", "files": ["e.txt"]},
        ],
    }
    acts = {
        "c": [Act(1.0, writes={"c.txt": b"c", "x.txt": b"STRAY\n"})],
        "d": [Act(10.0)],
        "e": [Act(2.0, Ending.FAILED, 1)],
    }
    summary = run(project, data, FakeExecutor(acts))

    assert (project / "x.txt").read_text() == "original\n"
    assert [t for t, _ in events(project, "task_interrupted")] == ["d"]
    assert events(project, "stray_changes_undone") == [
        (None, {"paths": ["x.txt"], "running": ["c", "d", "e"]})
    ]
    assert summary.failed == 1


def test_a_rate_limited_attempts_work_is_kept_and_its_session_continued(
    project: Path,
) -> None:
    """A rate-limited attempt's files stay as it left them, and its retry continues the
    same agent session on them: nothing of its work is thrown away."""
    (project / "a.txt").write_text("v0\n")
    data = {
        "settings": {"per_agent_type": 1, "sample_interval": 0},
        "specialists": {"w": CLAUDE},
        "tasks": [{"id": "w1", "specialist": "w", "files": ["a.txt"]}],
    }
    acts = {
        "w1": [
            Act(1.0, Ending.RATE_LIMITED, 1, writes={"a.txt": b"half done\n"}, retry_after=5.0),
            Act(1.0),
        ]
    }
    ex = SessionFake(acts)
    summary = run(project, data, ex)

    assert summary.status == "done"
    assert [(s.task, s.attempt, s.resume_session) for s in ex.starts] == [
        ("w1", 1, None),
        ("w1", 2, "w1.1"),
    ]
    assert ex.seen == [(1, None, "half done\n"), (2, "w1.1", "half done\n")]
    assert (project / "a.txt").read_text() == "half done\n"


def test_a_continued_task_that_then_fails_goes_back_to_before_its_first_attempt(
    project: Path,
) -> None:
    """The snapshot a failed task is rolled back to is the one before its first attempt,
    not the kept half-done state its continued attempt started from."""
    (project / "a.txt").write_text("v0\n")
    data = {
        "settings": {"per_agent_type": 1, "sample_interval": 0},
        "specialists": {"w": CLAUDE},
        "tasks": [{"id": "w1", "specialist": "w", "files": ["a.txt"]}],
    }
    acts = {
        "w1": [
            Act(1.0, Ending.RATE_LIMITED, 1, writes={"a.txt": b"half done\n"}, retry_after=5.0),
            Act(1.0, Ending.FAILED, 1, writes={"a.txt": b"broken\n"}),
        ]
    }
    summary = run(project, data, SessionFake(acts))

    assert summary.status == "failed"
    assert (project / "a.txt").read_text() == "v0\n"


def test_no_timer_fires_into_the_journal_after_the_run_ends(project: Path) -> None:
    """A hold's release timer is cancelled when the run ends: the loop that goes on
    (as the MCP server's does) sees no error."""
    data = {
        "settings": {"per_agent_type": 1, "sample_interval": 0, "max_cost_usd": 0.5},
        "specialists": {"w": CLAUDE},
        "tasks": [{"id": "w1", "specialist": "w"}, {"id": "w2", "specialist": "w"}],
    }
    acts = {"w1": [Act(1.0, Ending.RATE_LIMITED, 1, retry_after=30.0, cost_usd=1.0)]}
    prepared = prepare(Plan.model_validate(data), root=project)
    clock = VirtualClock()
    errors: list[dict[str, Any]] = []
    clock.loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))

    async def main() -> Summary:
        summary = await run_prepared(
            prepared, handle_signals=False, executor=FakeExecutor(acts), clock=clock
        )
        await asyncio.sleep(100)  # well past the 30 s hold
        return summary

    try:
        summary = clock.run(main())
    finally:
        clock.close()

    assert summary.status == "budget"
    assert errors == []


def test_a_rate_limited_try_stays_free_after_a_resume(project: Path) -> None:
    """A rate-limited try does not use up a retry, in a resumed run as in one run."""
    prepared = prepare(Plan.model_validate(retried_plan()), root=project)

    def stop_soon(engine: Engine) -> None:
        asyncio.get_running_loop().call_later(2.0, engine.stop)

    clock = VirtualClock()
    try:
        first = clock.run(
            run_prepared(
                prepared,
                handle_signals=False,
                executor=FakeExecutor(RETRIED_ACTS),
                clock=clock,
                on_engine=stop_soon,
            )
        )
    finally:
        clock.close()
    assert first.status == "interrupted"
    assert attempts(project, "w1") == [(1, "rate_limited")]

    clock = VirtualClock()
    try:
        resumed = clock.run(
            resume_async(
                root=project,
                handle_signals=False,
                executor=FakeExecutor(RETRIED_ACTS),
                clock=clock,
            )
        )
    finally:
        clock.close()
    assert resumed.status == "done"
    assert attempts(project, "w1") == [(1, "rate_limited"), (2, "failed"), (3, "ok")]


def test_a_rate_limited_try_is_free_within_one_run(project: Path) -> None:
    """Uninterrupted, a rate limit and one failure fit in 2 tries: the third attempt wins."""
    summary = run(project, retried_plan(), FakeExecutor(RETRIED_ACTS))

    assert summary.status == "done"
    assert attempts(project, "w1") == [(1, "rate_limited"), (2, "failed"), (3, "ok")]


def test_a_nan_retry_after_holds_for_the_default_wait(project: Path) -> None:
    """A 429 whose retry-after is NaN holds the provider for the default 5 s, and the run
    ends."""
    data = {
        "settings": {"per_agent_type": 1, "sample_interval": 0},
        "specialists": {"w": CLAUDE},
        "tasks": [{"id": "w1", "specialist": "w"}, {"id": "w2", "specialist": "w"}],
    }
    ex = SignalingFake({"w1": [Act(5.0)]}, {("w1", 1): (1.0, float("nan"))})
    prepared = prepare(Plan.model_validate(data), root=project)
    clock = VirtualClock()

    async def main() -> Summary:
        run = run_prepared(prepared, handle_signals=False, executor=ex, clock=clock)
        return await asyncio.wait_for(run, 10_000)  # virtual seconds: a hang fails here

    try:
        summary = clock.run(main())
    finally:
        clock.close()

    assert summary.status == "done"
    [(task, hold)] = events(project, "rate_limited")
    assert task == "w1"
    assert 5.0 <= hold["wait"] <= 6.25  # the default wait and up to 25 % jitter
    [w2] = [s for s in ex.starts if s.task == "w2"]
    assert w2.at == pytest.approx(1.0 + hold["wait"], abs=0.1)


def test_a_helper_does_not_carry_a_foreign_session_to_its_own_next_task(project: Path) -> None:
    """With keep_context, a helper's next own task continues its own agent's session, not
    the one a task it helped with left on its instance."""
    data = {
        "settings": {"per_agent_type": 1, "sample_interval": 0},
        "specialists": {
            "w": CLAUDE,
            "h": {
                "agent": "codex",
                "program": "/bin/true",
                "can_help": ["w"],
                "keep_context": True,
            },
        },
        "tasks": [
            {"id": "w1", "specialist": "w"},
            {"id": "w2", "specialist": "w"},
            {"id": "h1", "specialist": "h"},
            {"id": "h2", "specialist": "h", "depends_on": ["w2"]},
        ],
    }
    acts = {"w1": [Act(10.0)], "w2": [Act(1.0)], "h1": [Act(0.5)], "h2": [Act(1.0)]}
    ex = SessionFake(acts)
    summary = run(project, data, ex)

    assert summary.status == "done"
    assert [(s.task, s.instance, s.at, s.resume_session) for s in ex.starts] == [
        ("w1", "w#1", 0.0, None),
        ("h1", "h#1", 0.0, None),
        ("w2", "h#1", 0.5, None),  # claude on codex's instance: none of codex's sessions
        ("h2", "h#1", 1.5, "h1.1"),  # codex continues its own session, not w2's
    ]


def test_a_second_engine_in_the_same_process_and_root_is_refused(project: Path) -> None:
    """Two runs of one root started side by side in one process: one runs, the other
    gets a UsageError naming the run that holds the root."""
    data = {
        "settings": {"per_agent_type": 1, "sample_interval": 0},
        "specialists": {"s": {"run": ["never-run"]}},
        "tasks": [{"id": "t1", "specialist": "s"}],
    }
    first = prepare(Plan.model_validate(data), root=project)
    second = prepare(Plan.model_validate(data), root=project)
    clock = VirtualClock()

    async def main() -> list[Summary | BaseException]:
        return await asyncio.gather(
            *(
                run_prepared(
                    p,
                    handle_signals=False,
                    executor=FakeExecutor({"t1": [Act(5.0)]}),
                    clock=clock,
                )
                for p in (first, second)
            ),
            return_exceptions=True,
        )

    try:
        results = clock.run(main())
    finally:
        clock.close()

    [summary] = [r for r in results if isinstance(r, Summary)]
    [refused] = [r for r in results if not isinstance(r, Summary)]
    assert summary.status == "done"
    assert isinstance(refused, UsageError)
    assert f"run {summary.run_id} (pid {os.getpid()}) is running in" in str(refused)


def test_a_failed_attempt_undoes_its_writes_glob_changes(project: Path) -> None:
    """A failed attempt's changes are rolled back in its files: and its writes: globs."""
    (project / "gen").mkdir()
    (project / "gen" / "out.txt").write_text("original\n")
    data = {
        "settings": {"per_agent_type": 1, "sample_interval": 0},
        "specialists": {"s": {"run": ["never-run"]}},
        "tasks": [{"id": "t1", "specialist": "s", "files": ["a.txt"], "writes": ["gen/*"]}],
    }
    acts = {"t1": [Act(1.0, Ending.FAILED, 1, writes={"a.txt": b"x", "gen/out.txt": b"HALF\n"})]}
    summary = run(project, data, FakeExecutor(acts))

    assert summary.status == "failed"
    assert not (project / "a.txt").exists()
    assert (project / "gen" / "out.txt").read_text() == "original\n"


def test_one_rate_limit_heard_live_and_at_the_end_counts_once(project: Path) -> None:
    """A 429 reported live and again as the attempt's ending is one rate limit."""
    data = {
        "settings": {"per_agent_type": 1, "sample_interval": 0},
        "specialists": {"w": CLAUDE},
        "tasks": [{"id": "w1", "specialist": "w"}],
    }
    ex = SignalingFake(
        {"w1": [Act(2.0, Ending.RATE_LIMITED, 1, retry_after=5.0), Act(1.0)]},
        {("w1", 1): (1.0, 5.0)},
    )
    summary = run(project, data, ex)

    assert summary.status == "done"
    assert summary.rate_limited == 1
    assert len(events(project, "rate_limited")) == 1
    assert attempts(project, "w1") == [(1, "rate_limited"), (2, "ok")]


# ---------------------------------------------------------------- second review:
# the raw inotify reader, held commits, learned estimates and the schedule.


def test_a_non_utf8_file_name_is_a_violation_not_a_crash(project: Path) -> None:
    """A real process writes a file whose name is not UTF-8 (bytes 0xff) outside its
    files: the run ends, the task fails with a violation naming it (escaped), and the
    file is undone; the journal never sees a string SQLite cannot encode."""
    import guildrun

    plan = Plan.model_validate(
        {
            "settings": {"retry": {"attempts": 1}},
            "specialists": {"sh": {"run": ["sh", "-c", "printf x > \"$(printf 'b\\377.txt')\""]}},
            "tasks": [{"id": "t", "specialist": "sh", "files": ["own.txt"]}],
        }
    )
    summary = guildrun.run(plan, root=project)

    assert (summary.done, summary.failed) == (0, 1)
    assert os.listdir(os.fsencode(project)) == [b".guildrun"]  # undone
    [(_, error)] = [(r["task_id"], r["error"]) for r in rows(project, "SELECT * FROM attempts")]
    assert error == "ownership violation: wrote b\\xff.txt"


def _learned(project: Path, data: dict[str, Any], acts: Mapping[str, Sequence[Act]]) -> Any:
    """Run `data` once on the fake executor (a real journal), then the estimates the
    next run of it would use."""
    run(project, data, FakeExecutor(acts))
    est = prepare(Plan.model_validate(data), root=project).estimates
    assert est is not None
    return est


def test_tasks_with_no_prompt_and_no_files_learn_their_own_length(project: Path) -> None:
    """Tasks of one command told apart only by their id (no prompt, no files) are not
    the same work: each learns what it took, not the median of the specialist's."""
    data = {
        "settings": {"per_agent_type": 1, "sample_interval": 0},
        "specialists": {"build": {"run": ["never-run"]}},
        "tasks": [{"id": t, "specialist": "build"} for t in ("long", "s1", "s2")],
    }
    acts = {"long": [Act(30.0)], "s1": [Act(1.0)], "s2": [Act(1.0)]}
    est = _learned(project, data, acts)

    assert est.seconds == pytest.approx({"long": 30.0, "s1": 1.0, "s2": 1.0})


def test_a_poisoned_journal_teaches_no_estimate(project: Path) -> None:
    """Durations that cannot be (an end before the start, an infinite one) and files
    that are not a list of names, written into the journal by a task or a broken
    clock, are ignored: the next run neither crashes nor learns a negative length."""
    data = {
        "settings": {"per_agent_type": 1, "sample_interval": 0},
        "specialists": {"w": {"run": ["never-run"]}},
        "tasks": [{"id": t, "specialist": "w", "prompt": t} for t in ("a", "b", "c")],
    }
    run(project, data, FakeExecutor({"a": [Act(5.0)], "b": [Act(2.0)], "c": [Act(3.0)]}))
    db = sqlite3.connect(journal_path(project))
    db.execute("UPDATE attempts SET ended = started - 100 WHERE task_id = 'a'")
    db.execute("UPDATE attempts SET ended = 1e999 WHERE task_id = 'b'")
    db.execute("UPDATE tasks SET files_json = '3' WHERE id = 'c'")
    db.commit()
    db.close()

    est = prepare(Plan.model_validate(data), root=project).estimates
    assert est is not None
    assert all(0 <= s < 1e6 for s in est.seconds.values()), est.seconds
    assert est.origin == dict.fromkeys(("a", "b", "c"), "mean")  # nothing usable learned


def test_balanced_piles_keep_to_their_effort_on_a_huge_phase() -> None:
    """`balanced` promises plain LPT when a phase is too big to improve: the pairs it
    compares stay within `effort`, where one pass over two piles of 1,000 tasks each
    compared a million (20,000 tasks in two piles took 20 s)."""
    from guildrun._schedule import balanced

    weights = [1.0 + (k * 7919 % 1000) / 997 for k in range(2000)]
    calls = 0

    def weight(t: int) -> float:
        nonlocal calls
        calls += 1
        return weights[t]

    piles = balanced(range(2000), 2, weight, effort=200_000)

    assert sorted(t for p in piles for t in p) == list(range(2000))
    loads = [sum(weights[t] for t in p) for p in piles]
    assert abs(loads[0] - loads[1]) <= max(weights)  # LPT's bound still holds
    assert calls <= 200_000 + 20 * len(weights), calls


class _StopAfter(FakeExecutor):
    """Stops the run (as Ctrl-C does) the moment one task's attempt has returned: its
    end is already on its way to the engine."""

    def __init__(self, script: Mapping[str, Sequence[Act]], task: str) -> None:
        super().__init__(script)
        self.task = task
        self.engine: Engine | None = None

    async def run(self, job: Job) -> Outcome:
        outcome = await super().run(job)
        if job.context.task_id == self.task and self.engine is not None:
            asyncio.get_running_loop().call_soon(self.engine.stop)
        return outcome


def test_a_task_that_ended_as_the_run_is_stopped_keeps_its_work(project: Path) -> None:
    """A task's end that arrived with the stop is judged as done, not undone and
    marked interrupted: its work is kept, and a resume does not run it again."""
    data = {
        "settings": {"per_agent_type": 2, "sample_interval": 0},
        "specialists": {"s": {"run": ["never-run"]}},
        "tasks": [
            {"id": "quick", "specialist": "s", "files": ["quick.txt"]},
            {"id": "slow", "specialist": "s", "files": ["slow.txt"]},
        ],
    }
    ex = _StopAfter(
        {
            "quick": [Act(1.0, writes={"quick.txt": b"done\n"})],
            "slow": [Act(9.0, writes={"slow.txt": b"late\n"})],
        },
        "quick",
    )
    prepared = prepare(Plan.model_validate(data), root=project)
    clock = VirtualClock()

    def keep(engine: Engine) -> None:
        ex.engine = engine

    try:
        summary = clock.run(
            run_prepared(prepared, handle_signals=False, executor=ex, clock=clock, on_engine=keep)
        )
    finally:
        clock.close()

    assert summary.status == "interrupted"
    assert attempts(project, "quick") == [(1, "ok")]
    assert (project / "quick.txt").read_text() == "done\n"
    assert attempts(project, "slow") == [(1, Ending.INTERRUPTED.value)]
    assert not (project / "slow.txt").exists()


def test_a_project_path_with_uri_characters_keeps_its_journal_readable(tmp_path: Path) -> None:
    """SQLite reads a `file:` URI: a '#', '?' or '%' in the project's path cut it short
    or changed it, so `guildrun status` failed ("no such table") and no estimate was
    ever learned there."""
    from guildrun._journal import Journal

    project = tmp_path / "p#1?x=%41"
    project.mkdir()
    data = {
        "settings": {"per_agent_type": 1, "sample_interval": 0},
        "specialists": {"w": {"run": ["never-run"]}},
        "tasks": [{"id": t, "specialist": "w", "prompt": t} for t in ("a", "b")],
    }
    est = _learned(project, data, {"a": [Act(4.0)], "b": [Act(1.0)]})
    assert est.seconds == pytest.approx({"a": 4.0, "b": 1.0})
    journal = Journal(journal_path(project), readonly=True)
    try:
        assert len(journal.runs(limit=10)) == 1
    finally:
        journal.close()
