"""`guildrun rerun`: a new run of a past run's plan that runs only some of its tasks.

GNU parallel's ``--retry-failed`` over a joblog. The journal keeps each run's plan,
settings and limits; the new run is that plan again, with the old run's done tasks
taken as given (their results still fill ``{result:ID}``) and only the chosen tasks
run: the failed and skipped ones (``--failed``, the default) or those named with
``--task``. Tasks neither done nor chosen stay as they were, so a chosen task that
depends on one of them is skipped again, naming it.

The old run is never touched: its journal rows, logs and results stay what they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from ._engine import ResumeState, run_prepared
from ._errors import UsageError
from ._journal import Event, EventKind, Journal, journal_path, new_run_id
from ._metrics import Summary
from ._paths import find_root
from ._plan import Plan, compile_plan
from ._prepare import Prepared
from ._reporter import Reporter
from ._secrets import restore_plan_env
from ._settings import Settings

_NOT_RUN = ("failed", "skipped", "waiting", "running")


def prepare_rerun(
    run: str,
    *,
    root: str | Path | None = None,
    failed: bool = False,
    tasks: Sequence[str] = (),
    plan: Plan | None = None,
) -> tuple[Prepared, str, ResumeState]:
    """Journal the new run with its given tasks; return what the engine needs to run it."""
    project = find_root(root)
    path = journal_path(project)
    if not path.exists():
        raise UsageError(f"no runs yet: {path} does not exist")
    journal = Journal(path)
    try:
        row = journal.run(run)
        old = str(row["id"])
        if run_alive(row):
            raise UsageError(f"run {old} is still running (pid {row['pid']}); wait for it first")
        if row["status"] == "running":
            raise UsageError(
                f"run {old} did not end (its engine died); continue it with: guildrun resume {old}"
            )
        model = plan or Plan.model_validate_json(row["plan_json"])
        if plan is None and any(
            s.run is None and s.python is None and s.agent is None
            for s in model.specialists.values()
        ):
            raise UsageError(
                f"run {old} was built in code with Python callables; rerun it from code "
                "with the same plan"
            )
        model.source = row["plan_source"]
        if plan is None:  # the journal keeps no secret: take it from the environment
            restore_plan_env(model.specialists, os.environ)
        settings = Settings.model_validate_json(row["settings_json"])
        compiled = compile_plan(model, project, settings)
        limits = {k: int(v) for k, v in _json(row["limits_json"]).items()}
        rows = {t["id"]: t for t in journal.tasks(old)}
        chosen = _choose(old, rows, failed=failed or not tasks, named=tasks)
        done = {tid for tid, t in rows.items() if t["state"] == "done" and tid not in chosen}
        results = {tid: rows[tid]["result"] or "" for tid in done}
        kept = {
            tid: ("failed" if t["state"] == "failed" else "skipped")
            for tid, t in rows.items()
            if tid not in chosen and tid not in done
        }
        new = new_run_id()
        now = time.time()
        with journal.transaction():
            journal.create_run(
                new,
                root=project,
                plan_source=row["plan_source"],
                plan_json=row["plan_json"],
                settings_json=row["settings_json"],
                limits=limits,
                tasks=[
                    (t.id, t.index, t.specialist, t.phase, t.scope, list(t.files))
                    for t in compiled.tasks
                ],
                now=now,
            )
            journal.event(
                new,
                Event(EventKind.RUN_STARTED, now, data={"rerun_of": old, "tasks": sorted(chosen)}),
            )
            for tid in done:
                journal.task_ended(new, tid, "done", now, result=results[tid])
            for tid, state in kept.items():
                cause = rows[tid]["cause"] or f"not chosen to run again (was {rows[tid]['state']})"
                journal.task_ended(new, tid, state, now, cause=cause)
    finally:
        journal.close()
    prepared = Prepared(compiled, model, project, settings, limits)
    return prepared, new, ResumeState(done, kept, {}, results)


def _choose(
    run_id: str, rows: Mapping[str, sqlite3.Row], *, failed: bool, named: Sequence[str]
) -> set[str]:
    chosen: set[str] = set()
    for tid in named:
        if tid not in rows:
            known = ", ".join(list(rows)[:8]) + (" ..." if len(rows) > 8 else "")
            raise UsageError(f"--task {tid!r}: run {run_id} has no such task (its tasks: {known})")
        chosen.add(tid)
    if failed:
        chosen |= {tid for tid, t in rows.items() if t["state"] in _NOT_RUN}
    if not chosen:
        raise UsageError(
            f"run {run_id} has no failed or skipped task; name tasks to run again with --task ID"
        )
    return chosen


def _json(text: str) -> dict[str, Any]:
    data = json.loads(text)
    return data if isinstance(data, dict) else {}


def run_alive(row: sqlite3.Row) -> bool:
    """Whether the engine of a run the journal calls running is still there."""
    status, pid = row["status"], row["pid"]
    if status != "running" or not pid or pid == os.getpid() or not psutil.pid_exists(pid):
        return False
    with contextlib.suppress(psutil.Error):
        return "guildrun" in " ".join(psutil.Process(pid).cmdline())
    return False


async def rerun_async(
    run: str,
    *,
    root: str | Path | None = None,
    failed: bool = False,
    tasks: Sequence[str] = (),
    reporter: Reporter | None = None,
    handle_signals: bool = True,
    own_files: Iterable[str] = (),
) -> Summary:
    """Run the chosen tasks of a past run again, as a new run; returns its summary."""
    prepared, new, state = prepare_rerun(run, root=root, failed=failed, tasks=tasks)
    return await run_prepared(
        prepared,
        reporter=reporter,
        handle_signals=handle_signals,
        run_id=new,
        resume=state,
        own_files=own_files,
    )


def resume_hint(root: str | Path | None, run: str | None) -> None:
    """Before `resume`: a run that failed has nothing to resume; say how to run it again.

    Other cases are left to `resume`, which words them itself.
    """
    path = journal_path(find_root(root))
    if not path.exists():
        return
    journal = Journal(path, readonly=True)
    try:
        if run is None:
            rows = journal.runs(limit=1000)
            if not rows or any(r["status"] in ("running", "interrupted") for r in rows):
                return
            row = rows[0]
        else:
            row = journal.run(run)
    finally:
        journal.close()
    if row["status"] != "failed":
        return
    rid = row["id"]
    again = f"to run its failed and skipped tasks again as a new run: guildrun rerun {rid} --failed"
    if run is None:
        raise UsageError(
            f"no interrupted run to resume; the latest run, {row['id']}, failed: {again}"
        )
    raise UsageError(f"run {row['id']} ended (failed); there is nothing to resume; {again}")
