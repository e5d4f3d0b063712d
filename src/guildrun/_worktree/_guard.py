"""The parts of a repository's git folder that make git run programs or look elsewhere.

A task may legitimately commit, branch or stage in its worktree; it may not change what
git itself runs or reads: the shared `config` (fsmonitor, filters, aliases), `hooks/`,
`info/` (attributes, grafts), alternates, and its worktree's own links (the `.git` file,
`commondir`, `gitdir`, `config.worktree`). A `Fingerprint` records those files, is kept
on disk so a resumed run compares with the state before the crash, and puts back what a
task changed, reporting each change as a violation.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import stat as stat_mod
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MAX_KEPT = 1 << 20  # bytes of one file kept to put it back; git's own files are far smaller


@dataclass(frozen=True)
class Violation:
    """A change a task may not make; `kind` is one of KINDS."""

    path: str
    kind: str
    detail: str = ""


KINDS = {
    "unowned": "a file the task does not own",
    "reserved": "a path guildrun keeps for itself",
    "git-internals": "git's configuration, hooks or worktree links",
    "nested-repository": "a git repository inside the tree",
    "link-outside": "a symbolic link leading out of the tree",
}


@dataclass(frozen=True)
class Entry:
    kind: str  # "file", "link", "other"
    mode: int
    data: bytes | None  # None when larger than MAX_KEPT or not a file
    stamp: str = ""  # for what is not kept: size and change time (no one can set ctime back)

    def to_json(self) -> dict[str, object]:
        data = None if self.data is None else base64.b64encode(self.data).decode()
        return {"kind": self.kind, "mode": self.mode, "data": data, "stamp": self.stamp}

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> Entry:
        data = raw.get("data")
        return cls(
            str(raw["kind"]),
            int(str(raw["mode"])),
            None if data is None else base64.b64decode(str(data)),
            str(raw.get("stamp", "")),
        )


def _entry(path: Path) -> Entry | None:
    """The file at `path`, without following a link and without reading a special file."""
    try:
        st = path.lstat()
    except OSError:
        return None
    if stat_mod.S_ISLNK(st.st_mode):
        return Entry("link", st.st_mode, os.fsencode(path.readlink()))
    stamp = f"{st.st_ino}:{st.st_size}:{st.st_ctime_ns}"
    if not stat_mod.S_ISREG(st.st_mode):
        return Entry("other", st.st_mode, None, stamp)
    if st.st_size > MAX_KEPT:
        return Entry("file", st.st_mode, None, stamp)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return Entry("other", st.st_mode, None, stamp)
    with os.fdopen(fd, "rb") as fh:
        return Entry("file", st.st_mode, fh.read(MAX_KEPT + 1))


class Fingerprint:
    """Files (and the files directly inside folders) as they were, by a display label."""

    def __init__(self, root: Path, entries: dict[str, Entry | None], folders: list[str]) -> None:
        self.root = root
        self.entries = entries
        self.folders = folders

    @classmethod
    def take(cls, root: Path, files: Iterable[Path], folders: Iterable[Path]) -> Fingerprint:
        entries: dict[str, Entry | None] = {}
        labels: list[str] = []
        for path in files:
            entries[_label(root, path)] = _entry(path)
        for folder in folders:
            labels.append(_label(root, folder))
            entries.update(_scan(root, folder))
        return cls(root, entries, labels)

    def check(self) -> list[Violation]:
        """Every difference from the fingerprint, each put back as it was."""
        now = dict(self.entries)
        for label in self.folders:
            now.update(_scan(self.root, self.root / label))
        out: list[Violation] = []
        for label in sorted(now):
            before = self.entries.get(label)
            path = self.root / label
            current = _entry(path)
            if current == before:
                continue
            what = "added" if before is None else "removed" if current is None else "changed"
            out.append(Violation(label, "git-internals", f"{what}; put back as it was"))
            _put_back(path, before)
        return out

    def save(self, path: Path) -> None:
        raw = {
            "folders": self.folders,
            "entries": {k: None if v is None else v.to_json() for k, v in self.entries.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(raw))
        tmp.replace(path)

    @classmethod
    def load(cls, root: Path, path: Path) -> Fingerprint | None:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        entries = {k: None if v is None else Entry.from_json(v) for k, v in raw["entries"].items()}
        return cls(root, entries, list(raw["folders"]))


def _label(root: Path, path: Path) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _scan(root: Path, folder: Path) -> dict[str, Entry | None]:
    out: dict[str, Entry | None] = {}
    with contextlib.suppress(OSError):
        if folder.is_symlink() or not folder.is_dir():
            return out
        for item in os.scandir(folder):
            out[_label(root, Path(item.path))] = _entry(Path(item.path))
    return out


def _put_back(path: Path, entry: Entry | None) -> None:
    """Make `path` what `entry` says, never writing through a link."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if entry is None or entry.data is None or entry.kind == "other":
        return  # gone, or too large to have been kept: removing it is the safe side
    path.parent.mkdir(parents=True, exist_ok=True)
    if entry.kind == "link":
        path.symlink_to(os.fsdecode(entry.data))
        return
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(entry.data)
    Path(name).chmod(stat_mod.S_IMODE(entry.mode))
    Path(name).replace(path)
