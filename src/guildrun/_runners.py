"""Runners: how one attempt of one task is carried out.

One seam, `Runner.run(job) -> Outcome`, so a command, a Python callable, and later an
agent CLI preset or a remote actor look the same to the engine. A runner never
raises for a task's own failure: that is an outcome, with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import importlib
import inspect
import os
import shutil
import signal
import subprocess
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Status = Literal["ok", "failed", "timeout", "error", "cancelled", "violation"]
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
    env: Mapping[bytes, bytes] = field(default_factory=dict)
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
        # A stat is far cheaper than a raised FileNotFoundError on the hot path.
        if path is None or not path.exists():
            continue
        with path.open("rb") as fh:
            data = fh.read(RESULT_LIMIT)
        return data.decode("utf-8", errors="replace")
    return None


class _Sink:
    """One output stream of a task: a pipe the engine drains into a log file.

    The file is made on the first byte, because on a real disk creating two empty files
    costs more than running a trivial task. The first RESULT_LIMIT bytes are also kept
    in memory, so stdout as a result needs no read back.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, path: Path) -> None:
        self.loop = loop
        self.fd = fd
        self.path = path
        self.out = -1
        self.kept = bytearray()
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        if data:
            self._write(data)
        else:
            self.close()

    def _write(self, data: bytes) -> None:
        if self.out < 0:
            self.out = os.open(self.path, _OUT_FLAGS | os.O_CLOEXEC, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(self.out, view) :]
        room = RESULT_LIMIT - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    def drain(self) -> None:
        """Read what is left; called once every writer is dead, so it ends at EOF."""
        while self.fd >= 0:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not data:
                break
            self._write(data)
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        if self.out >= 0:
            os.close(self.out)
            self.out = -1


class CommandRunner:
    """Runs an argv (never through a shell unless the plan said so) in its own process group.

    The exit is watched through a pidfd: when it fires the leader is a zombie, its pid
    cannot be reused, and the whole group can be killed safely before the zombie is
    reaped, so no child or grandchild of the task outlives it.
    """

    async def run(self, job: Job) -> Outcome:
        assert job.argv is not None
        loop = asyncio.get_running_loop()
        started = time.time()
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            # A relative program path is resolved against the task's directory, like a shell.
            proc = subprocess.Popen(  # noqa: ASYNC220 - only forks and execs
                job.argv,
                executable=_which(job.argv[0], job.env.get(b"PATH"), job.context.workdir),
                cwd=job.context.workdir,
                env=job.env,  # bytes keys and values, pre-encoded
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in argv or env
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            msg = f"cannot start {job.argv[0]!r}: {getattr(exc, 'strerror', None) or exc}"
            job.stderr_path.write_text(msg + "\n")
            return Outcome("error", started, time.time(), error=msg)
        os.close(out_w)
        os.close(err_w)
        # We reap the pid ourselves below; tell Popen so it does not try again.
        pid, proc.returncode = proc.pid, 0
        sinks = (_Sink(loop, out_r, job.stdout_path), _Sink(loop, err_r, job.stderr_path))
        if job.on_spawn is not None:
            job.on_spawn(pid)
        pidfd = os.pidfd_open(pid)
        exited = loop.create_future()

        def _ready() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, _ready)
        status: Status = "ok"
        error: str | None = None
        try:
            try:
                if job.timeout is None:
                    await exited
                else:
                    await asyncio.wait_for(asyncio.shield(exited), timeout=job.timeout)
            except TimeoutError:
                status, error = "timeout", f"timed out after {job.timeout:g}s"
                await _stop_group(pid, exited, job.kill_grace)
            except asyncio.CancelledError:
                await asyncio.shield(_stop_group(pid, exited, job.kill_grace))
                raise
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            _kill_group(pid, signal.SIGKILL)
            # The pidfd said it exited: this waitpid returns at once.
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])  # noqa: ASYNC222
            for sink in sinks:
                sink.drain()
        ended = time.time()
        if status == "ok" and code != 0:
            status = "failed"
            error = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
        result = None
        if status == "ok":
            result = read_result(job, stdout_fallback=False)
            if result is None:
                result = sinks[0].kept.decode("utf-8", errors="replace")
        return Outcome(status, started, ended, exit_code=code, error=error, result=result, pgid=pid)


_OUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


@functools.lru_cache(maxsize=256)
def _which(program: str, path: bytes | None, cwd: Path) -> str:
    """Resolve a command name once, as the child's PATH would; Popen would search every time."""
    if "/" in program:
        return str(cwd / program)  # an absolute program stays itself
    found = shutil.which(program, path=os.fsdecode(path) if path is not None else os.defpath)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "not found on PATH", program)
    return found


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
