"""How long a run really ran: its wall time without the time it sat stopped.

A run stopped (Ctrl-C, a crash, a killed engine) and resumed a day later did not take
a day. The journal marks each time an engine took the run up (`run_started`,
`run_resumed`) and let it go (`run_ended`); an engine that was killed wrote no
`run_ended`, and its last journaled event is the last sign it was working. The
spans between are when the run was active; every figure divided by wall time
(parallelism, efficiency, overhead) uses their sum.
"""

from __future__ import annotations

import bisect
import sqlite3
from collections.abc import Sequence

from ._journal import Journal

Span = tuple[float, float]


def active_spans(journal: Journal, run_id: str, created: float, end: float) -> list[Span]:
    """The spans in which an engine worked on the run, in order; one span if never resumed."""
    marks = journal.db.execute(
        "SELECT seq, kind, time FROM events WHERE run_id=?"
        " AND kind IN ('run_ended', 'run_resumed') ORDER BY seq",
        (run_id,),
    ).fetchall()
    if not any(kind == "run_resumed" for _seq, kind, _t in marks):
        return [(created, max(created, end))]
    spans: list[Span] = []
    start: float | None = created
    for seq, kind, t in marks:
        if kind == "run_ended":
            if start is not None:
                spans.append((start, max(start, t)))
            start = None
        else:  # run_resumed
            if start is not None:  # the engine died without saying so
                spans.append((start, max(start, _last_sign(journal, run_id, seq, t))))
            start = t
    if start is not None:
        spans.append((start, max(start, end)))
    return spans


def _last_sign(journal: Journal, run_id: str, seq: int, resumed: float) -> float:
    """When a killed engine was last seen working: its last event, or its last sample of
    the machine (taken every `sample_interval` even while one long task runs)."""
    last = journal.db.execute(
        "SELECT MAX(time) FROM events WHERE run_id=? AND seq<?", (run_id, seq)
    ).fetchone()[0]
    try:
        sampled = journal.db.execute(
            "SELECT MAX(time) FROM samples WHERE run_id=? AND time<?", (run_id, resumed)
        ).fetchone()[0]
    except sqlite3.OperationalError:  # a journal from before samples were kept
        sampled = None
    return max((x for x in (last, sampled) if x is not None), default=0.0)


def active_seconds(spans: Sequence[Span]) -> float:
    return sum(b - a for a, b in spans)


def overlap(a: float, b: float, spans: Sequence[Span]) -> float:
    """How much of [a, b] lies inside the spans."""
    return active_seconds(clip(a, b, spans))


def segment_end(t: float, spans: Sequence[Span], default: float) -> float:
    """The end of the span that holds `t` (or the first after it): when whatever was
    alive at `t` stopped, if nothing journaled it stopping."""
    ends = [hi for _lo, hi in spans]
    k = bisect.bisect_left(ends, t)
    return ends[k] if k < len(ends) else default


def clip(a: float, b: float, spans: Sequence[Span]) -> list[Span]:
    """The pieces of [a, b] that lie inside the spans."""
    out: list[Span] = []
    for lo, hi in spans:
        start, stop = max(a, lo), min(b, hi)
        if stop > start:
            out.append((start, stop))
    return out
