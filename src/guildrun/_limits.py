"""What the kernel will not start, checked before anything runs.

A command task is started with `execve`: every argument and every environment string
(``NAME=value``) must be shorter than MAX_ARG_STRLEN, their sum (with one pointer each)
must stay under ARG_MAX, and none may hold a NUL byte. A plan that breaks one of these
could never start the task; refusing it at validate time saves a whole run up to it.

The runner passes the engine's environment, the specialist's ``env:`` and the task's
``GUILDRUN_*`` facts (its prompt and its files among them), so all of them count here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from functools import lru_cache

MAX_NAME = 256  # characters of a task id, specialist name or scope
MAX_ARG_STRLEN = 131072  # Linux: one argument or environment string, its NUL included
_POINTER = 8


@lru_cache(maxsize=1)
def arg_max() -> int:
    """The kernel's limit on arguments plus environment, in bytes."""
    try:
        value = os.sysconf("SC_ARG_MAX")
    except (OSError, ValueError):
        value = -1
    return value if value > 0 else 2 * 1024 * 1024


def string_cost(text: str) -> int:
    """Bytes one argument or environment string takes on the new process's stack."""
    return len(os.fsencode(text)) + 1 + _POINTER


def too_long(text: str) -> bool:
    """Is `text` longer than one argument or environment string may be?"""
    # Four bytes per character at most: most strings are decided without encoding them.
    if len(text) * 4 < MAX_ARG_STRLEN:
        return False
    return len(os.fsencode(text)) + 1 > MAX_ARG_STRLEN


def env_problem(env: Mapping[str, str]) -> str | None:
    """Why an environment mapping from a plan cannot be passed to a program, or None."""
    for key, value in env.items():
        if not key or "=" in key or "\x00" in key:
            return f"bad environment variable name {key[:60]!r}"
        if "\x00" in value:
            return f"{key}: a value cannot contain a NUL byte"
        if too_long(f"{key}={value}"):
            return (
                f"{key}: a value longer than one environment string may be ({MAX_ARG_STRLEN} bytes)"
            )
    return None


@lru_cache(maxsize=1)
def _base_env_cost() -> int:
    return sum(string_cost(f"{k}={v}") for k, v in os.environ.items())


def total_cost(strings: Iterable[str]) -> int:
    """Bytes of `strings` plus the engine's own environment, as execve counts them."""
    return _base_env_cost() + sum(string_cost(s) for s in strings)
