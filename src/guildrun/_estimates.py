"""Expected seconds per task: given in the plan, or learned from past runs in the journal.

A scheduler that knows how long tasks take can start the long ones (and the heads of
long chains) first and share slots by the work left; one that does not can only follow
plan order. Most plans give no `estimate:`, but a team re-runs the same kind of work
often, so the journal already holds what it took: the second run of a plan knows what
the first one measured, with nothing given by hand.

A task's past is looked up from the most specific to the least specific match, each the
median of the successful attempts found (a median, so that one slow attempt does not
move it): the same specialist, files and prompt (the same work; without a prompt, tasks
of one command told apart by their id are not); the same specialist and task id (the same
task, reworded); the same specialist and files; any task of the
specialist. Only the latest `RECENT_RUNS` runs are read (`_journal.durations_by_work`),
so a long history costs little.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._journal import durations_by_work

if TYPE_CHECKING:
    from ._plan import CompiledPlan, TaskSpec

RECENT_RUNS = 30
GIVEN, LEARNED, FILLED = "given", "learned", "mean"


@dataclass(frozen=True)
class Estimates:
    """Seconds per task id (every task of the plan) and where each figure came from."""

    seconds: dict[str, float]
    origin: dict[str, str]  # "given", "learned" or "mean" (neither: the mean of the others)

    @property
    def known(self) -> bool:
        """At least one task has an estimate given or learned (not only filled in)."""
        return any(o != FILLED for o in self.origin.values())

    def describe(self) -> str:
        if not self.known:
            return "none (every task counted as 1 s)"
        counts = {o: sum(1 for v in self.origin.values() if v == o) for o in (GIVEN, LEARNED)}
        text = f"{counts[GIVEN]} from the plan, {counts[LEARNED]} learned from past runs"
        filled = [t for t, o in self.origin.items() if o == FILLED]
        if filled:
            text += f", {len(filled)} set to the mean ({self.seconds[filled[0]]:.2f} s)"
        return text


def _keys(spec: str, task_id: str, files: Iterable[str], prompt: str | None) -> list[object]:
    owned = json.dumps(sorted(files))
    keys: list[object] = [("id", spec, task_id), ("files", spec, owned)]
    if prompt:  # without one, "the same work" is only the same files: the id says more
        keys.insert(0, ("work", spec, owned, prompt))
    return keys


def history(journal_file: Path | None) -> dict[object, float]:
    """Median seconds per lookup key (see the module docstring) from the journal."""
    if journal_file is None:
        return {}
    samples: dict[object, list[float]] = {}
    for past in durations_by_work(journal_file, RECENT_RUNS):
        keys = _keys(past.specialist, past.task, past.files, past.prompt)
        for key in [*keys, ("specialist", past.specialist)]:
            samples.setdefault(key, []).append(past.seconds)
    return {k: statistics.median(v) for k, v in samples.items()}


def lookup(task: TaskSpec, prompt: str | None, past: Mapping[object, float]) -> float | None:
    for key in [
        *_keys(task.specialist, task.id, task.files, prompt),
        ("specialist", task.specialist),
    ]:
        if key in past:
            return past[key]
    return None


def estimate(
    plan: CompiledPlan, journal_file: Path | None, prompts: Mapping[str, str] | None = None
) -> Estimates:
    """The plan's `estimate`s, else what past runs took, else the mean of those (1 s when
    nothing at all is known). `prompts`: each task's prompt as the plan gives it (the
    journal keeps the plan as given), so that the same work is recognised."""
    seconds: dict[str, float] = {}
    origin: dict[str, str] = {}
    for t in plan.tasks:
        if t.estimate is not None:
            seconds[t.id], origin[t.id] = t.estimate, GIVEN
    if len(seconds) < len(plan.tasks):
        past = history(journal_file)
        if past:
            for t in plan.tasks:
                if (
                    t.id not in seconds
                    and (found := lookup(t, (prompts or {}).get(t.id), past)) is not None
                ):
                    seconds[t.id], origin[t.id] = found, LEARNED
    mean = sum(seconds.values()) / len(seconds) if seconds else 1.0
    for t in plan.tasks:
        if t.id not in seconds:
            seconds[t.id], origin[t.id] = mean, FILLED
    return Estimates(seconds, origin)
