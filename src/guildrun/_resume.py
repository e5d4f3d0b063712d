"""Checkpoint restart and rollback, both read from the journal.

Resume never trusts what was running when the engine died: it stops those agents
(found by the process groups journaled for them, and by the GUILDRUN_RUN_ID each
agent carries in its environment, for those started after the last commit), puts
their files back as they were before the attempt, and runs them again. Tasks the
journal calls done are never run again.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from ._clock import Clock, WallClock
from ._engine import Reporter, ResumeState, run_prepared
from ._errors import UsageError
from ._executors.base import Executor
from ._executors.local import LocalExecutor
from ._journal import Journal, journal_path
from ._metrics import Summary
from ._paths import find_root
from ._plan import Plan, compile_plan
from ._prepare import Prepared
from ._runlock import run_lock
from ._secrets import restore_plan_env
from ._settings import Settings
from ._workspaces.shared import Store

_UNFINISHED = ("running", "interrupted")


def _pick_run(journal: Journal, run_id: str | None) -> str:
    if run_id is not None:
        row = journal.run(run_id)
    else:
        rows = [r for r in journal.runs(limit=1000) if r["status"] in _UNFINISHED]
        if not rows:
            raise UsageError("no interrupted run to resume (see 'guildrun runs')")
        row = rows[0]
    if row["status"] not in _UNFINISHED:
        raise UsageError(f"run {row['id']} ended ({row['status']}); there is nothing to resume")
    pid = row["pid"]
    if row["status"] == "running" and pid and pid != os.getpid() and psutil.pid_exists(pid):
        with contextlib.suppress(psutil.Error):
            if "guildrun" in " ".join(psutil.Process(pid).cmdline()):
                raise UsageError(f"run {row['id']} is still running (pid {pid})")
    return str(row["id"])


def prepare_resume(
    root: str | Path | None,
    run_id: str | None,
    *,
    plan: Plan | None = None,
    retry_failed: bool = False,
    executor: Executor | None = None,
    clock: Clock | None = None,
) -> tuple[Prepared, str, ResumeState]:
    """Stop leftover agents, roll back their attempts, and say what is left to do."""
    project = find_root(root)
    journal = Journal(journal_path(project))
    try:
        run_id = _pick_run(journal, run_id)
        row = journal.run(run_id)
        model = plan or Plan.model_validate_json(row["plan_json"])
        if plan is None and any(
            s.run is None and s.python is None for s in model.specialists.values()
        ):
            raise UsageError(
                f"run {run_id} was built in code with Python callables; resume it from code: "
                "guildrun.resume(run_id, plan=the_same_plan)"
            )
        model.source = row["plan_source"]
        if plan is None:  # the journal keeps no secret: take it from the environment
            restore_plan_env(model.specialists, os.environ)
        settings = Settings.model_validate_json(row["settings_json"])
        compiled = compile_plan(model, project, settings)
        limits = {k: int(v) for k, v in json.loads(row["limits_json"]).items()}
        attempts = journal.attempts(run_id)
        open_attempts = [a for a in attempts if a["status"] == "running"]
        pgids = {a["pgid"] for a in open_attempts if a["pgid"]}
        # The executor that ran them finds what is left (processes, actors) and stops it.
        finder = executor or LocalExecutor()
        finder.stop(finder.leftovers(run_id, sorted(pgids)), settings.kill_grace)
        store = Store(project)
        now = (clock or WallClock()).now()
        with journal.transaction():
            for a in open_attempts:
                snap = journal.snapshot(run_id, a["task_id"], a["attempt"])
                store.restore({r["path"]: r["before"] for r in snap})
                journal.attempt_ended(
                    run_id,
                    a["task_id"],
                    a["attempt"],
                    status="interrupted",
                    started=a["started"],
                    ended=now,
                    exit_code=None,
                    error="the engine stopped",
                )
            done: set[str] = set()
            final: dict[str, str] = {}
            results: dict[str, str] = {}
            for t in journal.tasks(run_id):
                state = t["state"]
                if state == "done":
                    done.add(t["id"])
                    results[t["id"]] = t["result"] or ""
                elif state in ("failed", "skipped") and not retry_failed:
                    final[t["id"]] = state
                else:
                    journal.task_ended(run_id, t["id"], "waiting", now)
        tries: dict[str, int] = {}
        for a in attempts:
            tries[a["task_id"]] = max(tries.get(a["task_id"], 0), a["attempt"])
    finally:
        journal.close()
    prepared = Prepared(compiled, model, project, settings, limits)
    return prepared, run_id, ResumeState(done, final, tries, results)


async def resume_async(
    run_id: str | None = None,
    *,
    root: str | Path | None = None,
    plan: Plan | None = None,
    retry_failed: bool = False,
    reporter: Reporter | None = None,
    handle_signals: bool = True,
    crash_after_commit: int | None = None,
    own_files: Iterable[str] = (),
    executor: Executor | None = None,
    clock: Clock | None = None,
) -> Summary:
    """Continue an interrupted run (the latest one when `run_id` is None).

    The project's engine lock is taken before the journal is touched, so a second
    resume (or a run) at the same time is refused cleanly instead of racing on it.
    """
    project = find_root(root)
    with run_lock(project, run_id or "resume"):
        prepared, rid, state = prepare_resume(
            project, run_id, plan=plan, retry_failed=retry_failed, executor=executor, clock=clock
        )
        return await run_prepared(
            prepared,
            reporter=reporter,
            handle_signals=handle_signals,
            run_id=rid,
            resume=state,
            crash_after_commit=crash_after_commit,
            own_files=own_files,
            executor=executor,
            clock=clock,
        )


def rollback(
    run_id: str,
    *,
    root: str | Path | None = None,
    task: str | None = None,
    scope: str | None = None,
) -> list[str]:
    """Undo finished work of a run, newest first; refuse if a file changed since.

    Returns the tasks rolled back. Checks everything before touching anything, so a
    refusal leaves the files exactly as they were.
    """
    project = find_root(root)
    journal = Journal(journal_path(project))
    try:
        run_id = journal.run(run_id)["id"]
        tasks = {t["id"]: t for t in journal.tasks(run_id)}
        if task is not None and task not in tasks:
            raise UsageError(f"run {run_id} has no task {task!r}")
        if scope is not None and not any(t["scope"] == scope for t in tasks.values()):
            raise UsageError(f"run {run_id} has no task in scope {scope!r}")
        live = [c for c in journal.completions(run_id) if c["rolled_back"] is None]
        chosen = [
            c
            for c in live
            if (task is None or c["task_id"] == task)
            and (scope is None or tasks[c["task_id"]]["scope"] == scope)
        ]
        if task is not None and not chosen:
            raise UsageError(f"task {task!r} of run {run_id} has no finished work to roll back")
        store = Store(project)
        state: dict[str, str | None] = {}
        plans: list[tuple[int, str, dict[str, str | None]]] = []
        for c in reversed(chosen):
            rows = journal.snapshot(run_id, c["task_id"], c["attempt"])
            for r in rows:
                now = state[r["path"]] if r["path"] in state else store.digest_of(r["path"])
                if now != r["after"]:
                    later = [
                        x["task_id"]
                        for x in live
                        if x["seq"] > c["seq"]
                        and any(
                            s["path"] == r["path"]
                            for s in journal.snapshot(run_id, x["task_id"], x["attempt"])
                        )
                    ]
                    who = f" by {', '.join(map(repr, later))}" if later else " (by hand?)"
                    raise UsageError(
                        f"cannot roll back task {c['task_id']!r}: {r['path']} was changed "
                        f"after it finished{who}; roll those back first"
                    )
            for r in rows:
                state[r["path"]] = r["before"]
            plans.append((c["seq"], c["task_id"], {r["path"]: r["before"] for r in rows}))
        now_t = time.time()
        done: list[str] = []
        for seq, tid, manifest in plans:
            store.restore(manifest)
            with journal.transaction():
                journal.mark_rolled_back(seq, now_t)
            done.append(tid)
        return done
    finally:
        journal.close()
