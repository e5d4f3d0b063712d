"""The seam between the engine and one agent CLI: a preset builds the command, a reader
follows its output.

A preset is pure: `invocation()` returns argv and environment additions and prepares
the instance's private CLI state folder, nothing more; the engine runs the process (its
timeout, its process group, its workspace). While the process runs the engine hands each
stdout line to the preset's `Reader.feed`, which answers with live `Signal`s (a rate
limit met now, the session id); when it ends, `Reader.finish` turns what was read, the
exit code and the tail of stderr into a `Verdict`. The agent's own verdict counts, not
only its exit status: Claude Code exits 0 on a permission it was denied, aider exits 0
on a 401.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

VerdictKind = Literal["done", "failed", "rate_limited", "needs_input", "auth", "timeout", "error"]
RATE_LIMIT_STATUSES = frozenset({429, 529})
AUTH_STATUSES = frozenset({401, 403})


@dataclass(frozen=True)
class AgentSpec:
    """What a specialist says about its agent (the plan's fields)."""

    agent: str  # "claude" | "codex" | "gemini" | "aider"
    program: str | None = None
    model: str | None = None
    system_prompt: str | None = None
    tools: tuple[str, ...] = ()
    permission_mode: str | None = None
    max_turns: int | None = None
    flags: tuple[str, ...] = ()
    provider: str | None = None  # whose rate limits it shares; default: the agent kind
    max_cost_usd: float | None = None  # per task; passed to the CLI where it has a flag

    @property
    def provider_key(self) -> str:
        return self.provider or self.agent


@dataclass(frozen=True)
class Invocation:
    """How to start the agent: argv (never through a shell) and environment additions."""

    argv: list[str]
    env: dict[str, str]  # added to the inherited environment
    stdin_devnull: bool = True


class Signal:
    """Something the agent reported while it runs."""


@dataclass(frozen=True)
class RateLimited(Signal):
    """The provider refused with 429/529 and the CLI backs off by itself for now."""

    status: int
    retry_after_s: float | None
    attempt: int | None


@dataclass(frozen=True)
class Refused(Signal):
    """The provider refused the login (401/403) and the CLI keeps retrying anyway (Claude
    Code does, for minutes): the engine may end the agent now; its verdict will be "auth"."""

    status: int
    attempt: int | None


@dataclass(frozen=True)
class SessionStarted(Signal):
    """The CLI named its session: a retry can continue it (`--resume`)."""

    session_id: str


@dataclass
class Verdict:
    """How an agent's run ended, in the engine's terms."""

    kind: VerdictKind
    result: str | None
    message: str | None
    cost_usd: float | None = None
    cost_estimated: bool = False
    tokens: int | None = None
    session_id: str | None = None
    retry_after_s: float | None = None
    denied_tools: tuple[str, ...] = ()


class Reader(Protocol):
    def feed(self, line: str) -> list[Signal]:
        """One stdout line, as the agent prints it (called while it runs)."""
        ...

    def feed_stderr(self, line: str) -> list[Signal]:
        """One stderr line (gemini reports its retries only there; others ignore it)."""
        ...

    def finish(self, exit_code: int, stderr_tail: str) -> Verdict:
        """The verdict, once the process has ended (a negative code: killed by that signal).

        A reader never says "timeout": only the engine knows it ended the process for
        that, and its own verdict takes precedence over the reader's "error".
        """
        ...


class Preset(Protocol):
    kind: str

    def check(self, spec: AgentSpec, path_env: str | None) -> str | None:
        """None when the agent can run, else a one-line error for the plan's validation."""
        ...

    def invocation(
        self,
        spec: AgentSpec,
        *,
        prompt: str,
        files: Sequence[str],
        workdir: Path,
        state_dir: Path,
        resume_session: str | None,
    ) -> Invocation:
        """The command line for one task; prepares `state_dir` (kept per instance)."""
        ...

    def reader(self, spec: AgentSpec | None = None) -> Reader:
        """A fresh reader for one run's output (the spec names the model, for its price)."""
        ...


# -- helpers shared by the presets --------------------------------------------------


def check_agent(
    spec: AgentSpec, default: str, path_env: str | None, modes: Sequence[str] = ()
) -> str | None:
    """A preset's validation: its permission mode is one it knows, its program is there."""
    if modes and spec.permission_mode is not None and spec.permission_mode not in modes:
        allowed = ", ".join(modes)
        return (
            f"{spec.agent} permission_mode must be one of {allowed}, not {spec.permission_mode!r}"
        )
    return check_program(spec, default, path_env)


def check_program(spec: AgentSpec, default: str, path_env: str | None) -> str | None:
    """The missing-program error, or None when the program is found."""
    program = spec.program or default
    if os.sep in program:
        if Path(program).is_file() and os.access(program, os.X_OK):
            return None
        return f"{program} is not an executable file; fix specialists.NAME.program"
    if shutil.which(program, path=path_env) is None:
        return f"{program} not found on PATH; install it or set specialists.NAME.program"
    return None


def parse_json_line(line: str) -> dict[str, Any] | None:
    """A JSON object from one output line, or None (CLIs also print plain text)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def copy_private(source: Path, target: Path) -> bool:
    """Copy one config file into an instance's state folder, readable by its owner only.

    Copies once: a file already there is the instance's own (the CLI may have changed it).
    """
    if target.exists() or not source.is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(source.read_bytes())
    return True


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def integer(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def head(text: str, limit: int = 300) -> str:
    """The start of a message: where CLIs put what went wrong."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def tail(text: str, limit: int = 500) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


@dataclass
class LineLog:
    """The lines a reader keeps for its verdict (bounded, newest kept)."""

    limit: int = 200
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) > self.limit:
            del self.lines[: len(self.lines) - self.limit]
