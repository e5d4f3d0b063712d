"""Reading what a task left behind without trusting it.

A task can put a FIFO, a device or a link to /dev/zero where guildrun expects a file;
a plain `read_bytes()` then blocks forever or fills the memory. Every read of a path a
task could touch goes through `read_regular`: opened with O_NOFOLLOW (a link is not
followed) and O_NONBLOCK (opening a FIFO does not wait for a writer), checked with
fstat to be a regular file, and read up to a limit.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ._errors import GuildrunError

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
CHUNK = 1 << 20
MAX_FILE = 512 << 20  # an owned file larger than this is not snapshotted: the task fails


class NotARegularFile(GuildrunError, OSError):
    """A path guildrun must read is a link, a FIFO, a device or a socket."""


class TooLarge(GuildrunError, OSError):
    """A file is larger than guildrun will read."""


def kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _open_regular(path: str | Path) -> tuple[int, os.stat_result]:
    """An open descriptor of a regular file and its stat; never a link, FIFO or device."""
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the path itself is a symbolic link
            raise NotARegularFile(f"{path} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(f"{path} is {kind(st.st_mode)}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_regular(path: str | Path, limit: int = MAX_FILE) -> bytes:
    """The content of a regular file, never following a link at its last component.

    Raises FileNotFoundError (and other OSErrors) as open does, `NotARegularFile` for
    anything else, and `TooLarge` when it holds more than `limit` bytes.
    """
    fd, st = _open_regular(path)
    try:
        if st.st_size > limit:
            raise TooLarge(f"{path} holds {st.st_size} bytes, more than guildrun reads ({limit})")
        parts: list[bytes] = []
        got = 0
        while got <= limit:
            data = os.read(fd, min(CHUNK, limit + 1 - got))
            if not data:
                break
            parts.append(data)
            got += len(data)
        if got > limit:
            raise TooLarge(f"{path} grew past {limit} bytes while guildrun read it")
        return b"".join(parts)
    finally:
        os.close(fd)


def read_head(path: str | Path, limit: int) -> bytes:
    """At most `limit` bytes from the start of a regular file (a result, cut)."""
    fd, _ = _open_regular(path)
    try:
        parts: list[bytes] = []
        got = 0
        while got < limit:
            data = os.read(fd, min(CHUNK, limit - got))
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)
    finally:
        os.close(fd)
