"""A specialist instance's own checkout: made once, brought up to date before each task.

Each instance works in `.guildrun/worktrees/<run>/<instance>` on the branch
`guildrun/<run>.<instance>`, with a private folder for its agent's state outside the
checkout (so the agent's caches never become part of a patch). Git is always pointed at
the worktree's git folder explicitly: a task that replaced the worktree's `.git` file
with a repository of its own cannot redirect guildrun's calls.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .._git import Git
from ._guard import Fingerprint, Violation
from ._layout import Layout, slug


@dataclass(frozen=True)
class Instance:
    """An instance's checkout. `start` is the commit its current task started from."""

    name: str
    path: Path
    branch: str
    gitdir: Path
    state_dir: Path

    @property
    def env(self) -> dict[str, str]:
        return {"GIT_DIR": str(self.gitdir), "GIT_WORK_TREE": str(self.path)}


def registered(git: Git) -> dict[Path, str | None]:
    """Worktrees git knows: path -> checked-out branch (None when detached)."""
    out: dict[Path, str | None] = {}
    path: Path | None = None
    for line in git.text("worktree", "list", "--porcelain").splitlines() + [""]:
        if line.startswith("worktree "):
            path = Path(line[len("worktree ") :])
            out[path] = None
        elif line.startswith("branch ") and path is not None:
            out[path] = line[len("branch ") :].removeprefix("refs/heads/")
    return out


def add_worktree(git: Git, path: Path, commit: str, branch: str | None) -> Path:
    """Check `commit` out at `path` (on `branch`, or detached); returns its git folder.

    A folder left half-made by a crash is removed and made again.
    """
    known = {p.resolve() for p in registered(git)}
    if path.resolve() in known and (path / ".git").is_file():
        return gitdir_of(path)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
    git.run("worktree", "prune")
    path.parent.mkdir(parents=True, exist_ok=True)
    how = ["-B", branch] if branch else ["--detach"]
    git.run("worktree", "add", "-f", *how, str(path), commit)
    return gitdir_of(path)


def gitdir_of(path: Path) -> Path:
    """The worktree's own git folder, which must lie in the repository's `worktrees/`."""
    dot = path / ".git"
    if dot.is_symlink() or not dot.is_file():
        raise OSError(f"{dot} is not the file git made")
    text = dot.read_text()[:4096].strip()
    gitdir = Path(text.removeprefix("gitdir: "))
    if not text.startswith("gitdir: ") or gitdir.parent.name != "worktrees":
        raise OSError(f"{dot} does not name a worktree's git folder")
    return gitdir


class Instances:
    """The run's instance checkouts and what each one's current task started from."""

    def __init__(self, git: Git, layout: Layout) -> None:
        self.git = git
        self.layout = layout
        self._open: dict[str, Instance] = {}
        self._guards: dict[str, Fingerprint] = {}
        self._pending: dict[str, list[Violation]] = {}

    def get(self, name: str, head: str) -> Instance:
        """The instance's checkout, made at `head` the first time it is asked for."""
        if name in self._open:
            return self._open[name]
        path = self.layout.instance_dir(name)
        branch = self.layout.instance_branch(name)
        guard = Fingerprint.load(self.layout.root, self._guard_file(name))
        if guard is not None:  # resumed: what a task did before the crash is put back first
            self._pending[name] = guard.check()
        gitdir = add_worktree(self.git, path, head, branch)
        state = self.layout.agent_state(name)
        state.mkdir(parents=True, exist_ok=True)
        inst = Instance(name, path, branch, gitdir, state)
        if guard is None:
            guard = Fingerprint.take(
                self.layout.root,
                [path / ".git", *(gitdir / f for f in ("commondir", "gitdir", "config.worktree"))],
                [],
            )
            guard.save(self._guard_file(name))
        self._guards[name] = guard
        self._open[name] = inst
        return inst

    def repair(self, name: str, head: str) -> list[Violation]:
        """A checkout the task removed is made again (its work is lost with it)."""
        inst = self._open.get(name)
        if inst is None or inst.path.is_dir():
            return []
        del self._open[name]
        del self._guards[name]
        self._guard_file(name).unlink(missing_ok=True)  # a new checkout, new links
        self.git.run("worktree", "prune")
        self.get(name, head)
        label = str(inst.path.relative_to(self.layout.root))
        return [Violation(label, "git-internals", "the task removed its checkout; made again")]

    def check_links(self, name: str) -> list[Violation]:
        """Changes to the instance's git links since it was made, put back."""
        return self._pending.pop(name, []) + self._guards[name].check()

    def reset(self, inst: Instance, commit: str) -> None:
        """Make the checkout exactly `commit` on the instance's branch: local changes and
        files not ignored by git are dropped (ignored ones, like build caches, stay)."""
        args = ("checkout", "-q", "-f", "-B", inst.branch, commit)
        if self.git.run(*args, cwd=inst.path, env=inst.env, check=False).returncode != 0:
            # The agent's index refuses (assume-unchanged or skip-worktree flags, a torn
            # file): it is the agent's scratch, so it goes, and the checkout is redone.
            with contextlib.suppress(FileNotFoundError):
                (inst.gitdir / "index").unlink()
            self.git.run(*args, cwd=inst.path, env=inst.env)
        self.git.run("clean", "-q", "-ffd", cwd=inst.path, env=inst.env)
        self._save_start(inst, commit)

    def start(self, name: str) -> str | None:
        """The commit the instance's current task started from (kept on disk for resume)."""
        try:
            raw = json.loads(self._start_file(name).read_text())
        except (OSError, ValueError):
            return None
        return str(raw["start"])

    def index_copy(self, name: str) -> Path:
        """guildrun's own copy of the checkout's index right after the reset: its file
        times spare hashing every file again, and a task cannot have altered it."""
        return self.layout.run_dir / "index" / f"{slug(name)}.idx"

    def set_start(self, inst: Instance, commit: str) -> None:
        """Record the commit the checkout's files now are (the index copy stays valid: it
        only tells which files are unchanged since it was made)."""
        path = self._start_file(inst.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"start": commit}))
        tmp.replace(path)

    def _save_start(self, inst: Instance, commit: str) -> None:
        self.set_start(inst, commit)
        copy = self.index_copy(inst.name)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(inst.gitdir / "index", copy)  # its time too: git's racy-file check needs it

    def _start_file(self, name: str) -> Path:
        return self.layout.run_dir / "instances" / f"{slug(name)}.json"

    def _guard_file(self, name: str) -> Path:
        return self.layout.run_dir / "guard" / f"{slug(name)}.json"
