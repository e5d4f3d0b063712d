"""The process spawner: a small interpreter that starts the engine's commands for it.

Starting a command from the engine means `Popen` in a process of tens of megabytes with
several threads: Python-level argument and environment handling, then a vfork whose
exec the engine's loop waits for. For a trivial command that costs more than the
command. This process imports almost nothing, so `posix_spawn` from it is cheap, and it
works beside the engine's loop (on another core, when there is one) instead of inside
it. It runs as `python -I -S -c "...import _spawnd..." DIR FD PID`, its own directory
put last on sys.path: no site-packages, nothing of guildrun, only the standard modules
below, and its compiled form when there is one. It is ready in ~10 ms.

One marshal'd tuple per SOCK_SEQPACKET message, over the socket at FD:

    engine -> here   ("env", id, {key: value})        a base environment, kept by id
                     ("spawn", seq, path, argv, env_id, {key: value}, cwd, [pid, ...])
                         with the command's stdout and stderr passed as SCM_RIGHTS; the
                         pids are released as by "release" (one message fewer per task)
                     ("release", [pid, ...])          the engine is done with them: reap
    here -> engine   ("ready",)
                     ("pid", seq, pid) | ("err", seq, errno, text)
                     ("exit", pid, code)              code as os.waitstatus_to_exitcode

A command is started as `Popen(..., start_new_session=True, stdin=DEVNULL)` would: its
own session and process group, SIGPIPE and SIGXFSZ back to default, an empty signal
mask, no descriptor but 0, 1 and 2 (every other one here is close-on-exec).

A command is reaped only when the engine releases it, after the engine has killed its
process group and swept what escaped it: until then its pid, which is also its group and
session id, cannot be given to another process, so those kills cannot hit a stranger.
This process is no subreaper: orphans of a command go to the engine, which sweeps them.
It ends when the engine's end of the socket closes, and when the engine dies
(PR_SET_PDEATHSIG), leaving the commands running as the engine's death always has, for
the next `guildrun resume` to find by their GUILDRUN_RUN_ID.
"""

from __future__ import annotations

# Only modules built into the interpreter or cheap to load: `signal`, `socket` and
# `typing` would pull in enum and selectors, which cost more than all of the rest.
import _signal  # type: ignore[import-not-found]  # signal, without its enum
import _socket
import array
import marshal
import os
import select
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_PR_SET_PDEATHSIG = 1
_RECV = 1 << 18  # larger than any message the engine sends (it refuses bigger ones)
_FDS = _socket.CMSG_SPACE(2 * 4)
# What Popen's restore_signals resets, and SIGINT, which this process ignores.
_DEFAULTS = (_signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGINT)


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes  # only here, once: the rest of this process never needs it

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, _signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the socket's end closing still ends us
    if os.getppid() != parent:
        sys.exit(0)  # the engine died before the line above


class _Spawner:
    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.poll = select.poll()
        self.poll.register(sock.fileno(), select.POLLIN)
        self.null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.envs: dict[int, dict[bytes, bytes]] = {}
        self.running: dict[int, int] = {}  # pidfd -> pid
        self.unreaped: set[int] = set()  # exited and reported, not yet released
        self.release_at_exit: set[int] = set()  # released while still running

    def send(self, msg: tuple[Any, ...]) -> None:
        self.sock.send(marshal.dumps(msg))

    def serve(self, parent: int) -> None:
        self.send(("ready",))
        _die_with_parent(parent)  # after "ready": ctypes is the slowest import here
        me = self.sock.fileno()
        while True:
            for fd, _ in self.poll.poll():
                if fd == me:
                    if not self.read():
                        return
                else:
                    self.exited(fd)

    def read(self) -> bool:
        """Handle every waiting request; False once the engine's end is closed."""
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(
                    _RECV, _FDS, _socket.MSG_DONTWAIT | _socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                return True
            except OSError:
                return False
            fds: list[int] = []
            for level, kind, raw in anc:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    fds += array.array("i", raw[: len(raw) - len(raw) % 4]).tolist()
            if not data:
                return False
            msg = marshal.loads(data)  # noqa: S302 - from the engine, our socketpair's only peer
            if msg[0] == "spawn" and len(fds) == 2:
                self.spawn(msg, fds[0], fds[1])  # it closes them
                continue
            for fd in fds:
                os.close(fd)
            if msg[0] == "release":
                for pid in msg[1]:
                    self.release(pid)
            elif msg[0] == "env":
                self.envs[msg[1]] = msg[2]

    def spawn(self, msg: tuple[Any, ...], out: int, err: int) -> None:
        _, seq, path, argv, env_id, extra, cwd, done = msg
        for pid in done:
            self.release(pid)
        try:
            env = self.envs[env_id]
            if extra:
                env = env.copy()
                env.update(extra)
            # Every time, even to the same path: a worktree may have been made anew there.
            os.chdir(cwd)  # this process has one thread: its cwd is the child's
            pid = os.posix_spawn(
                path,
                argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, self.null, 0),
                    (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, err, 2),
                ],
                setsid=True,
                setsigdef=_DEFAULTS,
                setsigmask=(),
            )
        except OSError as exc:
            self.send(("err", seq, exc.errno or 0, exc.strerror or str(exc)))
            return
        except (ValueError, TypeError, KeyError, NotImplementedError) as exc:
            self.send(("err", seq, 0, str(exc) or type(exc).__name__))
            return
        finally:
            os.close(out)
            os.close(err)
        pidfd = os.pidfd_open(pid)
        self.running[pidfd] = pid
        self.poll.register(pidfd, select.POLLIN)
        self.send(("pid", seq, pid))

    def exited(self, pidfd: int) -> None:
        pid = self.running.pop(pidfd)
        self.poll.unregister(pidfd)
        os.close(pidfd)
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            return
        assert info is not None
        code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        self.send(("exit", pid, code))
        if pid in self.release_at_exit:
            self.release_at_exit.discard(pid)
            os.waitpid(pid, 0)
        else:
            self.unreaped.add(pid)

    def release(self, pid: int) -> None:
        if pid in self.unreaped:
            self.unreaped.discard(pid)
            os.waitpid(pid, 0)
        elif pid in self.running.values():
            self.release_at_exit.add(pid)


def main() -> None:
    fd, parent = int(sys.argv[-2]), int(sys.argv[-1])  # after the -c program's own
    os.set_inheritable(fd, False)
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # the engine decides when commands stop
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)  # an inherited SIG_IGN would auto-reap
    try:  # a libc without POSIX_SPAWN_SETSID: end before "ready", the engine uses Popen
        os.posix_spawn("/", ["/"], {}, setsid=True)
    except NotImplementedError:
        sys.exit(1)
    except OSError:
        pass  # EACCES: supported
    _Spawner(_socket.socket(fileno=fd)).serve(parent)


if __name__ == "__main__":
    main()
