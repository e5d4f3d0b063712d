"""What a person sees: live progress and the closing summary.

Reporters only read committed events, so what the screen shows is what the journal
holds. The live view redraws from its own state on rich's timer, never per event,
so a flood of short tasks costs a dictionary update each, not a repaint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._journal import Event
from ._metrics import UNDONE_HINT, Summary

if TYPE_CHECKING:
    from ._plan import CompiledPlan

from ._reporter import Reporter


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


def skip_reason(data: Mapping[str, Any]) -> str:
    """Why a task was skipped, as the scheduler worded it ("dependency 'a' failed").

    The `task_skipped` event carries that sentence under "cause" (and, once the engine
    journals both, the failed task under "cause" and the sentence under "reason"):
    it is shown as it is, never wrapped in a second sentence.
    """
    return str(data.get("reason") or data.get("cause") or "a dependency did not finish")


def _undone_text(d: Mapping[str, Any]) -> str:
    running = ", ".join(map(str, d.get("running", []))) or "none"
    return f"{', '.join(map(str, d.get('paths', [])))} (running then: {running})"


def _describe(ev: Event) -> str | None:
    d = ev.data or {}
    if ev.kind == "task_started":
        stolen = f" (stolen from {d['stolen_from']})" if d.get("stolen_from") else ""
        return f"start   {ev.task} on {ev.instance}{stolen}"
    if ev.kind == "task_finished":
        if d.get("status") == "ok":
            extra = d.get("extra_files")
            needed = f"; ran alone, needed {', '.join(map(str, extra))}" if extra else ""
            return f"done    {ev.task} ({d.get('duration', 0):.2f}s{needed})"
        return f"FAILED  {ev.task}: {d.get('error')}"
    if ev.kind == "task_skipped":
        return f"skipped {ev.task}: {skip_reason(d)}"
    if ev.kind == "task_interrupted":
        return f"stopped {ev.task}: interrupted"
    if ev.kind == "stray_changes_undone":
        return f"UNDONE  {_undone_text(d)}"
    if ev.kind == "phase_started":
        return f"phase {d.get('phase')} begins"
    if ev.kind == "phase_ended":
        return f"phase {d.get('phase')} ends; results in {d.get('results')}"
    if ev.kind in ("workspace", "gate"):
        return str(d.get("note"))
    if ev.kind in ("rate_limited", "throttle_released", "budget_exhausted"):
        return _agent_text(ev.kind, d, ev.task)
    return None


def _agent_text(kind: str, d: Mapping[str, Any], task: str | None) -> str:
    """Rate limits and budgets, as people read them (plain lines and the live view)."""
    if kind == "rate_limited":
        limits = ", ".join(f"{k} {v}" for k, v in dict(d.get("limits", {})).items())
        return (
            f"RATE LIMITED {d.get('provider')} (met by {task}): no new agent for "
            f"{d.get('wait')}s, then at most {limits or '?'} at once"
        )
    if kind == "throttle_released":
        return f"rate limit over: {d.get('provider')} agents start again"
    return (
        f"BUDGET EXHAUSTED: ${float(d.get('spent_usd') or 0):.4f} of "
        f"${float(d.get('max_cost_usd') or 0):.4f} spent; no new task starts"
    )


class LiveReporter(Reporter):
    """A rich live table: each specialist, its instances, what each runs and has queued.

    State is updated per event (a few dictionary operations); drawing happens on rich's
    own timer, four times a second, whatever the rate of events.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.t0 = time.time()
        self.live: Live | None = None
        self.run_id = ""
        self.total = 0
        self.counts = {"done": 0, "failed": 0, "skipped": 0, "retries": 0}
        self.running: dict[str, str] = {}  # instance -> task
        self.queued: dict[str, set[str]] = {}  # instance -> tasks dealt to it, not started
        self.instances: dict[str, list[str]] = {}
        self.durations: list[float] = []
        self.phase = ""
        self.held = ""
        self.recent: list[Text] = []

    def run_started(self, run_id: str, plan: CompiledPlan, limits: Mapping[str, int]) -> None:
        self.run_id = run_id
        self.total = len(plan.tasks)
        self.live = Live(
            get_renderable=self._render, console=self.console, refresh_per_second=4, transient=True
        )
        self.live.start()

    def events(self, events: Iterable[Event]) -> None:
        for ev in events:
            k, d = ev.kind, ev.data or {}
            if k == "task_queued" and ev.task:
                self.queued.setdefault(ev.instance or "", set()).add(ev.task)
            elif k == "task_started" and ev.instance and ev.task:
                self.running[ev.instance] = ev.task
                for pile in self.queued.values():
                    pile.discard(ev.task)
            elif k == "task_finished":
                self._free(ev.task)
                ok = d.get("status") == "ok"
                self.counts["done" if ok else "failed"] += 1
                if "duration" in d:
                    self.durations.append(float(d["duration"]))
                if not ok:
                    self._note("failed", "red", f"{ev.task}: {d.get('error')}")
            elif k == "task_retry":
                self._free(ev.task)
                self.counts["retries"] += 1
                self._note(
                    "retry", "yellow", f"{ev.task} in {d.get('retry_in')}s: {d.get('error')}"
                )
            elif k == "task_skipped":
                self.counts["skipped"] += 1
                self._note("skipped", "yellow", f"{ev.task}: {skip_reason(d)}")
                for pile in self.queued.values():
                    pile.discard(ev.task or "")
            elif k == "instance_spawned" and ev.instance:
                spec = ev.instance.rpartition("#")[0]
                self.instances.setdefault(spec, []).append(ev.instance)
            elif k == "instance_retired" and ev.instance:
                spec = ev.instance.rpartition("#")[0]
                if ev.instance in self.instances.get(spec, []):
                    self.instances[spec].remove(ev.instance)
            elif k == "stray_changes_undone":
                self._note("undone", "red", _undone_text(d))
            elif k == "phase_started":
                self.phase = str(d.get("phase", ""))
            elif k in ("rate_limited", "throttle_released", "budget_exhausted"):
                colour = "green" if k == "throttle_released" else "red"
                self._note(k.replace("_", " "), colour, _agent_text(k, d, ev.task))
            elif k == "guard_hold":
                self.held = str(d.get("reason", ""))
            elif k == "guard_release":
                self.held = ""

    def _free(self, task: str | None) -> None:
        for inst, t in list(self.running.items()):
            if t == task:
                del self.running[inst]

    def _note(self, label: str, colour: str, text: str) -> None:
        line = Text(f"{label} ", style=colour)
        line.append(text)  # plain text: task ids and errors are never read as markup
        self.recent = [*self.recent[-4:], line]

    def eta(self) -> float | None:
        """Left-over work over the instances working on it, at the mean task length so far."""
        left = self.total - self.counts["done"] - self.counts["failed"] - self.counts["skipped"]
        if not self.durations or left <= 0:
            return None
        width = max(1, len(self.running))
        return left * (sum(self.durations) / len(self.durations)) / width

    def _render(self) -> RenderableType:
        finished = self.counts["done"] + self.counts["failed"] + self.counts["skipped"]
        eta = self.eta()
        head = Text.assemble(
            ("guildrun ", "bold"),
            f"{self.run_id}  phase ",
            (self.phase, "cyan"),
            f"  {finished}/{self.total} finished  ",
            (f"{self.counts['done']} done", "green"),
            "  ",
            (f"{self.counts['failed']} failed", "red"),
            "  ",
            (f"{self.counts['skipped']} skipped", "yellow"),
            "  ",
            f"{self.counts['retries']} retries  {time.time() - self.t0:.1f}s",
            f"  ETA {eta:.0f}s" if eta is not None else "",
        )
        table = Table(box=None, show_header=True, header_style="bold")
        for col in ("specialist", "instance", "running", "queued"):
            table.add_column(col)
        for spec, insts in self.instances.items():
            for inst in insts:
                task = self.running.get(inst)
                table.add_row(
                    spec,
                    inst,
                    Text(task) if task else Text("idle", style="dim"),
                    str(len(self.queued.get(inst, ()))),
                )
        parts: list[RenderableType] = [head, table]
        if self.held:
            parts.append(Text(f"holding new starts: {self.held}", style="yellow"))
        parts.extend(self.recent)
        return Group(*parts)

    def run_ended(self, summary: Summary) -> None:
        if self.live is not None:
            self.live.stop()


def speedup_text(summary: Summary) -> str:
    """ "1.68x vs measured sequential (run R)": a speedup always says what it is against."""
    return f"{summary.speedup:.2f}x vs {summary.speedup_vs} (run {summary.baseline_run})"


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
        ("parallelism", f"{summary.parallelism:.2f}x (task time / wall time)"),
    ]
    if summary.speedup is not None:
        rows.append(("speedup", speedup_text(summary)))
    rows += [
        ("utilization", f"{summary.utilization:.0%}"),
        ("steals", summary.steals),
    ]
    if summary.cost_usd or summary.tokens:
        estimate = " (estimated from tokens)" if summary.cost_estimated else ""
        rows.append(("spent", f"${summary.cost_usd:.4f}{estimate}, {summary.tokens} tokens"))
    if summary.rate_limited:
        rows.append(("rate limited", f"{summary.rate_limited} times (waited, not failed)"))
    if summary.shared_sessions:
        pairs = ", ".join(f"{s['task']} <- {s['continued']}" for s in summary.shared_sessions)
        rows.append(("shared context", f"{pairs} (agent sessions continued)"))
    if summary.undone:
        n = sum(len(u.paths) for u in summary.undone)
        rows.append(("undone", f"{n} change{'s' if n != 1 else ''} (below)"))
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)
    if summary.status == "budget":
        console.print(
            f"[red]budget exhausted[/]: ${summary.cost_usd:.4f} of "
            f"${summary.max_cost_usd or 0:.4f} spent; the rest waits: "
            f"guildrun resume {summary.run_id} --max-cost-usd MORE",
            highlight=False,
        )
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
    print_extra_files(summary, console)
    print_undone(summary, console)
    for note in summary.workspace:
        console.print(note, highlight=False, markup=False)


def print_extra_files(summary: Summary, console: Console) -> None:
    """Tasks that broke the ownership rules, ran again alone and kept more than their files."""
    for t in summary.tasks:
        if t.extra_files:
            line = Text("ran alone ", style="yellow")
            line.append(f"{t.id} needed files beyond its own: {', '.join(t.extra_files)}")
            line.append(" (add them to its files: or writes: to run it in parallel)")
            console.print(line, highlight=False)


def print_undone(summary: Summary, console: Console) -> None:
    """Every change guildrun put back, with the tasks that were running: never silent."""
    if not summary.undone:
        return
    for u in summary.undone:
        line = Text("undone ", style="red")
        line.append(f"{', '.join(u.paths)} (running then: {', '.join(u.running) or 'none'})")
        console.print(line, highlight=False)
    console.print(Text(UNDONE_HINT, style="red"), highlight=False)
