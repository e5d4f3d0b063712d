"""A recursive inotify reader on the engine's own thread: no observer threads, no copies.

watchdog turned every kernel event into Python objects on two threads and handed them
to the engine through a queue and a condition variable; each ownership check waited
for that round trip (0.3-0.5 ms, and the threads took the GIL from the engine while
they worked). The kernel needs none of it: inotify queues an event inside the system
call that made the change, all watches of one instance share one queue, in order. So
once a process has returned from a write (or exited), its events are already in the
queue, and reading the queue until it is empty sees every one of them. `Tree` is that
reader: a watch on every folder under the root (except the ones it is told to skip),
kept up to date as folders come, go and move, and the changed paths, relative to the
root, collected in a set.

What it cannot see it says: a queue that overflowed makes `lost` true (until the
caller resets it), a folder it could not watch (out of watches) makes `blind` true for
good; either way the caller compares the tree instead.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Callable, Collection

# <sys/inotify.h>
IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000

# Every kind of write; reads (open, access, close without writing) change nothing.
# IN_ATTRIB: a chmod. A new hard link is its IN_CREATE (the link count of the file it
# names changes unseen: a watch on a folder hears of its entries, not of their inodes;
# `SharedTree._other_names` finds the other names), and a link made outside the root
# and written there is a write outside the root (docs/security.md).
# A link is never followed, and only a folder is watched (a file swapped in is not).
MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
)
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_READ_SIZE = 1 << 16


def _libc() -> ctypes.CDLL:
    # The process's own symbols, libc's among them: `ctypes.util.find_library` would
    # run ldconfig in a subprocess (tens of ms on a busy machine).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


_LIBC: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = _libc()
    return _LIBC


def _os_error(what: str, path: bytes = b"") -> OSError:
    code = ctypes.get_errno()
    where = f" {os.fsdecode(path)}" if path else ""
    return OSError(code, f"{what}{where}: {os.strerror(code)}")


class Tree:
    """Changed paths under `root`, from one inotify instance with a watch per folder.

    `skip` names top-level folders never watched (.git, .guildrun); `also` names
    folders below them that are (the barrier folder). `on_path` sees every changed
    path first: the caller keeps barrier files out of the set there.
    """

    def __init__(
        self,
        root: str,
        *,
        skip: Collection[str] = (),
        also: Collection[str] = (),
        on_path: Callable[[str], bool] | None = None,
    ) -> None:
        # The real folder: a root reached through a link is watched where it is (only
        # links below it are never followed). Paths are reported relative to it.
        self.root = os.path.realpath(root)
        self._skip = {os.fsencode(f"{self.root}/{s}") for s in skip}
        self._on_path = on_path
        self.changed: set[str] = set()
        self.lost = False  # the queue overflowed: events were dropped
        self.blind = False  # a folder could not be watched: its changes go unseen
        self._paths: dict[int, bytes] = {}  # watch -> folder (absolute, bytes)
        # cookie -> folder moved away, not yet seen back, and its watches (those at and
        # below it then: a folder made at its old name meanwhile is not one of them)
        self._moving: dict[int, tuple[bytes, list[int]]] = {}
        lib = _lib()
        self.fd = lib.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise _os_error("inotify_init1")
        try:
            self._watch_tree(os.fsencode(self.root), strict=True)
            for folder in also:
                self._watch(os.fsencode(f"{self.root}/{folder}"), strict=True)
        except BaseException:
            os.close(self.fd)
            raise
        self._prefix = os.fsencode(self.root) + b"/"

    # ------------------------------------------------------------ watches

    def _watch(self, folder: bytes, *, strict: bool = False) -> bool:
        wd = _lib().inotify_add_watch(self.fd, folder, MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR, errno.EACCES) and not strict:
                return False  # gone again, or not a folder any more: nothing to watch
            if not strict:
                self.blind = True  # out of watches: what changes in it goes unseen
                return False
            raise _os_error("inotify_add_watch", folder)
        self._paths[wd] = folder
        return True

    def _watch_tree(self, top: bytes, *, strict: bool = False) -> None:
        """Watch `top` and every folder below it; links are never followed."""
        stack = [top]
        while stack:
            folder = stack.pop()
            if folder in self._skip or not self._watch(folder, strict=strict):
                continue
            strict = False  # below the top, a folder may vanish while we walk
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                stack.append(entry.path)
                        except OSError:
                            continue
            except OSError:
                continue

    def rewatch(self) -> None:
        """After lost events: watch every folder again, those made unseen included
        (a folder already watched keeps its watch)."""
        self._watch_tree(os.fsencode(self.root))

    def _under(self, folder: bytes) -> list[int]:
        """The watches at and below a folder."""
        below = folder + b"/"
        return [wd for wd, p in self._paths.items() if p == folder or p.startswith(below)]

    def _forget(self, wds: list[int]) -> None:
        """A folder left the tree: drop its watches (see `_under`)."""
        for wd in wds:
            if self._paths.pop(wd, None) is not None:
                _lib().inotify_rm_watch(self.fd, wd)

    def _moved(self, old: bytes, new: bytes) -> None:
        """A watched folder was renamed inside the tree: its watches follow it."""
        below = old + b"/"
        for wd, path in list(self._paths.items()):
            if path == old:
                self._paths[wd] = new
            elif path.startswith(below):
                self._paths[wd] = new + path[len(old) :]

    # ------------------------------------------------------------ events

    def read(self) -> None:
        """Take every queued event (never blocks); the paths go into `changed`."""
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            self._parse(data)
        for _, wds in self._moving.values():  # moved out of the tree: not ours to watch
            self._forget(wds)
        self._moving.clear()

    def _parse(self, data: bytes) -> None:
        unpack = _HEADER.unpack_from
        size = _HEADER.size
        at = 0
        end = len(data)
        while at < end:
            wd, mask, cookie, length = unpack(data, at)
            name = data[at + size : at + size + length].rstrip(b"\0")
            at += size + length
            if mask & IN_Q_OVERFLOW:
                self.lost = True
                continue
            folder = self._paths.get(wd)
            if mask & IN_IGNORED:
                self._paths.pop(wd, None)  # its folder is gone (or was unwatched)
                continue
            if folder is None or not name:
                continue  # the watched folder itself: its parent reports it by name
            path = folder + b"/" + name
            is_dir = bool(mask & IN_ISDIR)
            if is_dir:
                if mask & (IN_MODIFY | IN_CLOSE_WRITE):
                    continue  # a folder's own "modified": its files speak for themselves
                if mask & IN_MOVED_FROM:
                    self._moving[cookie] = (path, self._under(path))
                elif mask & IN_MOVED_TO:
                    gone = self._moving.pop(cookie, None)
                    old = gone[0] if gone is not None else None
                    if path in self._skip:  # into a folder never watched
                        if gone is not None:
                            self._forget(gone[1])
                    elif old is not None:
                        self._moved(old, path)
                        # A folder made just before its rename (`mkdir tmp; mv tmp out`)
                        # was gone when its "created" was read, so it has no watch yet;
                        # nor has a folder made in it then. A watch added again is kept.
                        self._watch_tree(path)
                    else:  # from outside the tree
                        self._watch_tree(path)
                elif mask & IN_CREATE:
                    self._watch_tree(path)
            self._note(path)

    def _note(self, path: bytes) -> None:
        if not path.startswith(self._prefix):
            return
        rel = os.fsdecode(path[len(self._prefix) :])
        if self._on_path is not None and not self._on_path(rel):
            return
        self.changed.add(rel)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
