"""Who may change which file: the plan's `files`, `writes` and `ignore`, and widenings.

A task's `reads` are inputs it may never change: a write to one is a violation, even
where a `writes` glob or a widening would allow the path.

A task that broke the rules with `on_violation: sequential` is run again alone and
"widened": it may then change anything, and what it changed beyond its declared files
is reported as the extra files it needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .._glob import Glob
from .._paths import glob_to_regex
from .._plan import CompiledPlan


class Ownership:
    def __init__(
        self,
        plan: CompiledPlan,
        writes: Mapping[str, tuple[Glob, ...]],
        ignore: Iterable[str],
        own_files: Iterable[str] = (),
    ) -> None:
        self.plan = plan
        self.writes = writes
        self.ignore = tuple(glob_to_regex(g) for g in ignore)
        self.own_files = frozenset(own_files)  # guildrun's own outputs in the tree (--events)
        self.widened: set[str] = set()
        # Read-only inputs, as sets: a glob can name thousands of files.
        self.reads = {t.id: frozenset(t.reads) for t in plan.tasks if t.reads}

    def ignored(self, path: str) -> bool:
        return path in self.own_files or any(p.match(path) for p in self.ignore)

    def allowed(self, task: str, path: str) -> bool:
        """May `task` change `path`? (Ignored paths are never asked about.)

        Never one of its read-only inputs, whatever its `writes` globs or a widening say.
        """
        spec = self.plan.by_id[task]
        if path in spec.files:
            return True
        if path in self.reads.get(task, ()):
            return False
        if task in self.widened:
            return True
        return any(p.match(path) for p in self.writes[task])

    def declared(self, task: str, path: str) -> bool:
        """Owned by the plan's own words (files, writes, ignore), not by a widening."""
        if path in self.plan.by_id[task].files:
            return True
        return any(p.match(path) for p in (*self.writes[task], *self.ignore))
