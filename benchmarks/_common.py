"""What the scenarios share: result records, project folders, plans, bounds, timing.

Kept free of scenario logic so each scenario module reads as its own measurement.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import guildrun
from guildrun._prepare import prepare
from guildrun._schedule import distribution
from guildrun._simulate import simulate

# A sleeping command stands in for a language-model call: its length is set, its CPU is nil.
MODEL_CALL_STAND_IN: list[str] = ["sleep", "{prompt}"]
STAND_IN_NOTE = "each task runs `sleep D` as a stand-in for a language-model call"


@dataclass
class Target:
    """One promise a scenario checks; `met` is None when it cannot be measured yet."""

    name: str
    goal: str
    measured: str
    met: bool | None
    why: str = ""


@dataclass
class Section:
    """One scenario's outcome, enough to print it and to write its part of the docs."""

    key: str
    title: str
    command: str
    about: str
    columns: list[str]
    rows: list[list[str]]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Mode:
    """Quick keeps the harness honest in CI; full produces the published figures."""

    quick: bool

    @property
    def name(self) -> str:
        return "quick" if self.quick else "full"


@dataclass(frozen=True)
class Work:
    """A task of a synthetic workload, in abstract time units."""

    id: str
    specialist: str
    units: float
    depends_on: tuple[str, ...] = ()
    phase: str = "implementation"


# ------------------------------------------------------------------ folders and plans


@contextlib.contextmanager
def project() -> Iterator[Path]:
    """A fresh project root, so each run starts with a new journal like a first run does."""
    path = Path(tempfile.mkdtemp(prefix="guildrun-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def sleep_plan(
    work: Sequence[Work],
    *,
    unit_s: float,
    per_agent_type: int,
    total: int,
    strategy: str = "work-stealing",
    estimates: bool = False,
) -> guildrun.Plan:
    """A plan whose tasks sleep for their set length; the prompt carries the seconds."""
    specialists = {w.specialist for w in work}
    tasks = [
        guildrun.Task(
            id=w.id,
            specialist=w.specialist,
            files=[f"src/{w.id}.txt"],
            depends_on=list(w.depends_on),
            phase=w.phase,
            prompt=f"{w.units * unit_s:.4f}",
            estimate=w.units * unit_s if estimates else None,
        )
        for w in work
    ]
    return guildrun.Plan.model_validate(
        {
            "settings": {
                "per_agent_type": per_agent_type,
                "total_parallel": total,
                "strategy": strategy,
            },
            "specialists": {s: {"run": MODEL_CALL_STAND_IN} for s in sorted(specialists)},
            "tasks": tasks,
        }
    )


def strategy_available(name: str) -> bool:
    try:
        distribution(name)
    except ValueError:
        return False
    return True


def run_api(plan: guildrun.Plan, root: Path, **kwargs: Any) -> guildrun.Summary:
    summary = guildrun.run(plan, root=root, handle_signals=False, **kwargs)
    if not summary.ok:
        raise RuntimeError(f"benchmark run {summary.run_id} did not finish every task")
    return summary


def predicted_wall(plan: guildrun.Plan, root: Path, seconds: Mapping[str, float]) -> float:
    """The simulator's wall time for the plan under the settings the engine would use."""
    p = prepare(plan, root=root)
    sim = simulate(
        p.plan,
        seconds,
        limits=p.limits,
        total=p.settings.total_parallel,
        strategy=distribution(p.settings.strategy),
        estimates=p.expected(),
    )
    return sim.wall


# Steps the engine times inside its "journal" step (`_Engine._step` times dispatch within
# the journal transaction, and `_apply`, which snapshots, and `_conclude`, which rolls
# back, run in it too): adding them to it would count them twice.
NESTED_STEPS = frozenset({"dispatch", "snapshot", "rollback"})


def timings_total(root: Path, run_id: str) -> float | None:
    """Engine step time from the journal's `timings` table, each second counted once.

    None until the table is written.
    """
    table = timing_table(root, run_id)
    if not table:
        return None
    return sum(sec for step, (sec, _n) in table.items() if step not in NESTED_STEPS)


def timing_table(root: Path, run_id: str) -> dict[str, tuple[float, int]]:
    """Per engine step: seconds and how many times it ran, from the journal's `timings`."""
    db = root / ".guildrun" / "journal.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT step, seconds, count FROM timings WHERE run_id=? ORDER BY seconds DESC",
            (run_id,),
        ).fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()
    return {str(r[0]): (float(r[1]), int(r[2])) for r in rows}


def fmt_steps(table: Mapping[str, tuple[float, int]]) -> str:
    """'journal 450 ms in 101, ownership 76 ms in 102, ...' from `timing_table`."""
    return ", ".join(
        f"{k} {1e3 * s:.0f} ms in {n:,}{' (inside journal)' if k in NESTED_STEPS else ''}"
        for k, (s, n) in table.items()
    )


# ------------------------------------------------------------------ bounds and draws


def lower_bound(work: Sequence[Work], limits: Mapping[str, int], total: int) -> float:
    """No schedule beats max(work/slots, longest chain, per-specialist work/limit)."""
    slots = min(total, sum(limits[s] for s in {w.specialist for w in work}))
    whole = sum(w.units for w in work) / slots
    by_id = {w.id: w for w in work}
    finish: dict[str, float] = {}
    for w in work:  # plans list dependencies first, so one pass finds every chain
        finish[w.id] = w.units + max((finish[d] for d in w.depends_on), default=0.0)
    chain = max(finish.values(), default=0.0)
    per_type: dict[str, float] = {}
    for w in by_id.values():
        per_type[w.specialist] = per_type.get(w.specialist, 0.0) + w.units
    typed = max((u / min(limits[s], total) for s, u in per_type.items()), default=0.0)
    return max(whole, chain, typed)


def lognormal_units(rng: random.Random, mean: float, sigma: float, lo: float, hi: float) -> float:
    """Varied task lengths: log-normal with the given mean, clipped to [lo, hi]."""
    mu = math.log(mean) - sigma * sigma / 2
    return min(hi, max(lo, rng.lognormvariate(mu, sigma)))


# ------------------------------------------------------------------ timing


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def timed(argv: Sequence[str], *, stdin: bytes | None = None, cwd: Path | None = None) -> float:
    """Wall seconds of a whole command, start-up included; a failure is an error."""
    start = time.perf_counter()
    subprocess.run(
        list(argv),
        input=stdin,
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return time.perf_counter() - start


def guildrun_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "guildrun", *args]


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def fmt_x(ratio: float) -> str:
    return f"{ratio:.2f}x"


def env_without_guildrun() -> dict[str, str]:
    """The environment minus GUILDRUN_* settings, so the caller's shell cannot skew a run."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GUILDRUN_")}
