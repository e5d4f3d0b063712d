"""What a person sees: live progress and the closing summary.

Reporters only read committed events, so what the screen shows is what the journal
holds. The live view redraws from its own state on rich's timer, never per event,
so a flood of short tasks costs a dictionary update each, not a repaint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import IO, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._engine import Reporter
from ._journal import Event
from ._metrics import Summary
from ._plan import CompiledPlan


class EventStream(Reporter):
    """One JSON object per line for each event, flushed as it is committed.

    Another program (an orchestrating agent, CI) can follow a run by reading the
    stream: the seed's asynchronous progress reporting.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def events(self, events: Iterable[Event]) -> None:
        for ev in events:
            self.stream.write(json.dumps(ev.as_dict(), separators=(",", ":")) + "\n")
        self.stream.flush()

    def run_ended(self, summary: Summary) -> None:
        self.stream.flush()


class Tee(Reporter):
    """Several reporters as one."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def run_started(self, run_id: str, plan: CompiledPlan, limits: Mapping[str, int]) -> None:
        for r in self.reporters:
            r.run_started(run_id, plan, limits)

    def events(self, events: Iterable[Event]) -> None:
        batch = list(events)
        for r in self.reporters:
            r.events(batch)

    def run_ended(self, summary: Summary) -> None:
        for r in self.reporters:
            r.run_ended(summary)


class PlainReporter(Reporter):
    """One line per event, for logs, pipes and CI."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.t0 = time.time()

    def run_started(self, run_id: str, plan: CompiledPlan, limits: Mapping[str, int]) -> None:
        lim = ", ".join(f"{k}≤{v}" for k, v in limits.items())
        self._say(f"run {run_id}: {len(plan.tasks)} tasks; instances {lim}")

    def events(self, events: Iterable[Event]) -> None:
        for ev in events:
            line = _describe(ev)
            if line:
                self._say(f"[{ev.time - self.t0:8.2f}s] {line}")
        self.stream.flush()

    def _say(self, text: str) -> None:
        self.stream.write(text + "\n")


def _describe(ev: Event) -> str | None:
    d = ev.data or {}
    if ev.kind == "task_started":
        stolen = f" (stolen from {d['stolen_from']})" if d.get("stolen_from") else ""
        return f"start   {ev.task} on {ev.instance}{stolen}"
    if ev.kind == "task_finished":
        if d.get("status") == "ok":
            return f"done    {ev.task} ({d.get('duration', 0):.2f}s)"
        return f"FAILED  {ev.task}: {d.get('error')}"
    if ev.kind == "task_skipped":
        return f"skipped {ev.task}: dependency {d.get('cause')!r} failed"
    if ev.kind == "task_interrupted":
        return f"stopped {ev.task}: interrupted"
    if ev.kind == "phase_started":
        return f"phase {d.get('phase')} begins"
    if ev.kind == "phase_ended":
        return f"phase {d.get('phase')} ends; results in {d.get('results')}"
    return None


class LiveReporter(Reporter):
    """A rich live table: each specialist, its instances and what each is running."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.t0 = time.time()
        self.live: Live | None = None
        self.total = 0
        self.counts = {"done": 0, "failed": 0, "skipped": 0}
        self.running: dict[str, str] = {}  # instance -> task
        self.instances: dict[str, list[str]] = {}
        self.phase = ""
        self.recent: list[str] = []

    def run_started(self, run_id: str, plan: CompiledPlan, limits: Mapping[str, int]) -> None:
        self.run_id = run_id
        self.total = len(plan.tasks)
        self.live = Live(
            get_renderable=self._render, console=self.console, refresh_per_second=4, transient=True
        )
        self.live.start()

    def events(self, events: Iterable[Event]) -> None:
        for ev in events:
            k = ev.kind
            if k == "task_started" and ev.instance and ev.task:
                self.running[ev.instance] = ev.task
            elif k == "task_finished":
                self._free(ev.task)
                ok = (ev.data or {}).get("status") == "ok"
                self.counts["done" if ok else "failed"] += 1
                if not ok:
                    self._note(f"[red]failed[/] {ev.task}: {(ev.data or {}).get('error')}")
            elif k == "task_skipped":
                self.counts["skipped"] += 1
            elif k == "instance_spawned" and ev.instance:
                spec = ev.instance.rpartition("#")[0]
                self.instances.setdefault(spec, []).append(ev.instance)
            elif k == "instance_retired" and ev.instance:
                spec = ev.instance.rpartition("#")[0]
                if ev.instance in self.instances.get(spec, []):
                    self.instances[spec].remove(ev.instance)
            elif k == "phase_started":
                self.phase = str((ev.data or {}).get("phase", ""))

    def _free(self, task: str | None) -> None:
        for inst, t in list(self.running.items()):
            if t == task:
                del self.running[inst]

    def _note(self, text: str) -> None:
        self.recent = [*self.recent[-4:], text]

    def _render(self) -> RenderableType:
        finished = sum(self.counts.values())
        head = Text.from_markup(
            f"[bold]guildrun[/] {self.run_id}  phase [cyan]{self.phase}[/]  "
            f"{finished}/{self.total} finished  "
            f"[green]{self.counts['done']} done[/]  [red]{self.counts['failed']} failed[/]  "
            f"[yellow]{self.counts['skipped']} skipped[/]  {time.time() - self.t0:.1f}s"
        )
        table = Table(box=None, show_header=True, header_style="bold")
        table.add_column("specialist")
        table.add_column("instance")
        table.add_column("running")
        for spec, insts in self.instances.items():
            for inst in insts:
                table.add_row(spec, inst, self.running.get(inst, "[dim]idle[/]"))
        parts: list[RenderableType] = [head, table]
        parts.extend(Text.from_markup(r) for r in self.recent)
        return Group(*parts)

    def run_ended(self, summary: Summary) -> None:
        if self.live is not None:
            self.live.stop()


def print_summary(summary: Summary, console: Console) -> None:
    style = "green" if summary.ok else ("yellow" if summary.status == "interrupted" else "red")
    table = Table(title=f"run {summary.run_id}: [{style}]{summary.status}[/]", show_header=False)
    table.add_column(justify="right")
    table.add_column()
    rows: list[tuple[str, Any]] = [
        ("done", summary.done),
        ("failed", summary.failed),
        ("skipped", summary.skipped),
    ]
    if summary.pending:
        rows.append(("not finished", summary.pending))
    rows += [
        ("wall time", f"{summary.wall_s:.2f}s"),
        ("summed task time", f"{summary.task_s:.2f}s"),
        ("speedup", f"{summary.speedup:.2f}x"),
        ("utilization", f"{summary.utilization:.0%}"),
        ("steals", summary.steals),
    ]
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)
    for t in summary.tasks:
        if t.state == "failed":
            console.print(f"[red]failed[/] {t.id} ({t.specialist}): {t.cause}", highlight=False)
            if t.log:
                console.print(f"  log: {t.log}", highlight=False)
            for line in t.tail:
                console.print(f"  | {line}", highlight=False, markup=False)
    for t in summary.tasks:
        if t.state == "skipped":
            console.print(f"[yellow]skipped[/] {t.id}: {t.cause}", highlight=False)
