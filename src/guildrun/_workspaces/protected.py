"""Places no task may change, whatever its `files` and `writes` say.

The watcher skips `.git`: git writes there on every command, and a task's own
`git add` or `git commit` (objects, the index, refs, logs) is legitimate use. But three
corners of it are code or settings that git, and guildrun's own git calls, act on
later: `.git/config` (core.fsmonitor, filters, aliases, credential helpers), the hooks,
and `.git/info` (attributes, exclude). A task that plants a program there has planted
code that runs outside any task. So they are snapshotted when the run starts (content
and mode), compared at every check (a stat of a few dozen files), and any change is put
back and reported as an ownership violation.

The rule, decided and documented (docs/security.md): `.git/config`, `.git/hooks/**` and
`.git/info/**` are guildrun's to protect; `.git/HEAD`, refs, the index and the object
store are left to git. A repository whose `.git` is a file (a linked worktree, a
submodule) is not covered here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .._safeio import read_regular

LIMIT = 16 << 20  # a config or a hook larger than this is itself suspicious


@dataclass(frozen=True)
class _Entry:
    mode: int
    size: int
    mtime_ns: int
    ino: int
    data: bytes | None  # None: a link (`link` holds its target) or unreadable
    link: str | None = None


class Protected:
    """A snapshot of protected paths under the root, and a way back to it."""

    def __init__(self, root: Path, files: tuple[str, ...], folders: tuple[str, ...]) -> None:
        self.root = root
        self.files = files
        self.folders = folders
        self.saved: dict[str, _Entry] = dict(self._scan(with_data=True))

    @classmethod
    def git(cls, root: Path) -> Protected | None:
        if not (root / ".git").is_dir() or (root / ".git").is_symlink():
            return None
        return cls(root, (".git/config",), (".git/hooks", ".git/info"))

    def _paths(self) -> Iterator[str]:
        yield from self.files
        for folder in self.folders:
            stack = [folder]
            while stack and len(stack) < 10_000:
                here = stack.pop()
                try:
                    entries = list(os.scandir(self.root / here))
                except OSError:
                    continue
                for e in entries:
                    rel = f"{here}/{e.name}"
                    if e.is_dir(follow_symlinks=False):
                        stack.append(rel)
                    else:
                        yield rel

    def _scan(self, *, with_data: bool) -> Iterator[tuple[str, _Entry]]:
        for rel in self._paths():
            entry = self._entry(rel, with_data=with_data)
            if entry is not None:
                yield rel, entry

    def _entry(self, rel: str, *, with_data: bool) -> _Entry | None:
        path = self.root / rel
        try:
            st = path.lstat()
        except OSError:
            return None
        link = data = None
        if stat.S_ISLNK(st.st_mode):
            link = str(path.readlink())
        elif with_data:
            with contextlib.suppress(OSError):
                data = read_regular(path, LIMIT)
        return _Entry(st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, data, link)

    def changed(self) -> list[str]:
        """Protected paths that differ from the snapshot (made, removed, rewritten, chmod)."""
        now = dict(self._scan(with_data=False))
        out = [rel for rel in self.saved if rel not in now]
        for rel, entry in now.items():
            old = self.saved.get(rel)
            if old is None or old.mode != entry.mode or old.link != entry.link:
                out.append(rel)
            elif (old.size, old.mtime_ns, old.ino) != (entry.size, entry.mtime_ns, entry.ino):
                fresh = self._entry(rel, with_data=True)
                if fresh is None or fresh.data != old.data:
                    out.append(rel)
        return sorted(out)

    def restore(self, paths: list[str]) -> None:
        """Put each path back as it was in the snapshot (or remove it, if it was not)."""
        for rel in paths:
            path = self.root / rel
            old = self.saved.get(rel)
            with contextlib.suppress(FileNotFoundError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            if old is None:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if old.link is not None:
                path.symlink_to(old.link)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(old.data or b"")
                    os.fchmod(fh.fileno(), stat.S_IMODE(old.mode))
            st = path.lstat()
            self.saved[rel] = _Entry(
                old.mode, st.st_size, st.st_mtime_ns, st.st_ino, old.data, old.link
            )
