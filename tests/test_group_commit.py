"""Group commits across steps, for runs of short in-process callables (`_may_hold`).

The records of a callable that owns no file may wait for a later commit (at most
HOLD_S); everything else keeps the rule that a start is committed before it launches.
Checked with real SQLite, read from a second connection as `guildrun status` would, the
local executor, and a real engine process killed with SIGKILL and resumed.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

import guildrun
from guildrun._engine import HOLD_S, run_prepared
from guildrun._executors.base import Job, Outcome
from guildrun._executors.local import LocalExecutor
from guildrun._journal import Event, Journal, journal_path
from guildrun._prepare import prepare
from guildrun._reporter import Reporter

from .conftest import write_plan


async def noop(ctx: guildrun.TaskContext) -> None:
    """An in-process task that does nothing."""


def _visible(root: Path, sql: str, *args: object) -> int:
    """A count read by another connection: only what is committed."""
    db = sqlite3.connect(f"file:{journal_path(root)}?mode=ro", uri=True)
    try:
        return int(db.execute(sql, args).fetchone()[0])
    finally:
        db.close()


class Watching(LocalExecutor):
    """The local executor, noting at each launch whether the attempt was committed."""

    def __init__(self, root: Path) -> None:
        super().__init__({"fn": noop})
        self.root = root
        self.launched: dict[str, bool] = {}

    async def run(self, job: Job) -> Outcome:
        ctx = job.context
        self.launched[ctx.task_id] = bool(
            _visible(
                self.root,
                "SELECT COUNT(*) FROM attempts WHERE task_id=? AND attempt=?",
                ctx.task_id,
                ctx.attempt,
            )
        )
        return await super().run(job)


class Durable(Reporter):
    """Notes, for every event reported, whether it was committed when reported."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.reported = 0
        self.early: list[Event] = []

    def events(self, events: Iterable[Event]) -> None:
        events = list(events)
        if not events:
            return
        self.reported += len(events)
        committed = _visible(self.root, "SELECT COUNT(*) FROM events")
        # Events are journaled in the order they are reported: the last one reported
        # now is the `committed`-th row at most.
        seen = _visible(
            self.root,
            "SELECT COUNT(*) FROM events WHERE kind=? AND time=? AND IFNULL(task, '')=?",
            events[-1].kind.value,
            events[-1].time,
            events[-1].task or "",
        )
        if committed < self.reported or not seen:
            self.early.append(events[-1])


def test_callables_share_commits_and_a_command_start_is_committed_first(
    project: Path,
) -> None:
    tasks = [guildrun.Task(id=f"f{i:03d}", specialist="fn") for i in range(200)]
    for i in (60, 120, 180):  # commands, started by steps full of callables
        tasks.append(guildrun.Task(id=f"cmd{i}", specialist="cmd", depends_on=[f"f{i:03d}"]))
    plan = guildrun.Plan(
        settings=guildrun.Settings(per_agent_type=20, total_parallel=20),
        specialists={
            "fn": guildrun.Specialist(func=noop),
            "cmd": guildrun.Specialist(run=["true"]),
        },
        tasks=tasks,
    )
    prepared = prepare(plan, root=project)
    executor = Watching(project)
    reporter = Durable(project)
    journal = Journal(journal_path(project))
    try:
        summary = asyncio.run(
            run_prepared(
                prepared,
                executor=executor,
                reporter=reporter,
                journal=journal,
                handle_signals=False,
            )
        )
        commits = journal._commits
    finally:
        journal.close()
    assert summary.ok and summary.done == len(tasks)
    # A process's start is always committed before it launches ...
    assert [executor.launched[t] for t in ("cmd60", "cmd120", "cmd180")] == [True] * 3
    # ... while callables' starts went in with later commits, far fewer than the steps.
    held = [t for t, seen in executor.launched.items() if not seen]
    assert held and all(t.startswith("f") for t in held)
    steps = _visible(project, "SELECT count FROM timings WHERE step='ownership'")
    assert commits < steps
    # Nothing was reported before it was committed, and everything was in the end.
    assert reporter.early == []
    assert reporter.reported == _visible(project, "SELECT COUNT(*) FROM events")
    assert _visible(project, "SELECT COUNT(*) FROM attempts WHERE status='ok'") == len(tasks)
    assert _visible(project, "SELECT COUNT(*) FROM completions") == len(tasks)


# A Python specialist the command line loads from the project, noting each call beside
# the project (not in it: the call must not look like a write to the tree).
STEPS = """
import os

def note(ctx):
    with open(str(ctx.root) + ".ran", "a") as fh:
        fh.write(ctx.task_id + "\\n")
"""


def _ran(root: Path) -> dict[str, int]:
    path = Path(f"{root}.ran")
    out: dict[str, int] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            out[line] = out.get(line, 0) + 1
    return out


def _journaled(root: Path) -> tuple[set[str], int]:
    """Tasks the journal calls done, and completions per task at most."""
    path = journal_path(root)
    if not path.exists():
        return set(), 0
    db = sqlite3.connect(path)
    try:
        try:
            done = {r[0] for r in db.execute("SELECT id FROM tasks WHERE state='done'")}
            most = db.execute(
                "SELECT IFNULL(MAX(n), 0) FROM"
                " (SELECT COUNT(*) AS n FROM completions GROUP BY task_id)"
            ).fetchone()[0]
        except sqlite3.OperationalError:  # killed before the schema was made
            return set(), 0
    finally:
        db.close()
    return done, int(most)


@pytest.mark.slow
def test_sigkill_between_held_steps_then_resume(tmp_path: Path) -> None:
    rng = random.Random(14)
    n = 2000
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for trial in range(4):
        root = tmp_path / f"t{trial}"
        root.mkdir()
        (root / "steps.py").write_text(STEPS)
        write_plan(
            root,
            {
                "settings": {"per_agent_type": 20, "total_parallel": 20},
                "specialists": {"fn": {"python": "steps:note"}},
                "tasks": [{"id": f"t{i:04d}", "specialist": "fn"} for i in range(n)],
            },
        )
        base = [sys.executable, "-m", "guildrun"]
        proc = subprocess.Popen(
            [*base, "run", "plan.yaml", "--root", str(root), "-q"],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Kill it once it is under way (some tasks ran), at a random moment after.
        deadline = time.monotonic() + 60
        while not _ran(root) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        if proc.returncode == 0:
            continue  # finished before the kill: nothing to resume
        assert proc.returncode == -signal.SIGKILL, err
        done_at_kill, most = _journaled(root)
        ran_at_kill = _ran(root)
        assert most <= 1
        # The journal never calls done a task that did not run.
        assert all(ran_at_kill.get(t, 0) >= 1 for t in done_at_kill)
        db = sqlite3.connect(journal_path(root))
        try:
            ended = db.execute("SELECT status FROM runs").fetchone()[0] == "done"
        finally:
            db.close()
        if not ended:  # else killed after its last commit: nothing left to resume
            resumed = subprocess.run(
                [*base, "resume", "--root", str(root), "-q"],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert resumed.returncode == 0, resumed.stderr
        done, most = _journaled(root)
        ran = _ran(root)
        assert done == {f"t{i:04d}" for i in range(n)}
        assert most == 1  # each task completed once in the journal
        assert all(ran.get(t, 0) >= 1 for t in done)  # every task really ran
        # What was done at the kill stayed done: it never ran again.
        assert all(ran[t] == ran_at_kill[t] for t in done_at_kill)


def test_held_records_are_committed_within_the_bound_while_a_task_runs(
    project: Path,
) -> None:
    seen: dict[str, int] = {}

    async def slow(ctx: guildrun.TaskContext) -> None:
        # On the same event loop as the hold's timer (due HOLD_S after the step): this
        # sleep, four times longer, ends after it whatever the machine's load.
        await asyncio.sleep(4 * HOLD_S)
        seen["done"] = _visible(project, "SELECT COUNT(*) FROM tasks WHERE state='done'")
        seen["slow"] = _visible(project, "SELECT COUNT(*) FROM attempts WHERE task_id='slow'")

    quick = [guildrun.Task(id=f"q{i}", specialist="fn") for i in range(40)]
    plan = guildrun.Plan(
        settings=guildrun.Settings(per_agent_type=20, total_parallel=20),
        specialists={"fn": guildrun.Specialist(func=noop), "s": guildrun.Specialist(func=slow)},
        tasks=[*quick, guildrun.Task(id="slow", specialist="s", depends_on=["q39"])],
    )
    summary = guildrun.run(plan, root=project, handle_signals=False)
    assert summary.ok
    # The step that ended the last quick tasks and started `slow` was held; while
    # `slow` ran, the timer committed it: every quick task done, `slow` started.
    assert seen == {"done": 40, "slow": 1}
