"""Reading a running agent's output into its preset's reader, for the engine's executor.

Agents print very long lines (Claude Code's init line, a tool result holding a whole
file), longer than asyncio's `readline` allows, so the streams are read in chunks and
split here. Every byte still goes to the logs; a line longer than `MAX_LINE` is cut
before the reader sees it (a JSON object that long is a tool result, not a verdict).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import BinaryIO, Protocol

from .base import Reader, Signal

MAX_LINE = 8 << 20
_CHUNK = 1 << 16
STDERR_TAIL = 4000


async def _lines(
    stream: asyncio.StreamReader,
    feed: Callable[[str], list[Signal]],
    on_signal: Callable[[Signal], None],
    log: BinaryIO | None,
    keep: bytearray | None,
) -> None:
    pending = bytearray()
    skipping = False  # inside the rest of a line already cut at MAX_LINE
    while True:
        chunk = await stream.read(_CHUNK)
        if log is not None and chunk:
            log.write(chunk)
            log.flush()
        if keep is not None and chunk:
            keep += chunk
            del keep[:-STDERR_TAIL]
        if not chunk:
            if pending and not skipping:
                _emit(bytes(pending), feed, on_signal)
            return
        pending += chunk
        while True:
            end = pending.find(b"\n")
            if end < 0:
                if len(pending) > MAX_LINE:
                    if not skipping:
                        _emit(bytes(pending[:MAX_LINE]), feed, on_signal)
                    skipping = True
                    pending.clear()
                break
            line = bytes(pending[:end])
            del pending[: end + 1]
            if not skipping:
                _emit(line, feed, on_signal)
            skipping = False


def _emit(
    line: bytes, feed: Callable[[str], list[Signal]], on_signal: Callable[[Signal], None]
) -> None:
    for signal in feed(line.decode("utf-8", errors="replace")):
        on_signal(signal)


class Pipes(Protocol):
    """What `follow` reads: an asyncio subprocess, or any pair of streams like it."""

    @property
    def stdout(self) -> asyncio.StreamReader | None: ...

    @property
    def stderr(self) -> asyncio.StreamReader | None: ...


async def follow(
    process: Pipes,
    reader: Reader,
    on_signal: Callable[[Signal], None],
    *,
    stdout_log: BinaryIO | None = None,
    stderr_log: BinaryIO | None = None,
) -> str:
    """Feed both pipes of `process` to `reader` until both close; the tail of stderr.

    `on_signal` is called at once for each live signal (a rate limit met now). The
    caller waits for the process (and owns its timeout); then `reader.finish(code,
    tail)` gives the verdict.
    """
    assert process.stdout is not None and process.stderr is not None
    tail = bytearray()
    await asyncio.gather(
        _lines(process.stdout, reader.feed, on_signal, stdout_log, None),
        _lines(process.stderr, reader.feed_stderr, on_signal, stderr_log, tail),
    )
    return tail.decode("utf-8", errors="replace")
