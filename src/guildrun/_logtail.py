"""What of a failed task's log a person is shown: the first error and the last lines.

Tools print the error that matters first and a summary last (ruff prints
`F821 Undefined name` and its `--> file:511` line, then pages of context, then
`Found 3 errors.`); a plain tail keeps only the summary. So the excerpt is the
first error-looking line with a few lines after it, `...`, and the last lines.
"""

from __future__ import annotations

import re
from pathlib import Path

HEAD_LINES = 5
TAIL_LINES = 10
GAP = "..."
# Read at most this much from each end of a log: an agent's log can be gigabytes.
_WINDOW = 64 * 1024

# Lines tools print when something went wrong: words, lint codes (F821, E501, SIM115),
# compiler-style locations with a message, Python's traceback header.
_ERRORISH = re.compile(
    r"\b(?:error|errors|fatal|failed|failure|exception|traceback|panic)\b"
    r"|^\s*[A-Z]{1,4}\d{3,4}\b"
    r"|^\s*-->\s"
    r"|^\S+:\d+(?::\d+)?:\s",
    re.IGNORECASE,
)


def excerpt(lines: list[str], head: int = HEAD_LINES, tail: int = TAIL_LINES) -> list[str]:
    """The first error-looking line and the `head - 1` after it, `...`, the last `tail`.

    When the first error lies in the tail, or there is no error-looking line, the last
    lines alone; when everything fits, everything.
    """
    if len(lines) <= head + tail:
        return list(lines)
    body = len(lines) - tail
    first = _first_error(lines[:body], head)
    return [*first, GAP, *lines[body:]] if first else lines[body:]


def _first_error(lines: list[str], head: int) -> list[str]:
    """The first error-looking line of `lines` and up to `head - 1` lines after it."""
    for i, line in enumerate(lines):
        if _ERRORISH.search(line):
            return lines[i : i + head]
    return []


def log_excerpt(path: str | Path | None) -> list[str]:
    """`excerpt` of the log at `path`; [] when there is none or it cannot be read.

    A log larger than two windows is read at its two ends only; the first error is
    then looked for in its first window.
    """
    if not path:
        return []
    try:
        with Path(path).open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(0)
            if size <= 2 * _WINDOW:
                return excerpt(_lines(fh.read()))
            front = _lines(fh.read(_WINDOW))[:-1]  # the last line may be cut
            fh.seek(size - _WINDOW)
            back = _lines(fh.read())[1:]  # so may the first
    except OSError:
        return []
    first = _first_error(front, HEAD_LINES)
    return [*first, GAP, *back[-TAIL_LINES:]] if first else back[-TAIL_LINES:]


def _lines(data: bytes) -> list[str]:
    return data.decode("utf-8", errors="replace").splitlines()
