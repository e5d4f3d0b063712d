"""Nothing a task started survives the task.

Killing a task's process group is not enough: `setsid cmd &`, a double fork and
`setpgid(0, 0)` all leave it. So on Linux the engine becomes a *child subreaper*
(prctl PR_SET_CHILD_SUBREAPER): an orphan then becomes the engine's child instead of
init's, and every living descendant of a task is either still in the task's session
or below one of the engine's own children. At a task's end we look at those children
(cheaply, through /proc/self/task/*/children, no scan of every process) and kill
every subtree whose top belongs to the task: it carries the task's markers
(GUILDRUN_RUN_ID and GUILDRUN_TASK_ID) in its environment, or it is in the task's
session (its leader's pid) even if it cleared its environment. Killed orphans are
our children, so we reap them; nobody else's `Popen` waits for them.

An orphan that both cleared its environment and left the task's session cannot be
told apart from the engine's own children (gates run in sessions of their own); it
is not killed (docs/security.md says so).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from pathlib import Path

import psutil

_PR_SET_CHILD_SUBREAPER = 36
_lock = threading.Lock()
_holders = 0  # executors that asked for the subreaper bit, in this process
# Sessions of the tasks swept so far: a killed member of a task's group may reach us
# only later, as a zombie whose environment is gone; its session still names the task.
_sessions: set[int] = set()


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Adopt the orphans of our descendants (counted: several runs may share a process)."""
    global _holders
    with _lock:
        _holders += 1
        if _holders > 1:
            return True
        return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def release_subreaper() -> None:
    global _holders
    with _lock:
        _holders = max(0, _holders - 1)
        if _holders == 0:
            _prctl(_PR_SET_CHILD_SUBREAPER, 0)


def _children(pid: int | str = "self") -> set[int]:
    """Direct children of a process, from every one of its threads (a kernel without
    /proc/PID/task/TID/children: from a scan of every process, through psutil)."""
    out: set[int] = set()
    # Plain strings and bytes, no pathlib: this runs at the end of every task.
    base = f"/proc/{pid}/task"
    try:
        threads = os.listdir(base)  # noqa: PTH208 - hot path, see above
    except OSError:
        return out
    for tid in threads:
        try:
            with open(f"{base}/{tid}/children", "rb") as f:  # noqa: PTH123 - hot path
                out.update(int(c) for c in f.read().split())
        except FileNotFoundError:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process() if pid == "self" else psutil.Process(int(pid))
                return {c.pid for c in proc.children()}
        except (OSError, ValueError):
            continue
    return out


def _own_children() -> set[int]:
    """Our direct children a sweep is about, from two threads instead of every one.

    The kernel hands an orphan to the first live thread of its subreaper (the main
    thread, while it lives), and commands are started from the engine's thread: other
    threads (the file watcher's, workers) start nothing of a task's.
    """
    main = threading.main_thread()
    if not main.is_alive() or main.native_id is None:
        return _children()
    out: set[int] = set()
    pid = os.getpid()
    for tid in {main.native_id, threading.get_native_id()}:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:  # noqa: PTH123 - hot
                out.update(int(c) for c in f.read().split())
        except (OSError, ValueError):
            return _children()
    return out


def _session(pid: int) -> int | None:
    """The session id of a process (zombies keep theirs), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return int(fields[3]) if len(fields) > 3 else None


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _markers(pid: int) -> tuple[str | None, str | None]:
    """(GUILDRUN_RUN_ID, GUILDRUN_TASK_ID) of a process's environment, where readable."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None, None
    run = task = None
    for item in raw.split(b"\0"):
        if item.startswith(b"GUILDRUN_RUN_ID="):
            run = item[16:].decode(errors="replace")
        elif item.startswith(b"GUILDRUN_TASK_ID="):
            task = item[17:].decode(errors="replace")
    return run, task


def _subtree(pid: int) -> list[int]:
    out: list[int] = []
    stack = [pid]
    while stack and len(out) < 100_000:
        p = stack.pop()
        out.append(p)
        stack.extend(_children(p))
    return out


def _reap(pids: set[int]) -> set[int]:
    """Reap those of `pids` that are our exited children; returns those still there
    (alive, or a zombie whose parent is not us yet: it will be handed to us)."""
    left: set[int] = set()
    for pid in pids:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            if Path(f"/proc/{pid}").exists():
                left.add(pid)
            continue
        if done == 0:
            left.add(pid)
    return left


def sweep(run_id: str, task_id: str | None, session: int | None, keep: set[int]) -> int:
    """Kill every subtree below the engine that belongs to the task and reap it;
    returns how many processes were killed.

    `task_id` None means any task of the run (the executor is closing); `session` is
    the task leader's pid; `keep` are children not to touch (leaders of running tasks).
    Repeats until a look finds nothing: a killed parent hands its children to us.
    """
    killed = 0
    deadline = time.monotonic() + 2.0
    victims: set[int] = set()
    if session is not None:
        _sessions.add(session)
    while True:
        found: list[int] = []
        for child in _own_children() - keep - victims:
            sid = _session(child)
            if sid is None:
                continue
            run, task = _markers(child)
            ours = run == run_id and (task_id is None or task == task_id)
            if task_id is None and sid in _sessions and _zombie(child):
                ours = True  # closing: a dead member of a task we ran, reaped (never a live
                # process by its session alone: a session id can be a reused pid)
            if ours or (session is not None and sid == session):
                found.extend(p for p in _subtree(child) if p not in victims)
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        victims.update(found)
        victims = _reap(victims)
        if (not found and not victims) or time.monotonic() > deadline:
            return killed
        time.sleep(0.002)
