"""Finished patches onto the run's integration branch, one atomic step each.

The integration branch `guildrun/<run>` moves only by a compare-and-swap of its ref
(`git update-ref REF NEW OLD`), after the three-way merge was done on a detached HEAD in
the integration worktree. So after a SIGKILL at any point, exactly one of these holds:

1. no intent file, branch at H: nothing was under way;
2. intent file, branch still at H: the worktree may hold anything (half-written files,
   a stale `index.lock`, a stopped cherry-pick, a commit on the detached HEAD that no
   branch names); `recover()` aborts and resets it, and the patch is not integrated;
3. intent file, branch at C (a commit carrying the task's trailer): the swap happened,
   only the bookkeeping did not; `recover()` clears it and the patch is integrated.

Which tasks the branch holds is read from the branch itself (each commit carries a
`Guildrun-Task:` trailer), so the journal and the branch cannot disagree after a crash.
A conflict is a result: the patch is kept as a file, the branch does not move.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from .._errors import UsageError
from .._git import Git, GitError
from ._instances import add_worktree
from ._layout import TRAILER, Layout

CRASH_ENV = "GUILDRUN_TEST_WORKTREE_CRASH_AT"  # tests only: SIGKILL self at a named point
RUN_ENV = "GUILDRUN_GIT_RUN"  # carried by every git guildrun starts for a run


def run_marker(root: Path, run_id: str) -> str:
    """What RUN_ENV holds: the run and its repository, so that recovering one project's
    run never stops git processes of another project's run of the same name."""
    return f"{run_id}@{root}"


def stop_leftover_git(marker: str) -> int:
    """Kill git processes a dead engine started for this run: a SIGKILL of the engine
    does not stop its child, which would go on writing into the worktree being reset."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["pid", "environ"]):
        try:
            env = proc.info["environ"] or {}
        except (psutil.Error, KeyError):
            continue
        if env.get(RUN_ENV) == marker and proc.info["pid"] != os.getpid():
            found.append(proc)
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(found, timeout=5)
    return len(found)


@dataclass(frozen=True)
class Integration:
    """What happened to one patch. `status`: integrated, conflict, empty (the task
    changed nothing) or already (integrated before, e.g. by a run that crashed)."""

    task: str
    status: str
    head: str
    conflicts: tuple[str, ...] = ()
    patch_file: Path | None = None


@dataclass(frozen=True)
class Recovery:
    """What `recover()` found: the task whose integration was cut short (if any), whether
    it landed, and every task the integration branch holds."""

    interrupted: str | None
    landed: bool
    integrated: tuple[str, ...]


def crash_point(name: str) -> None:
    """Die here, as a SIGKILL would, when a test asks for it."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class Integrator:
    """Owns the integration branch and its worktree; one integrator per run."""

    def __init__(self, git: Git, layout: Layout) -> None:
        self.git = git
        self.layout = layout
        self.dir = layout.integration_dir
        self._gitdir: Path | None = None
        # Refs live in the repository every agent can write to: the branch head and each
        # patch are remembered as guildrun left them, and a ref moved by anyone else is
        # refused rather than integrated or applied.
        self.expected: str | None = None
        self.patches: dict[str, str] = {}

    # ------------------------------------------------------------------ state

    def head(self) -> str:
        now = self._read_head()
        if self.expected is not None and now != self.expected:
            raise UsageError(
                f"{self.layout.integration_branch} was moved outside guildrun (to {now[:12]}; "
                f"guildrun left it at {self.expected[:12]}); refusing to build on it"
            )
        return now

    def _read_head(self) -> str:
        return self.git.text("rev-parse", "--verify", self.layout.integration_ref)

    def base(self) -> str:
        return self.git.text("rev-parse", "--verify", self.layout.base_ref)

    def worktree(self) -> Path:
        if self._gitdir is None:
            self._gitdir = add_worktree(self.git, self.dir, self.head(), None)
        return self.dir

    @property
    def env(self) -> dict[str, str]:
        self.worktree()
        return {"GIT_DIR": str(self._gitdir), "GIT_WORK_TREE": str(self.dir)}

    def _wt(self, *args: str, check: bool = True) -> str:
        return self.git.run(*args, cwd=self.worktree(), env=self.env, check=check).text

    def history(self, since: str | None = None) -> list[tuple[str, str]]:
        """(commit, task) of each commit on the branch after `since` (default: the base)."""
        out = self.git.text(
            "log",
            "--first-parent",
            "--reverse",
            f"--format=%H%x01%(trailers:key={TRAILER},valueonly,separator=%x02)%x03",
            f"{since or self.base()}..{self.head()}",
        )
        pairs: list[tuple[str, str]] = []
        for rec in out.split("\x03"):
            commit, _, task = rec.strip().partition("\x01")
            if commit:
                pairs.append((commit, task.split("\x02")[0].strip()))
        return pairs

    def integrated(self) -> list[str]:
        return [task for _, task in self.history() if task]

    def has_patch(self, task: str) -> bool:
        ref = self.layout.patch_ref(task)
        return self.git.run("rev-parse", "--verify", "-q", ref, check=False).returncode == 0

    def patch(self, task: str) -> str:
        got = self.git.run("rev-parse", "--verify", "-q", self.layout.patch_ref(task), check=False)
        if got.returncode != 0:
            raise UsageError(f"task {task!r} has no patch in run {self.layout.run_id}")
        known = self.patches.get(task)
        if known is not None and got.text != known:
            raise UsageError(f"the patch of task {task!r} was changed outside guildrun")
        return got.text

    # ------------------------------------------------------------------ integrating

    def integrate(self, task: str) -> Integration:
        """Three-way merge the task's patch onto the branch (cherry-pick semantics: the
        patch's own parent is the merge base, so nothing else comes along with it)."""
        patch = self.patch(task)
        if task in self.integrated():
            return Integration(task, "already", self.head())
        old = self.head()
        self._intend({"op": "integrate", "task": task, "head": old})
        crash_point("before-cherry-pick")
        self._at(old)
        picked = self._pick(patch)
        if picked is not None:
            kept = self._keep_conflict(task, patch)
            self._at(old)
            self._done()
            return Integration(task, "conflict", old, picked, kept)
        crash_point("after-cherry-pick")
        new = self._wt("rev-parse", "HEAD")
        self._swap(new, old, f"guildrun: integrate {task}")
        crash_point("after-update-ref")
        self._done()
        return Integration(task, "integrated", new)

    def rebuild(self, onto: str, tasks: Iterable[str]) -> tuple[str, list[Integration]]:
        """Make the branch `onto` plus `tasks`' patches (bisection takes a culprit out this
        way); a patch that no longer applies is left out and returned as a conflict."""
        old = self.head()
        self._intend({"op": "rebuild", "head": old})
        self._at(onto)
        left_out: list[Integration] = []
        for task in tasks:
            patch = self.patch(task)
            here = self._wt("rev-parse", "HEAD")
            picked = self._pick(patch)
            if picked is not None:
                kept = self._keep_conflict(task, patch)
                self._at(here)
                left_out.append(Integration(task, "conflict", here, picked, kept))
        crash_point("before-rebuild-swap")
        new = self._wt("rev-parse", "HEAD")
        self._swap(new, old, "guildrun: rebuild without a culprit")
        self._done()
        return new, left_out

    def _pick(self, patch: str) -> tuple[str, ...] | None:
        """Cherry-pick onto the detached HEAD; None when clean, else the conflicting paths."""
        got = self.git.run(
            "cherry-pick",
            "--allow-empty",
            "--keep-redundant-commits",
            patch,
            cwd=self.worktree(),
            env={**self.env, **self.git.commit_env()},
            check=False,
        )
        if got.returncode == 0:
            return None
        unmerged = self.git.run("ls-files", "-u", "-z", cwd=self.dir, env=self.env).stdout
        paths = sorted({os.fsdecode(r.partition(b"\t")[2]) for r in unmerged.split(b"\0") if r})
        self._abort()
        if not paths:
            raise GitError(
                ["cherry-pick", patch], got.returncode, got.stderr.decode(errors="replace")
            )
        return tuple(paths)

    def _keep_conflict(self, task: str, patch: str) -> Path:
        path = self.layout.conflict_file(task)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = self.git.run("format-patch", "-1", "--stdout", "--binary", patch).stdout
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(text)
        tmp.replace(path)
        return path

    def _swap(self, new: str, old: str, why: str) -> None:
        self.git.run("update-ref", "-m", why, self.layout.integration_ref, new, old)
        self.expected = new

    def _at(self, commit: str) -> None:
        """The integration worktree exactly at `commit`, detached, nothing else in it."""
        self._wt("checkout", "-q", "-f", "--detach", commit)
        self._wt("clean", "-q", "-ffd")

    def _abort(self) -> None:
        if (self._gitdir_path() / "CHERRY_PICK_HEAD").exists():
            got = self.git.run("cherry-pick", "--abort", cwd=self.dir, env=self.env, check=False)
            if got.returncode != 0:
                self.git.run("cherry-pick", "--quit", cwd=self.dir, env=self.env, check=False)

    def _gitdir_path(self) -> Path:
        self.worktree()
        assert self._gitdir is not None
        return self._gitdir

    def _intend(self, what: dict[str, str]) -> None:
        if self._resolving():
            task = (self.layout.run_dir / "resolving").read_text()[:200]
            raise UsageError(
                f"a hand merge of task {task!r} is under way in {self.dir}; "
                f"finish it with `guildrun resolve {self.layout.run_id} {task}` first"
            )
        path = self.layout.intent_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as fh:
            json.dump(what, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)

    def _done(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.layout.intent_file.unlink()

    # ------------------------------------------------------------------ crash and hand merges

    def recover(self) -> Recovery:
        """Bring the integration worktree back to the branch head after a crash.

        A hand merge under way (`start_resolution`, no intent file) is left alone.
        """
        try:
            intent = json.loads(self.layout.intent_file.read_text())
        except FileNotFoundError:
            intent = None
        except ValueError:
            intent = {}  # torn while written: nothing had started yet
        if intent is None and self._resolving():
            return Recovery(None, False, tuple(self.integrated()))
        stop_leftover_git(run_marker(self.layout.root, self.layout.run_id))
        self.expected = self._read_head()  # a new process: the branch is the record
        gitdir = self._gitdir_path()
        if intent is not None:
            # Our process held these locks and is dead; no other one may run (one run per root).
            for lock in (gitdir / "index.lock", gitdir / "HEAD.lock", self._ref_lock()):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
        self._abort()
        self._at(self.head())
        self._done()
        done = self.integrated()
        task = intent.get("task") if intent else None
        return Recovery(task, task is not None and task in done, tuple(done))

    def _ref_lock(self) -> Path:
        common = Path(self.git.text("rev-parse", "--path-format=absolute", "--git-common-dir"))
        return common / f"{self.layout.integration_ref}.lock"

    def _resolving(self) -> bool:
        return (self.layout.run_dir / "resolving").exists()

    def start_resolution(self, task: str) -> Path:
        """Leave the task's patch half-applied, conflict markers and all, in the integration
        worktree for a person to finish; `resolve(task)` records the result."""
        patch = self.patch(task)
        if self.layout.intent_file.exists():
            raise UsageError(f"run {self.layout.run_id} is integrating; stop or resume it first")
        self._at(self.head())
        (self.layout.run_dir / "resolving").write_text(task)
        self.git.run("cherry-pick", "--no-commit", patch, cwd=self.dir, env=self.env, check=False)
        return self.dir

    def resolve(self, task: str) -> Integration:
        """Record what a person merged by hand in the integration worktree as the task's
        integration: the worktree's files (committed or not) on top of the branch head."""
        old = self.head()
        unmerged = self._wt("ls-files", "-u")
        if unmerged:
            paths = sorted({line.partition("\t")[2] for line in unmerged.splitlines()})
            raise UsageError(
                f"{self.dir}: still unmerged: {', '.join(paths[:5])}; merge them, then resolve"
            )
        here = self._wt("rev-parse", "HEAD")
        ancestor = self.git.run("merge-base", "--is-ancestor", old, here, check=False)
        if ancestor.returncode != 0:
            raise UsageError(
                f"{self.dir}: HEAD is not on top of {self.layout.integration_branch}; "
                "merge onto the integration branch's head"
            )
        index = self.layout.run_dir / "resolve.index"
        env = {**self.env, "GIT_INDEX_FILE": str(index)}
        try:
            self.git.run("read-tree", here, cwd=self.dir, env=env)
            self.git.run("add", "-A", cwd=self.dir, env=env)
            tree = self.git.text("write-tree", cwd=self.dir, env=env)
            names = self.git.run(
                "diff-index",
                "--cached",
                "-z",
                "--name-only",
                "--diff-filter=AM",
                old,
                cwd=self.dir,
                env=env,
            ).stdout
        finally:
            with contextlib.suppress(FileNotFoundError):
                index.unlink()
        if tree == self.git.text("rev-parse", f"{old}^{{tree}}"):
            raise UsageError(f"{self.dir}: no change to record for task {task!r}")
        marked = [
            p
            for p in (os.fsdecode(n) for n in names.split(b"\0") if n)
            if _has_markers(self.dir / p)
        ]
        if marked:
            raise UsageError(f"{self.dir}: conflict markers left in {', '.join(marked[:5])}")
        message = f"{task} (merged by hand)\n\n{TRAILER}: {task}\n"
        new = self.git.text(
            "commit-tree", tree, "-p", old, "-m", message, env=self.git.commit_env()
        )
        self._swap(new, old, f"guildrun: resolve {task}")
        self.git.run("cherry-pick", "--quit", cwd=self.dir, env=self.env, check=False)
        self._at(new)
        with contextlib.suppress(FileNotFoundError):
            (self.layout.run_dir / "resolving").unlink()
        return Integration(task, "integrated", new)


def _has_markers(path: Path) -> bool:
    try:
        if path.is_symlink() or not path.is_file():
            return False
        with path.open("rb") as fh:
            data = fh.read(8 << 20)
    except OSError:
        return False
    return any(line.startswith((b"<<<<<<< ", b">>>>>>> ")) for line in data.splitlines())
