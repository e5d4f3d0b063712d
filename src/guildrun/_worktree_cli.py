"""`guildrun apply`, `resolve` and `clean`: a worktree-mode run's result, after the run.

Each takes the project's engine lock first, so none of them works on a run's branches
while an engine (a run, a resume) is writing them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import UsageError
from ._journal import Event, EventKind, Journal, journal_path
from ._paths import find_root
from ._runlock import run_lock
from ._worktree import WorktreeSet

if TYPE_CHECKING:
    from rich.console import Console

ROOT_HELP = "project root (default: git top level, else cwd)"
RUN_HELP = "run id, or a unique prefix of one (default: the latest run; see 'guildrun runs')"


def add_commands(sub: Any) -> None:
    ap = sub.add_parser("apply", help="bring a worktree-mode run's result into the current branch")
    ap.add_argument("run", nargs="?", help=RUN_HELP)
    ap.add_argument("--root", help=ROOT_HELP)
    ap.add_argument("--into", metavar="BRANCH", help="apply into this branch instead")

    rv = sub.add_parser(
        "resolve", help="a conflicting task merged by hand: mark it done for 'guildrun resume'"
    )
    rv.add_argument("run", help=RUN_HELP)
    rv.add_argument("task", help="the task whose patch conflicted")
    rv.add_argument("--root", help=ROOT_HELP)
    rv.add_argument(
        "--start",
        action="store_true",
        help="first leave the patch half-applied, with conflict markers, in the integration "
        "worktree for you to merge",
    )

    cl = sub.add_parser("clean", help="remove a run's worktrees and branches (default: all runs)")
    cl.add_argument("run", nargs="?", help=RUN_HELP)
    cl.add_argument("--root", help=ROOT_HELP)


def run_command(args: argparse.Namespace, out: Console) -> int:
    root = find_root(args.root)
    with run_lock(root, f"{args.command} (worktree)"):
        if args.command == "apply":
            return _apply(root, args.run, args.into, out)
        if args.command == "resolve":
            return _resolve(root, args.run, args.task, args.start, out)
        return _clean(root, args.run, out)


def _run_row(root: Path, run: str | None) -> tuple[str, str]:
    """(run id, status) from the journal."""
    path = journal_path(root)
    if not path.exists():
        raise UsageError(f"no runs yet in {root}")
    journal = Journal(path, readonly=True)
    try:
        row = journal.run(run)
        return str(row["id"]), str(row["status"])
    finally:
        journal.close()


def _worktree_run(root: Path, run: str | None) -> tuple[WorktreeSet, str]:
    rid, status = _run_row(root, run)
    ws = WorktreeSet(root, rid)
    branch = ws.layout.integration_ref
    if ws.git.run("rev-parse", "--verify", "-q", branch, check=False).returncode != 0:
        raise UsageError(
            f"run {rid} has no branch {ws.layout.integration_branch} "
            "(not a worktree-mode run, or cleaned)"
        )
    return ws, status


def _apply(root: Path, run: str | None, into: str | None, out: Console) -> int:
    ws, status = _worktree_run(root, run)
    rid = ws.layout.run_id
    if status != "done":
        raise UsageError(
            f"run {rid} ended {status}; finish it first (guildrun resume {rid}) or merge "
            f"{ws.layout.integration_branch} by hand"
        )
    applied = ws.apply(into)
    out.print(
        f"run {rid} applied to {applied.branch} ({applied.how}, {applied.commit[:12]})",
        highlight=False,
    )
    ws.clean()
    return 0


def _resolve(root: Path, run: str | None, task: str, start: bool, out: Console) -> int:
    ws, _ = _worktree_run(root, run)
    rid = ws.layout.run_id
    journal = Journal(journal_path(root))
    try:
        tasks = {t["id"]: t for t in journal.tasks(rid)}
        if task not in tasks:
            raise UsageError(f"run {rid} has no task {task!r}")
        if tasks[task]["state"] == "done":
            raise UsageError(f"task {task!r} of run {rid} is already done")
        ws.recover()
        if start:
            where = ws.start_resolution(task)
            out.print(
                f"merge task {task!r} by hand in {where}, then: guildrun resolve {rid} {task}",
                highlight=False,
            )
            return 0
        got = ws.resolve(task)
        now = time.time()
        with journal.transaction():
            journal.task_ended(rid, task, "done", now, result="merged by hand")
            for t in tasks.values():
                if t["state"] == "skipped":  # a resume decides again what still cannot run
                    journal.task_ended(rid, t["id"], "waiting", now)
            journal.event(
                rid,
                Event(
                    EventKind.WORKSPACE,
                    now,
                    task=task,
                    data={"note": f"{task} merged by hand ({got.head[:12]})"},
                ),
            )
            journal.set_status(rid, "interrupted")
    finally:
        journal.close()
    out.print(
        f"task {task!r} resolved ({got.head[:12]}); carry on with: guildrun resume {rid}",
        highlight=False,
    )
    return 0


def _clean(root: Path, run: str | None, out: Console) -> int:
    if run is not None:
        rids = [_run_row(root, run)[0]]
    else:
        # Only runs the journal knows: a branch of the user's own that happens to be
        # called guildrun/NAME is never taken for a run's.
        folder = root / ".guildrun" / "worktrees"
        ws_runs = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        rids = sorted((ws_runs | _branch_runs(root)) & _journaled(root))
    if not rids:
        out.print("nothing to clean", highlight=False)
    for rid in rids:
        cleaned = WorktreeSet(root, rid).clean()
        out.print(
            f"run {rid}: removed {len(cleaned.worktrees)} worktrees and "
            f"{len(cleaned.branches)} branches",
            highlight=False,
        )
        for why in cleaned.kept:
            out.print(f"  kept {why}", highlight=False)
    return 0


def _journaled(root: Path) -> set[str]:
    path = journal_path(root)
    if not path.exists():
        return set()
    journal = Journal(path, readonly=True)
    try:
        return {str(r["id"]) for r in journal.runs(limit=1_000_000)}
    finally:
        journal.close()


def _branch_runs(root: Path) -> set[str]:
    """Runs that left a branch or refs behind (their worktrees may be gone already)."""
    from ._git import Git

    refs = Git(root).text(
        "for-each-ref", "--format=%(refname)", "refs/heads/guildrun/", "refs/guildrun/"
    )
    out: set[str] = set()
    for ref in refs.splitlines():
        if ref.startswith("refs/heads/guildrun/"):
            out.add(ref.removeprefix("refs/heads/guildrun/").split(".")[0])
        else:
            out.add(ref.removeprefix("refs/guildrun/").split("/")[0])
    return out
