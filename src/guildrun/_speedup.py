"""Speedup, only where it was measured.

Summed task time over wall time is parallelism: how many tasks ran at once on
average. It is not a speedup, because tasks that share CPUs, disks or a rate limit
slow each other down, so each one's duration grows with the parallelism. A speedup
is one wall time over another: this run against a finished run of the very same
plan in the same journal that ran one task at a time (`total_parallel: 1`) or one
instance per specialist (`per_agent_type: 1`). Without such a run there is no
speedup to report, and none is.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from ._journal import Journal
from ._wall import active_seconds, active_spans

SEQUENTIAL = "measured sequential"
ONE_PER_SPECIALIST = "measured one instance per specialist"


@dataclass(frozen=True)
class Baseline:
    run_id: str
    wall_s: float
    kind: str  # SEQUENTIAL or ONE_PER_SPECIALIST: what `speedup_vs` says


def _kind(run: sqlite3.Row) -> str | None:
    try:
        settings = json.loads(run["settings_json"])
        limits = json.loads(run["limits_json"])
    except (TypeError, json.JSONDecodeError):
        return None
    if isinstance(settings, dict) and settings.get("total_parallel") == 1:
        return SEQUENTIAL
    if isinstance(limits, dict) and limits and all(v == 1 for v in limits.values()):
        return ONE_PER_SPECIALIST
    return None


def measured_baseline(journal: Journal, run: sqlite3.Row) -> Baseline | None:
    """The finished run of the same plan to compare `run` with, or None.

    A sequential run is preferred to one instance per specialist; of each, the latest.
    A run is never compared with a run of its own kind, and only a run that finished
    every task ("done") has a speedup: a failed one did different work.
    """
    own = _kind(run)
    if run["status"] != "done" or own == SEQUENTIAL:
        return None
    rows = journal.db.execute(
        "SELECT * FROM runs WHERE plan_json=? AND id<>? AND status='done' AND ended IS NOT NULL"
        " ORDER BY created DESC, id DESC",
        (run["plan_json"], run["id"]),
    ).fetchall()
    kinds = [(row, _kind(row)) for row in rows]
    for wanted in (SEQUENTIAL, ONE_PER_SPECIALIST):
        if wanted == own:
            continue
        for row, kind in kinds:
            if kind == wanted:
                spans = active_spans(journal, row["id"], row["created"], row["ended"])
                return Baseline(row["id"], active_seconds(spans), wanted)
    return None
