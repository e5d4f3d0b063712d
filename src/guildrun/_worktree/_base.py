"""The commit a run starts from: the user's HEAD, or a snapshot of HEAD plus their edits.

A stale base is the classic failure of worktree tools (branches cut from an old `main`),
so the base is always the commit the user is on when the run starts, and the report says
which. Uncommitted work is refused unless allowed; then it is committed to a snapshot
through a temporary index, so the user's files and index are never written.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from .._errors import UsageError
from .._git import Git, GitError
from .._paths import STATE_DIR
from ._layout import Layout

OUTSIDE_STATE = ("--", ".", f":(exclude){STATE_DIR}")


@dataclass(frozen=True)
class RunBase:
    """Where a run starts. `commit` is what the worktrees check out: `head` itself, or a
    snapshot commit on top of it holding the uncommitted changes (`snapshot` true)."""

    commit: str
    head: str
    branch: str | None
    snapshot: bool

    def describe(self) -> str:
        where = f"{self.branch or 'detached HEAD'} at {self.head[:12]}"
        if self.snapshot:
            return f"{where} plus its uncommitted changes (snapshot {self.commit[:12]})"
        return where


def user_head(git: Git) -> tuple[str, str | None]:
    """The user's HEAD commit and branch (None when detached)."""
    got = git.run("rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)
    if got.returncode != 0 or not got.text:
        raise UsageError(
            f"{git.root}: the repository has no commit yet; worktree mode starts from a commit"
        )
    branch = git.run("symbolic-ref", "-q", "--short", "HEAD", check=False)
    return got.text, (branch.text or None) if branch.returncode == 0 else None


def dirty_paths(git: Git) -> list[str]:
    """Changed tracked files and untracked files that are not ignored, outside .guildrun."""
    out = git.run(
        "status",
        "--porcelain=v1",
        "-z",
        "--no-renames",
        "--untracked-files=all",
        "--ignore-submodules=none",
        *OUTSIDE_STATE,
    ).stdout
    return [os.fsdecode(rec[3:]) for rec in out.split(b"\0") if len(rec) > 3]


def take_base(git: Git, layout: Layout, *, allow_dirty: bool) -> RunBase:
    """Fix the run's base and record it as `refs/guildrun/<run>/base`."""
    head, branch = user_head(git)
    dirty = dirty_paths(git)
    if dirty and not allow_dirty:
        shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        raise UsageError(
            f"{git.root}: the working tree has uncommitted changes ({shown}); commit or "
            "stash them, or pass --allow-dirty to run on a snapshot of them"
        )
    commit = snapshot(git, layout, head) if dirty else head
    git.run("update-ref", "-m", "guildrun: run base", layout.base_ref, commit)
    return RunBase(commit=commit, head=head, branch=branch, snapshot=bool(dirty))


def snapshot(git: Git, layout: Layout, head: str) -> str:
    """Commit the working tree's state on top of `head` through a private index."""
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    index = layout.run_dir / "base.index"
    env = {"GIT_INDEX_FILE": str(index)}
    try:
        git.run("read-tree", head, env=env)
        git.run("add", "-A", *OUTSIDE_STATE, env=env)
        tree = git.text("write-tree", env=env)
    finally:
        with contextlib.suppress(FileNotFoundError):
            index.unlink()
    message = f"guildrun: uncommitted changes at the start of run {layout.run_id}\n"
    try:
        return git.text("commit-tree", tree, "-p", head, "-m", message, env=git.commit_env())
    except GitError as exc:
        raise UsageError(f"{git.root}: cannot snapshot the uncommitted changes: {exc}") from exc
