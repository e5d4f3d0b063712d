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


GOAL = 2.93


def run(mode: Mode) -> Section:
    minute = 0.01 if mode.quick else 0.1
    rows: list[list[str]] = []
    targets: list[Target] = []
    for k, (name, specialist, n) in enumerate(WORKLOADS):
        work = workload(specialist, n, SEED + k)
        seconds = {w.id: w.units * minute for w in work}
        # Each plan twice in one project, nothing given by hand: the first run knows
        # nothing (work stealing); the second learns the lengths from the first's journal.
        walls: dict[tuple[int, int], float] = {}
        predicted: dict[tuple[int, int], float] = {}
        for instances in (1, 3):
            plan = sleep_plan(
                work, unit_s=minute, per_agent_type=instances, total=20, strategy="auto"
            )
            with project() as root:
                for attempt in (1, 2):
                    predicted[instances, attempt] = predicted_wall(plan, root, seconds)
                    walls[instances, attempt] = run_api(plan, root).wall_s
        bound = lower_bound(work, {specialist: 3}, 20)
        total_units = sum(w.units for w in work)
        ideal = total_units / bound
        first = walls[1, 1] / walls[3, 1]
        second = walls[1, 2] / walls[3, 2]
        simulated = {a: predicted[1, a] / predicted[3, a] for a in (1, 2)}
        rows.append(
            [
                f"{name} ({n})",
                f"{total_units:.0f} min",
                f"{walls[1, 2]:.2f} s",
                f"{walls[3, 1]:.2f} s",
                f"{walls[3, 2]:.2f} s",
                f"{fmt_x(first)} (sim {fmt_x(simulated[1])})",
                f"{fmt_x(second)} (sim {fmt_x(simulated[2])})",
                fmt_x(ideal),
            ]
        )
        if ideal >= 3.0 - 1e-9:
            targets.append(
                Target(
                    f"seed table: {name}, 3 instances vs 1, 2nd run",
                    f"≥ {GOAL:.2f}x",
                    fmt_x(second),
                    second >= GOAL,
                    why=(WHY_SCHEDULE if simulated[2] < GOAL else WHY_ENGINE).format(
                        sim=simulated[2], first=first
                    ),
                )
            )
    return Section(
        key="seed-table",
        title="1. The seed's table: 1 vs 3 instances of one specialist",
        command="python -m benchmarks --only seed-table",
        about=(
            f"{STAND_IN_NOTE}; one minute of the seed's table = {minute} s here. Lengths: "
            "log-normal, mean 2 min, sigma 0.5, clipped to [0.5, 6] min, seeded per "
            "workload. Nothing is given by hand: no `estimate:`, no strategy (the default, "
            "`auto`). Each plan (1 instance, 3 instances) runs twice in one project: the "
            "first run knows nothing and steals work in plan order; the second finds the "
            "first run's durations in the journal and runs longest-first on them. Speedup = "
            "wall with 1 instance / wall with 3, for the 1st and the 2nd runs; 'bound' = "
            "work / max(work/3, longest task), the best any schedule of 3 instances can do; "
            "'sim' = the same ratio from `simulate`."
        ),
        columns=[
            "workload",
            "work",
            "1 instance",
            "3 instances, 1st run",
            "3 instances, 2nd run",
            "speedup, 1st run",
            "speedup, 2nd run",
            "bound",
        ],
        rows=rows,
        targets=targets,
        notes=[
            f"the {GOAL}x target applies to the 2nd run of rows whose bound allows 3x",
            "'1 instance' is the 2nd run; one instance runs the tasks one after another "
            "whatever it knows",
        ],
    )


WHY_SCHEDULE = (
    "The simulator predicts {sim:.2f}x for the second run with no engine overhead at all, "
    "so the shortfall is the schedule: the learned lengths do not split into three equal "
    "piles closely enough. The first run, knowing nothing, reached {first:.2f}x."
)
WHY_ENGINE = (
    "The simulator predicts {sim:.2f}x for the same plan, so the schedule allows the "
    "target and the loss is the real run's: engine time per task (process start, journal "
    "commits, ownership checks) against tasks of a fraction of a second, and the second "
    "run's piles being balanced on the lengths the first run measured, each off by the "
    "tens of milliseconds a start and a reap vary on a loaded machine, which is a few "
    "percent of these tasks; at real model-call lengths both vanish. The first run, "
    "knowing nothing, reached {first:.2f}x."
)
