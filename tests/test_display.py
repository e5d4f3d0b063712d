"""What people see: the live view and the plain lines, fed real event records."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from guildrun._display import LiveReporter, PlainReporter
from guildrun._journal import Event, EventKind

from .conftest import compiled, tasks_plan


def feed() -> list[Event]:
    return [
        Event(EventKind.PHASE_STARTED, 0.0, data={"phase": "implementation"}),
        Event(EventKind.INSTANCE_SPAWNED, 0.0, instance="interface#1"),
        Event(EventKind.TASK_QUEUED, 0.0, "[bold]evil", "interface#1"),
        Event(EventKind.TASK_QUEUED, 0.0, "2", "interface#1"),
        Event(EventKind.TASK_QUEUED, 0.0, "3", "interface#1"),
        Event(EventKind.TASK_STARTED, 0.1, "[bold]evil", "interface#1"),
        Event(
            EventKind.TASK_FINISHED,
            1.1,
            "[bold]evil",
            data={"status": "failed", "error": "[red]boom", "duration": 1.0},
        ),
        Event(EventKind.TASK_STARTED, 1.1, "2", "interface#1"),
        Event(EventKind.GUARD_HOLD, 1.2, data={"reason": "CPU 99% > max_cpu 90%"}),
    ]


def test_live_view_shows_queues_eta_and_hostile_text_literally() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140, color_system=None)
    live = LiveReporter(console)
    live.run_started("run-1", compiled(tasks_plan(3), Path.cwd()), {"interface": 3})
    live.events(feed())
    console.print(live._render())
    live.run_ended(None)  # type: ignore[arg-type]
    out = buf.getvalue()
    assert "[bold]evil" in out and "[red]boom" in out  # shown, not interpreted
    assert "interface#1" in out and " 2 " in out  # running task 2
    assert "1 failed" in out and "holding new starts: CPU 99%" in out
    assert live.queued["interface#1"] == {"3"}
    assert live.eta() == 2.0  # 2 tasks left x 1.0 s mean / 1 instance working


def test_plain_lines() -> None:
    buf = io.StringIO()
    plain = PlainReporter(buf)
    plain.t0 = 0.0
    plain.events(feed())
    lines = buf.getvalue().splitlines()
    assert "phase implementation begins" in lines[0]
    assert "start   [bold]evil on interface#1" in buf.getvalue()
    assert "FAILED  [bold]evil: [red]boom" in buf.getvalue()
