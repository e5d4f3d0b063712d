"""One run's worktrees, as the engine sees them: the worktree implementation of Workspace.

    ws = WorktreeSet(root, run_id)
    base = ws.open(allow_dirty=False)        # run start: fix the base, make the branch
    inst = ws.instance("interface#1")        # an instance spawns: its own checkout
    ws.sync("interface#1")                   # before each attempt: at the integrated head
    patch = ws.commit_task("interface#1", "t1", may_write)   # after a successful attempt
    ws.discard("interface#1")                # after a failed one
    ws.integrate(["t1", ...])                # in dependency order; conflicts are results
    ws.bisect(gate, slots)                   # at a phase or scope end, when a gate fails
    ws.apply(); ws.clean()                   # run end
    ws.recover()                             # on resume, before anything else

Not thread-safe: the engine calls it from one place. Gates and probes run in parallel
inside it.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._errors import UsageError
from .._git import Git
from .._statedir import ensure_state_dir
from ._apply import Applied, apply_branch
from ._base import RunBase, take_base, user_head
from ._gates import Bisection, Gate, GateResult, Gates
from ._guard import Fingerprint, Violation
from ._instances import Instance, Instances, registered
from ._integrate import RUN_ENV, Integration, Integrator, Recovery, run_marker
from ._layout import Layout
from ._patch import TaskPatch, commit_changes

Predicate = Callable[[str], bool]


@dataclass(frozen=True)
class Cleaned:
    worktrees: tuple[str, ...]
    branches: tuple[str, ...]
    kept: tuple[str, ...]  # what could not go, and why


class WorktreeSet:
    """A run's base, instance checkouts, integration branch, gates, apply and clean-up."""

    def __init__(self, root: Path, run_id: str, git: Git | None = None) -> None:
        self.root = root.resolve()
        self.layout = Layout(self.root, run_id)
        git = git or Git(self.root)
        marker = run_marker(self.root, run_id)
        self.git = dataclasses.replace(git, extra_env={**git.extra_env, RUN_ENV: marker})
        self.instances = Instances(self.git, self.layout)
        self.integrator = Integrator(self.git, self.layout)
        self.gates = Gates(self.git, self.layout, self.integrator)
        self._guard: Fingerprint | None = None

    # ------------------------------------------------------------------ run start / resume

    def open(self, *, allow_dirty: bool = False) -> RunBase:
        """Run start: fix the base (refusing a dirty tree unless allowed), make the
        integration branch and worktree, and fingerprint the repository's git folder."""
        ensure_state_dir(self.root)  # with its `.gitignore`: never part of the user's tree
        top = self.git.run("rev-parse", "--show-toplevel", check=False)
        if top.returncode != 0 or Path(top.text).resolve() != self.root:
            raise UsageError(
                f"{self.root}: worktree mode needs the top folder of a git repository as root"
            )
        if self._has(self.layout.base_ref):
            raise UsageError(f"run {self.layout.run_id} is already open; resume it instead")
        base = take_base(self.git, self.layout, allow_dirty=allow_dirty)
        self.git.run("update-ref", self.layout.integration_ref, base.commit, "")
        self.integrator.expected = base.commit
        self.integrator.worktree()
        self._guard = self._take_guard()
        self._guard.save(self._guard_file())
        return base

    def resume(self) -> Recovery:
        """On resume: load the git-folder fingerprint and recover the integration branch."""
        if not self._has(self.layout.base_ref):
            raise UsageError(f"run {self.layout.run_id} has no worktree state to resume")
        if not self._has(self.layout.integration_ref):  # the crash came inside open()
            self.git.run("update-ref", self.layout.integration_ref, self.layout.base_ref, "")
        self._guard = Fingerprint.load(self.root, self._guard_file()) or self._take_guard()
        return self.recover()

    def _has(self, ref: str) -> bool:
        return self.git.run("rev-parse", "--verify", "-q", ref, check=False).returncode == 0

    def recover(self) -> Recovery:
        return self.integrator.recover()

    def base(self) -> RunBase:
        head, branch = user_head(self.git)
        commit = self.integrator.base()
        return RunBase(commit, head, branch, commit != head)

    # ------------------------------------------------------------------ instances and tasks

    def instance(self, name: str) -> Instance:
        """An instance spawns: its checkout at the integrated head (made once, reused)."""
        return self.instances.get(name, self.integrator.head())

    def sync(self, name: str) -> str:
        """Before an attempt: the checkout exactly at the integrated head; returns it."""
        inst = self.instance(name)
        head = self.integrator.head()
        self.instances.reset(inst, head)
        return head

    def commit_task(
        self,
        name: str,
        task: str,
        may_write: Predicate,
        ignored: Predicate | None = None,
    ) -> TaskPatch:
        """After a successful attempt: the task's allowed changes as one commit (its patch,
        kept as `refs/guildrun/<run>/patches/<task>`), violations returned; the checkout's
        files are then exactly that commit."""
        if "\n" in task:
            raise ValueError("a task id cannot hold a line break")
        inst = self.instance(name)
        internals = self._check_internals(name)
        start = self.instances.start(name) or self.integrator.head()
        index = self.layout.run_dir / "index" / f"{inst.path.name}.tmp"
        index.parent.mkdir(parents=True, exist_ok=True)
        patch = commit_changes(
            self.git,
            inst,
            task,
            start,
            index,
            self.instances.index_copy(name),
            may_write,
            ignored or (lambda _p: False),
        )
        patch = TaskPatch(
            patch.task,
            patch.instance,
            patch.start,
            patch.commit,
            patch.changes,
            tuple(internals) + patch.violations,
            patch.seen,
        )
        if patch.violations or len(patch.changes) != patch.seen:
            # Refused or ignored changes are dropped now; otherwise the files already are
            # the commit, and the next sync moves HEAD and the index along with them.
            self.instances.reset(inst, patch.commit or start)
        elif patch.commit is not None:
            self.instances.set_start(inst, patch.commit)  # a next task diffs against it
        if patch.commit is not None:
            self.git.run("update-ref", self.layout.patch_ref(task), patch.commit)
            self.integrator.patches[task] = patch.commit
        else:  # a re-run that changed nothing: an earlier attempt's patch must not be used
            self.git.run("update-ref", "-d", self.layout.patch_ref(task))
            self.integrator.patches.pop(task, None)
        return patch

    def discard(self, name: str) -> list[Violation]:
        """After a failed attempt: drop the checkout's changes; git-folder changes are
        put back and returned."""
        inst = self.instance(name)
        internals = self._check_internals(name)
        self.instances.reset(inst, self.instances.start(name) or self.integrator.head())
        return internals

    def _check_internals(self, name: str) -> list[Violation]:
        found = self.instances.repair(name, self.integrator.head())
        found += self.instances.check_links(name)
        if self._guard is not None:
            found += self._guard.check()
        return found

    # ------------------------------------------------------------------ integration

    def integrate(self, tasks: Sequence[str]) -> list[Integration]:
        """Patches onto the integration branch in the order given (dependencies first)."""
        out: list[Integration] = []
        for task in tasks:
            if not self.integrator.has_patch(task):  # it changed nothing
                out.append(Integration(task, "empty", self.integrator.head()))
                continue
            out.append(self.integrator.integrate(task))
        return out

    def integrated(self) -> list[str]:
        return self.integrator.integrated()

    def head(self) -> str:
        return self.integrator.head()

    def start_resolution(self, task: str) -> Path:
        return self.integrator.start_resolution(task)

    def resolve(self, task: str) -> Integration:
        return self.integrator.resolve(task)

    # ------------------------------------------------------------------ gates

    def gate(self, gate: Gate) -> GateResult:
        return self.gates.check(gate)

    def run_gates(self, gates: Sequence[Gate], slots: int = 2) -> list[GateResult]:
        return self.gates.check_all(gates, slots)

    def bisect(self, gate: Gate, slots: int = 2, failed: GateResult | None = None) -> Bisection:
        """A failing gate (`failed`, if the caller just ran it at the head): find, take out
        and report each patch that broke it; the rest stay integrated."""
        return self.gates.bisect(gate, slots, failed)

    # ------------------------------------------------------------------ run end

    def apply(self, into: str | None = None) -> Applied:
        """Run end, with --apply: the integrated result into the user's branch."""
        head = self.integrator.head()
        return apply_branch(
            self.git, head, self.layout.integration_branch, self.layout.run_id, into
        )

    def clean(self, *, keep_result: bool = False) -> Cleaned:
        """Remove the run's worktrees, branches and refs (`keep_result`: all but the
        integration branch, so an unapplied result can still be looked at and applied)."""
        kept: list[str] = []
        removed_wt: list[str] = []
        ours = self.layout.worktrees.resolve()
        in_use: dict[str, Path] = {}
        for path, branch in registered(self.git).items():
            if path.resolve().is_relative_to(ours):
                self.git.run("worktree", "remove", "--force", "--force", str(path), check=False)
                removed_wt.append(str(path))
            elif branch:
                in_use[branch] = path
        shutil.rmtree(self.layout.worktrees, ignore_errors=True)
        self.git.run("worktree", "prune")
        removed_br: list[str] = []
        refs = self.git.text(
            "for-each-ref", "--format=%(refname)", "refs/heads/guildrun/", self.layout.ref()
        ).splitlines()
        prefix = f"refs/heads/{self.layout.integration_branch}"
        for ref in refs:
            branch = ref.removeprefix("refs/heads/")
            if ref.startswith("refs/heads/") and not (
                ref == prefix or ref.startswith(prefix + ".")
            ):
                continue  # another run's
            if keep_result and ref == self.layout.integration_ref:
                continue
            if branch in in_use:
                kept.append(f"{branch}: checked out in {in_use[branch]}")
                continue
            self.git.run("update-ref", "-d", ref)
            if ref.startswith("refs/heads/"):
                removed_br.append(branch)
        for sub in ("agents", "index", "instances", "guard"):
            shutil.rmtree(self.layout.run_dir / sub, ignore_errors=True)
        return Cleaned(tuple(removed_wt), tuple(removed_br), tuple(kept))

    # ------------------------------------------------------------------ internals

    def _common_dir(self) -> Path:
        return Path(self.git.text("rev-parse", "--path-format=absolute", "--git-common-dir"))

    def _take_guard(self) -> Fingerprint:
        common = self._common_dir()
        files = ["config", "config.worktree", "objects/info/alternates", "commondir"]
        files += [f"info/{name}" for name in ("attributes", "exclude", "grafts", "sparse-checkout")]
        return Fingerprint.take(self.root, [common / f for f in files], [common / "hooks"])

    def _guard_file(self) -> Path:
        return self.layout.run_dir / "guard" / "repository.json"
