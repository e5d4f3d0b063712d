"""Where a run's worktrees, branches, refs and files live, and how names become safe there.

Task, instance and gate names come from plans (often written by language models), so
they are never used raw in a ref or a path: `slug` keeps a safe name as it is and turns
anything else into a safe spelling with a short hash, so two names never meet.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .._errors import UsageError
from .._paths import STATE_DIR

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_RUN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
TRAILER = "Guildrun-Task"


def slug(name: str) -> str:
    """`name` if it is safe in a ref and a file name, else a safe spelling plus a hash."""
    if _SAFE.fullmatch(name):
        return name
    clean = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_")[:40] or "x"
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{clean}-{digest}"


@dataclass(frozen=True)
class Layout:
    """Names for one run. The integration branch is `guildrun/<run>`; instance branches
    are `guildrun/<run>.<instance>` (a ref cannot be both a branch and a folder, so they
    cannot live under `guildrun/<run>/`); guildrun's own refs live in `refs/guildrun/`."""

    root: Path
    run_id: str

    def __post_init__(self) -> None:
        if not _RUN.fullmatch(self.run_id):
            raise UsageError(
                f"run id {self.run_id!r} cannot name a git branch; use letters, digits, - and _"
            )

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def run_dir(self) -> Path:
        return self.state / "runs" / self.run_id

    @property
    def worktrees(self) -> Path:
        return self.state / "worktrees" / self.run_id

    @property
    def integration_branch(self) -> str:
        return f"guildrun/{self.run_id}"

    @property
    def integration_ref(self) -> str:
        return f"refs/heads/{self.integration_branch}"

    @property
    def integration_dir(self) -> Path:
        return self.worktrees / "_integration"

    def instance_branch(self, name: str) -> str:
        return f"guildrun/{self.run_id}.{slug(name)}"

    def instance_dir(self, name: str) -> Path:
        return self.worktrees / slug(name)

    def agent_state(self, name: str) -> Path:
        """An instance's private folder for its agent's own state, outside its worktree."""
        return self.run_dir / "agents" / slug(name)

    def probe_dir(self, label: str) -> Path:
        return self.worktrees / f"_{slug(label)}"

    def ref(self, *parts: str) -> str:
        return "/".join(["refs/guildrun", self.run_id, *parts])

    @property
    def base_ref(self) -> str:
        return self.ref("base")

    def patch_ref(self, task: str) -> str:
        return self.ref("patches", slug(task))

    def green_ref(self, gate: str) -> str:
        return self.ref("green", slug(gate))

    def conflict_file(self, task: str) -> Path:
        return self.run_dir / "conflicts" / f"{slug(task)}.patch"

    @property
    def intent_file(self) -> Path:
        """Written before the integration branch is worked on; gone when it is consistent."""
        return self.run_dir / "integrating.json"
