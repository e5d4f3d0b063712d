"""Runners: how one attempt of one task is carried out.

One seam, `Runner.run(job) -> Outcome`, so a command, a Python callable, and later an
agent CLI preset or a remote actor look the same to the engine. A runner never
raises for a task's own failure: that is an outcome, with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import signal
import subprocess
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Status = Literal["ok", "failed", "timeout", "error", "cancelled"]
RESULT_LIMIT = 1 << 20  # a result kept in the journal is cut at 1 MiB


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
            "GUILDRUN_INSTANCE": self.instance,
            "GUILDRUN_ATTEMPT": str(self.attempt),
            "GUILDRUN_ROOT": str(self.root),
            "GUILDRUN_WORKDIR": str(self.workdir),
            "GUILDRUN_RESULT": str(self.result_path),
        }


@dataclass
class Job:
    context: TaskContext
    timeout: float | None
    kill_grace: float
    stdout_path: Path
    stderr_path: Path
    argv: Sequence[str] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    on_spawn: Callable[[int], None] | None = None


@dataclass
class Outcome:
    status: Status
    started: float
    ended: float
    exit_code: int | None = None
    error: str | None = None
    result: str | None = None
    pgid: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Runner(Protocol):
    async def run(self, job: Job) -> Outcome: ...


def read_result(job: Job, stdout_fallback: bool) -> str | None:
    """The task's result: the file it wrote to $GUILDRUN_RESULT, else its stdout."""
    for path in (job.context.result_path, job.stdout_path if stdout_fallback else None):
        if path is None:
            continue
        try:
            with path.open("rb") as fh:
                data = fh.read(RESULT_LIMIT)
        except FileNotFoundError:
            continue
        return data.decode("utf-8", errors="replace")
    return None


class CommandRunner:
    """Runs an argv (never through a shell unless the plan said so) in its own process group.

    Output goes straight to the log files, so the engine reads no pipes. The exit is
    watched through a pidfd: when it fires the leader is a zombie, its pid cannot be
    reused, and the whole group can be killed safely before the zombie is reaped, so no
    child or grandchild of the task outlives it.
    """

    async def run(self, job: Job) -> Outcome:
        assert job.argv is not None
        loop = asyncio.get_running_loop()
        started = time.time()
        try:
            with job.stdout_path.open("wb") as out, job.stderr_path.open("wb") as err:
                # Popen only forks and execs; the wait is a pidfd on the loop, not blocking.
                proc = subprocess.Popen(  # noqa: ASYNC220
                    list(job.argv),
                    cwd=job.context.workdir,
                    env=dict(job.env),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
        except OSError as exc:
            msg = f"cannot start {job.argv[0]!r}: {exc.strerror or exc}"
            job.stderr_path.write_text(msg + "\n")
            return Outcome("error", started, time.time(), error=msg)
        pgid = proc.pid
        if job.on_spawn is not None:
            job.on_spawn(pgid)
        pidfd = os.pidfd_open(proc.pid)
        exited = loop.create_future()

        def _ready() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, _ready)
        status: Status = "ok"
        error: str | None = None
        try:
            try:
                await asyncio.wait_for(asyncio.shield(exited), timeout=job.timeout)
            except TimeoutError:
                status, error = "timeout", f"timed out after {job.timeout:g}s"
                await _stop_group(pgid, exited, job.kill_grace)
            except asyncio.CancelledError:
                await asyncio.shield(_stop_group(pgid, exited, job.kill_grace))
                raise
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            _kill_group(pgid, signal.SIGKILL)
            code = proc.wait()
        ended = time.time()
        if status == "ok" and code != 0:
            status = "failed"
            error = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
        result = read_result(job, stdout_fallback=True) if status == "ok" else None
        return Outcome(
            status, started, ended, exit_code=code, error=error, result=result, pgid=pgid
        )


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _stop_group(pgid: int, exited: asyncio.Future[None], grace: float) -> None:
    _kill_group(pgid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(exited), timeout=grace)
    except TimeoutError:
        _kill_group(pgid, signal.SIGKILL)
        await exited


def load_callable(ref: str) -> Callable[..., Any]:
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    fn = getattr(module, attr)
    if not callable(fn):
        raise TypeError(f"{ref} is not callable")
    return fn  # type: ignore[no-any-return]


class PythonRunner:
    """Calls a function with the TaskContext; its return value (a string) is the result.

    Async functions run on the engine's loop and are cancelled at their timeout. Sync
    functions run in a worker thread; Python cannot stop a thread, so at its timeout
    the attempt is failed and the thread is left to finish in the background.
    """

    def __init__(self, func: Callable[[TaskContext], Any]) -> None:
        self.func = func
        self.is_async = inspect.iscoroutinefunction(func)

    async def run(self, job: Job) -> Outcome:
        started = time.time()
        call: Awaitable[Any]
        if self.is_async:
            call = self.func(job.context)
        else:
            call = asyncio.to_thread(self.func, job.context)
        try:
            value = await asyncio.wait_for(call, timeout=job.timeout)
        except TimeoutError:
            return Outcome(
                "timeout", started, time.time(), error=f"timed out after {job.timeout:g}s"
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            with job.stderr_path.open("w") as fh:
                traceback.print_exception(exc, file=fh)
            return Outcome("failed", started, time.time(), error=f"{type(exc).__name__}: {exc}")
        ended = time.time()
        result = value if isinstance(value, str) else read_result(job, stdout_fallback=False)
        if result is None and value is not None:
            result = str(value)
        return Outcome("ok", started, ended, result=result)
