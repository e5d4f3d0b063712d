"""Scenario 3 (and issue A): engine overhead on trivial commands, whole command timed.

guildrun, xargs, GNU parallel and a bare asyncio loop each run the same `true` commands
at the same width, in rotating order round after round, so drift on the machine hits all
of them alike. The headline figure is the median of the per-round guildrun/xargs ratios.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

from ._common import (
    Mode,
    Section,
    Target,
    fmt_s,
    fmt_steps,
    fmt_x,
    guildrun_cli,
    median,
    project,
    timed,
    timing_table,
    write_json,
)

SLOTS = 20

_ASYNCIO = """
import asyncio, subprocess, sys
async def main(n, width):
    sem = asyncio.Semaphore(width)
    async def one():
        async with sem:
            p = await asyncio.create_subprocess_exec(
                "true", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            await p.wait()
    await asyncio.gather(*(one() for _ in range(n)))
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


def ensure_parallel(allow_install: bool) -> str | None:
    """GNU parallel's path; in full mode, installed with apt when we are root and it is missing."""
    found = shutil.which("parallel")
    if found or not allow_install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for steps in (
        [["apt-get", "install", "-y", "-q", "parallel"]],
        [["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "parallel"]],
    ):
        try:
            for argv in steps:
                subprocess.run(argv, env=env, check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError):
            continue
        return shutil.which("parallel")
    return None


def trivial_plan(n: int) -> dict[str, object]:
    """Each task owns its own file, so ownership checks run as they would for real work."""
    return {
        "settings": {"per_agent_type": SLOTS, "total_parallel": SLOTS},
        "specialists": {"trivial": {"run": ["true"]}},
        "tasks": [
            {"id": f"t{i:05d}", "specialist": "trivial", "files": [f"src/f{i:05d}.txt"]}
            for i in range(n)
        ],
    }


def _startup_s() -> float:
    """Interpreter start plus the imports `guildrun run PLAN.json -q` needs, before any work."""
    return timed([sys.executable, "-c", _RUN_IMPORTS])


_RUN_IMPORTS = "import guildrun._cli, guildrun._engine, guildrun._executors.local"


def run(mode: Mode) -> Section:
    n = 200 if mode.quick else 2000
    rounds = 1 if mode.quick else 5
    parallel = ensure_parallel(allow_install=not mode.quick)
    lines = b"".join(b"%d\n" % i for i in range(n))
    times: dict[str, list[float]] = {"guildrun": [], "xargs": [], "asyncio": []}
    if parallel:
        times["GNU parallel"] = []
    engine_wall: list[float] = []
    steps: list[dict[str, tuple[float, int]]] = []
    startup: list[float] = []
    with project() as base:
        plan = write_json(base / "trivial.json", trivial_plan(n))

        def guild() -> float:
            root = base / f"root{len(times['guildrun'])}"
            root.mkdir()
            start = time.perf_counter()
            out = subprocess.run(
                guildrun_cli("run", str(plan), "--json", "-q", "--root", str(root)),
                check=True,
                capture_output=True,
                text=True,
            )
            took = time.perf_counter() - start
            summary = json.loads(out.stdout)
            if summary["done"] != n:
                raise RuntimeError(f"guildrun finished {summary['done']} of {n} tasks")
            engine_wall.append(float(summary["wall_s"]))
            steps.append(timing_table(root, summary["run_id"]))
            return took

        tools: dict[str, Callable[[], float]] = {
            "guildrun": guild,
            "xargs": lambda: timed(["xargs", "-P", str(SLOTS), "-n", "1", "true"], stdin=lines),
            "asyncio": lambda: timed([sys.executable, "-c", _ASYNCIO, str(n), str(SLOTS)]),
        }
        if parallel:
            tools["GNU parallel"] = lambda: timed(
                [parallel, "--will-cite", "-j", str(SLOTS), "true"], stdin=lines
            )
        names = list(tools)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(tools[name]())
            startup.append(_startup_s())
    ratios = [g / x for g, x in zip(times["guildrun"], times["xargs"], strict=True)]
    ratio = median(ratios)
    xargs_med = median(times["xargs"])
    rows = [
        [name, fmt_s(median(ts)), fmt_x(median(ts) / xargs_med), f"{1e6 * median(ts) / n:.0f}"]
        for name, ts in times.items()
    ]
    if not parallel:
        rows.append(["GNU parallel", "n/a", "n/a", "n/a (not installed, could not install)"])
    g_med = median(times["guildrun"])
    e_med = median(engine_wall)
    s_med = median(startup)
    typical = min(range(len(engine_wall)), key=lambda i: abs(engine_wall[i] - e_med))
    notes = [
        f"median of {rounds} rounds of {n} `true` commands at {SLOTS} slots; order rotates "
        "each round; guildrun runs with journal, logs and per-task file ownership on",
        f"guildrun/xargs per round: {', '.join(f'{r:.2f}' for r in ratios)}",
        f"where guildrun's {fmt_s(g_med)} goes: interpreter start-up and imports "
        f"{fmt_s(s_med)}, engine loop (run start to end, as journaled) {fmt_s(e_med)}, "
        f"plan loading, journal set-up, summary and exit {fmt_s(max(0.0, g_med - s_med - e_med))}",
        "engine steps inside that loop, from the journal's `timings` (the round with the "
        f"median engine wall): {fmt_steps(steps[typical])}; the rest of the loop is "
        "starting, watching and reaping the processes",
    ]
    targets = [
        Target(
            "guildrun / xargs, 2,000 `true` at 20 slots (issue A)",
            "≤ 1.20",
            f"{ratio:.2f}",
            ratio <= 1.2,
            why=WHY_XARGS,
        )
    ]
    if parallel:
        p_ratio = median(
            [g / p for g, p in zip(times["guildrun"], times["GNU parallel"], strict=True)]
        )
        targets.append(
            Target(
                "guildrun faster than GNU parallel",
                "< 1.00",
                f"{p_ratio:.2f}",
                p_ratio < 1.0,
                why=WHY_PARALLEL,
            )
        )
    else:
        targets.append(Target("guildrun faster than GNU parallel", "< 1.00", "n/a", None))
    return Section(
        key="trivial",
        title="3. Engine overhead on trivial commands (and issue A)",
        command=(
            f"python -m benchmarks --only trivial  # guildrun run PLAN --json -q --root DIR vs "
            f"xargs -P {SLOTS} -n 1 true vs parallel --will-cite -j {SLOTS} true vs asyncio"
        ),
        about=ABOUT,
        columns=["tool", "median wall", "vs xargs", "µs per task"],
        rows=rows,
        targets=targets,
        notes=notes,
    )


ABOUT = (
    "The whole command is timed, interpreter start-up included, because that is what a "
    "user waits for. xargs is the floor for running processes from a program; the bare "
    "asyncio loop is the floor for running them from Python, without a journal."
)

WHY_XARGS = (
    "On 2 cores this is a CPU budget more than a latency one: xargs's 2,000 `true` "
    "children alone keep ~1.6-1.8 cores busy, so every CPU-second guildrun spends adds "
    "about half a second of wall. `perf stat -e task-clock` on the whole process tree "
    "(2026-11-29, with the spawner against the engine before it, 4 alternating rounds, "
    "twice): guildrun 3.06 and "
    "3.07 s of CPU, main 3.18 and 3.00 s, xargs 1.96 and 1.74 s: guildrun's own share is "
    "~1.1-1.3 s for 2,000 tasks, ~0.25 s of it interpreter start-up and imports, the rest "
    "~450 µs per task. Starting commands no longer stalls the engine: a small spawner "
    "process (`python -I -S`, `posix_spawn`, ready ~10 ms after the run starts) replaced "
    "`Popen`, so the loop neither waits through a vfork and exec nor encodes ~100 "
    "environment variables per task (the base environment goes once per instance, a task "
    "sends its GUILDRUN_* variables), and a JSON `run -q` imports 359 modules instead of "
    "433 (no rich, no PyYAML). That moved the work rather than removing it: the spawner's "
    "own Python costs about what `Popen` cost the engine, so total CPU is unchanged within "
    "noise, and the ratio moved only where the machine was contended (load 9: median "
    "1.50x against main's 2.47x over 6 alternating rounds; at load 4-5 this benchmark gave "
    "1.65-2.14x against main's 1.72-2.31x). What remains per task is the engine's own "
    "Python: the journal's statements and events, the ownership barrier, two log pipes on "
    "the event loop, the sweep and the outcome. 1.2x needs guildrun's own CPU near 0.4 s "
    "for 2,000 tasks, ~75 µs per task after start-up: the journal and ownership work "
    "would have to become a per-batch cost, and pydantic (~90 ms of start-up with the "
    "plan models) leave the start-up of a JSON plan. With more cores the children stop "
    "competing with the engine and the same code lands nearer xargs."
)

WHY_PARALLEL = (
    "guildrun's fixed cost (interpreter start-up, plan validation, journal set-up, "
    "summary) weighs most when the tasks are few and short; GNU parallel's cost per task "
    "is higher than guildrun's, so guildrun passes it as the task count grows (the full "
    "mode's 2,000 tasks). Lowering the fixed cost (lazy imports) would close it here too."
)
