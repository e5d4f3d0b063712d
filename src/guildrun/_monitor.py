"""Sampling the machine and the agents while a run goes on.

Every `interval` seconds: the machine's CPU and memory, and the CPU time and resident
memory of each running agent's whole process tree (found from its process group).
Samples go to the journal; per-attempt totals go on the attempt when it ends. The
same readings drive the resource guard, which holds back new starts (never running
ones) while the machine is above `max_cpu` or below `min_free_memory_mb`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil


@dataclass
class Usage:
    """What one attempt's processes used, as far as the samples saw."""

    cpu_s: float = 0.0
    peak_rss: int = 0
    seen: dict[int, float] = field(default_factory=dict)  # pid -> cpu seconds at last look


@dataclass(frozen=True)
class Sample:
    time: float
    cpu: float
    mem_used: float
    mem_available: float
    running: int
    agents_cpu: float
    agents_rss: float


class Monitor:
    def __init__(self, max_cpu: float | None, min_free_memory_mb: float | None) -> None:
        self.max_cpu = max_cpu
        self.min_free = None if min_free_memory_mb is None else min_free_memory_mb * 2**20
        self.usage: dict[str, Usage] = {}
        self._last_agents_cpu = 0.0
        self._last_time: float | None = None
        psutil.cpu_percent(None)  # prime: the first reading counts from here

    def take(self, now: float, groups: dict[str, int], *, settle: float = 0.0) -> Sample:
        """One sample; `groups` maps each running task to its process group.

        `settle`: measure CPU over this many seconds now, for a first reading that has
        no previous sample to count from.
        """
        cpu = psutil.cpu_percent(settle or None)
        mem = psutil.virtual_memory()
        total_cpu = 0.0
        total_rss = 0
        by_group = _members(groups.values())
        for task, pgid in groups.items():
            use = self.usage.setdefault(task, Usage())
            rss = 0
            for proc in by_group.get(pgid, ()):
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    spent = times.user + times.system
                    use.cpu_s += max(0.0, spent - use.seen.get(proc.pid, 0.0))
                    use.seen[proc.pid] = spent
                    rss += proc.memory_info().rss
            use.peak_rss = max(use.peak_rss, rss)
            total_cpu += use.cpu_s
            total_rss += rss
        agents_cpu = 0.0
        if self._last_time is not None and now > self._last_time:
            agents_cpu = max(0.0, total_cpu - self._last_agents_cpu) / (now - self._last_time) * 100
        self._last_time, self._last_agents_cpu = now, total_cpu
        return Sample(
            now, cpu, float(mem.used), float(mem.available), len(groups), agents_cpu, total_rss
        )

    def over(self, sample: Sample) -> str | None:
        """Why new starts should wait, or None."""
        if self.max_cpu is not None and sample.cpu > self.max_cpu:
            return f"CPU {sample.cpu:.0f}% > max_cpu {self.max_cpu:g}%"
        if self.min_free is not None and sample.mem_available < self.min_free:
            free = sample.mem_available / 2**20
            return f"free memory {free:.0f} MB < min_free_memory_mb {self.min_free / 2**20:g}"
        return None


def _members(pgids: Iterable[int]) -> dict[int, list[psutil.Process]]:
    wanted = set(pgids)
    out: dict[int, list[psutil.Process]] = {}
    if not wanted:
        return out
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            g = os.getpgid(proc.pid)
            if g in wanted:
                out.setdefault(g, []).append(proc)
    return out
