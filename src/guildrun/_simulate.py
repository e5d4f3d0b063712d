"""Discrete-event simulation: the real scheduler, a fake clock, tasks of known length.

The same `Scheduler` that drives real runs is driven here by a clock that jumps from
one task end to the next, so a plan's behaviour can be predicted (and tested) in no
real time.
"""

from __future__ import annotations

import heapq
import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._journal import durations_by_work
from ._plan import CompiledPlan
from ._schedule import (
    STRATEGY_NAMES,
    Decision,
    Distribution,
    Retired,
    Scheduler,
    Spawned,
    Started,
    distribution,
)


@dataclass
class Interval:
    task: str
    instance: str
    start: float
    end: float
    stolen: bool


@dataclass
class Simulation:
    wall: float
    intervals: list[Interval]
    decisions: list[Decision] = field(repr=False)
    failed: set[str] = field(default_factory=set)

    @property
    def work(self) -> float:
        return sum(iv.end - iv.start for iv in self.intervals)

    @property
    def speedup(self) -> float:
        return self.work / self.wall if self.wall > 0 else 0.0


def simulate(
    plan: CompiledPlan,
    durations: Mapping[str, float] | Callable[[str], float],
    *,
    limits: Mapping[str, int],
    total: int,
    strategy: Distribution | None = None,
    fails: Callable[[str], bool] = lambda _tid: False,
) -> Simulation:
    now = 0.0

    def clock() -> float:
        return now

    duration = durations if callable(durations) else durations.__getitem__
    sched = Scheduler(plan, limits=limits, total=total, strategy=strategy, clock=clock)
    log: list[Decision] = []
    running: list[tuple[float, int, str]] = []
    starts: dict[str, Started] = {}
    intervals: list[Interval] = []
    failed: set[str] = set()
    seq = 0
    seen = 0
    log.extend(sched.dispatch())
    while True:
        for d in log[seen:]:
            if isinstance(d, Started):
                starts[d.task] = d
                heapq.heappush(running, (now + duration(d.task), seq, d.task))
                seq += 1
        seen = len(log)
        if not running:
            break
        now, _, tid = heapq.heappop(running)
        st = starts[tid]
        intervals.append(Interval(tid, st.instance, st.time, now, st.stolen))
        ok = not fails(tid)
        if not ok:
            failed.add(tid)
        log.extend(sched.finish(tid, ok))
        log.extend(sched.dispatch())
    if not sched.finished:
        raise RuntimeError("simulation stalled: the scheduler has unfinished tasks but runs none")
    return Simulation(now, intervals, log, failed)


@dataclass(frozen=True)
class Prediction:
    strategy: str
    wall: float
    speedup: float
    utilization: float

    def to_json(self) -> dict[str, float | str]:
        return {
            "strategy": self.strategy,
            "wall_s": round(self.wall, 4),
            "speedup": round(self.speedup, 4),
            "utilization": round(self.utilization, 4),
        }


def utilization(sim: Simulation) -> float:
    """Busy over alive time of the simulated instances, as the journal would measure it."""
    alive = 0.0
    spawned: dict[str, float] = {}
    for d in sim.decisions:
        if isinstance(d, Spawned):
            spawned[d.instance] = d.time
        elif isinstance(d, Retired) and d.instance in spawned:
            alive += d.time - spawned.pop(d.instance)
    alive += sum(sim.wall - t for t in spawned.values())
    return sim.work / alive if alive > 0 else 0.0


def predict(
    plan: CompiledPlan,
    durations: Mapping[str, float],
    *,
    limits: Mapping[str, int],
    total: int,
    strategies: Sequence[str] = STRATEGY_NAMES,
) -> list[Prediction]:
    out = []
    for name in strategies:
        sim = simulate(plan, durations, limits=limits, total=total, strategy=distribution(name))
        out.append(Prediction(name, sim.wall, sim.speedup, utilization(sim)))
    return out


def estimates(plan: CompiledPlan, journal_file: Path | None) -> tuple[dict[str, float], str]:
    """Expected seconds per task: the plan's `estimate`, else what past runs took.

    Past runs count when the same specialist did a task owning the same files (else
    any task of that specialist). Returns the estimates and where they came from.
    """
    out = {t.id: t.estimate for t in plan.tasks if t.estimate is not None}
    learned = 0
    if len(out) < len(plan.tasks) and journal_file is not None and journal_file.exists():
        exact, by_spec = _history(journal_file)
        for t in plan.tasks:
            if t.id in out:
                continue
            key = (t.specialist, json.dumps(sorted(t.files)))
            if key in exact:
                out[t.id] = exact[key]
            elif t.specialist in by_spec:
                out[t.id] = by_spec[t.specialist]
            else:
                continue
            learned += 1
    given = len(out) - learned
    if not out:
        return {t.id: 1.0 for t in plan.tasks}, "none (every task counted as 1 s)"
    mean = sum(out.values()) / len(out)
    missing = len(plan.tasks) - len(out)
    for t in plan.tasks:
        out.setdefault(t.id, mean)
    source = f"{given} from the plan, {learned} learned from past runs"
    if missing:
        source += f", {missing} set to the mean ({mean:.2f} s)"
    return out, source


def _history(path: Path) -> tuple[dict[tuple[str, str], float], dict[str, float]]:
    exact: dict[tuple[str, str], list[float]] = {}
    by_spec: dict[str, list[float]] = {}
    for spec, owned, d in durations_by_work(path):
        files = json.dumps(sorted(owned))
        exact.setdefault((spec, files), []).append(d)
        by_spec.setdefault(spec, []).append(d)
    return (
        {k: statistics.median(v) for k, v in exact.items()},
        {k: statistics.median(v) for k, v in by_spec.items()},
    )
