"""Whether a run marked "running" in the journal still has an engine working on it.

An engine killed with SIGKILL (or a machine that lost power) never writes its run's
end, so the journal says "running" forever. A process id is no proof of life (ids are
reused), but a lock is: the engine holds an exclusive `fcntl.flock` on `.guildrun/lock`
for as long as it runs, and the kernel drops the lock the moment the process dies,
however it dies. The lock file also names the run and the engine's pid:
`{"pid": ..., "run_id": ..., "started": ...}`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ._paths import STATE_DIR

if TYPE_CHECKING:
    from ._metrics import Summary

LOCK_NAME = "lock"


def lock_path(root: Path) -> Path:
    return root / STATE_DIR / LOCK_NAME


def run_is_alive(root: Path, run_id: str) -> bool:
    """True only if the lock file names `run_id` and some live process holds its lock.

    The probe takes a shared lock without waiting and lets it go at once: it fails only
    while the engine holds its exclusive one, and two readers probing at the same time
    never see each other.
    """
    path = lock_path(root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        try:
            holder = json.loads(os.read(fd, 64 * 1024) or b"null")
        except (OSError, ValueError):
            return False
        if not isinstance(holder, dict) or holder.get("run_id") != run_id:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True  # held: the engine is alive
        except OSError:
            return False
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def engine_gone_note(run_id: str) -> str:
    return f"interrupted (engine gone; resume with: guildrun resume {run_id})"


def as_seen(summary: Summary, root: Path) -> tuple[Summary, str | None]:
    """`summary` as a reader should see it: a "running" run whose engine is gone is
    interrupted. Returns the summary (status changed if so) and the note to show."""
    if summary.status != "running" or run_is_alive(root, summary.run_id):
        return summary, None
    return dataclasses.replace(summary, status="interrupted"), engine_gone_note(summary.run_id)
