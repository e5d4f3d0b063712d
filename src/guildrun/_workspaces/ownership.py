"""Who may change which file: the plan's `files`, `writes` and `ignore`, and widenings.

A task that broke the rules with `on_violation: sequential` is run again alone and
"widened": it may then change anything, and what it changed beyond its declared files
is reported as the extra files it needed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .._paths import glob_to_regex
from .._plan import CompiledPlan


class Ownership:
    def __init__(
        self,
        plan: CompiledPlan,
        writes: Mapping[str, tuple[re.Pattern[str], ...]],
        ignore: Iterable[str],
        own_files: Iterable[str] = (),
    ) -> None:
        self.plan = plan
        self.writes = writes
        self.ignore = tuple(glob_to_regex(g) for g in ignore)
        self.own_files = frozenset(own_files)  # guildrun's own outputs in the tree (--events)
        self.widened: set[str] = set()

    def ignored(self, path: str) -> bool:
        return path in self.own_files or any(p.match(path) for p in self.ignore)

    def allowed(self, task: str, path: str) -> bool:
        """May `task` change `path`? (Ignored paths are never asked about.)"""
        if task in self.widened or path in self.plan.by_id[task].files:
            return True
        return any(p.match(path) for p in self.writes[task])

    def declared(self, task: str, path: str) -> bool:
        """Owned by the plan's own words (files, writes, ignore), not by a widening."""
        if path in self.plan.by_id[task].files:
            return True
        return any(p.match(path) for p in (*self.writes[task], *self.ignore))
