"""Scenario 7: how validation, planning and simulation grow with the plan's size.

Each step runs as its own process, as a user would run it, and is reaped with
`os.wait4`, which gives that one child's peak resident memory. The growth exponent is
the slope of log(time) over log(tasks) after subtracting the time of a one-task plan,
so interpreter start-up does not flatten it.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ._common import Mode, Section, Target, guildrun_cli, project, write_json

SPECIALISTS = ("backend", "frontend", "tests", "docs")

_SIMULATE = """
import sys
from guildrun._engine import prepare
from guildrun._schedule import distribution
from guildrun._simulate import simulate
p = prepare(sys.argv[1], root=sys.argv[2])
sim = simulate(p.plan, lambda _t: 1.0, limits=p.limits, total=p.settings.total_parallel,
               strategy=distribution(p.settings.strategy))
assert len(sim.intervals) == len(p.plan.tasks)
"""


def scale_plan(n: int, seed: int = 3) -> dict[str, object]:
    """Tasks with their own files and a sprinkling of dependencies on recent tasks."""
    rng = random.Random(seed)
    tasks: list[dict[str, object]] = []
    for i in range(n):
        task: dict[str, object] = {
            "id": f"t{i:06d}",
            "specialist": SPECIALISTS[i % len(SPECIALISTS)],
            "files": [f"src/m{i // 100:04d}/f{i:06d}.py"],
            "prompt": f"Update module {i}",
        }
        if i >= 10 and rng.random() < 0.2:
            task["depends_on"] = [f"t{rng.randrange(i - 10, i):06d}"]
        tasks.append(task)
    return {
        "settings": {"per_agent_type": 5, "total_parallel": 20},
        "specialists": {s: {"run": ["true"]} for s in SPECIALISTS},
        "tasks": tasks,
    }


def measure(argv: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    with (cwd / "out.txt").open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[3:5]} failed with {proc.returncode}: {err[-500:]}")
    return took, usage.ru_maxrss / 1024


def slope(sizes: list[int], times: list[float]) -> float:
    """Least-squares slope of log(time) on log(size)."""
    xs = [math.log(s) for s in sizes]
    ys = [math.log(max(t, 1e-6)) for t in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    num = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return num / sum((x - mx) ** 2 for x in xs)


def run(mode: Mode) -> Section:
    sizes = [300, 1000, 3000] if mode.quick else [1000, 10_000, 100_000]
    steps: dict[str, Callable[[str, str], list[str]]] = {
        "validate": lambda plan, root: guildrun_cli("validate", plan, "--root", root),
        "plan --json": lambda plan, root: guildrun_cli("plan", plan, "--json", "--root", root),
        "simulate": lambda plan, root: [sys.executable, "-c", _SIMULATE, plan, root],
    }
    results: dict[str, list[tuple[float, float]]] = {s: [] for s in steps}
    base: dict[str, float] = {}
    with project() as root:
        for n in [1, *sizes]:
            plan = str(write_json(root / f"plan{n}.json", scale_plan(n)))
            for step, argv in steps.items():
                took, rss = measure(argv(plan, str(root)), root)
                if n == 1:
                    base[step] = took
                else:
                    results[step].append((took, rss))
    rows: list[list[str]] = []
    targets: list[Target] = []
    for step, measured in results.items():
        net = [t - base[step] for t, _ in measured]
        # Sizes whose time barely clears start-up carry only noise; fit the others.
        fit = [(n, t) for n, t in zip(sizes, net, strict=True) if t > 0.2]
        if len(fit) < 2:
            fit = list(zip(sizes, net, strict=True))[-2:]
        k = slope([n for n, _ in fit], [max(t, 1e-3) for _, t in fit])
        cells = [f"{t:.2f} s / {rss:.0f} MiB" for t, rss in measured]
        rows.append([step, *cells, f"{base[step]:.2f} s", f"{k:.2f}"])
        targets.append(
            Target(
                f"{step}: growth exponent",
                "≤ 1.15 (near-linear)",
                f"{k:.2f}",
                k <= 1.15,
                why="Some step is worse than linear in the number of tasks; profile it.",
            )
        )
    rows.append(["resume", *["not available yet"] * len(sizes), "", ""])
    targets.append(Target("resume: growth exponent", "≤ 1.15", "not available yet", None))
    return Section(
        key="scale",
        title="7. Scale: validation, planning and simulation",
        command=(
            "python -m benchmarks --only scale  # guildrun validate / guildrun plan --json / "
            "simulate(), each a subprocess"
        ),
        about=(
            "JSON plans of n tasks over 4 specialists, each task owning its own file, 20% "
            "depending on one of the 10 tasks before it. Cells: wall time of the whole "
            "command / its peak resident memory. 'start-up' is the same command on a "
            "one-task plan; the exponent is fitted to the time above it, over the "
            "sizes where that is more than 0.2 s (below, it is noise). The simulated run "
            "gives every task 1 s and drives the real scheduler to the end."
        ),
        columns=["step", *[f"{n:,} tasks" for n in sizes], "start-up", "exponent"],
        rows=rows,
        targets=targets,
    )
