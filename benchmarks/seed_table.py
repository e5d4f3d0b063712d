"""Scenario 1: the seed's table, 1 instance against 3 instances of one specialist.

Task lengths are drawn (seeded) from a log-normal with a mean of 2 "minutes", sigma
0.5, clipped to 0.5-6 minutes; a minute is scaled to a fraction of a second so the
table runs in seconds. With varied lengths the ideal is not always 3x: the bound
max(work/3, longest task) says what is possible, and the target applies where it
allows 3x.
"""

from __future__ import annotations

import random

from ._common import (
    STAND_IN_NOTE,
    Mode,
    Section,
    Target,
    Work,
    fmt_x,
    lognormal_units,
    lower_bound,
    predicted_wall,
    project,
    run_api,
    sleep_plan,
)

WORKLOADS: list[tuple[str, str, int]] = [
    ("refactoring components", "refactorer", 20),
    ("creating test files", "test-writer", 30),
    ("migrating endpoints", "migrator", 18),
    ("models", "modeller", 24),
    ("UI components", "ui-builder", 15),
]
SEED = 1


def workload(specialist: str, n: int, seed: int) -> list[Work]:
    rng = random.Random(seed)
    return [
        Work(f"{specialist}-{i:02d}", specialist, lognormal_units(rng, 2.0, 0.5, 0.5, 6.0))
        for i in range(n)
    ]


def run(mode: Mode) -> Section:
    minute = 0.01 if mode.quick else 0.1
    rows: list[list[str]] = []
    targets: list[Target] = []
    lpt: list[str] = []
    for k, (name, specialist, n) in enumerate(WORKLOADS):
        work = workload(specialist, n, SEED + k)
        seconds = {w.id: w.units * minute for w in work}
        walls: dict[int, float] = {}
        predicted: dict[int, float] = {}
        for instances in (1, 3):
            plan = sleep_plan(work, unit_s=minute, per_agent_type=instances, total=20)
            with project() as root:
                walls[instances] = run_api(plan, root).wall_s
                predicted[instances] = predicted_wall(plan, root, seconds)
        longest: dict[int, float] = {}
        for instances in (1, 3):
            plan = sleep_plan(
                work,
                unit_s=minute,
                per_agent_type=instances,
                total=20,
                strategy="longest-first",
                estimates=True,
            )
            with project() as root:
                longest[instances] = predicted_wall(plan, root, seconds)
        lpt.append(f"{name} {fmt_x(longest[1] / longest[3])}")
        bound = lower_bound(work, {specialist: 3}, 20)
        total_units = sum(w.units for w in work)
        ideal = total_units / bound
        speedup = walls[1] / walls[3]
        rows.append(
            [
                f"{name} ({n})",
                f"{total_units:.0f} min",
                f"{walls[1]:.2f} s",
                f"{walls[3]:.2f} s",
                fmt_x(speedup),
                fmt_x(predicted[1] / predicted[3]),
                fmt_x(ideal),
            ]
        )
        if ideal >= 3.0 - 1e-9:
            simulated = predicted[1] / predicted[3]
            targets.append(
                Target(
                    f"seed table: {name}, 3 instances vs 1",
                    "≥ 2.90x",
                    fmt_x(speedup),
                    speedup >= 2.9,
                    why=WHY_SCHEDULE.format(sim=simulated, lpt=longest[1] / longest[3])
                    if simulated < 2.9
                    else WHY_ENGINE.format(sim=simulated),
                )
            )
    return Section(
        key="seed-table",
        title="1. The seed's table: 1 vs 3 instances of one specialist",
        command="python -m benchmarks --only seed-table",
        about=(
            f"{STAND_IN_NOTE}; one minute of the seed's table = {minute} s here. Lengths: "
            "log-normal, mean 2 min, sigma 0.5, clipped to [0.5, 6] min, seeded per "
            "workload. Strategy work-stealing (the default), no estimates. Speedup = wall with 1 "
            "instance / wall with 3; 'bound' = work / max(work/3, longest task), the best "
            "any schedule of 3 instances can do; 'simulated' = the same ratio from "
            "`simulate`."
        ),
        columns=[
            "workload",
            "work",
            "1 instance",
            "3 instances",
            "speedup",
            "simulated",
            "bound",
        ],
        rows=rows,
        targets=targets,
        notes=[
            "the 2.9x target applies only to rows whose bound allows 3x",
            "the same tasks with estimates and `strategy: longest-first`, simulated: "
            + ", ".join(lpt),
        ],
    )


WHY_SCHEDULE = (
    "The simulator predicts {sim:.2f}x for the same plan with no engine overhead at all, "
    "so the shortfall is the schedule: work stealing, the default, starts tasks in plan "
    "order, and when a long task starts last the other instances run dry while it "
    "finishes. With estimates in the plan and `strategy: longest-first` (or `auto`) the "
    "simulator predicts {lpt:.2f}x for the same tasks; that is what closes it."
)
WHY_ENGINE = (
    "The simulator predicts {sim:.2f}x for the same plan, so the schedule allows the "
    "target and the loss is engine time per task (process start, journal commits, "
    "ownership checks) against tasks of a fraction of a second; at real model-call "
    "lengths it vanishes."
)
