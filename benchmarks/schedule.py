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


def run(mode: Mode) -> Section:
    unit = 0.03 if mode.quick else 0.15
    n = 24 if mode.quick else 48
    available = {s: strategy_available(s) for s in STRATEGIES}
    limits = dict.fromkeys(SPECIALISTS, PER_TYPE)
    rows: list[list[str]] = []
    worst: dict[str, float] = {}
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
            worst[strategy] = max(worst.get(strategy, 0.0), ratio)
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
                    why=WHY[strategy],
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
            "exact estimates. Cells: real wall / lower bound, the simulator's in brackets."
        ),
        columns=["workload", "bound", *STRATEGIES],
        rows=rows,
        targets=targets,
        notes=notes,
    )


WHY = {
    "work-stealing": (
        "The simulator shows nearly the same ratios, so the loss is the scheduler's policy, "
        "not engine overhead. Two causes. (1) `fair_share` splits the 6 slots 3/3 between "
        "coder and tester by instance demand, although coders have twice the work; a "
        "fourth coder is spawned only when a tester retires, so the per-type bound "
        "(coder work / 4) is out of reach (reproduction in docs: the uniform workload "
        "simulates at 1.21x the bound with 6 slots, 1.02x with 8). Sharing slots in "
        "proportion to remaining work (task count, or estimates) would fix it. (2) Tasks "
        "start in plan order, so a long task reached late finishes alone; longest-first "
        "with estimates is the announced fix."
    ),
    "longest-first": (
        "Longest-first is a greedy (LPT) heuristic; with dependencies it does not see "
        "the critical path, and it still inherits the count-based slot share. Ranking by "
        "longest remaining chain and sharing slots by work would close it."
    ),
}
