"""Bringing a run's result into the user's branch, or refusing and changing nothing.

The merge-back failures of worktree tools come from writing a branch that a checkout
elsewhere shows (its files then silently disagree with its branch), from merging into a
dirty tree, and from conflicts found half-way. So every refusal is decided before anything
is written: the target must not be checked out in another worktree, the user's tree must
be clean, and a merge that is needed is made first, off to the side (`git merge-tree`);
the user's checkout then only ever moves by `git merge --ff-only`, all or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import UsageError
from .._git import Git, GitError
from ._base import dirty_paths, user_head
from ._instances import registered


@dataclass(frozen=True)
class Applied:
    """`how`: fast-forward, merge (a merge commit was made) or up to date."""

    branch: str
    how: str
    commit: str


def apply_branch(
    git: Git, commit: str, source: str, run_id: str, into: str | None = None
) -> Applied:
    """Bring `commit` (the head of the integration branch `source`, as guildrun left it)
    into `into` (default: the current branch)."""
    _, current = user_head(git)
    target = into or current
    if target is None:
        raise UsageError(
            f"{git.root}: HEAD is detached; check out the branch to apply run {run_id} into"
        )
    root = git.root.resolve()
    for path, branch in registered(git).items():
        if branch == target and path.resolve() != root:
            raise UsageError(
                f"branch {target} is checked out in another worktree ({path}); apply there, "
                "or switch that worktree to another branch first"
            )
    here = target == current
    if here:
        dirty = dirty_paths(git)
        if dirty:
            shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
            raise UsageError(
                f"{git.root}: uncommitted changes ({shown}); commit or stash them before applying"
            )
    old = git.text("rev-parse", "--verify", f"refs/heads/{target}")
    new = commit
    if _is_ancestor(git, new, old):
        return Applied(target, "up to date", old)
    how = "fast-forward"
    if not _is_ancestor(git, old, new):
        new = _merge_commit(git, old, new, target, source, run_id)
        how = "merge"
    if here:
        try:
            git.run("merge", "--ff-only", "-q", new)
        except GitError as exc:
            raise UsageError(f"{git.root}: cannot apply run {run_id}: {exc.first_line}") from exc
    else:
        git.run(
            "update-ref", "-m", f"guildrun: apply run {run_id}", f"refs/heads/{target}", new, old
        )
    return Applied(target, how, new)


def _is_ancestor(git: Git, a: str, b: str) -> bool:
    return git.run("merge-base", "--is-ancestor", a, b, check=False).returncode == 0


def _merge_commit(git: Git, old: str, new: str, target: str, source: str, run_id: str) -> str:
    """The merge of `new` into `old`, made without a checkout; refused on a conflict."""
    got = git.run("merge-tree", "--write-tree", "-z", "--name-only", old, new, check=False)
    if got.returncode == 1:
        parts = got.stdout.split(b"\0\0")[0].split(b"\0")[1:]
        paths = sorted({p.decode(errors="replace") for p in parts if p})
        raise UsageError(
            f"branch {target} moved since run {run_id} started and conflicts with it in "
            f"{', '.join(paths[:5]) or 'some files'}; merge {source} by hand"
        )
    if got.returncode != 0:
        raise GitError(
            ["merge-tree", old, new], got.returncode, got.stderr.decode(errors="replace")
        )
    tree = got.stdout.split(b"\0")[0].decode()
    message = f"Merge guildrun run {run_id} ({source}) into {target}\n"
    return git.text("commit-tree", tree, "-p", old, "-p", new, "-m", message, env=git.commit_env())
