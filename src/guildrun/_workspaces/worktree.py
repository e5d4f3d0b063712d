"""Worktree mode: a git worktree per instance (the second `Workspace`).

Each instance works in its own checkout of the run's base commit, so one task ran there
and attribution is exact: what changed is the task's. A succeeded task's allowed
changes become one commit (its patch), integrated at once onto `guildrun/<run>` (tasks
end in an order consistent with their dependencies, so this is dependency order), and
the next attempt on any instance starts from the integrated head. A patch that does not
merge becomes `Ending.CONFLICT` for the ending policy to answer. The git work is
synchronous inside the engine's step: it is milliseconds per task (docs/benchmarks.md),
and the step is where the engine's state may change.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from .._errors import UsageError
from .._worktree import Gate, RunBase, WorktreeSet
from .._worktree._base import dirty_paths
from .._worktree._gates import Bisection, GateResult
from .base import Check, Manifest, Workspace
from .ownership import Ownership

# Changes to the repository's shared git folder: any running task may have made them.
_SHARED_KINDS = frozenset({"git-internals"})


class WorktreeWorkspace(Workspace):
    notes_kind = "workspace"

    def __init__(
        self,
        root: Path,
        run_id: str,
        ownership: Ownership,
        *,
        allow_dirty: bool = False,
        apply: bool = False,
        done: Sequence[str] | None = None,
        check: bool = True,
    ) -> None:
        """`done`: on resume, the tasks the journal calls done, in plan order. `check`
        false (`ownership: false`): a task's patch holds whatever it changed."""
        self.root = root.resolve()
        self.run_id = run_id
        self.ws = WorktreeSet(self.root, run_id)
        self.ownership = ownership
        self.allow_dirty = allow_dirty
        self.apply_result = apply
        self.done = done
        self.check_ownership = check
        self.base: RunBase | None = None
        self._dirty_at_start: frozenset[str] = frozenset()
        self._on: dict[str, str] = {}  # task -> the instance its current attempt runs on
        self._settled: set[str] = set()  # attempts whose checkout is already put right

    # ------------------------------------------------------------------ the seam

    def open(self) -> list[str]:
        if self.done is None or not self._opened_before():
            # A new run, or a rerun (done tasks taken over from another run: their work
            # is in this base only if that run was applied).
            self.base = self.ws.open(allow_dirty=self.allow_dirty)
            self._dirty_at_start = frozenset(dirty_paths(self.ws.git))
            return [f"base: {self.base.describe()}; integrating onto {self.branch}"]
        recovery = self.ws.resume()
        self.base = self.ws.base()
        self._dirty_at_start = frozenset(dirty_paths(self.ws.git))
        notes = [f"base: {self.base.describe()}; integrating onto {self.branch}"]
        if recovery.interrupted:
            how = "it had landed" if recovery.landed else "undone; the task runs again"
            notes.append(f"integration of {recovery.interrupted} was cut short ({how})")
        missing = [t for t in self.done if t not in recovery.integrated]
        again = self._integrate_all(missing)
        if again:
            notes.append(f"integrated again after the crash: {', '.join(again)}")
        return notes

    def _opened_before(self) -> bool:
        ref = self.ws.layout.base_ref
        return self.ws.git.run("rev-parse", "--verify", "-q", ref, check=False).returncode == 0

    def _integrate_all(self, tasks: list[str]) -> list[str]:
        """Done tasks missing from the branch, integrated in an order that works (plan
        order first; one that conflicts is tried again after the others)."""
        landed: list[str] = []
        left = list(tasks)
        while left:
            later: list[str] = []
            for task in left:
                [got] = self.ws.integrate([task])
                if got.status == "conflict":
                    later.append(task)
                elif got.status == "integrated":
                    landed.append(task)
            if len(later) == len(left):
                raise UsageError(
                    f"run {self.run_id}: done tasks {', '.join(later)} no longer merge onto "
                    f"{self.branch}; merge them by hand (guildrun resolve) or clean the run"
                )
            left = later
        return landed

    @property
    def branch(self) -> str:
        return self.ws.layout.integration_branch

    def workdir(self, instance: str) -> Path:
        return self.ws.instance(instance).path

    def agent_state(self, instance: str) -> Path:
        """Where the instance's agent keeps its own state, outside its checkout."""
        return self.ws.instance(instance).state_dir

    def before(self, task: str, files: Sequence[str], instance: str) -> Manifest | None:
        self._on[task] = instance
        self._settled.discard(task)
        self.ws.sync(instance)  # dependencies' work included; an undo is a reset
        return None

    def check(
        self, ended: Sequence[str], running: Collection[str], succeeded: Collection[str] = ()
    ) -> Check:
        out = Check()
        for task in ended:
            instance = self._on.get(task)
            if instance is None or task not in succeeded:
                continue  # a failed attempt is discarded by `undo`

            def may_write(path: str, task: str = task) -> bool:
                return not self.check_ownership or self.ownership.allowed(task, path)

            patch = self.ws.commit_task(instance, task, may_write, self.ownership.ignored)
            own = [v.path for v in patch.violations if v.kind not in _SHARED_KINDS]
            shared = [v.path for v in patch.violations if v.kind in _SHARED_KINDS]
            if shared:  # put back already; blamed like a stray write of the shared tree
                suspects = sorted({*ended, *running})
                for path in shared:
                    out.stray[path] = suspects
            out.touched[task] = [c.path for c in patch.changes]
            if own:
                out.violations[task] = own
                continue
            [got] = self.ws.integrate([task])
            if got.status != "conflict":  # an earlier attempt's conflict is history now
                self.ws.layout.conflict_file(task).unlink(missing_ok=True)
            else:
                where = got.patch_file
                kept = where.relative_to(self.root) if where is not None else "?"
                paths = ", ".join(got.conflicts[:5]) or "some files"
                out.conflicts[task] = f"conflict in {paths} (patch kept in {kept})"
        return out

    def accept(self, task: str, files: Sequence[str], touched: Iterable[str]) -> Manifest | None:
        self._settled.add(task)
        return None  # integrated in `check`

    def undo(self, task: str, extra: Iterable[str] = ()) -> None:
        instance = self._on.get(task)
        if instance is None or task in self._settled:
            return
        self._settled.add(task)
        self.ws.discard(instance)

    # ------------------------------------------------------------------ gates

    def run_gates(self, gates: Sequence[Gate], slots: int) -> list[GateResult]:
        return self.ws.run_gates(gates, slots)

    def bisect(self, gate: Gate, slots: int, failed: GateResult) -> Bisection:
        return self.ws.bisect(gate, slots, failed)

    # ------------------------------------------------------------------ run end

    def finish(self, status: str) -> list[str]:
        if self.base is None:
            return []
        # Agents work in their checkouts but run with the user's rights: a write into the
        # project itself is no task's patch, so it is named here (and never undone: it
        # may be the user's own).
        notes: list[str] = []
        outside = sorted(set(dirty_paths(self.ws.git)) - self._dirty_at_start)
        if outside:
            shown = ", ".join(outside[:10]) + (" ..." if len(outside) > 10 else "")
            notes.append(f"changed in the project itself during the run, in no patch: {shown}")
        return notes + self._result(self.base, status)

    def _result(self, base: RunBase, status: str) -> list[str]:
        rid = self.run_id
        if status != "done":
            kept_in = self.ws.layout.worktrees.relative_to(self.root)
            notes = [
                f"worktrees kept for inspection in {kept_in}; the integrated work is on "
                f"{self.branch}; `guildrun clean {rid}` removes them"
            ]
            conflicts = self.ws.layout.run_dir / "conflicts"
            for kept in sorted(conflicts.glob("*.patch")) if conflicts.is_dir() else []:
                notes.append(f"conflicting patch kept: {kept.relative_to(self.root)}")
            return notes
        head = self.ws.head()
        if self.apply_result:
            try:
                applied = self.ws.apply()
            except UsageError as exc:
                self.ws.clean(keep_result=True)
                return [f"not applied: {exc}", f"apply later with `guildrun apply {rid}`"]
            self.ws.clean()
            return [f"applied to {applied.branch} ({applied.how}, {applied.commit[:12]})"]
        self.ws.clean(keep_result=True)
        start, branch = base.commit[:12], self.branch
        return [
            f"result on branch {branch} ({head[:12]}); worktrees removed",
            f"look at it: git log --stat {start}..{branch}  or  git diff {start} {branch}",
            f"apply it: guildrun apply {rid}   (or: git merge {branch})",
        ]
