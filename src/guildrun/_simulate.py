"""Discrete-event simulation: the real scheduler, a fake clock, tasks of known length.

The same `Scheduler` that drives real runs is driven here by a clock that jumps from
one task end to the next, so a plan's behaviour can be predicted (and tested) in no
real time.
"""

from __future__ import annotations

import gc
import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    estimates: Mapping[str, float] | None = None,
) -> Simulation:
    """Run the plan on a clock that jumps; `durations` are the truth, `estimates` what
    the scheduler is told (as the engine passes them; else the plan's own)."""
    # A simulation keeps every decision and interval and makes no reference cycles; the
    # cyclic collector would only walk that growing heap again and again (half the time
    # of a 100,000-task simulation), so it is off until the end.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _simulate(plan, durations, limits, total, strategy, fails, estimates)
    finally:
        if collecting:
            gc.enable()


def _simulate(
    plan: CompiledPlan,
    durations: Mapping[str, float] | Callable[[str], float],
    limits: Mapping[str, int],
    total: int,
    strategy: Distribution | None,
    fails: Callable[[str], bool],
    estimates: Mapping[str, float] | None,
) -> Simulation:
    now = 0.0

    def clock() -> float:
        return now

    duration = durations if callable(durations) else durations.__getitem__
    sched = Scheduler(
        plan, limits=limits, total=total, strategy=strategy, clock=clock, estimates=estimates
    )
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
        sim = simulate(
            plan,
            durations,
            limits=limits,
            total=total,
            strategy=distribution(name),
            estimates=durations,
        )
        out.append(Prediction(name, sim.wall, sim.speedup, utilization(sim)))
    return out


def estimates(
    plan: CompiledPlan, journal_file: Path | None, prompts: Mapping[str, str] | None = None
) -> tuple[dict[str, float], str]:
    """Expected seconds per task and where they came from (`_estimates.estimate`)."""
    from ._estimates import estimate

    found = estimate(plan, journal_file, prompts)
    return found.seconds, found.describe()
