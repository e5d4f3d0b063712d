"""Where a project lives, and which paths a plan may name inside it.

Every path a task owns is checked here once, at plan time, so nothing later
(runners, snapshots, ownership checks) has to wonder whether a path escapes.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from functools import lru_cache
from pathlib import Path

from ._glob import Glob, compile_glob

STATE_DIR = ".guildrun"
_RESERVED = (".git", STATE_DIR)
MAX_PATH = 4096  # characters of an owned path (Linux: PATH_MAX bytes)
MAX_NAME_BYTES = 255  # bytes of one name in it (NAME_MAX)


def find_root(explicit: str | Path | None = None, cwd: Path | None = None) -> Path:
    """The project root: --root, else the git top level of cwd, else cwd."""
    if explicit is not None:
        return Path(explicit).resolve()
    here = (cwd or Path.cwd()).resolve()
    from ._git import Git, GitError  # with the repository's own programs switched off

    try:
        out = Git(here, timeout=10).run("rev-parse", "--show-toplevel", check=False)
    except (OSError, GitError):
        return here
    top = out.text
    return Path(top).resolve() if out.returncode == 0 and top else here


def normalize_owned_path(root: Path, raw: str, folders: dict[str, Path] | None = None) -> str:
    """Return `raw` as a clean root-relative POSIX path, or raise ValueError saying why not.

    Symlinks are followed for the check (a link inside the root that points out of it is
    refused) but the returned path keeps the user's spelling, normalised.
    """
    if not raw or not raw.strip():
        raise ValueError("empty path")
    if "\x00" in raw:
        raise ValueError(f"path {_short(raw)} contains a NUL byte")
    if len(raw) > MAX_PATH:
        raise ValueError(f"path of {len(raw)} characters is too long (at most {MAX_PATH})")
    text = raw.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:/", text):
        raise ValueError(
            f"path {_short(raw)} is absolute; owned paths are relative to the project root"
        )
    norm = posixpath.normpath(text)
    if norm == "." or norm == ".." or norm.startswith("../"):
        raise ValueError(f"path {_short(raw)} leaves the project root")
    if any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in norm.split("/")):
        raise ValueError(f"path {_short(raw)} has a name longer than {MAX_NAME_BYTES} bytes")
    first = norm.split("/", 1)[0]
    if first in _RESERVED:
        raise ValueError(f"path {_short(raw)} is inside {first}/, which guildrun keeps for itself")
    resolved_root = _resolved(root)
    # Folders are resolved once per plan check (`folders` caches them): a plan of 100,000
    # files has far fewer folders, and resolving is the costly part.
    parent, _, name = norm.rpartition("/")
    cache = folders if folders is not None else {}
    where = cache.get(parent)
    if where is None:
        where = cache[parent] = (resolved_root / parent).resolve()
    target = where / name
    if not where.is_relative_to(resolved_root):
        raise ValueError(
            f"path {_short(raw)} leaves the project root through a symlink (to {target})"
        )
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return norm  # a file the task will create
    except OSError as exc:
        raise ValueError(f"path {_short(raw)}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        target = target.resolve()
        if not target.is_relative_to(resolved_root):
            raise ValueError(
                f"path {_short(raw)} leaves the project root through a symlink (to {target})"
            )
        try:
            st = target.stat()
        except OSError:
            return norm  # a dangling link inside the root: the task may create its target
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise ValueError(
            f"path {_short(raw)} is a {_kind(st.st_mode)}, not a regular file: guildrun "
            "never reads one (a FIFO or a device can block or never end)"
        )
    return norm


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _short(raw: str, limit: int = 80) -> str:
    text = repr(raw)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


@lru_cache(maxsize=8)
def _resolved(root: Path) -> Path:
    return root.resolve()


def glob_to_regex(pattern: str) -> Glob:
    """Compile a path glob where `*` stays inside one folder and `**` crosses folders.

    The name is historical: the result is a `Glob`, matched without backtracking
    (see `_glob`), with the `match(path)` of a compiled regex.
    """
    return compile_glob(pattern)
