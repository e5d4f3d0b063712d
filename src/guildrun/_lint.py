"""Warnings about plans that are valid but probably not what the author meant.

A warning never stops a run; `guildrun validate` and `guildrun plan` print them.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
from collections.abc import Mapping, Sequence

from . import _templates as tpl

# Programs that run their next argument as code, and the flags that say so.
_SHELLS = frozenset({"sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "fish", "csh", "tcsh"})
_CODE_FLAGS: dict[str, frozenset[str]] = {
    **{s: frozenset({"-c"}) for s in _SHELLS},
    "python": frozenset({"-c"}),
    "pypy": frozenset({"-c"}),
    "pypy3": frozenset({"-c"}),
    "node": frozenset({"-e", "--eval", "-p", "--print"}),
    "nodejs": frozenset({"-e", "--eval", "-p", "--print"}),
    "deno": frozenset({"eval"}),
    "bun": frozenset({"-e", "--eval"}),
    "perl": frozenset({"-e", "-E"}),
    "ruby": frozenset({"-e"}),
    "php": frozenset({"-r"}),
    "lua": frozenset({"-e"}),
    "Rscript": frozenset({"-e"}),
    "pwsh": frozenset({"-c", "-Command", "-command"}),
    "powershell": frozenset({"-c", "-Command", "-command"}),
    "osascript": frozenset({"-e"}),
}
_PYTHON = re.compile(r"^python[\d.]*$")


def _interpreter(name: str) -> frozenset[str] | None:
    base = posixpath.basename(name)
    if _PYTHON.match(base):
        return _CODE_FLAGS["python"]
    return _CODE_FLAGS.get(base)


def _script_index(argv: Sequence[str]) -> tuple[str, int] | None:
    """(program, index of its code argument) when `argv` runs code given inline."""
    i = 0
    if argv and posixpath.basename(argv[0]) == "env":
        i = 1
        while i < len(argv) and (argv[i].startswith("-") or "=" in argv[i]):
            i += 1
    if i >= len(argv):
        return None
    program = argv[i]
    flags = _interpreter(program)
    if flags is None:
        return None
    # A bundle of short flags takes the script too: `bash -lc CODE`, `perl -ne CODE`.
    letters = {f[1] for f in flags if len(f) == 2 and f[0] == "-"}
    for j in range(i + 1, len(argv) - 1):
        arg = argv[j]
        if arg in flags:
            return program, j + 1
        bundle = arg[1:]
        if arg[:1] == "-" and bundle.isalpha() and letters & set(bundle):
            return program, j + 1
    return None


def inline_code(argv: Sequence[tuple[tpl.Part, ...]]) -> tuple[int, str, tpl.Placeholder] | None:
    """(index, program, placeholder) when a placeholder is pasted into inline code."""
    flat = ["".join(p if isinstance(p, str) else str(p) for p in parts) for parts in argv]
    found = _script_index(flat)
    if found is None:
        return None
    program, k = found
    holes = tpl.placeholders(argv[k])
    if not holes:
        return None
    return k, posixpath.basename(program), holes[0]


def missing_program(argv: Sequence[tuple[tpl.Part, ...]], env: Mapping[str, str]) -> str | None:
    """The program name, when it is a plain name that PATH does not have."""
    if not argv or len(argv[0]) != 1 or not isinstance(argv[0][0], str):
        return None
    program = argv[0][0]
    if "/" in program or not program:
        return None
    path = env.get("PATH", os.environ.get("PATH", os.defpath))
    return program if shutil.which(program, path=path) is None else None
