"""How well a run used its parallelism, computed from the journal alone.

`Summary` (in _metrics) says what happened; this module says how good it was and why
not better: how close each phase came to the fastest it could possibly have been
(a lower bound built from the measured durations), where the time went (the critical
path, the slowest tasks, specialists that ran out of instances) and where capacity
sat unused. Every figure is defined in docs/metrics.md; keep the two in step.

Only the journal is read, never the live engine, so a report can be made for any
past run, on another machine, long after the agents are gone.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ._journal import Journal
from ._metrics import alive_intervals, instance_key
from ._plan import PHASES
from ._wall import Span, active_seconds, active_spans, overlap, segment_end

# What the Parallel Execution Module promises per phase, shown next to the measurement.
CLAIMED_SPEEDUP: dict[str, tuple[float, float]] = {
    "research": (3.0, 5.0),
    "planning": (2.0, 3.0),
    "implementation": (4.0, 6.0),
    "validation": (5.0, 10.0),
}

SLOWEST_COUNT = 5
IDLE_BELOW = 0.5
# A specialist counts as a bottleneck when saturated for at least this share of the wall.
SATURATED_SHARE = 0.05


@dataclass
class AttemptSpan:
    """One bar of the timeline; times are seconds since the run was created."""

    task: str
    attempt: int
    instance: str
    specialist: str
    phase: str
    start: float
    end: float
    status: str
    exit_code: int | None
    error: str | None
    critical: bool = False

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass
class InstanceStats:
    name: str
    specialist: str
    busy_s: float
    alive_s: float
    utilization: float
    attempts: int
    alive: list[tuple[float, float]]  # (spawned, retired) per journal row, run-relative


@dataclass
class SpecialistStats:
    name: str
    limit: int
    instances: int
    work_s: float
    utilization: float
    busy_min_s: float
    busy_max_s: float
    busy_mean_s: float
    imbalance: float  # max busy / mean busy; 1.0 is a perfect balance
    saturated_s: float


@dataclass
class PhaseStats:
    phase: str
    start: float
    end: float
    wall_s: float  # without time the run sat stopped inside the phase
    task_s: float
    parallelism: float  # task_s / wall_s
    slots: int
    lower_bound_s: float
    bound_by: str  # "work", "chain" or "specialist:NAME": the term that set the bound
    efficiency: float
    tasks: int
    critical_path: list[str]
    critical_path_s: float
    claimed_speedup: tuple[float, float] | None


@dataclass
class TaskTime:
    task: str
    specialist: str
    phase: str
    state: str
    duration_s: float


@dataclass
class Sample:
    time: float  # run-relative
    cpu: float | None
    running: int | None
    agents_cpu: float | None
    mem_used: float | None


@dataclass
class Analysis:
    """Everything a report shows about one run, as plain data."""

    run_id: str
    status: str
    created: float
    wall_s: float  # without the time the run sat stopped (docs/metrics.md)
    task_s: float
    parallelism: float  # task_s / wall_s: not a speedup
    utilization: float
    slots: int
    lower_bound_s: float
    efficiency: float
    overhead_s: float | None
    overhead: float | None  # overhead_s / wall_s; None when the engine timed nothing
    timings: dict[str, float]
    cpu_mean: float | None
    samples: list[Sample]
    critical_path: list[str]
    critical_path_s: float
    slowest: list[TaskTime]
    saturated: list[str]
    idle_instances: list[str]
    idle_specialists: list[str]
    phases: list[PhaseStats]
    specialists: list[SpecialistStats]
    instances: list[InstanceStats]
    attempts: list[AttemptSpan] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only, floats rounded so diffs of two reports stay readable."""
        data = _rounded(asdict(self))
        assert isinstance(data, dict)
        return data


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


# ---------------------------------------------------------------- reading the journal


@dataclass
class _Run:
    """The journal rows of one run, with times made relative to its creation."""

    run_id: str
    status: str
    created: float
    end: float
    total_parallel: int
    limits: dict[str, int]
    tasks: list[sqlite3.Row]
    spans: list[AttemptSpan]
    deps: dict[str, list[str]]
    phase_of: dict[str, str]
    specialist_of: dict[str, str]
    instances: list[sqlite3.Row]
    events: list[sqlite3.Row]
    active: list[Span]  # absolute times an engine worked on the run (`_wall`)


def _load(journal: Journal, run_id: str) -> _Run:
    run = journal.run(run_id)
    created: float = run["created"]
    tasks = journal.tasks(run_id)
    attempts = journal.attempts(run_id)
    last = max((a["ended"] or a["started"] for a in attempts), default=created)
    end: float = run["ended"] if run["ended"] is not None else last
    active = active_spans(journal, run_id, created, end)
    settings = json.loads(run["settings_json"])
    phase_of = {t["id"]: t["phase"] for t in tasks}
    specialist_of = {t["id"]: t["specialist"] for t in tasks}
    spans = [
        AttemptSpan(
            task=a["task_id"],
            attempt=a["attempt"],
            instance=a["instance"],
            specialist=specialist_of.get(a["task_id"], "?"),
            phase=phase_of.get(a["task_id"], "?"),
            start=a["started"] - created,
            # An attempt still open (a crashed or live run) is counted up to the end of
            # the span its engine worked in: a killed engine's attempts died with it.
            end=(a["ended"] if a["ended"] is not None else segment_end(a["started"], active, end))
            - created,
            status=a["status"],
            exit_code=a["exit_code"],
            error=a["error"],
        )
        for a in attempts
    ]
    return _Run(
        run_id=run["id"],
        status=run["status"],
        created=created,
        end=end - created,
        total_parallel=int(settings.get("total_parallel", 1)),
        limits={k: int(v) for k, v in json.loads(run["limits_json"]).items()},
        tasks=tasks,
        spans=spans,
        deps=_dependencies(run["plan_json"]),
        phase_of=phase_of,
        specialist_of=specialist_of,
        instances=journal.instances(run_id),
        events=journal.events(run_id),
        active=active,
    )


def _dependencies(plan_json: str) -> dict[str, list[str]]:
    """depends_on per task id; the tasks table does not keep it, the plan as given does."""
    try:
        plan = json.loads(plan_json)
    except json.JSONDecodeError:
        return {}
    out: dict[str, list[str]] = {}
    for task in plan.get("tasks", []) if isinstance(plan, dict) else []:
        if isinstance(task, dict) and "id" in task:
            out[str(task["id"])] = [str(d) for d in task.get("depends_on") or []]
    return out


def _timings(journal: Journal, run_id: str) -> dict[str, float]:
    return journal.timings(run_id)


def _samples(journal: Journal, run_id: str, created: float) -> list[Sample]:
    return [
        Sample(r["time"] - created, r["cpu"], r["running"], r["agents_cpu"], r["mem_used"])
        for r in journal.samples(run_id)
    ]


# ---------------------------------------------------------------- durations and chains


def _task_durations(spans: Iterable[AttemptSpan]) -> dict[str, float]:
    """Work per task: its attempts summed, so a retried task costs what it really cost."""
    out: dict[str, float] = defaultdict(float)
    for s in spans:
        out[s.task] += s.duration
    return out


def _longest_chain(
    members: Sequence[str], deps: Mapping[str, Sequence[str]], duration: Mapping[str, float]
) -> tuple[list[str], float]:
    """The heaviest path through depends_on among `members` (a DAG: the plan has no cycles).

    Dependencies outside `members` (earlier phases) are left out: a phase barrier already
    waits for them, so they belong to the earlier phase's chain.
    """
    inside = set(members)
    best: dict[str, tuple[float, str | None]] = {}

    def visit(task: str) -> None:
        # Iterative depth-first walk: a 10,000-task chain must not hit the recursion limit.
        stack = [task]
        while stack:
            cur = stack[-1]
            if cur in best:
                stack.pop()
                continue
            todo = [d for d in deps.get(cur, ()) if d in inside and d not in best]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            prev: str | None = None
            prev_len = 0.0
            for d in deps.get(cur, ()):
                if d in inside and best[d][0] > prev_len:
                    prev, prev_len = d, best[d][0]
            best[cur] = (prev_len + duration.get(cur, 0.0), prev)

    for t in members:
        visit(t)
    # max() keeps the first of equals, so ties go to the task earliest in the plan.
    end = max(members, key=lambda t: best[t][0], default=None)
    length = best[end][0] if end is not None else 0.0
    path: list[str] = []
    cur: str | None = end
    while cur is not None:
        path.append(cur)
        cur = best[cur][1]
    path.reverse()
    return path, length


# ---------------------------------------------------------------- phases


def _phase_windows(run: _Run) -> dict[str, tuple[float, float]]:
    """Phase start and end from the journal's phase events, the run's end for an open one."""
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for e in run.events:
        if e["kind"] not in ("phase_started", "phase_ended") or not e["data"]:
            continue
        phase = json.loads(e["data"]).get("phase")
        if not isinstance(phase, str):
            continue
        target = starts if e["kind"] == "phase_started" else ends
        target.setdefault(phase, e["time"] - run.created)
    out: dict[str, tuple[float, float]] = {}
    for phase in _phases_present(run):
        spans = [s for s in run.spans if s.phase == phase]
        start = starts.get(phase, min((s.start for s in spans), default=0.0))
        end = ends.get(phase, max((s.end for s in spans), default=run.end))
        # The scheduler opens the first phase as it is built, a moment before the run row
        # is created; a phase is measured inside the run, so clamp it there.
        start = min(max(0.0, start), run.end)
        out[phase] = (start, max(start, min(end, run.end)))
    return out


def _phases_present(run: _Run) -> list[str]:
    present = {t["phase"] for t in run.tasks}
    return [p for p in PHASES if p in present] + sorted(present - set(PHASES))


@dataclass
class _Bound:
    seconds: float
    by: str
    slots: int


def _lower_bound(
    members: Sequence[str], run: _Run, duration: Mapping[str, float], chain_s: float
) -> _Bound:
    """No schedule of these tasks on these slots could finish sooner than this."""
    specialists = sorted({run.specialist_of[t] for t in members})
    slots = min(run.total_parallel, sum(run.limits.get(s, 1) for s in specialists))
    work = sum(duration.get(t, 0.0) for t in members)
    terms = [(_ratio(work, slots), "work"), (chain_s, "chain")]
    for s in specialists:
        spec_work = sum(duration.get(t, 0.0) for t in members if run.specialist_of[t] == s)
        terms.append((_ratio(spec_work, run.limits.get(s, 1)), f"specialist:{s}"))
    seconds, by = max(terms, key=lambda x: x[0])
    return _Bound(seconds, by, slots)


def _phase_stats(
    run: _Run, windows: Mapping[str, tuple[float, float]], duration: Mapping[str, float]
) -> list[PhaseStats]:
    out: list[PhaseStats] = []
    for phase, (start, end) in windows.items():
        members = [t["id"] for t in run.tasks if t["phase"] == phase]
        chain, chain_s = _longest_chain(members, run.deps, duration)
        bound = _lower_bound(members, run, duration, chain_s)
        wall = overlap(run.created + start, run.created + end, run.active)
        task_s = sum(duration.get(t, 0.0) for t in members)
        out.append(
            PhaseStats(
                phase=phase,
                start=start,
                end=end,
                wall_s=wall,
                task_s=task_s,
                parallelism=_ratio(task_s, wall),
                slots=bound.slots,
                lower_bound_s=bound.seconds,
                bound_by=bound.by,
                efficiency=_ratio(bound.seconds, wall),
                tasks=len(members),
                critical_path=chain,
                critical_path_s=chain_s,
                claimed_speedup=CLAIMED_SPEEDUP.get(phase),
            )
        )
    return out


# ---------------------------------------------------------------- instances


def _instance_stats(run: _Run) -> list[InstanceStats]:
    alive = alive_intervals(
        run.instances, run.created + run.end, origin=run.created, active=run.active
    )
    specialist = {row["name"]: row["specialist"] for row in run.instances}
    busy: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for s in run.spans:
        busy[s.instance] += s.duration
        count[s.instance] += 1
        specialist.setdefault(s.instance, s.specialist)
    out = []
    for name in sorted(set(alive) | set(busy), key=instance_key):
        alive_s = sum(max(0.0, b - a) for a, b in alive.get(name, []))
        out.append(
            InstanceStats(
                name=name,
                specialist=specialist[name],
                busy_s=busy.get(name, 0.0),
                alive_s=alive_s,
                utilization=_ratio(busy.get(name, 0.0), alive_s),
                attempts=count.get(name, 0),
                alive=alive.get(name, []),
            )
        )
    return out


# ---------------------------------------------------------------- saturation


def _ready_times(run: _Run, windows: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """When each task could have started: its phase open and its dependencies ended."""
    ended: dict[str, float] = {}
    for s in run.spans:
        ended[s.task] = max(ended.get(s.task, s.end), s.end)
    for t in run.tasks:
        if t["ended"] is not None and t["id"] not in ended:
            ended[t["id"]] = t["ended"] - run.created
    out: dict[str, float] = {}
    for t in run.tasks:
        phase_start = windows.get(t["phase"], (0.0, 0.0))[0]
        dep_ends = [ended.get(d, run.end) for d in run.deps.get(t["id"], [])]
        out[t["id"]] = max([phase_start, *dep_ends])
    return out


def _saturation(
    run: _Run, windows: Mapping[str, tuple[float, float]], instances: Sequence[InstanceStats]
) -> dict[str, float]:
    """Seconds per specialist during which work was queued and every instance was busy.

    A sweep over change points: +1/-1 for queued tasks, busy attempts and live instances.
    Queued means ready (see `_ready_times`) and not yet started; a task that never started
    (skipped, interrupted) was never queued, as the engine never had it to run.
    """
    ready = _ready_times(run, windows)
    first_start: dict[str, float] = {}
    for s in run.spans:
        first_start[s.task] = min(first_start.get(s.task, s.start), s.start)
    changes: dict[str, list[tuple[float, int, int, int]]] = defaultdict(list)
    for t in run.tasks:
        tid = t["id"]
        if tid in first_start and first_start[tid] > ready[tid]:
            spec = t["specialist"]
            changes[spec] += [(ready[tid], 1, 0, 0), (first_start[tid], -1, 0, 0)]
    for s in run.spans:
        changes[s.specialist] += [(s.start, 0, 1, 0), (s.end, 0, -1, 0)]
    for inst in instances:
        for a, b in inst.alive:
            changes[inst.specialist] += [(a, 0, 0, 1), (b, 0, 0, -1)]
    out: dict[str, float] = {}
    for spec, points in changes.items():
        points.sort()
        queued = busy = alive = 0
        total = 0.0
        prev = 0.0
        for time, dq, db, da in points:
            if queued > 0 and alive > 0 and busy >= alive:
                total += max(0.0, time - prev)
            queued, busy, alive, prev = queued + dq, busy + db, alive + da, time
        out[spec] = total
    return out


def _specialist_stats(
    run: _Run,
    instances: Sequence[InstanceStats],
    duration: Mapping[str, float],
    saturated: Mapping[str, float],
) -> list[SpecialistStats]:
    out = []
    names = sorted(set(run.limits) | {i.specialist for i in instances})
    for name in names:
        mine = [i for i in instances if i.specialist == name]
        busy = [i.busy_s for i in mine]
        mean = _ratio(sum(busy), len(busy))
        out.append(
            SpecialistStats(
                name=name,
                limit=run.limits.get(name, 0),
                instances=len(mine),
                work_s=sum(d for t, d in duration.items() if run.specialist_of.get(t) == name),
                utilization=_ratio(sum(busy), sum(i.alive_s for i in mine)),
                busy_min_s=min(busy, default=0.0),
                busy_max_s=max(busy, default=0.0),
                busy_mean_s=mean,
                imbalance=_ratio(max(busy, default=0.0), mean),
                saturated_s=saturated.get(name, 0.0),
            )
        )
    return out


# ---------------------------------------------------------------- the whole run


def _run_critical_path(
    phases: Sequence[PhaseStats],
) -> tuple[list[str], float]:
    """Phases are barriers, so the run's longest chain is each phase's chain in turn."""
    path = [t for p in phases for t in p.critical_path]
    return path, sum(p.critical_path_s for p in phases)


def _slowest(run: _Run, duration: Mapping[str, float]) -> list[TaskTime]:
    rows = [
        TaskTime(t["id"], t["specialist"], t["phase"], t["state"], duration[t["id"]])
        for t in run.tasks
        if t["id"] in duration
    ]
    rows.sort(key=lambda r: (-r.duration_s, r.task))
    return rows[:SLOWEST_COUNT]


def analyze(journal: Journal, run_id: str) -> Analysis:
    """The analysis of one run; see docs/metrics.md for every definition."""
    run = _load(journal, run_id)
    duration = _task_durations(run.spans)
    windows = _phase_windows(run)
    phases = _phase_stats(run, windows, duration)
    instances = _instance_stats(run)
    saturated = _saturation(run, windows, instances)
    specialists = _specialist_stats(run, instances, duration, saturated)
    path, path_s = _run_critical_path(phases)
    on_path = set(path)
    for s in run.spans:
        s.critical = s.task in on_path
    wall = active_seconds(run.active)
    task_s = sum(duration.values())
    lower = sum(p.lower_bound_s for p in phases)
    timings = _timings(journal, run_id)
    overhead_s = sum(timings.values()) if timings else None
    samples = _samples(journal, run_id, run.created)
    cpu = [s.cpu for s in samples if s.cpu is not None]
    alive = sum(i.alive_s for i in instances)
    return Analysis(
        run_id=run.run_id,
        status=run.status,
        created=run.created,
        wall_s=wall,
        task_s=task_s,
        parallelism=_ratio(task_s, wall),
        utilization=_ratio(sum(i.busy_s for i in instances), alive),
        slots=max((p.slots for p in phases), default=0),
        lower_bound_s=lower,
        efficiency=_ratio(lower, wall),
        overhead_s=overhead_s,
        overhead=_ratio(overhead_s, wall) if overhead_s is not None else None,
        timings=timings,
        cpu_mean=sum(cpu) / len(cpu) if cpu else None,
        samples=samples,
        critical_path=path,
        critical_path_s=path_s,
        slowest=_slowest(run, duration),
        saturated=[
            s.name
            for s in specialists
            if s.saturated_s > 0 and s.saturated_s >= SATURATED_SHARE * wall
        ],
        idle_instances=[i.name for i in instances if i.utilization < IDLE_BELOW],
        idle_specialists=[
            s.name for s in specialists if s.instances and s.utilization < IDLE_BELOW
        ],
        phases=phases,
        specialists=specialists,
        instances=instances,
        attempts=run.spans,
    )
