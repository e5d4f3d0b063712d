"""What people see: the live view and the plain lines, fed real event records."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from guildrun._display import LiveReporter, PlainReporter
from guildrun._journal import Event, EventKind

from .conftest import Runner, compiled, tasks_plan, write_plan


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


SKIP_EVENTS = [
    # As the engine journals it today: the scheduler's sentence under "cause".
    Event(EventKind.TASK_SKIPPED, 1.0, "b", data={"cause": "dependency 'a' failed"}),
    # As it may journal it: the failed task under "cause", the sentence under "reason".
    Event(EventKind.TASK_SKIPPED, 1.0, "c", data={"cause": "a", "reason": "dependency 'a' failed"}),
]


def test_skip_reasons_are_shown_once_not_nested() -> None:
    buf = io.StringIO()
    plain = PlainReporter(buf)
    plain.events(SKIP_EVENTS)
    text = buf.getvalue()
    assert "skipped b: dependency 'a' failed\n" in text
    assert "skipped c: dependency 'a' failed\n" in text
    assert text.count("dependency") == 2, text
    console = Console(file=io.StringIO(), force_terminal=True, width=140, color_system=None)
    live = LiveReporter(console)
    live.events(SKIP_EVENTS)
    assert [t.plain for t in live.recent] == [
        "skipped b: dependency 'a' failed",
        "skipped c: dependency 'a' failed",
    ]


def test_skip_lines_of_a_real_run_read_cleanly(guildrun: Runner, project: Path) -> None:
    write_plan(
        project,
        {
            "specialists": {"w": {"run": ["false"]}, "ok": {"run": ["true"]}},
            "tasks": [
                {"id": "a", "specialist": "w"},
                {"id": "b", "specialist": "ok", "depends_on": ["a"]},
                {"id": "c", "specialist": "ok", "depends_on": ["b"]},
            ],
        },
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), cwd=project)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    live = [line.split("] ", 1)[1] for line in lines if line.startswith("[")]
    assert "skipped b: dependency 'a' failed" in live, proc.stdout
    assert "skipped c: dependency 'a' failed" in live, proc.stdout
    assert "skipped b: dependency 'a' failed" in lines  # the summary says the same
    assert '"' not in "".join(line for line in lines if "skipped" in line)


def test_rate_limits_and_budgets_are_shown_as_they_happen() -> None:
    agent_events = [
        Event(
            EventKind.RATE_LIMITED,
            2.0,
            "m1",
            data={"provider": "claude", "wait": 2.3, "limits": {"coder": 1}},
        ),
        Event(EventKind.THROTTLE_RELEASED, 4.3, data={"provider": "claude"}),
        Event(EventKind.BUDGET_EXHAUSTED, 9.0, data={"spent_usd": 1.25, "max_cost_usd": 1.0}),
    ]
    buf = io.StringIO()
    plain = PlainReporter(buf)
    plain.t0 = 0.0
    plain.events(agent_events)
    text = buf.getvalue()
    assert "RATE LIMITED claude (met by m1): no new agent for 2.3s, then at most coder 1" in text
    assert "rate limit over: claude agents start again" in text
    assert "BUDGET EXHAUSTED: $1.2500 of $1.0000 spent" in text
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    live = LiveReporter(console)
    live.run_started("run-1", compiled(tasks_plan(1), Path.cwd()), {"interface": 1})
    live.events(agent_events)
    console.print(live._render())
    live.run_ended(None)  # type: ignore[arg-type]
    assert "RATE LIMITED claude" in out.getvalue() and "BUDGET EXHAUSTED" in out.getvalue()
