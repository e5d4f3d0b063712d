"""The seam for a task's effect on the files: a `Workspace`.

In the manner of anyio's backend class, one interface with an implementation per mode.
The engine asks it, around every attempt: where does this instance work (`workdir`);
capture what the task may change before it runs (`before`); when attempts end, which
changes were whose and which broke the ownership rules (`check`); keep a successful
task's effect (`accept`) or put the files back (`undo`).

- `SharedTree` (shared.py): every task works in the project itself. Effects are
  snapshots of owned files; ownership is checked through inotify, and a stray write
  that several running tasks could have made is undone without blame.
- `WorktreeWorkspace` (worktree.py) gives each instance its own git worktree; an
  effect becomes a patch, integrated onto a run branch, where a conflict is a normal
  outcome (`Ending.CONFLICT`), not an exception.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Manifest = dict[str, str | None]


@dataclass
class Check:
    """What the files say about the attempts that just ended."""

    violations: dict[str, list[str]] = field(default_factory=dict)  # task -> paths, undone
    touched: dict[str, list[str]] = field(default_factory=dict)  # task -> its allowed changes
    # Undone, but nobody can be blamed: path -> the tasks that may have made the change.
    stray: dict[str, list[str]] = field(default_factory=dict)
    conflicts: dict[str, str] = field(default_factory=dict)  # task -> why its patch did not merge
    unsafe: dict[str, str] = field(default_factory=dict)  # task -> why its files are unsafe


class Workspace(ABC):
    notes_kind = "watcher_unavailable"  # the event kind `open`'s notes are journaled as

    @abstractmethod
    def open(self) -> list[str]:
        """Take the state the run starts from; returns notes worth journaling."""

    @abstractmethod
    def workdir(self, instance: str) -> Path:
        """Where an instance's tasks run."""

    @abstractmethod
    def before(self, task: str, files: Sequence[str], instance: str) -> Manifest | None:
        """An attempt starts on `instance`: capture what it may change, to undo it later."""

    @abstractmethod
    def check(
        self, ended: Sequence[str], running: Collection[str], succeeded: Collection[str] = ()
    ) -> Check:
        """Attempts ended (`succeeded`: those whose agent said done): find changes outside
        what they own and undo them."""

    @abstractmethod
    def accept(self, task: str, files: Sequence[str], touched: Iterable[str]) -> Manifest | None:
        """A task succeeded: its effect stays. Returns its owned files as they are now."""

    @abstractmethod
    def undo(self, task: str, extra: Iterable[str] = ()) -> None:
        """An attempt failed: its files go back to what they were before it."""

    def keep(self, task: str) -> bool:
        """An attempt cut short by a rate limit: keep its files as they are for the retry,
        which continues the agent's session (and, should it fail, goes back to what was
        there before the first attempt). False where the workspace cannot keep them."""
        return False

    def finish(self, status: str) -> list[str]:
        """The run ended with `status` (before the end is journaled); returns notes for
        the summary, such as where the result is and how to apply it."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """The run is over."""
