"""Where a project lives, and which paths a plan may name inside it.

Every path a task owns is checked here once, at plan time, so nothing later
(runners, snapshots, ownership checks) has to wonder whether a path escapes.
"""

from __future__ import annotations

import posixpath
import re
import subprocess
from functools import lru_cache
from pathlib import Path

STATE_DIR = ".guildrun"
_RESERVED = (".git", STATE_DIR)


def find_root(explicit: str | Path | None = None, cwd: Path | None = None) -> Path:
    """The project root: --root, else the git top level of cwd, else cwd."""
    if explicit is not None:
        return Path(explicit).resolve()
    here = (cwd or Path.cwd()).resolve()
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=here,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return here
    top = out.stdout.strip()
    return Path(top).resolve() if out.returncode == 0 and top else here


def normalize_owned_path(root: Path, raw: str, folders: dict[str, Path] | None = None) -> str:
    """Return `raw` as a clean root-relative POSIX path, or raise ValueError saying why not.

    Symlinks are followed for the check (a link inside the root that points out of it is
    refused) but the returned path keeps the user's spelling, normalised.
    """
    if not raw or not raw.strip():
        raise ValueError("empty path")
    if "\x00" in raw:
        raise ValueError(f"path {raw!r} contains a NUL byte")
    text = raw.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:/", text):
        raise ValueError(f"path {raw!r} is absolute; owned paths are relative to the project root")
    norm = posixpath.normpath(text)
    if norm == "." or norm == ".." or norm.startswith("../"):
        raise ValueError(f"path {raw!r} leaves the project root")
    first = norm.split("/", 1)[0]
    if first in _RESERVED:
        raise ValueError(f"path {raw!r} is inside {first}/, which guildrun keeps for itself")
    resolved_root = _resolved(root)
    # Folders are resolved once per plan check (`folders` caches them): a plan of 100,000
    # files has far fewer folders, and resolving is the costly part.
    parent, _, name = norm.rpartition("/")
    cache = folders if folders is not None else {}
    where = cache.get(parent)
    if where is None:
        where = cache[parent] = (resolved_root / parent).resolve()
    target = where / name
    if target.is_symlink():
        target = target.resolve()
    if not target.is_relative_to(resolved_root):
        raise ValueError(f"path {raw!r} leaves the project root through a symlink (to {target})")
    return norm


@lru_cache(maxsize=8)
def _resolved(root: Path) -> Path:
    return root.resolve()


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a path glob where `*` stays inside one folder and `**` crosses folders."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1
                    out.append("(?:.*/)?")
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out) + r"\Z")
    except re.error as exc:
        raise ValueError(f"bad glob pattern {pattern!r}: {exc}") from None
