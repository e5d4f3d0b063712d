"""Scenario 2: schedule quality on heterogeneous work, real runs beside the simulator.

Each workload is run for real once per strategy and simulated with the same
scheduler; both are divided by the lower bound max(work/slots, longest chain,
per-specialist work/limit), so 1.00 is a perfect schedule. Two specialists share the
slots so the per-type term of the bound matters.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ._common import (
    STAND_IN_NOTE,
    Mode,
    Section,
    Target,
    Work,
    lognormal_units,
    lower_bound,
    predicted_wall,
    project,
    run_api,
    sleep_plan,
    strategy_available,
)

SPECIALISTS = ("coder", "tester")
PER_TYPE = 4
TOTAL = 6
STRATEGIES = ("round-robin", "work-stealing", "longest-first")
SEED = 7


def _uniform(rng: random.Random, i: int, n: int) -> float:
    return rng.uniform(0.8, 1.2)


def _long_tailed(rng: random.Random, i: int, n: int) -> float:
    return lognormal_units(rng, 1.0, 1.0, 0.1, 12.0)


def _giants(rng: random.Random, i: int, n: int) -> float:
    # Three giants placed late in plan order, where a plain deal runs them last.
    return 8.0 if i in (n // 2, 2 * n // 3, n - 4) else rng.uniform(0.5, 1.5)


LENGTHS: dict[str, Callable[[random.Random, int, int], float]] = {
    "uniform": _uniform,
    "long-tailed": _long_tailed,
    "a few giants": _giants,
    "with dependencies": lambda rng, i, n: lognormal_units(rng, 1.0, 0.6, 0.2, 5.0),
}


def workload(kind: str, n: int, seed: int) -> list[Work]:
    rng = random.Random(seed)
    out: list[Work] = []
    for i in range(n):
        deps: tuple[str, ...] = ()
        if kind == "with dependencies" and i >= 4 and rng.random() < 0.4:
            deps = (out[rng.randrange(max(0, i - 8), i)].id,)
        specialist = SPECIALISTS[1 if i % 3 == 2 else 0]
        out.append(Work(f"w{i:03d}", specialist, LENGTHS[kind](rng, i, n), deps))
    return out


def unsplit_longest_first(n: int) -> dict[str, float]:
    """Simulated longest-first with a slot for every instance: what slot sharing costs."""
    total = PER_TYPE * len(SPECIALISTS)
    limits = dict.fromkeys(SPECIALISTS, PER_TYPE)
    out: dict[str, float] = {}
    for k, kind in enumerate(LENGTHS):
        work = workload(kind, n, SEED + k)
        plan = sleep_plan(
            work,
            unit_s=1.0,
            per_agent_type=PER_TYPE,
            total=total,
            strategy="longest-first",
            estimates=True,
        )
        with project() as root:
            sim = predicted_wall(plan, root, {w.id: w.units for w in work})
        out[kind] = sim / lower_bound(work, limits, total)
    return out


def run(mode: Mode) -> Section:
    unit = 0.03 if mode.quick else 0.15
    n = 24 if mode.quick else 48
    available = {s: strategy_available(s) for s in STRATEGIES}
    limits = dict.fromkeys(SPECIALISTS, PER_TYPE)
    rows: list[list[str]] = []
    worst: dict[str, float] = {}
    worst_sim: dict[str, float] = {}
    for k, kind in enumerate(LENGTHS):
        work = workload(kind, n, SEED + k)
        bound = lower_bound(work, limits, TOTAL) * unit
        seconds = {w.id: w.units * unit for w in work}
        row = [kind, f"{bound:.2f} s"]
        for strategy in STRATEGIES:
            if not available[strategy]:
                row.append("not available yet")
                continue
            plan = sleep_plan(
                work,
                unit_s=unit,
                per_agent_type=PER_TYPE,
                total=TOTAL,
                strategy=strategy,
                estimates=strategy == "longest-first",
            )
            with project() as root:
                wall = run_api(plan, root).wall_s
                sim = predicted_wall(plan, root, seconds)
            ratio = wall / bound
            if ratio > worst.get(strategy, 0.0):
                worst[strategy], worst_sim[strategy] = ratio, sim / bound
            row.append(f"{ratio:.2f} (sim {sim / bound:.2f})")
        rows.append(row)
    targets = []
    goals = {"work-stealing": 1.10, "longest-first": 1.05}
    for strategy, goal in goals.items():
        if strategy in worst:
            targets.append(
                Target(
                    f"{strategy}: worst wall / bound",
                    f"≤ {goal:.2f}",
                    f"{worst[strategy]:.2f}",
                    worst[strategy] <= goal,
                    why=why(strategy, worst[strategy], worst_sim[strategy], unit),
                )
            )
        else:
            targets.append(Target(f"{strategy}: worst wall / bound", f"≤ {goal:.2f}", "n/a", None))
    notes = []
    if "round-robin" in worst and "work-stealing" in worst:
        notes.append(
            f"the seed's round-robin is up to {worst['round-robin']:.2f}x the bound, "
            f"work stealing up to {worst['work-stealing']:.2f}x"
        )
    if available["longest-first"]:
        wide = ", ".join(f"{kind} {r:.2f}" for kind, r in unsplit_longest_first(n).items())
        notes.append(
            f"longest-first simulated with {2 * PER_TYPE} slots, so that no specialist waits "
            f"for a share of the slots (wall / its bound): {wide}"
        )
    return Section(
        key="schedule",
        title="2. Schedule quality on heterogeneous work",
        command="python -m benchmarks --only schedule",
        about=(
            f"{n} tasks per workload over two specialists (coder 2/3, tester 1/3), "
            f"{PER_TYPE} instances each at most, {TOTAL} slots in all; {STAND_IN_NOTE}, "
            f"one unit = {unit} s. Lengths (seeded): uniform U(0.8, 1.2); long-tailed "
            "log-normal mean 1 sigma 1 clipped to [0.1, 12]; a few giants: U(0.5, 1.5) "
            "plus three tasks of 8 late in plan order; with dependencies: log-normal mean 1 "
            "sigma 0.6, 40% of tasks depend on one of the 8 before them. longest-first gets "
            "exact estimates in the plan (`estimate:`); the other two get none. Cells: real "
            "wall / lower bound, the simulator's in brackets."
        ),
        columns=["workload", "bound", *STRATEGIES],
        rows=rows,
        targets=targets,
        notes=notes,
    )


def why(strategy: str, real: float, sim: float, unit: float) -> str:
    """The reason for a miss; says so when the real run is well behind the simulator."""
    if real - sim <= 0.05:
        return WHY[strategy]
    return (
        f"At the worst workload the real run is {real:.2f}x the bound and the simulator "
        f"{sim:.2f}x: the difference is engine time per task (process start, journal "
        f"commits, ownership checks) against tasks of about {unit} s, and it shrinks as "
        f"tasks grow. The simulator's part: " + WHY[strategy]
    )


WHY = {
    "work-stealing": (
        "The simulator shows nearly the same ratios, so the loss is the schedule, not "
        "engine overhead: work stealing starts tasks in plan order, so a long task reached "
        "late finishes alone (long-tailed, a few giants, chains). What closes it is in the "
        "next column: give tasks estimates and use `strategy: longest-first` (or `auto`, "
        "which simulates the strategies and picks the best)."
    ),
    "longest-first": (
        "The simulator shows most of the gap, so it is the schedule's. (1) `fair_share` splits "
        "the 6 slots between coder and tester once per phase, in whole slots, by estimated "
        "work (D'Hondt), and a specialist gains a slot only when the other runs out of ready "
        "tasks, so the per-specialist bound, which assumes slots can be shared in fractions, "
        "is out of reach: with 8 slots (no sharing) the workloads without dependencies come "
        "close to the bound (see the note). Re-sharing the slots by remaining estimated work each "
        "time an instance frees up would close most of it. (2) With dependencies, "
        "longest-first ranks a task by its own length, not by the chain waiting behind it, "
        "and the gap stays at 8 slots; ranking by longest remaining chain (critical path) "
        "would close part of it, and part may be the bound's looseness with chains."
    ),
}
