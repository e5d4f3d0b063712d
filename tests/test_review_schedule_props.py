"""Random plans on the fake executor and a virtual clock, under the ranked strategies
(critical path, balanced piles, slot re-sharing): the limits always hold, every task
runs to its end once, and nothing starts before what it depends on has ended."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guildrun import Plan
from guildrun._clock import VirtualClock
from guildrun._engine import run_prepared
from guildrun._executors.base import Ending
from guildrun._executors.fake import Act, FakeExecutor
from guildrun._journal import journal_path
from guildrun._prepare import prepare


@st.composite
def plans(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, list[Act]]]:
    names = ["x", "y", "z"][: draw(st.integers(1, 3))]
    specialists = {s: {"run": ["never-run"], "instances": draw(st.integers(1, 3))} for s in names}
    n = draw(st.integers(1, 14))
    cut = draw(st.integers(0, n + 2))  # tasks from here on are validation (a later phase)
    tasks: list[dict[str, Any]] = []
    acts: dict[str, list[Act]] = {}
    for k in range(n):
        tid = f"t{k}"
        task: dict[str, Any] = {"id": tid, "specialist": draw(st.sampled_from(names))}
        if k and draw(st.booleans()):
            task["depends_on"] = sorted(
                set(draw(st.lists(st.sampled_from([f"t{j}" for j in range(k)]), max_size=2)))
            )
        if k >= cut:
            task["phase"] = "validation"
        if draw(st.booleans()):  # an estimate, right or wrong
            task["estimate"] = draw(st.sampled_from([0.5, 1.0, 3.0, 8.0]))
        if draw(st.integers(0, 5)) == 0:
            task["locks"] = ["db"]
        durations = [draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.0]))]
        if draw(st.integers(0, 5)) == 0:  # a failure, then the retry that succeeds
            acts[tid] = [Act(durations[0], Ending.FAILED, 1), Act(1.0)]
        else:
            acts[tid] = [Act(durations[0])]
        tasks.append(task)
    data = {
        "settings": {
            "total_parallel": draw(st.integers(1, 4)),
            "strategy": draw(st.sampled_from(["longest-first", "auto"])),
            "retry": {"attempts": 2, "base": 0.5, "jitter": 0},
            "sample_interval": 0,
        },
        "specialists": specialists,
        "tasks": tasks,
    }
    return data, acts


def _check(root: Path, data: dict[str, Any]) -> None:
    db = sqlite3.connect(journal_path(root))
    try:
        spans = db.execute(
            "SELECT a.task_id, t.specialist, a.status, a.started, a.ended FROM attempts a"
            " JOIN tasks t ON t.id = a.task_id AND t.run_id = a.run_id"
        ).fetchall()
    finally:
        db.close()
    total = data["settings"]["total_parallel"]
    limit = {s: min(v["instances"], total) for s, v in data["specialists"].items()}
    # Concurrency at every start: intervals are [start, end).
    for _, spec, _, start, _ in spans:
        live = [sp for _, sp, _, s, e in spans if s <= start < e]
        assert len(live) <= total, (start, live)
        assert live.count(spec) <= limit[spec], (spec, start, live)
    ok = [t for t, _, status, _, _ in spans if status == "ok"]
    assert sorted(ok) == sorted(t["id"] for t in data["tasks"])  # each once
    ended = {t: e for t, _, status, _, e in spans if status == "ok"}
    first: dict[str, float] = {}
    for t, _, _, s, _ in spans:
        first[t] = min(first.get(t, s), s)
    for task in data["tasks"]:
        for dep in task.get("depends_on", []):
            assert first[task["id"]] >= ended[dep], (task["id"], dep)


@pytest.mark.slow  # 60 runs of the engine: about 5 s
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plans(), st.booleans())
def test_ranked_schedules_keep_limits_order_and_run_each_task_once(
    tmp_path_factory: Any, case: tuple[dict[str, Any], dict[str, list[Act]]], twice: bool
) -> None:
    data, acts = case
    root = tmp_path_factory.mktemp("p")
    for _ in range(2 if twice else 1):  # the second run learns from the first
        prepared = prepare(Plan.model_validate(data), root=root)
        clock = VirtualClock()
        try:
            summary = clock.run(
                run_prepared(
                    prepared, handle_signals=False, executor=FakeExecutor(acts), clock=clock
                )
            )
        finally:
            clock.close()
        assert summary.ok, summary
        _check(root, data)
        (journal_path(root)).unlink()
        for suffix in ("-wal", "-shm"):
            Path(f"{journal_path(root)}{suffix}").unlink(missing_ok=True)
