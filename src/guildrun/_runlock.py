"""One engine per project root at a time.

Two engines in one tree undo each other's writes (each watcher sees the other's agents
as strays), and two resumes of one run race on its journal. So an engine holds an
exclusive `flock` on `.guildrun/lock` while it runs; the kernel drops it the moment
the process dies, however it dies, so a crashed engine never leaves it stuck. The
file names the holder (`{"pid", "run_id", "started"}`) for the refusal message and for
`runs`/`status` (see `_liveness`).

The lock is reentrant within a process: `resume` takes it before it touches the
journal and keeps it through the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ._errors import UsageError
from ._liveness import lock_path
from ._statedir import ensure_state_dir

_held: dict[Path, list[int]] = {}  # lock file -> [fd, depth, owner], in this process


def _owner() -> int:
    """Who holds a lock inside this process: the asyncio task, else the thread. Only the
    same one may take it again (a resume holding it through its run), never a second
    run started beside the first in the same process."""
    task = None
    aio = sys.modules.get("asyncio")  # not imported (`guildrun status`): no task runs
    if aio is not None:
        with contextlib.suppress(RuntimeError):
            task = aio.current_task()
    return id(task) if task is not None else threading.get_ident()


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(os.pread(fd, 64 * 1024, 0) or b"null")
        if isinstance(data, dict):
            return f"run {data.get('run_id')} (pid {data.get('pid')})"
    return "another guildrun engine"


def _name(fd: int, run_id: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(
        fd, json.dumps({"pid": os.getpid(), "run_id": run_id, "started": time.time()}).encode(), 0
    )


@contextlib.contextmanager
def run_lock(root: Path, run_id: str) -> Iterator[None]:
    """Hold the root's engine lock, or refuse at once naming who holds it."""
    ensure_state_dir(root)
    path = lock_path(root).resolve()
    if path in _held and _held[path][2] == _owner():
        held = _held[path]
        held[1] += 1
        _name(held[0], run_id)  # a resume learns its run id after it took the lock
        try:
            yield
        finally:
            held[1] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"{_holder(fd)} is running in {root}; two runs in one project would undo "
                "each other's changes: wait for it, or stop it (Ctrl-C, or kill its pid) "
                "and 'guildrun resume' later"
            ) from None
        _name(fd, run_id)
        _held[path] = [fd, 1, _owner()]
        try:
            yield
        finally:
            del _held[path]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
