"""A fake executor: scripted outcomes on the run's clock, for tests of the engine.

Each task's attempts follow a script (`Act`: how long, how it ends, what it writes).
On a `VirtualClock` a plan of long tasks runs in no real time, with exact stamps, so the
engine's behaviour (limits, stealing, exclusion, phases, retries, timeouts, isolation,
resume) is tested as arithmetic; the same tests run on the local executor with real
processes doing the same things.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .._workspaces.shared import write_file
from .base import Ending, Executor, InstanceSpec, Job, Outcome


@dataclass(frozen=True)
class Act:
    """One scripted attempt."""

    duration: float = 0.0
    ending: Ending = Ending.DONE
    exit_code: int | None = None
    result: str | None = None
    writes: Mapping[str, bytes | None] = field(default_factory=dict)  # at the end; None deletes
    retry_after: float | None = None
    cost_usd: float | None = None
    tokens: int | None = None
    session_id: str | None = None  # the agent session it reports (for keep_context)


@dataclass(frozen=True)
class Ran:
    """What the fake executor saw: one attempt, on its instance, from start to end."""

    task: str
    attempt: int
    instance: str
    started: float
    ended: float
    ending: Ending


class FakeExecutor(Executor):
    """Plays `script[task][attempt - 1]` (the last act repeats); unscripted tasks play
    `default`."""

    def __init__(
        self, script: Mapping[str, Act | Sequence[Act]] | None = None, default: Act = Act()
    ) -> None:
        self.script = {
            k: (v,) if isinstance(v, Act) else tuple(v) for k, v in (script or {}).items()
        }
        self.default = default
        self.ran: list[Ran] = []
        self.instances: dict[str, InstanceSpec] = {}
        self.opened: list[str] = []
        self.running = 0
        self.peak = 0

    def open_instance(self, spec: InstanceSpec) -> None:
        self.instances[spec.name] = spec
        self.opened.append(spec.name)

    def close_instance(self, name: str) -> None:
        self.instances.pop(name, None)

    def act(self, task: str, attempt: int) -> Act:
        acts = self.script.get(task)
        if not acts:
            return self.default
        return acts[min(attempt, len(acts)) - 1]

    async def run(self, job: Job) -> Outcome:
        ctx = job.context
        act = self.act(ctx.task_id, ctx.attempt)
        started = self.clock.now()
        self.running += 1
        self.peak = max(self.peak, self.running)
        ending = act.ending
        try:
            if job.timeout is not None and act.duration > job.timeout:
                await asyncio.sleep(job.timeout)
                ending = Ending.TIMED_OUT
            else:
                await asyncio.sleep(act.duration)
        except asyncio.CancelledError:
            self.ran.append(
                Ran(
                    ctx.task_id,
                    ctx.attempt,
                    ctx.instance,
                    started,
                    self.clock.now(),
                    Ending.INTERRUPTED,
                )
            )
            raise
        finally:
            self.running -= 1
        if ending is not Ending.TIMED_OUT:
            for rel, data in act.writes.items():
                write_file(ctx.workdir, rel, data)
        ended = self.clock.now()
        self.ran.append(Ran(ctx.task_id, ctx.attempt, ctx.instance, started, ended, ending))
        error = None
        if ending is Ending.TIMED_OUT:
            error = f"timed out after {job.timeout:g}s"
        elif ending is not Ending.DONE:
            error = f"exit status {act.exit_code}" if act.exit_code else ending.value
        return Outcome(
            ending,
            started,
            ended,
            exit_code=act.exit_code if ending is not Ending.TIMED_OUT else None,
            error=error,
            result=act.result if ending is Ending.DONE else None,
            retry_after=act.retry_after,
            cost_usd=act.cost_usd,
            tokens=act.tokens,
            session_id=act.session_id,
        )

    def overlaps(self) -> int:
        """Most attempts that were running at one instant (ends before starts at a tie)."""
        edges = sorted(
            [(r.started, 1) for r in self.ran] + [(r.ended, -1) for r in self.ran],
            key=lambda e: (e[0], e[1]),
        )
        most = now = 0
        for _, d in edges:
            now += d
            most = max(most, now)
        return most
