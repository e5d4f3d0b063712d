"""Secrets never stored or shown: values of secret-looking variables become `***`.

A task that prints its API key must not leave it in the journal, the logs, the results,
the reports or the terminal. The values to hide are those of environment variables
whose names look secret (`*_KEY`, `*_TOKEN`, `*_SECRET`, `*PASSWORD*`, and the names
listed in the `secret_env` setting), taken from the engine's environment and from the
specialists' `env:`. A `Redactor` replaces them at the boundaries where text leaves a
task: the log sinks (as a stream, so a secret cut across two reads is still found),
the outcome's result and error, and the journal's writes.

Values shorter than `MIN_LENGTH` are left alone: hiding every "1" or "yes" would make
the logs unreadable and protects nothing.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
MIN_LENGTH = 6
PATTERNS = ("*_KEY", "*_TOKEN", "*_SECRET", "*PASSWORD*")


def looks_secret(name: str, extra: Iterable[str] = ()) -> bool:
    """Whether a variable's name says its value is a secret (case-insensitive)."""
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, p.upper()) for p in (*PATTERNS, *extra))


def secret_values(envs: Iterable[Mapping[str, str]], extra: Iterable[str] = ()) -> set[str]:
    names = tuple(extra)
    return {
        v for env in envs for k, v in env.items() if looks_secret(k, names) and len(v) >= MIN_LENGTH
    }


def run_redactor(envs: Iterable[Mapping[str, str]], extra: Iterable[str] = ()) -> Redactor:
    """The secrets of a run: the engine's environment and the specialists' `env:`."""
    return Redactor(secret_values([os.environ, *envs], extra))


class Redactor:
    """Replaces known secret values by `***` in text and in byte streams."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        vals = sorted({v for v in values if len(v) >= MIN_LENGTH}, key=len, reverse=True)
        self.values = tuple(vals)
        self._text = re.compile("|".join(map(re.escape, vals))) if vals else None
        raw = [v.encode() for v in vals]
        self._bytes = re.compile(b"|".join(map(re.escape, raw))) if raw else None
        self.longest = max((len(b) for b in raw), default=0)

    def __bool__(self) -> bool:
        return self._text is not None

    def text(self, value: str) -> str:
        return value if self._text is None else self._text.sub(MASK, value)

    def maybe(self, value: str | None) -> str | None:
        return None if value is None else self.text(value)

    def data(self, value: Any) -> Any:
        """A JSON-like value (an event's data) with every string redacted."""
        if self._text is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value

    def stream(self) -> Stream:
        return Stream(self)


class Stream:
    """Redacts a byte stream read in chunks: holds back the bytes that may be the start
    of a secret cut by the chunk's end, and lets them go with the next chunk."""

    def __init__(self, redactor: Redactor) -> None:
        self.r = redactor
        self.held = b""

    def feed(self, chunk: bytes) -> bytes:
        pattern = self.r._bytes
        if pattern is None:
            return chunk
        buf = self.held + chunk
        cut = max(0, len(buf) - (self.r.longest - 1))
        for m in pattern.finditer(buf):
            if m.start() < cut < m.end():
                cut = m.end()
        self.held = buf[cut:]
        return pattern.sub(MASK.encode(), buf[:cut])

    def flush(self) -> bytes:
        rest, self.held = self.held, b""
        return rest if self.r._bytes is None else self.r._bytes.sub(MASK.encode(), rest)


NONE = Redactor()


def plan_for_journal(
    plan_json: str, extra: Iterable[str] = (), env_names: Iterable[str] | None = None
) -> str:
    """The plan as the journal keeps it: a secret-looking specialist `env:` value is
    `***` (a resume takes it from the environment again: `restore_plan_env`).

    `env_names`, when given, are every specialist's `env:` names: when none looks
    secret, the plan is kept as it is without being parsed (a plan of 10,000 tasks
    takes 30 ms to parse)."""
    names = tuple(extra)
    if env_names is not None and not any(looks_secret(k, names) for k in env_names):
        return plan_json
    data = json.loads(plan_json)
    hidden = False
    for spec in (data.get("specialists") or {}).values():
        env = spec.get("env") if isinstance(spec, dict) else None
        if isinstance(env, dict):
            for k in env:
                if looks_secret(k, names):
                    env[k], hidden = MASK, True
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False) if hidden else plan_json


def restore_plan_env(specialists: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    """Fill the `***` the journal stored from the environment, or say which is missing."""
    from ._errors import UsageError

    for name, spec in specialists.items():
        env = getattr(spec, "env", None) or {}
        for k, v in list(env.items()):
            if v != MASK:
                continue
            if k not in environ:
                raise UsageError(
                    f"specialist {name!r}: env {k} is a secret the journal does not keep;"
                    f" set {k} in the environment to continue this run"
                )
            env[k] = environ[k]
