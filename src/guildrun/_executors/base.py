"""The seam for where and how attempts run: an `Executor`.

As httpx's transport is for requests, an executor is for attempts: the engine hands it
a `Job` and gets an `Outcome` back, and never knows whether the work ran as a local
process, a coroutine, a scripted fake on a virtual clock, or an actor on another
machine. A job is plain data (no closures, paths as strings a remote side can map,
the environment as a difference from the engine's) so it can be sent anywhere.

An executor also owns what only it can see: the specialist instances it keeps
(opened and closed as the scheduler spawns and retires them), the processes it
started (found and stopped again for a resume after the engine died), and their
resource use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from .._agents.base import AgentSpec, Signal
from .._clock import Clock, WallClock
from .._secrets import NONE as NO_SECRETS
from .._secrets import Redactor

DEFAULT_MAX_LOG = 50 << 20


class Ending(StrEnum):
    """How an attempt ended. The values are what the journal has always stored."""

    DONE = "ok"
    FAILED = "failed"
    TIMED_OUT = "timeout"
    ERROR = "error"  # it could not start, or the executor broke
    INTERRUPTED = "cancelled"  # stopped by the run (Ctrl-C, fail-fast)
    VIOLATION = "violation"  # wrote what it does not own
    RATE_LIMITED = "rate_limited"  # the provider said "later"; not the task's fault
    CONFLICT = "conflict"  # its patch does not merge with what was integrated
    NEEDS_INPUT = "needs_input"  # an agent asked for a permission or an answer
    AUTH = "auth"  # an agent is not logged in, or its key was refused


@dataclass(frozen=True)
class TaskContext:
    """What a task knows about itself; Python specialists receive it as their argument."""

    run_id: str
    task_id: str
    specialist: str
    phase: str
    scope: str | None
    prompt: str
    files: tuple[str, ...]
    instance: str
    attempt: int
    root: Path
    workdir: Path
    result_path: Path
    log_path: Path
    reads: tuple[str, ...] = ()  # inputs it reads but may not change

    def env(self) -> dict[str, str]:
        """The same facts as GUILDRUN_* variables, for commands."""
        return {
            "GUILDRUN_RUN_ID": self.run_id,
            "GUILDRUN_TASK_ID": self.task_id,
            "GUILDRUN_SPECIALIST": self.specialist,
            "GUILDRUN_PHASE": self.phase,
            "GUILDRUN_SCOPE": self.scope or "",
            "GUILDRUN_PROMPT": self.prompt,
            "GUILDRUN_FILES": "\n".join(self.files),
            "GUILDRUN_READS": "\n".join(self.reads),
            "GUILDRUN_INSTANCE": self.instance,
            "GUILDRUN_ATTEMPT": str(self.attempt),
            "GUILDRUN_ROOT": str(self.root),
            "GUILDRUN_WORKDIR": str(self.workdir),
            "GUILDRUN_RESULT": str(self.result_path),
        }


@dataclass(frozen=True)
class Job:
    """One attempt of one task, as data.

    `argv` is None for a Python specialist (the executor knows its callable by the
    specialist's name). `env` holds only what differs from the engine's environment:
    the specialist's own variables come with its instance (`InstanceSpec`), the
    task's GUILDRUN_* facts come here.
    """

    context: TaskContext
    timeout: float | None
    kill_grace: float
    stdout_path: Path
    stderr_path: Path
    argv: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    agent: AgentSpec | None = None  # an agent CLI preset runs it (argv is then None)
    resume_session: str | None = None  # the agent continues this session
    python: str | None = None  # a `python: module:function` specialist, for a remote side


@dataclass(frozen=True)
class InstanceSpec:
    """A specialist instance the scheduler spawned: what an executor keeps per instance."""

    name: str
    specialist: str
    env: Mapping[str, str] = field(default_factory=dict)
    resources: Mapping[str, float] = field(default_factory=dict)  # placement (Ray)


@dataclass
class Outcome:
    status: Ending
    started: float
    ended: float
    exit_code: int | None = None
    error: str | None = None
    result: str | None = None
    pgid: int | None = None
    retry_after: float | None = None  # seconds the provider asked us to wait
    cost_usd: float | None = None
    tokens: int | None = None
    cost_estimated: bool = False  # from tokens and a price table, not the agent's own figure
    session_id: str | None = None  # the agent's session, to continue it
    lost: bool = False  # the executor lost it (a node or worker died): not the task's fault

    @property
    def ok(self) -> bool:
        return self.status is Ending.DONE


SpawnListener = Callable[[str, int, int], None]  # (task, attempt, process group)
SignalListener = Callable[[str, Signal], None]  # (task, what its agent reported live)


class Executor(ABC):
    """Runs attempts. One per run; the engine calls `start` before anything else."""

    clock: Clock = WallClock()
    on_spawn: SpawnListener | None = None
    on_signal: SignalListener | None = None
    redactor: Redactor = NO_SECRETS  # the engine sets the run's; applied to logs and outcomes
    max_log_bytes: int = DEFAULT_MAX_LOG  # per stream of an attempt (settings.max_log_bytes)
    worktrees_only: bool = False  # its attempts cannot see the project: worktree mode only

    def start(
        self,
        clock: Clock,
        on_spawn: SpawnListener | None = None,
        on_signal: SignalListener | None = None,
    ) -> None:
        """Bind the run's clock; who hears about the process groups it starts (journaled,
        so a resume can find them), and about what agents report while they run (a rate
        limit met now throttles their provider at once)."""
        self.clock = clock
        self.on_spawn = on_spawn
        self.on_signal = on_signal

    def open_instance(self, spec: InstanceSpec) -> None:  # noqa: B027 - optional hook
        """The scheduler spawned an instance; keep whatever it needs (an actor, a clone)."""

    def close_instance(self, name: str) -> None:  # noqa: B027 - optional hook
        """The scheduler retired an instance."""

    @abstractmethod
    async def run(self, job: Job) -> Outcome:
        """Carry out one attempt. A task's own failure is an outcome, never an exception;
        cancellation stops the attempt and everything it started before re-raising."""

    def leftovers(self, run_id: str, groups: Sequence[int]) -> set[int]:
        """What a dead engine of this run left running (journaled groups, and more)."""
        return set()

    def stop(self, groups: set[int], grace: float) -> None:  # noqa: B027 - optional hook
        """Stop leftovers found by `leftovers`."""

    def notes(self) -> list[str]:
        """What the run's summary should say about where attempts ran (a node lost)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """The run is over."""
