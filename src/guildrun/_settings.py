"""Run settings and where they come from.

Settings are read once, before a run, into a frozen object; nothing deeper in the
engine looks at the environment or at config files. Precedence, strongest first:

    command-line flag > GUILDRUN_* environment variable > plan > project config > default

The project config is ``guildrun.toml`` at the project root (keys at top level, or under
``[settings]``), else ``[tool.guildrun]`` in ``pyproject.toml``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ._errors import UsageError
from ._policies.retry import RetrySettings
from ._words import STRATEGIES as STRATEGIES

Strategy = Literal["work-stealing", "round-robin", "longest-first", "auto"]

DEFAULT_IGNORE = (
    "**/__pycache__/**",
    ".pytest_cache/**",
    ".mypy_cache/**",
    ".ruff_cache/**",
)


class Settings(BaseModel):
    """How hard to parallelise. Every field has a default, so a plan may leave it out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_agent_type: int = Field(
        default=3, ge=1, le=1000, description="Instances of one specialist at most."
    )
    total_parallel: int = Field(
        default=20, ge=1, le=10000, description="Agents running at once, across specialists."
    )
    strategy: Strategy = Field(
        default="auto",
        description=(
            "How tasks reach instances: 'work-stealing' (round-robin assignment, idle instances "
            "steal from the back of the busiest sibling), 'round-robin' (static assignment), "
            "'longest-first' (critical path first, by task estimates given or learned from "
            "past runs) or 'auto', the default (work stealing until estimates are given or "
            "learned, then the one the simulation finds best)."
        ),
    )
    timeout: float | None = Field(
        default=None, gt=0, description="Default seconds a task may run before it is stopped."
    )
    kill_grace: float = Field(
        default=5.0,
        ge=0,
        description="Seconds between SIGTERM and SIGKILL when a task is stopped.",
    )
    retry: RetrySettings = Field(
        default_factory=RetrySettings,
        description="Retries with exponential backoff; specialists and tasks may refine it.",
    )
    affinity: Literal["none", "scope", "folder"] = Field(
        default="none",
        description=(
            "Keep a specialist's tasks of one scope (or top folder) on one instance, where that "
            "unbalances the instances by no more than one task."
        ),
    )
    isolation: Literal["none", "scope"] = Field(
        default="none",
        description="'scope': a task that fails for good stops the rest of its scope.",
    )
    fail_fast: bool = Field(default=False, description="Stop everything at the first failure.")
    ownership: bool = Field(
        default=True,
        description="Catch and undo writes outside the files a task owns (and its `writes`).",
    )
    max_cost_usd: float | None = Field(
        default=None,
        gt=0,
        description="Budget of the run in USD: past it no new task starts (resume with more).",
    )
    max_tokens: int | None = Field(
        default=None, gt=0, description="Budget of the run in agent tokens, likewise."
    )
    sample_interval: float = Field(
        default=1.0, ge=0, description="Seconds between CPU and memory samples (0: none)."
    )
    max_cpu: float | None = Field(
        default=None, gt=0, le=100, description="Hold back new starts while machine CPU % is above."
    )
    min_free_memory_mb: float | None = Field(
        default=None, ge=0, description="Hold back new starts while free memory (MB) is below."
    )
    ignore: list[str] = Field(
        default_factory=lambda: list(DEFAULT_IGNORE),
        description="Globs that any task may write without it counting (caches, build output).",
    )
    max_log_bytes: int = Field(
        default=50 << 20,
        ge=1024,
        description=(
            "Bytes of each task's stdout and of its stderr kept in its log; past that the "
            "head and the tail are kept and the log says how much was cut."
        ),
    )
    secret_env: list[str] = Field(
        default_factory=list,
        description=(
            "More names (globs) of environment variables whose values are secrets, beside "
            "*_KEY, *_TOKEN, *_SECRET and *PASSWORD*: shown and stored as ***."
        ),
    )
    on_violation: Literal["fail", "sequential"] = Field(
        default="fail",
        description=(
            "A task that wrote outside its files: 'fail' it, or roll it back and run it again "
            "alone at the end of its phase ('sequential')."
        ),
    )
    workspace: Literal["shared", "worktree"] = Field(
        default="shared",
        description=(
            "Where tasks work: 'shared' (the project itself) or 'worktree' (a git worktree per "
            "instance; each task's change becomes a patch merged onto the branch guildrun/RUN)."
        ),
    )
    allow_dirty: bool = Field(
        default=False,
        description="Worktree mode: start on uncommitted changes (a snapshot of them is the base).",
    )
    apply: bool = Field(
        default=False,
        description="Worktree mode: bring the result into the current branch at the end.",
    )

    backend: Literal["local", "ray"] = Field(
        default="local",
        description=(
            "Where attempts run: 'local' (processes on this machine) or 'ray' (an actor per "
            "instance on a Ray cluster; needs guildrun[ray] and runs in worktree mode)."
        ),
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray backend: the head's HOST:PORT or 'auto' (default: RAY_ADDRESS, or auto).",
    )

    @model_validator(mode="before")
    @classmethod
    def _ray_in_worktrees(cls, data: Any) -> Any:
        """Ray's actors work in clones of their own, so their work comes back as patches:
        worktree mode is the Ray backend's, and an explicit shared tree is refused."""
        if isinstance(data, dict) and data.get("backend") == "ray":
            if data.get("workspace") == "shared":
                raise ValueError(
                    "backend ray runs every task in a clone on its node: it needs "
                    "workspace: worktree, not shared"
                )
            data = {**data, "workspace": "worktree"}
        return data

    @model_validator(mode="after")
    def _worktree_only(self) -> Settings:
        for name in ("allow_dirty", "apply"):
            if getattr(self, name) and self.workspace != "worktree":
                raise ValueError(f"{name} needs workspace: worktree")
        return self


_ENV = {
    "per_agent_type": "GUILDRUN_PER_AGENT_TYPE",
    "total_parallel": "GUILDRUN_TOTAL_PARALLEL",
    "strategy": "GUILDRUN_STRATEGY",
}


def read_project_config(root: Path) -> tuple[dict[str, Any], str | None]:
    """Settings from guildrun.toml or [tool.guildrun], with the file they came from."""
    own = root / "guildrun.toml"
    if own.is_file():
        data = _read_toml(own)
        section = data.get("settings", data)
        if not isinstance(section, dict):
            raise UsageError(f"{own}: settings: expected a table")
        return _without_specialists(section), str(own)
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        data = _read_toml(pyproject)
        tool = data.get("tool", {})
        section = tool.get("guildrun") if isinstance(tool, dict) else None
        if isinstance(section, dict):
            return _without_specialists(section), f"{pyproject} [tool.guildrun]"
    return {}, None


def _without_specialists(section: Mapping[str, Any]) -> dict[str, Any]:
    """The project's specialists sit beside its settings; `_project.py` reads them."""
    return {k: v for k, v in section.items() if k != "specialists"}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None


def resolve_settings(
    *,
    plan: Settings | None = None,
    project: Mapping[str, Any] | None = None,
    project_source: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Layer the sources; only fields a layer actually sets override weaker layers."""
    merged: dict[str, Any] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if project:
        layers.append((project_source or "project config", project))
    if plan is not None:
        layers.append(("plan settings", {k: getattr(plan, k) for k in plan.model_fields_set}))
    environ = os.environ if env is None else env
    from_env = {field: environ[var] for field, var in _ENV.items() if environ.get(var)}
    if from_env:
        layers.append(("environment", from_env))
    if overrides:
        layers.append(("command line", {k: v for k, v in overrides.items() if v is not None}))
    for source, layer in layers:
        candidate = {**merged, **layer}
        try:
            Settings.model_validate(candidate)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            hint = f" ({_ENV[field]})" if source == "environment" and field in _ENV else ""
            raise UsageError(f"{source}{hint}: {field}: {err['msg']}") from None
        merged = candidate
    return Settings.model_validate(merged)
