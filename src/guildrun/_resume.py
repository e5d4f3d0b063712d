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
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import psutil

from ._clock import Clock, WallClock
from ._engine import ResumeState, run_prepared
from ._errors import UsageError
from ._executors.base import Executor
from ._executors.local import LocalExecutor
from ._journal import Journal, journal_path
from ._metrics import Summary
from ._paths import find_root
from ._plan import Plan, compile_plan
from ._prepare import Prepared
from ._reporter import Reporter
from ._runlock import run_lock
from ._secrets import restore_plan_env
from ._settings import Settings
from ._workspaces.shared import Store

_UNFINISHED = ("running", "interrupted", "budget")


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
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Prepared, str, ResumeState]:
    """Stop leftover agents, roll back their attempts, and say what is left to do."""
    project = find_root(root)
    journal = Journal(journal_path(project))
    try:
        run_id = _pick_run(journal, run_id)
        row = journal.run(run_id)
        model = plan or Plan.model_validate_json(row["plan_json"])
        if plan is None and any(
            s.run is None and s.python is None and s.agent is None
            for s in model.specialists.values()
        ):
            raise UsageError(
                f"run {run_id} was built in code with Python callables; resume it from code: "
                "guildrun.resume(run_id, plan=the_same_plan)"
            )
        model.source = row["plan_source"]
        if plan is None:  # the journal keeps no secret: take it from the environment
            restore_plan_env(model.specialists, os.environ)
        saved = Settings.model_validate_json(row["settings_json"])
        # A resume may raise the budget (`--max-cost-usd`): a budget stop is resumable.
        wanted = (overrides or {}).get("backend")
        if wanted is not None and wanted != saved.backend:
            raise UsageError(
                f"run {run_id} ran on the {saved.backend} backend: resume it with "
                f"--backend {saved.backend}"
            )
        settings = saved.model_copy(update=dict(overrides or {}))
        compiled = compile_plan(model, project, settings)
        limits = {k: int(v) for k, v in json.loads(row["limits_json"]).items()}
        attempts = journal.attempts(run_id)
        open_attempts = [a for a in attempts if a["status"] == "running"]
        pgids = {a["pgid"] for a in open_attempts if a["pgid"]}
        # The executor that ran them finds what is left (processes, actors) and stops it.
        finder = executor or _finder(settings)
        finder.stop(finder.leftovers(run_id, sorted(pgids)), settings.kill_grace)
        if finder is not executor:
            finder.close()
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
    known = None
    if settings.strategy == "longest-first":  # as chosen (or `auto`'s choice) at the start
        from ._estimates import estimate

        prompts = {t.id: t.prompt for t in model.tasks}
        known = estimate(compiled, journal_path(project), prompts)
    prepared = Prepared(compiled, model, project, settings, limits, estimates=known)
    return prepared, run_id, ResumeState(done, final, tries, results)


def _finder(settings: Settings) -> Executor:
    """The executor kind that ran the run, to find what it left."""
    if settings.backend == "ray":
        from ._executors.ray import RayExecutor

        return RayExecutor(settings.ray_address)
    return LocalExecutor()


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
    settings: Mapping[str, Any] | None = None,
) -> Summary:
    """Continue an interrupted run (the latest one when `run_id` is None).

    The project's engine lock is taken before the journal is touched, so a second
    resume (or a run) at the same time is refused cleanly instead of racing on it.
    """
    project = find_root(root)
    with run_lock(project, run_id or "resume"):
        prepared, rid, state = prepare_resume(
            project,
            run_id,
            plan=plan,
            retry_failed=retry_failed,
            executor=executor,
            clock=clock,
            overrides=settings,
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


_SHOWN_CONFLICTS = 50


def _changed_by(
    path: str,
    now: str | None,
    seq: int,
    live: list[sqlite3.Row],
    snaps: dict[tuple[str, int], list[sqlite3.Row]],
) -> str:
    """Who made `path` what it is now: the latest later task that changed it, if its
    result is what is there, else someone outside guildrun."""
    later = [
        (c["task_id"], r["after"])
        for c in live
        if c["seq"] > seq
        for r in snaps.get((c["task_id"], c["attempt"]), [])
        if r["path"] == path and r["before"] != r["after"]
    ]
    if later and later[-1][1] == now:
        names = ", ".join(dict.fromkeys(repr(t) for t, _ in later))
        return f"finished by {names}; roll {'that' if len(later) == 1 else 'those'} back first"
    if later:
        return (
            f"finished, by {later[-1][0]!r} and then outside guildrun (by a person or another "
            "program); put it back by hand or leave it"
        )
    return (
        "finished, outside guildrun (by a person or another program); put it back by hand "
        "or leave it"
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
        snaps: dict[tuple[str, int], list[sqlite3.Row]] = {}
        for r in journal.snapshots(run_id):
            snaps.setdefault((r["task_id"], r["attempt"]), []).append(r)
        state: dict[str, str | None] = {}
        conflicts: list[str] = []
        plans: list[tuple[int, str, dict[str, str | None]]] = []
        for c in reversed(chosen):
            # A file the task did not change (an input it owned to read) has nothing to
            # undo: restoring it would only clobber whatever came later.
            rows = [
                r for r in snaps.get((c["task_id"], c["attempt"]), []) if r["before"] != r["after"]
            ]
            for r in rows:
                path = r["path"]
                now = state[path] if path in state else store.digest_of(path)
                if now != r["after"]:
                    conflicts.append(
                        f"cannot roll back task {c['task_id']!r}: {path} was changed after it "
                        + _changed_by(path, now, c["seq"], live, snaps)
                    )
                state[path] = r["before"]
            plans.append((c["seq"], c["task_id"], {r["path"]: r["before"] for r in rows}))
        if conflicts:
            shown = conflicts[:_SHOWN_CONFLICTS]
            if len(conflicts) > len(shown):
                shown.append(f"... and {len(conflicts) - len(shown)} more")
            raise UsageError("\n".join(shown))
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
