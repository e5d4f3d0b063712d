"""The local executor: attempts as processes (or Python callables) on this machine.

Commands and agent CLIs run in their own process group, started by the spawner process
(`_spawner`; `Popen` and a pidfd where it cannot run), their output drained by the event
loop into lazily made log files; Python callables run on the loop or in a worker thread.
The executor remembers the process groups it started, so it can sample their resources
and, after a crash, find and stop what a dead engine left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

import psutil

from .. import _reaper, _spawner
from .._clock import Clock
from .._errors import GuildrunError
from .._logcap import CappedFile
from .._monitor import Monitor, Sample
from .._safeio import NotARegularFile, read_head, read_regular
from .._secrets import Redactor, Stream
from .base import (
    DEFAULT_MAX_LOG,
    Ending,
    Executor,
    InstanceSpec,
    Job,
    Outcome,
    SignalListener,
    SpawnListener,
)

RESULT_LIMIT = 1 << 20  # a result kept in the journal is cut at 1 MiB


def read_result(job: Job, stdout_fallback: bool) -> str | None:
    """The task's result: the file it wrote to $GUILDRUN_RESULT, else its stdout.

    Raises `NotARegularFile` when the task put a FIFO, a device or a link there: the
    read never blocks and never follows it.
    """
    for path in (job.context.result_path, job.stdout_path if stdout_fallback else None):
        # A stat is far cheaper than a raised FileNotFoundError on the hot path; one lstat
        # answers "exists, or is a (dangling) link" where exists() + is_symlink() took two.
        if path is None or not _present(path):
            continue
        try:
            data = read_head(path, RESULT_LIMIT)
        except FileNotFoundError:
            continue
        return data.decode("utf-8", errors="replace")
    return None


def _present(path: Path) -> bool:
    """Whether anything, a dangling link included, is at `path` (errors as `exists()`)."""
    try:
        os.lstat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return False
        raise
    return True


def _result_or_failure(job: Job, outcome: Outcome) -> Outcome:
    """Fill a successful outcome's result; a result path that is no file fails it."""
    try:
        result = read_result(job, stdout_fallback=False)
    except NotARegularFile as exc:
        outcome.status, outcome.error = Ending.FAILED, f"$GUILDRUN_RESULT: {exc}"
        return outcome
    if result is not None:
        outcome.result = result
    return outcome


class _Sink:
    """One output stream of a task: a pipe the engine drains into a log file.

    The file is made on the first byte, because on a real disk creating two empty files
    costs more than running a trivial task. The first RESULT_LIMIT bytes are also kept
    in memory, so stdout as a result needs no read back.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        path: Path,
        secrets: Stream,
        limit: int = DEFAULT_MAX_LOG,
    ) -> None:
        self.loop = loop
        self.fd = fd
        self.path = path
        self.secrets = secrets  # what reaches the file has no secret in it
        self.limit = limit  # head and tail kept, the middle cut (_logcap)
        self.out: CappedFile | None = None
        self.broken = False
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
        data = self.secrets.feed(data)
        if data:
            self._put(data)

    def _put(self, data: bytes) -> None:
        if not self.broken:
            try:
                if self.out is None:
                    self.out = CappedFile(self.path, self.limit)
                self.out.write(data)
            except OSError:
                # A task put a link or a FIFO where its log goes: the log is lost, the
                # pipe is still drained so the task never blocks on it.
                self.broken = True
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
        rest = self.secrets.flush()
        if rest:
            self._put(rest)
        if self.out is not None:
            with contextlib.suppress(OSError):
                self.out.close()
            self.out = None


class _AgentLog:
    """An agent CLI's log, written line by line by `follow`: secrets masked, size capped."""

    def __init__(self, path: Path, secrets: Stream, limit: int) -> None:
        self.path, self.secrets, self.limit = path, secrets, limit
        self.out: CappedFile | None = None
        with contextlib.suppress(OSError):
            self.out = CappedFile(path, limit)

    def write(self, data: bytes) -> int:
        self._put(self.secrets.feed(data))
        return len(data)

    def _put(self, data: bytes) -> None:
        if not data:
            return
        with contextlib.suppress(OSError):  # a link or FIFO planted there: the log is lost
            if self.out is None:
                self.out = CappedFile(self.path, self.limit)
            self.out.write(data)

    def flush(self) -> None:
        """Every write is already in the file."""

    def close(self) -> None:
        self._put(self.secrets.flush())
        if self.out is not None:
            with contextlib.suppress(OSError):
                self.out.close()
            self.out = None


class LocalExecutor(Executor):
    """Attempts as local processes or in-process callables.

    A command runs (never through a shell unless the plan said so) in its own process
    group. When it exits the leader stays an unreaped zombie (the spawner keeps it until
    released; without the spawner, a pidfd tells us and we reap it), so its pid cannot be
    reused and the whole group can be killed safely before the zombie is reaped: no child
    or grandchild of the task outlives it.
    """

    def __init__(
        self,
        callables: Mapping[str, Callable[..., Any]] | None = None,
        *,
        monitor: Monitor | None = None,
    ) -> None:
        self.callables = dict(callables or {})
        self.monitor = monitor
        # Encoded once: Popen would otherwise encode ~100 variables for every task.
        self._base_env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
        self._env: dict[str, dict[bytes, bytes]] = {}
        self._instance_env: dict[str, dict[bytes, bytes]] = {}
        self._groups: dict[str, int] = {}  # running task -> process group
        self._state_root: Path | None = None  # agents' private CLI state, per instance
        self._run_id: str | None = None
        self._subreaper = False
        self._spawner: _spawner.Spawner | None = None
        self._spawner_tried = False

    def start(
        self,
        clock: Clock,
        on_spawn: SpawnListener | None = None,
        on_signal: SignalListener | None = None,
    ) -> None:
        super().start(clock, on_spawn, on_signal)
        # Orphans of our tasks become our children, so none escapes the sweep at its end.
        self._subreaper = _reaper.become_subreaper()
        with contextlib.suppress(RuntimeError):  # no loop yet: at the first command
            self._spawner_for(asyncio.get_running_loop())

    def _spawner_for(self, loop: asyncio.AbstractEventLoop) -> _spawner.Spawner | None:
        """The process spawner, started once; None where it cannot run (then Popen).

        It needs the subreaper bit: should it die, the commands it started must become
        ours, so their exits can still be read and their groups still swept.
        """
        if not self._spawner_tried:
            self._spawner_tried = True
            if self._subreaper and _spawner.usable():
                try:
                    self._spawner = _spawner.Spawner(loop)
                except (OSError, ValueError) as exc:
                    _say_once(f"cannot start it: {getattr(exc, 'strerror', None) or exc}")
        spawner = self._spawner
        if spawner is not None and not spawner.alive:
            _say_once(spawner.failure or "it stopped")
            self._spawner = spawner = None
        return spawner

    def open_instance(self, spec: InstanceSpec) -> None:
        env = self._env.get(spec.specialist)
        if env is None:
            env = {**self._base_env}
            env.update({os.fsencode(k): os.fsencode(v) for k, v in spec.env.items()})
            self._env[spec.specialist] = env
        self._instance_env[spec.name] = env

    def close_instance(self, name: str) -> None:
        self._instance_env.pop(name, None)

    async def run(self, job: Job) -> Outcome:
        if job.agent is not None:
            outcome = await self._agent(job)
        elif job.argv is None:
            outcome = await self._call(job)
        else:
            outcome = await self._command(job)
        # What a task said (its result, its error) is shown and stored: no secret in it.
        outcome.result = self.redactor.maybe(outcome.result)
        outcome.error = self.redactor.maybe(outcome.error)
        if self.redactor:
            _scrub(job.context.result_path, self.redactor)
        return outcome

    def _env_for(self, job: Job) -> dict[bytes, bytes]:
        ctx = job.context
        base = self._instance_env.get(ctx.instance)
        if base is None:
            base = self._base_env
        env = base.copy()
        for k, v in job.env.items():
            env[k.encode()] = os.fsencode(v)
        return env

    async def _command(self, job: Job) -> Outcome:
        assert job.argv is not None
        loop = asyncio.get_running_loop()
        clock = self.clock
        started = clock.now()
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                launched = await self._launch(loop, job, job.argv, {}, out_w, err_w)
            finally:
                os.close(out_w)
                os.close(err_w)
        except BaseException as exc:  # cancelled while the spawner starts it, too
            os.close(out_r)
            os.close(err_r)
            if not isinstance(exc, OSError | ValueError | _spawner.Lost):  # ValueError: NUL
                raise
            if isinstance(exc, _spawner.Lost):
                self._sweep_lost(job)
                msg = f"cannot start {job.argv[0]!r}: the process spawner died ({exc})"
            else:
                msg = f"cannot start {job.argv[0]!r}: {getattr(exc, 'strerror', None) or exc}"
            job.stderr_path.write_text(msg + "\n")
            lost = isinstance(exc, _spawner.Lost)  # not the task's fault: retry_lost
            return Outcome(Ending.ERROR, started, clock.now(), error=msg, lost=lost)
        pid, exited, reap = launched
        secrets = self.redactor
        sinks = (
            _Sink(loop, out_r, job.stdout_path, secrets.stream(), self.max_log_bytes),
            _Sink(loop, err_r, job.stderr_path, secrets.stream(), self.max_log_bytes),
        )
        task = job.context.task_id
        self._groups[task] = pid
        if self.on_spawn is not None:
            self.on_spawn(task, job.context.attempt, pid)
        status = Ending.DONE
        error: str | None = None
        try:
            try:
                if job.timeout is None:
                    await exited
                else:
                    await asyncio.wait_for(asyncio.shield(exited), timeout=job.timeout)
            except TimeoutError:
                status, error = Ending.TIMED_OUT, f"timed out after {job.timeout:g}s"
                await _stop_group(pid, exited, job.kill_grace)
            except asyncio.CancelledError:
                await asyncio.shield(_stop_group(pid, exited, job.kill_grace))
                raise
        finally:
            self._groups.pop(task, None)
            _kill_group(pid, signal.SIGKILL)
            # What left the group (setsid, setpgid, a double fork) is found and killed,
            # while the leader is still an unreaped zombie: its pid, the task's session
            # id, cannot have been given to anyone else.
            self._run_id = job.context.run_id
            _reaper.sweep(job.context.run_id, task, pid, self._keep(pid))
            code = reap()
            for sink in sinks:
                sink.drain()
        ended = clock.now()
        if status is Ending.DONE and code != 0:
            status = Ending.FAILED
            error = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
        outcome = Outcome(status, started, ended, exit_code=code, error=error, pgid=pid)
        if status is Ending.DONE:
            outcome.result = sinks[0].kept.decode("utf-8", errors="replace")
            _result_or_failure(job, outcome)
        return outcome

    async def _launch(
        self,
        loop: asyncio.AbstractEventLoop,
        job: Job,
        argv: Sequence[str],
        more_env: Mapping[str, str],
        out_w: int,
        err_w: int,
    ) -> tuple[int, asyncio.Future[Any], Callable[[], int]]:
        """Start `argv` for the job in a session of its own, stdin /dev/null, with the
        job's environment and `more_env`: (pid, a future done at its exit, and what reaps
        it, once its group is killed and swept, giving its exit code)."""
        workdir = job.context.workdir
        spawner = self._spawner_for(loop)
        if spawner is not None:
            base = self._instance_env.get(job.context.instance, self._base_env)
            extra = {k.encode(): os.fsencode(v) for k, v in job.env.items()}
            extra.update({os.fsencode(k): os.fsencode(v) for k, v in more_env.items()})
            path = extra.get(b"PATH", base.get(b"PATH"))
            program = _which(argv[0], path, workdir)
            try:
                starting = spawner.start(program, argv, base, extra, str(workdir), out_w, err_w)
            except _spawner.Unavailable:
                pass  # nothing started: Popen below
            else:
                try:
                    # Cancelled meanwhile, the spawner kills what it started (_started).
                    pid = await starting
                except _spawner.Unavailable:
                    self._spawner_for(loop)  # it could not start: said once, Popen below
                else:
                    exit_code = spawner.exit_of(pid)

                    def release() -> int:
                        code = exit_code.result() if exit_code.done() else -signal.SIGKILL
                        spawner.release(pid)
                        return code

                    return pid, exit_code, release
        env = self._env_for(job)
        env.update({os.fsencode(k): os.fsencode(v) for k, v in more_env.items()})
        # A relative program path is resolved against the task's directory, like a shell.
        proc = subprocess.Popen(  # noqa: ASYNC220 - only forks and execs
            argv,
            executable=_which(argv[0], env.get(b"PATH"), workdir),
            cwd=workdir,
            env=env,  # bytes keys and values, pre-encoded
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            start_new_session=True,
        )
        # We reap the pid ourselves; tell Popen so it does not try again.
        pid, proc.returncode = proc.pid, 0
        pidfd = os.pidfd_open(pid)
        exited = loop.create_future()

        def _ready() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, _ready)

        def reap() -> int:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            # The pidfd said it exited (or it was just SIGKILLed): this returns at once.
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

        return pid, exited, reap

    async def _call(self, job: Job) -> Outcome:
        """Call the specialist's function with the TaskContext; a string it returns is
        the result.

        Async functions run on the engine's loop and are cancelled at their timeout. Sync
        functions run in a worker thread; Python cannot stop a thread, so at its timeout
        the attempt is failed and the thread is left to finish in the background.
        """
        func = self.callables[job.context.specialist]
        clock = self.clock
        started = clock.now()
        call: Awaitable[Any]
        if inspect.iscoroutinefunction(func):
            call = func(job.context)
        else:
            call = asyncio.to_thread(func, job.context)
        try:
            # A deadline on this task, not `wait_for`: that wraps the call in a task of
            # its own (with a future and callbacks), a second asyncio task per attempt.
            async with asyncio.timeout(job.timeout):
                value = await call
        except TimeoutError:
            return Outcome(
                Ending.TIMED_OUT, started, clock.now(), error=f"timed out after {job.timeout:g}s"
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            trace = "".join(traceback.format_exception(exc))
            job.stderr_path.write_text(self.redactor.text(trace))
            return Outcome(
                Ending.FAILED, started, clock.now(), error=f"{type(exc).__name__}: {exc}"
            )
        outcome = Outcome(Ending.DONE, started, clock.now())
        if isinstance(value, str):
            outcome.result = value
            return outcome
        _result_or_failure(job, outcome)
        if outcome.ok and outcome.result is None and value is not None:
            outcome.result = str(value)
        return outcome

    # ------------------------------------------------------------ agent CLIs

    def _state_dir(self, instance: str) -> Path:
        """An instance's private CLI state (config, login copy, sessions), outside the
        project so no snapshot, watcher or log ever sees it; removed when the run ends."""
        if self._state_root is None:
            self._state_root = Path(tempfile.mkdtemp(prefix="guildrun-agents-"))
        path = self._state_root / re.sub(r"[^A-Za-z0-9._-]", "_", instance)
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    async def _agent(self, job: Job) -> Outcome:
        """Run an agent CLI through its preset, reading its own verdict while it runs."""
        from .._agents import PRESETS, Refused, SessionStarted, Signal
        from .._agents.follow import follow

        assert job.agent is not None
        loop = asyncio.get_running_loop()
        spec, ctx, clock = job.agent, job.context, self.clock
        preset = PRESETS[spec.agent]
        started = clock.now()
        # Everything that can fail is made before the agent starts: a process is never
        # left running because a log could not be opened.
        logs: tuple[_AgentLog, ...] = ()
        try:
            inv = preset.invocation(
                spec,
                prompt=ctx.prompt,
                files=ctx.files,
                workdir=ctx.workdir,
                state_dir=self._state_dir(ctx.instance),
                resume_session=job.resume_session,
            )
            reader = preset.reader(spec)
            logs = (
                _AgentLog(job.stdout_path, self.redactor.stream(), self.max_log_bytes),
                _AgentLog(job.stderr_path, self.redactor.stream(), self.max_log_bytes),
            )
            # Started as a command is (through the spawner when it runs): the agent stays
            # unreaped until its group is killed and swept, so no kill hits a reused pid.
            proc = _Piped()
            ends: list[int] = []  # the write ends, the agent's once it started
            try:
                ends.append(await proc.open(loop, "stdout"))
                ends.append(await proc.open(loop, "stderr"))
                pid, waited, reap = await self._launch(loop, job, inv.argv, inv.env, *ends)
            except BaseException:
                proc.close()
                raise
            finally:
                for fd in ends:
                    os.close(fd)
        except (OSError, ValueError, _spawner.Lost) as exc:
            if isinstance(exc, _spawner.Lost):
                self._sweep_lost(job)
            for log in logs:
                log.close()
            msg = f"cannot start {spec.agent}: {getattr(exc, 'strerror', None) or exc}"
            with contextlib.suppress(OSError):
                job.stderr_path.write_text(msg + "\n")
            lost = isinstance(exc, _spawner.Lost)  # not the task's fault: retry_lost
            return Outcome(Ending.ERROR, started, clock.now(), error=msg, lost=lost)
        task = ctx.task_id
        self._groups[task] = pid
        if self.on_spawn is not None:
            self.on_spawn(task, ctx.attempt, pid)
        session: str | None = None
        refused = False

        def heard(sig: Signal) -> None:
            nonlocal session, refused
            if isinstance(sig, SessionStarted):
                session = sig.session_id
            elif isinstance(sig, Refused) and not refused:
                refused = True  # it would retry a refused login for minutes: end it now
                _kill_group(pid, signal.SIGTERM)
            if self.on_signal is not None:
                self.on_signal(task, sig)

        timed_out = False
        with contextlib.ExitStack() as closing:
            for log in logs:
                closing.callback(log.close)
            closing.callback(proc.close)  # read to their end by now, or given up on
            out, err = (cast(BinaryIO, log) for log in logs)
            following = asyncio.ensure_future(
                follow(proc, reader, heard, stdout_log=out, stderr_log=err)
            )
            try:
                done, _ = await asyncio.wait({waited}, timeout=job.timeout)
                if not done:
                    timed_out = True
                    await _stop_group(pid, waited, job.kill_grace)
            except asyncio.CancelledError:
                await asyncio.shield(_stop_group(pid, waited, job.kill_grace))
                following.cancel()
                raise
            finally:
                self._groups.pop(task, None)
                _kill_group(pid, signal.SIGKILL)
                # What left the group is found and killed, the leader still unreaped.
                self._run_id = ctx.run_id
                _reaper.sweep(ctx.run_id, task, pid, self._keep(pid))
                code = reap()
            try:
                # The pipes close once every process holding them is gone: bounded anyway.
                stderr_tail = await asyncio.wait_for(following, timeout=10)
            except TimeoutError:
                stderr_tail = ""
        verdict = reader.finish(code, stderr_tail)
        ending = _AGENT_ENDINGS[verdict.kind]
        error = verdict.message if ending is not Ending.DONE else None
        if timed_out:
            ending, error = Ending.TIMED_OUT, f"timed out after {job.timeout:g}s"
        return Outcome(
            ending,
            started,
            clock.now(),
            exit_code=code,
            error=error,
            result=verdict.result if ending is Ending.DONE else None,
            pgid=pid,
            retry_after=verdict.retry_after_s,
            cost_usd=verdict.cost_usd,
            tokens=verdict.tokens,
            cost_estimated=verdict.cost_estimated,
            session_id=verdict.session_id or session,
        )

    def _sweep_lost(self, job: Job) -> None:
        """The spawner died between starting a command and saying its pid: it may run,
        now our orphan with the task's markers. Found and killed now, it cannot run on
        beside the next attempt (or task) until the run's end."""
        self._run_id = job.context.run_id
        _reaper.sweep(job.context.run_id, job.context.task_id, None, self._keep(0))

    def _keep(self, leader: int) -> set[int]:
        """Our children a task's sweep must not touch: running leaders, the spawner."""
        keep = {leader, *self._groups.values()}
        if self._spawner is not None:
            keep.add(self._spawner.pid)
        return keep

    # ------------------------------------------------------------ resources and leftovers

    def sample(self, now: float) -> Sample | None:
        """CPU and memory of the machine and of each running task's process tree."""
        if self.monitor is None:
            return None
        return self.monitor.take(now, dict(self._groups))

    def leftovers(self, run_id: str, groups: Sequence[int]) -> set[int]:
        return agent_groups(run_id, set(groups))

    def stop(self, groups: set[int], grace: float) -> None:
        stop_groups(groups, grace)

    def close(self) -> None:
        if self._spawner is not None:
            self._spawner.close()
            self._spawner = None
        self._spawner_tried = False
        if self._state_root is not None:
            shutil.rmtree(self._state_root, ignore_errors=True)
            self._state_root = None
        if self._run_id is not None:
            _reaper.sweep(self._run_id, None, None, set(self._groups.values()))
        if self._subreaper:
            self._subreaper = False
            _reaper.release_subreaper()


class _Piped:
    """An agent's stdout and stderr as asyncio streams, for `follow`."""

    def __init__(self) -> None:
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._transports: list[asyncio.BaseTransport] = []

    async def open(self, loop: asyncio.AbstractEventLoop, name: str) -> int:
        """A pipe whose read end feeds the stream `name`; returns its write end."""
        read, write = os.pipe2(os.O_CLOEXEC)
        stream = asyncio.StreamReader(limit=_AGENT_LINE_LIMIT, loop=loop)
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(stream, loop=loop),
                os.fdopen(read, "rb", buffering=0),
            )
        except BaseException:
            os.close(write)
            raise
        self._transports.append(transport)
        setattr(self, name, stream)
        return write

    def close(self) -> None:
        for transport in self._transports:
            transport.close()


_AGENT_LINE_LIMIT = 1 << 16  # asyncio's own default for a subprocess's pipes

_AGENT_ENDINGS = {
    "done": Ending.DONE,
    "failed": Ending.FAILED,
    "rate_limited": Ending.RATE_LIMITED,
    "needs_input": Ending.NEEDS_INPUT,
    "auth": Ending.AUTH,
    "timeout": Ending.TIMED_OUT,
    "error": Ending.ERROR,
}

_SCRUB_LIMIT = 64 << 20


def _scrub(path: Path, redactor: Redactor) -> None:
    """The task's own result file is kept under .guildrun: without its secrets."""
    try:
        data = read_regular(path, _SCRUB_LIMIT)
    except (OSError, GuildrunError):
        return  # absent, or not a file guildrun reads (the attempt failed for it)
    text = data.decode("utf-8", errors="surrogateescape")
    clean = redactor.text(text)
    if clean != text:
        with contextlib.suppress(OSError):  # never through a link planted meanwhile
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "wb") as fh:
                fh.write(clean.encode("utf-8", errors="surrogateescape"))


@functools.lru_cache(maxsize=256)
def _which(program: str, path: bytes | None, cwd: Path) -> str:
    """Resolve a command name once, as the child's PATH would; Popen would search every time."""
    if "/" in program:
        return str(cwd / program)  # an absolute program stays itself
    found = shutil.which(program, path=os.fsdecode(path) if path is not None else os.defpath)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "not found on PATH", program)
    return found


_said = False


def _say_once(why: str) -> None:
    """The spawner is a speed-up, not a guarantee: say once that commands go without it."""
    global _said
    if not _said:
        _said = True
        sys.stderr.write(
            f"guildrun: note: the process spawner is unavailable ({why}); "
            "commands start through Popen (slower, just as safe)\n"
        )


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _stop_group(pgid: int, exited: asyncio.Future[Any], grace: float) -> None:
    _kill_group(pgid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(exited), timeout=grace)
    except TimeoutError:
        _kill_group(pgid, signal.SIGKILL)
        await exited


def agent_groups(run_id: str, pgids: set[int]) -> set[int]:
    """Process groups of this run's agents that are still alive."""
    groups: set[int] = set()
    for proc in psutil.process_iter(["pid", "environ"]):
        try:
            env = proc.info["environ"] or {}
        except (psutil.Error, KeyError):
            continue
        if env.get("GUILDRUN_RUN_ID") == run_id:
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(proc.info["pid"]))
    for pgid in pgids:
        # A journaled group counts only if one of its members still carries our run id:
        # after a reboot the number may belong to someone else.
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            environ = Path(f"/proc/{pgid}/environ").read_bytes()
            if f"GUILDRUN_RUN_ID={run_id}".encode() in environ.split(b"\0"):
                groups.add(pgid)
    groups.discard(os.getpgrp())
    return groups


def stop_groups(groups: set[int], grace: float) -> None:
    """SIGTERM each group, then SIGKILL what is left after the grace period."""
    for g in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(g, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while groups and time.monotonic() < deadline:
        groups = {g for g in groups if _group_alive(g)}
        time.sleep(0.02)
    for g in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(g, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(_group_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies count as gone: their parent (the dead engine) is no longer there to reap them.
    for proc in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.info["pid"]) == pgid and proc.info["status"] != "zombie":
                return True
    return False
