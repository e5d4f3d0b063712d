"""The engine's side of the process spawner (`_spawnd`): ask it to start commands.

Why a separate process starts them, and the protocol, are in `_spawnd`. Here every
request is sent without blocking and answered through futures on the engine's loop: a
start gives the pid, a later message the exit code. The spawner keeps each command
unreaped until `release`, so the engine can kill the command's group and sweep what
escaped it before the pid can be reused.

If the spawner dies while commands run, those commands become the engine's own children
(it is a child subreaper), and their exits are watched and reaped here instead.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import marshal
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

PROGRAM = Path(__file__).with_name("_spawnd.py")
RELEASE_DELAY = 0.005  # seconds a release waits for a start to go with
MAX_MESSAGE = 1 << 17  # bigger requests (a huge prompt in the environment) use Popen
_FDS = socket.CMSG_SPACE(2 * 4)


class Unavailable(Exception):
    """The spawner cannot take this request; nothing was started for it."""


class Lost(Exception):
    """The spawner died with this request unanswered: the command may have started."""


class Spawner:
    """A running spawner process and the requests in flight to it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    "-c",
                    # Imported, not run as a script: its compiled form is used when there.
                    f"import sys; sys.path.append(sys.argv[1]); import {PROGRAM.stem}; "
                    f"{PROGRAM.stem}.main()",
                    str(PROGRAM.parent),
                    str(theirs.fileno()),
                    str(os.getpid()),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # no terminal signal reaches it
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        self.ready = False
        self.alive = True
        self.failure: str | None = None  # why it is gone, when it is
        self._seq = 0
        self._starts: dict[int, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._envs: dict[int, tuple[int, Mapping[bytes, bytes]]] = {}  # id(env) -> (n, env)
        self._watched: dict[int, int] = {}  # pid -> pidfd, after the spawner died
        self._released: list[int] = []  # released, not yet told
        self._flushing: asyncio.TimerHandle | None = None
        loop.add_reader(ours.fileno(), self._readable)

    @property
    def pid(self) -> int:
        return self.proc.pid

    # ------------------------------------------------------------ requests

    def start(
        self,
        path: str,
        argv: Sequence[str],
        env: Mapping[bytes, bytes],
        extra: Mapping[bytes, bytes],
        cwd: str,
        stdout: int,
        stderr: int,
    ) -> asyncio.Future[int]:
        """Ask for a command to start; the future gives its pid (or the OSError or
        ValueError Popen would have raised). Raises `Unavailable` when the request
        cannot be sent: then nothing started, and the caller can start it itself."""
        if not self.alive:
            raise Unavailable(self.failure or "the spawner has stopped")
        known = self._envs.get(id(env))
        if known is None or known[1] is not env:
            known = (len(self._envs), env)
            self._send(marshal.dumps(("env", known[0], dict(env))))
            self._envs[id(env)] = known
        self._seq += 1
        done = self._released
        msg = marshal.dumps(
            ("spawn", self._seq, path, list(argv), known[0], dict(extra), cwd, done)
        )
        self._send(msg, (stdout, stderr))
        self._released = []
        started: asyncio.Future[int] = self.loop.create_future()
        self._starts[self._seq] = started
        return started

    def exit_of(self, pid: int) -> asyncio.Future[int]:
        """The command's exit code, once it exited (it stays unreaped until `release`)."""
        return self._exits[pid]

    def release(self, pid: int) -> None:
        """The engine is done with the command (group killed, escapees swept): reap it.

        Said with the next start, or within a few milliseconds when none comes: a
        message and a wake-up of the spawner fewer per task; a zombie waits a little.
        """
        self._exits.pop(pid, None)
        if not self.alive:
            _reap(pid)
            self._unwatch(pid)
            return
        self._released.append(pid)
        if self._flushing is None:
            self._flushing = self.loop.call_later(RELEASE_DELAY, self._flush)

    def _flush(self) -> None:
        self._flushing = None
        if not self._released or not self.alive:
            return
        try:
            self._send(marshal.dumps(("release", self._released)))
        except Unavailable:
            if self.alive:  # not keeping up: again a little later
                self._flushing = self.loop.call_later(RELEASE_DELAY, self._flush)
            return
        self._released = []

    def close(self) -> None:
        """Stop the spawner; the commands it started have all been released by now."""
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None
        if self.alive and self._released:
            with contextlib.suppress(Unavailable):
                self._send(marshal.dumps(("release", self._released)))  # before its EOF
                self._released = []
        if self.alive:
            self.alive = False
            self.failure = "closed"
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in self._released:  # not told in time: its zombies came to us
            _reap(pid)
        self._released = []
        for pid in list(self._watched):
            self._unwatch(pid)

    def _send(self, msg: bytes, fds: tuple[int, int] | None = None) -> None:
        if len(msg) > MAX_MESSAGE:
            raise Unavailable("request too large")
        anc = [] if fds is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _ints(fds))]
        try:
            self.sock.sendmsg([msg], anc)
        except (BlockingIOError, InterruptedError) as exc:
            raise Unavailable("the spawner is not keeping up") from exc
        except OSError as exc:
            self._gone(f"cannot reach it: {exc.strerror or exc}")
            raise Unavailable(self.failure or "gone") from exc

    # ------------------------------------------------------------ answers

    def _readable(self) -> None:
        while self.alive:
            try:
                data = self.sock.recv(1 << 12)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._gone(f"its socket failed: {exc.strerror or exc}")
                return
            if not data:
                self._gone("it exited")
                return
            msg = marshal.loads(data)  # noqa: S302 - from our spawner, the pair's only peer
            kind = msg[0]
            if kind == "exit":
                done = self._exits.get(msg[1])
                if done is not None and not done.done():
                    done.set_result(msg[2])
            elif kind == "pid":
                self._started(msg[1], msg[2])
            elif kind == "err":
                waiting = self._starts.pop(msg[1], None)
                if waiting is not None and not waiting.done():
                    err = OSError(msg[2], msg[3]) if msg[2] else ValueError(msg[3])
                    waiting.set_exception(err)
            elif kind == "ready":
                self.ready = True

    def _started(self, seq: int, pid: int) -> None:
        # Made here, not by the waiting task: the exit may be in the very next message.
        self._exits[pid] = self.loop.create_future()
        waiting = self._starts.pop(seq, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(pid)
            return
        # Its attempt was cancelled meanwhile: nobody will stop it, so stop it here.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self._exits[pid].add_done_callback(lambda _: self.release(pid))

    def _gone(self, why: str) -> None:
        """The spawner died: answer everything in flight, and watch its commands here."""
        if not self.alive:
            return
        self.alive = False
        self.failure = why if self.ready else "it did not start"
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        with contextlib.suppress(ChildProcessError):
            self.proc.wait()  # once it is reaped, its orphans are ours (we are a subreaper)
        for pid in self._released:  # its orphans now, ours to reap
            _reap(pid)
        self._released = []
        unanswered = Unavailable(why) if not self.ready else Lost(why)
        for waiting in self._starts.values():
            if not waiting.done():
                waiting.set_exception(unanswered)
        self._starts.clear()
        for pid, done in self._exits.items():
            if not done.done():
                self._watch(pid, done)

    def _watch(self, pid: int, done: asyncio.Future[int]) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            done.set_result(_wait_code(pid))
            return
        self._watched[pid] = pidfd

        def exited() -> None:
            self.loop.remove_reader(pidfd)
            if not done.done():
                done.set_result(_wait_code(pid))

        self.loop.add_reader(pidfd, exited)

    def _unwatch(self, pid: int) -> None:
        pidfd = self._watched.pop(pid, None)
        if pidfd is not None:
            self.loop.remove_reader(pidfd)
            os.close(pidfd)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _wait_code(pid: int) -> int:
    """The exit code of an exited child of ours, left unreaped (-9 if not ours)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
    except ChildProcessError:
        return -signal.SIGKILL
    if info is None:
        return -signal.SIGKILL
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _ints(fds: tuple[int, int]) -> bytes:
    return array.array("i", fds).tobytes()


def usable() -> bool:
    """Whether this platform has what the spawner needs (Linux: pidfds, posix_spawn)."""
    return (
        os.environ.get("GUILDRUN_SPAWNER") != "0"
        and sys.platform.startswith("linux")
        and hasattr(os, "pidfd_open")
        and hasattr(os, "posix_spawn")
        and bool(sys.executable)
        and PROGRAM.is_file()
    )
