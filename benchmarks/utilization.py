"""Scenario 5: coordination overhead and utilization as the engine itself reports them.

Equal one-second tasks at 20 slots leave the schedule nothing to get wrong, so any
idle instance time or engine step time is coordination cost.
"""

from __future__ import annotations

from ._common import (
    STAND_IN_NOTE,
    Mode,
    Section,
    Target,
    Work,
    project,
    run_api,
    sleep_plan,
    timing_steps,
    timings_total,
)

SLOTS = 20


def run(mode: Mode) -> Section:
    n = 40 if mode.quick else 100
    length = 0.25 if mode.quick else 1.0
    work = [Work(f"t{i:03d}", "agent", 1.0) for i in range(n)]
    plan = sleep_plan(work, unit_s=length, per_agent_type=SLOTS, total=SLOTS)
    with project() as root:
        summary = run_api(plan, root)
        steps = timings_total(root, summary.run_id)
        breakdown = timing_steps(root, summary.run_id)
    bound = n * length / SLOTS
    excess = summary.wall_s / bound - 1
    overhead = None if steps is None else steps / summary.wall_s
    parts = ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in breakdown.items())
    rows = [
        ["tasks", f"{n} x {length} s at {SLOTS} slots"],
        ["wall", f"{summary.wall_s:.3f} s (bound {bound:.2f} s, +{100 * excess:.2f}%)"],
        ["utilization (engine)", f"{100 * summary.utilization:.2f}%"],
        [
            "coordination overhead (journal `timings`)",
            "not measured yet" if overhead is None else f"{100 * overhead:.3f}%",
        ],
        ["engine steps (journal `timings`)", parts or "not measured yet"],
    ]
    return Section(
        key="utilization",
        title="5. Coordination overhead and utilization",
        command="python -m benchmarks --only utilization",
        about=(
            f"{STAND_IN_NOTE}. Utilization is the engine's own figure (busy / alive "
            "instance time, from the journal); overhead is the summed engine step time "
            "from the journal table `timings` over the run's wall time."
        ),
        columns=["measure", "value"],
        rows=rows,
        targets=[
            Target(
                "utilization, 1 s tasks at 20 slots",
                "> 95%",
                f"{100 * summary.utilization:.2f}%",
                summary.utilization > 0.95,
                why="",
            ),
            Target(
                "coordination overhead",
                "< 1%",
                "not measured yet" if overhead is None else f"{100 * overhead:.3f}%",
                None if overhead is None else overhead < 0.01,
                why=(
                    WHY
                    if overhead is not None
                    else "The engine does not write the `timings` table yet; the wall time's "
                    "excess over the bound, shown above, is an upper bound on it."
                ),
            ),
        ],
    )


WHY = (
    "The steps row shows where it goes; on this engine the ownership step (the file "
    "baseline taken before the run and the per-task check of what each task touched) "
    "dominates, and it runs on the event loop, so it also delays starts. What would "
    "close it: take the baseline in a thread while the first tasks start, and check "
    "ownership from the watcher's events only for the files a task touched."
)
