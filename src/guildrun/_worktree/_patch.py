"""A task's effect as one commit: exactly what changed in its checkout, checked path by path.

Only one task runs in a checkout, so attribution is exact: every created, modified or
deleted file (binary files, mode changes and links included) is compared with the commit
the task started from, through a private index (the checkout's own index is the agent's
to use: it may stage, commit or reset, and none of that hides a change). Paths the task
may not write are not committed; they come back as violations, never as an exception.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._git import Git
from .._paths import STATE_DIR
from ._guard import Violation
from ._instances import Instance
from ._layout import TRAILER

Predicate = Callable[[str], bool]
_ZERO = "0" * 40


@dataclass(frozen=True)
class Change:
    """One path of a patch: `status` is git's A (added), M (modified, mode included),
    D (deleted) or T (type changed, e.g. a file became a link)."""

    path: str
    status: str
    old_mode: str
    new_mode: str


@dataclass(frozen=True)
class TaskPatch:
    """The outcome of capturing a task: its commit (None when it changed nothing
    allowed), what it holds, and what was refused."""

    task: str
    instance: str
    start: str
    commit: str | None
    changes: tuple[Change, ...]
    violations: tuple[Violation, ...]
    seen: int = 0  # changed paths found, committed or not

    @property
    def ok(self) -> bool:
        return not self.violations


def changed(git: Git, inst: Instance, start: str, index: Path, seed: Path | None) -> list[Change]:
    """Every path of the checkout that differs from `start`, staged into `index`."""
    env = {**inst.env, "GIT_INDEX_FILE": str(index)}
    if seed is not None and seed.is_file():
        shutil.copy2(seed, index)
    else:
        git.run("read-tree", start, cwd=inst.path, env=env)
    git.run("add", "-A", cwd=inst.path, env=env)
    out = git.run("diff-index", "--cached", "-z", "--no-renames", start, cwd=inst.path, env=env)
    fields = out.stdout.split(b"\0")
    changes: list[Change] = []
    for meta, raw in zip(fields[0::2], fields[1::2], strict=False):
        if not meta.startswith(b":"):
            continue
        old_mode, new_mode, _old, _new, status = meta[1:].decode().split()
        changes.append(Change(os.fsdecode(raw), status[0], old_mode, new_mode))
    return changes


def blobs_at(git: Git, inst: Instance, commit: str, paths: list[str]) -> dict[str, str]:
    """The object id of each of `paths` in `commit`, in one call."""
    if not paths:
        return {}
    env = {**inst.env, "GIT_LITERAL_PATHSPECS": "1"}
    named = ["--", *paths] if len(paths) <= 200 else []  # else the whole tree: argv is finite
    out = git.run("ls-tree", "-r", "-z", "--full-tree", commit, *named, cwd=inst.path, env=env)
    found: dict[str, str] = {}
    for rec in out.stdout.split(b"\0"):
        meta, _, raw = rec.partition(b"\t")
        if raw:
            found[os.fsdecode(raw)] = meta.split()[2].decode()
    return found


def judge(
    git: Git,
    inst: Instance,
    index: Path,
    change: Change,
    may_write: Predicate,
) -> Violation | None:
    """Why `change` may not be committed, or None."""
    path = change.path
    parts = path.split("/")
    if parts[0] == STATE_DIR or ".git" in parts:
        return Violation(path, "reserved", "guildrun's or git's own folder")
    if change.new_mode == "160000":
        return Violation(path, "nested-repository", "a repository inside the tree")
    if change.new_mode == "120000":
        env = {**inst.env, "GIT_INDEX_FILE": str(index)}
        target = git.run("cat-file", "blob", f":{path}", cwd=inst.path, env=env).text
        where = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        if target.startswith("/") or where == ".." or where.startswith("../"):
            return Violation(path, "link-outside", f"a link to {target}")
    if not may_write(path):
        return Violation(path, "unowned", "not in the task's files or writes")
    return None


def commit_changes(
    git: Git,
    inst: Instance,
    task: str,
    start: str,
    index: Path,
    seed: Path | None,
    may_write: Predicate,
    ignored: Predicate,
) -> TaskPatch:
    """Commit the allowed changes on top of `start`; refuse the rest."""
    env = {**inst.env, "GIT_INDEX_FILE": str(index)}
    try:
        all_changes = changed(git, inst, start, index, seed)
        keep: list[Change] = []
        drop: list[Change] = []
        refused: list[Violation] = []
        for ch in all_changes:
            if ignored(ch.path):
                drop.append(ch)
                continue
            why = judge(git, inst, index, ch, may_write)
            if why is None:
                keep.append(ch)
            else:
                refused.append(why)
                drop.append(ch)
        if drop:  # put the dropped paths back as they were at the start, in the index only
            old = blobs_at(git, inst, start, [ch.path for ch in drop if ch.status != "A"])
            lines = [
                f"0 {_ZERO}\t{ch.path}"
                if ch.status == "A"
                else f"{ch.old_mode} {old[ch.path]}\t{ch.path}"
                for ch in drop
            ]
            git.run(
                "update-index",
                "-z",
                "--index-info",
                cwd=inst.path,
                env=env,
                stdin=b"".join(os.fsencode(line) + b"\0" for line in lines),
            )
        commit = None
        if keep:
            tree = git.text("write-tree", cwd=inst.path, env=env)
            message = f"{task}\n\n{TRAILER}: {task}\n"
            commit = git.text("commit-tree", tree, "-p", start, "-m", message, env=git.commit_env())
    finally:
        with contextlib.suppress(FileNotFoundError):
            index.unlink()
    return TaskPatch(task, inst.name, start, commit, tuple(keep), tuple(refused), len(all_changes))
