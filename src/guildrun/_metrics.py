"""The numbers a run is judged by, computed from the journal alone.

Definitions (docs/metrics.md has the long form):
- wall_s: run start to run end, without the time the run sat stopped before a resume.
- task_s: the summed duration of every attempt.
- parallelism: task_s / wall_s, how many tasks ran at once on average (not a speedup:
  tasks sharing a machine slow each other down).
- speedup: a measured sequential run's wall time over this one's (`_speedup`), else None.
- utilization: summed busy time of all instances over their summed alive time
  (an instance is alive from spawn to retirement; busy while it runs an attempt).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ._journal import EventKind, Journal
from ._logtail import log_excerpt
from ._speedup import measured_baseline
from ._wall import Span, active_seconds, active_spans, clip, segment_end


@dataclass
class TaskLine:
    id: str
    state: str
    specialist: str
    phase: str
    instance: str | None
    stolen_from: str | None
    attempts: int
    duration_s: float | None
    cause: str | None
    log: str | None = None
    tail: list[str] = field(default_factory=list)
    extra_files: list[str] = field(default_factory=list)  # needed beyond its own, run alone


@dataclass
class Undone:
    """Changes undone because no task may make them, and the tasks that were running."""

    paths: list[str]
    running: list[str]


# What a person can do about an undone change; said wherever undone changes are listed.
UNDONE_HINT = (
    "some changes were undone: no task that was running may write them. To allow such a "
    "write, add the file to the task's files:, or a glob for it to writes:, or set "
    "on_violation: sequential (the task runs again alone and keeps what it needed), "
    "or run in worktree mode."
)


@dataclass
class InstanceLine:
    name: str
    specialist: str
    busy_s: float
    alive_s: float
    tasks: int

    @property
    def utilization(self) -> float:
        return self.busy_s / self.alive_s if self.alive_s > 0 else 0.0


@dataclass
class Summary:
    """What a run did, as `guildrun run` prints it and the API returns it."""

    run_id: str
    status: str
    done: int
    failed: int
    skipped: int
    pending: int
    wall_s: float
    task_s: float
    parallelism: float
    utilization: float
    steals: int
    root: str
    tasks: list[TaskLine]
    instances: list[InstanceLine]
    speedup: float | None = None  # against a measured run, see speedup_vs; else unknown
    speedup_vs: str | None = None  # "measured sequential", "measured one instance per ..."
    baseline_run: str | None = None  # the run the speedup was measured against
    cost_usd: float = 0.0  # what the agents reported spending (or estimated from tokens)
    cost_estimated: bool = False
    tokens: int = 0
    rate_limited: int = 0  # how many times a provider's rate limit was met
    max_cost_usd: float | None = None  # the run's budget, if any
    # keep_context: which task continued the agent session of which earlier task
    shared_sessions: list[dict[str, str]] = field(default_factory=list)
    undone: list[Undone] = field(default_factory=list)  # stray changes put back
    workspace: list[str] = field(default_factory=list)  # worktree mode: base, result, apply

    @property
    def ok(self) -> bool:
        clean = self.failed == 0 and self.skipped == 0 and self.pending == 0
        return clean and not self.undone

    @property
    def exit_code(self) -> int:
        if self.status == "interrupted":
            return 130
        return 0 if self.ok else 1

    def to_json(self, *, details: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "status": self.status,
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "pending": self.pending,
            "wall_s": round(self.wall_s, 6),
            "task_s": round(self.task_s, 6),
            "parallelism": round(self.parallelism, 4),
            "speedup": round(self.speedup, 4) if self.speedup is not None else None,
            "speedup_vs": self.speedup_vs,
            "baseline_run": self.baseline_run,
            "utilization": round(self.utilization, 4),
            "steals": self.steals,
            "cost_usd": round(self.cost_usd, 6),
            "cost_estimated": self.cost_estimated,
            "tokens": self.tokens,
            "rate_limited": self.rate_limited,
            "shared_sessions": self.shared_sessions,
            "failures": [
                {"task": t.id, "cause": t.cause, "log": t.log, "tail": t.tail}
                for t in self.tasks
                if t.state == "failed"
            ],
            "skips": [{"task": t.id, "cause": t.cause} for t in self.tasks if t.state == "skipped"],
            "undone": [asdict(u) for u in self.undone],
            "extra_files": {t.id: t.extra_files for t in self.tasks if t.extra_files},
        }
        if self.undone:
            out["undone_hint"] = UNDONE_HINT
        if self.workspace:
            out["workspace"] = list(self.workspace)
        if details:
            out["tasks"] = [asdict(t) for t in self.tasks]
            out["instances"] = [
                {**asdict(i), "utilization": round(i.utilization, 4)} for i in self.instances
            ]
        return out


def summarize(journal: Journal, run_id: str) -> Summary:
    run = journal.run(run_id)
    now_end = run["ended"]
    attempts = journal.attempt_spans(run_id)
    last_end = max((a[4] or a[3] for a in attempts), default=run["created"])
    end = now_end if now_end is not None else last_end
    active = active_spans(journal, run_id, run["created"], end)
    wall = active_seconds(active)
    busy: dict[str, float] = defaultdict(float)
    count: Counter[str] = Counter()
    task_s = 0.0
    last_attempt: dict[str, tuple[int, str | None, str | None]] = {}  # attempt, logs
    for task_id, attempt, instance, started, ended, stdout, stderr in attempts:
        if ended is None:
            continue
        took = ended - started
        task_s += took
        busy[instance] += took
        count[instance] += 1
        if attempt >= last_attempt.get(task_id, (0, None, None))[0]:
            last_attempt[task_id] = (attempt, stdout, stderr)
    rows = journal.instances(run_id)
    spec_of = {r["name"]: r["specialist"] for r in rows}
    alive = {
        name: sum(b - a for a, b in spans)
        for name, spans in alive_intervals(rows, end, active=active).items()
    }
    instances = [
        InstanceLine(name, spec_of[name], busy.get(name, 0.0), alive[name], count.get(name, 0))
        for name in sorted(alive, key=instance_key)
    ]
    total_alive = sum(i.alive_s for i in instances)
    total_busy = sum(i.busy_s for i in instances)
    states: Counter[str] = Counter()
    lines: list[TaskLine] = []
    for tid, state, spec, phase, inst, stolen, tries, started, ended, cause in journal.task_lines(
        run_id
    ):
        states[state] += 1
        line = TaskLine(
            tid,
            state,
            spec,
            phase,
            inst,
            stolen,
            tries,
            (ended - started) if ended and started else None,
            cause,
        )
        last = last_attempt.get(tid)
        if state == "failed" and last is not None:
            log = last[2]
            tail = log_excerpt(log)
            if not tail:
                log = last[1]
                tail = log_excerpt(log)
            line.log, line.tail = log, tail
        lines.append(line)
    pending = sum(n for s, n in states.items() if s not in ("done", "failed", "skipped"))
    undone: list[Undone] = []
    by_id = {line.id: line for line in lines}
    for ev in journal.events_of(run_id, EventKind.STRAY_CHANGES_UNDONE):
        d = ev.data or {}
        undone.append(Undone(list(d.get("paths", [])), list(d.get("running", []))))
    for ev in journal.events_of(run_id, EventKind.TASK_FINISHED, having="extra_files"):
        d = ev.data or {}
        if ev.task in by_id and d.get("extra_files"):
            by_id[ev.task].extra_files = list(d["extra_files"])
    baseline = measured_baseline(journal, run)
    usd, tokens, estimated = journal.spend(run_id)
    try:
        budget = json.loads(run["settings_json"]).get("max_cost_usd")
    except (ValueError, AttributeError):
        budget = None
    return Summary(
        run_id=run_id,
        status=run["status"],
        done=states["done"],
        failed=states["failed"],
        skipped=states["skipped"],
        pending=pending,
        wall_s=wall,
        task_s=task_s,
        parallelism=task_s / wall if wall > 0 else 0.0,
        utilization=total_busy / total_alive if total_alive > 0 else 0.0,
        steals=sum(1 for t in lines if t.stolen_from),
        root=run["root"],
        tasks=lines,
        instances=instances,
        speedup=baseline.wall_s / wall if baseline is not None and wall > 0 else None,
        speedup_vs=baseline.kind if baseline is not None else None,
        baseline_run=baseline.run_id if baseline is not None else None,
        cost_usd=usd,
        cost_estimated=estimated,
        tokens=tokens,
        rate_limited=journal.count_events(run_id, "rate_limited"),
        max_cost_usd=budget,
        shared_sessions=shared_sessions(journal, run_id),
        undone=undone,
        workspace=workspace_notes(journal, run_id),
    )


def workspace_notes(journal: Journal, run_id: str) -> list[str]:
    """What worktree mode said about the run (its base, gates, result, how to apply),
    since it last started or resumed (hand merges in between are kept)."""
    out: list[str] = []
    # Only the kinds read here: a run holds several events per task, none of them notes.
    rows = journal.db.execute(
        "SELECT kind, data FROM events WHERE run_id=?"
        " AND kind IN ('run_resumed', 'workspace', 'gate') ORDER BY seq",
        (run_id,),
    )
    for e in rows:
        if e["kind"] == "run_resumed":
            out = [n for n in out if "merged by hand" in n]
        elif e["kind"] in ("workspace", "gate") and e["data"]:
            note = json.loads(e["data"]).get("note")
            if note:
                out.append(str(note))
    return out


def instance_key(name: str) -> tuple[str, int, str]:
    """Order instances by specialist, then number: interface#2 before interface#10."""
    spec, _, num = name.rpartition("#")
    return (spec, int(num), name) if num.isdigit() else (name, 0, name)


def alive_intervals(
    rows: Iterable[sqlite3.Row],
    end: float,
    origin: float = 0.0,
    active: list[Span] | None = None,
) -> dict[str, list[tuple[float, float]]]:
    """(spawned, retired) of each instance, one pair per journal row (an instance may live
    again in a later phase), relative to `origin`.

    With the run's `active` spans (absolute times), an instance lives at most until the
    end of the span it was spawned in: its engine ended or died there, whatever a later
    engine wrote for it; without them, an instance not retired lives until `end`.
    """
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        spawned = row["spawned"]
        retired = row["retired"] if row["retired"] is not None else end
        if active is None:
            pieces = [(spawned, retired)]
        else:
            pieces = clip(spawned, min(retired, segment_end(spawned, active, end)), active)
        out[row["name"]].extend((a - origin, b - origin) for a, b in pieces)
        if not pieces:
            out[row["name"]].append((spawned - origin, spawned - origin))
    return out


def shared_sessions(journal: Journal, run_id: str) -> list[dict[str, str]]:
    """Tasks that continued another task's agent session (`keep_context`), in order."""
    starts = journal.events_of(run_id, EventKind.TASK_STARTED, having="resumes_session")
    if not starts:
        return []
    made = {
        a["session_id"]: a["task_id"]
        for a in journal.attempts(run_id)
        if "session_id" in a.keys() and a["session_id"]  # noqa: SIM118 - a Row: `in` sees values
    }
    out: list[dict[str, str]] = []
    for ev in starts:
        session = str((ev.data or {}).get("resumes_session", ""))
        if session and ev.task:
            out.append({"task": ev.task, "continued": made.get(session, "?"), "session": session})
    return out
