"""The run report: one self-contained HTML file, and the same data as JSON.

The file must open anywhere, offline, years later, and be safe to mail around: so no
network (inline CSS and SVG only, no script at all) and every piece of text from the
journal is escaped, because task ids, errors and logs are whatever agents wrote.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ._analysis import Analysis, AttemptSpan, PhaseStats, Sample, analyze
from ._journal import Journal, journal_path
from ._liveness import as_seen
from ._metrics import UNDONE_HINT, Summary, summarize
from ._paths import STATE_DIR, find_root

STATUS_COLOURS = {
    "ok": "#2e9e44",
    "failed": "#d43c3c",
    "error": "#d43c3c",
    "timeout": "#f08c00",
    "cancelled": "#9a9a9a",
    "running": "#3b7dd8",
}
OTHER_COLOUR = "#6b5fb5"

CHART_W = 1000  # px of time axis
LABEL_W = 150
ROW_H = 22
BAR_H = 14
AXIS_H = 34

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1d232b;
background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.muted{color:#667}.mono{font-family:ui-monospace,Menlo,Consolas,monospace}
.stats{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.stat{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:8px 12px;min-width:110px}
.stat b{display:block;font-size:18px}.stat span{color:#667;font-size:12px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px}
table{border-collapse:collapse;background:#fff;margin:6px 0}
th,td{border:1px solid #dde2e8;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f6;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.meter{width:160px;height:10px;background:#e6e9ee;border-radius:5px;overflow:hidden}
.meter i{display:block;height:100%;background:#3b7dd8}
.chart{background:#fff;border:1px solid #dde2e8;border-radius:6px;overflow-x:auto;padding:6px}
svg text{font:11px system-ui,sans-serif;fill:#333}
.legend span{display:inline-block;margin-right:14px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;
margin-right:4px}
pre{background:#1d232b;color:#e8ecef;padding:8px;border-radius:4px;overflow-x:auto;
max-height:260px;white-space:pre-wrap;word-break:break-all}
.bar.critical{stroke:#111;stroke-width:2.5}
"""


def esc(value: object) -> str:
    """Text and attribute values both: quote=True also covers attributes in double quotes."""
    return html.escape(str(value), quote=True)


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.3f} s"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02d}s"


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def fmt_x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _colour(status: str) -> str:
    return STATUS_COLOURS.get(status, OTHER_COLOUR)


# ---------------------------------------------------------------- header


def _header(a: Analysis, s: Summary) -> str:
    stats = [
        (f"{s.done} / {s.failed} / {s.skipped}", "done / failed / skipped"),
        (fmt_s(a.wall_s), "wall time"),
        (fmt_s(a.task_s), "summed task time"),
        (fmt_x(a.parallelism), "parallelism (task time / wall)"),
        _speedup_stat(s),
        (fmt_pct(a.utilization), "utilization"),
        (fmt_pct(a.efficiency), f"efficiency (bound {fmt_s(a.lower_bound_s)})"),
        (fmt_pct(a.overhead) if a.overhead is not None else "not timed", "coordination overhead"),
        ("–" if a.cpu_mean is None else f"{a.cpu_mean:.0f}%", "mean CPU"),
    ]
    colour = {"done": "#2e9e44", "failed": "#d43c3c", "interrupted": "#f08c00"}
    cells = "".join(
        f'<div class="stat"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for v, k in stats
    )
    return (
        f'<h1>guildrun run <span class="mono">{esc(a.run_id)}</span> '
        f'<span class="badge" style="background:{colour.get(a.status, "#667")}">'
        f"{esc(a.status)}</span></h1>"
        f'<div class="muted">root <span class="mono">{esc(s.root)}</span> · '
        f"{s.steals} steals · {len(a.instances)} instances</div>"
        f'<div class="stats">{cells}</div>'
    )


def _speedup_stat(s: Summary) -> tuple[str, str]:
    """Speedup only against a measured run (docs/metrics.md), saying which."""
    if s.speedup is None:
        return ("–", "speedup: no sequential run of this plan measured")
    return (fmt_x(s.speedup), f"speedup vs {s.speedup_vs} (run {s.baseline_run})")


# ---------------------------------------------------------------- timeline


def _tick_step(span: float) -> float:
    """A round tick interval giving about eight ticks over `span` seconds."""
    raw = span / 8 if span > 0 else 1.0
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600):
        if step >= raw:
            return float(step)
    return float(int(raw / 600 + 1) * 600)


def _axis(span: float, height: float, x: Any) -> list[str]:
    out: list[str] = []
    step = _tick_step(span)
    k = 0
    while k * step <= span + 1e-9:
        t = k * step
        out.append(
            f'<line x1="{x(t):.1f}" y1="{AXIS_H - 6}" x2="{x(t):.1f}" y2="{height}" '
            'stroke="#eceff2"/>'
            f'<text x="{x(t):.1f}" y="{AXIS_H - 10}" text-anchor="middle">{t:g}s</text>'
        )
        k += 1
    return out


def _bar(span: AttemptSpan, y: float, x: Any) -> str:
    x0 = x(span.start)
    width = max(1.0, x(span.end) - x0)
    tip = (
        f"{span.task} (attempt {span.attempt}) on {span.instance}\n"
        f"{span.start:.3f}s → {span.end:.3f}s ({span.duration:.3f}s)\nstatus {span.status}"
        + (f", exit {span.exit_code}" if span.exit_code is not None else "")
        + (f"\n{span.error}" if span.error else "")
        + ("\non the critical path" if span.critical else "")
    )
    cls = "bar critical" if span.critical else "bar"
    return (
        f'<rect class="{cls}" data-task="{esc(span.task)}" data-status="{esc(span.status)}" '
        f'x="{x0:.1f}" y="{y:.1f}" width="{width:.1f}" height="{BAR_H}" rx="2" '
        f'fill="{_colour(span.status)}"><title>{esc(tip)}</title></rect>'
    )


def _phase_marks(phases: Sequence[PhaseStats], height: float, x: Any) -> list[str]:
    out = []
    for p in phases:
        out.append(
            f'<line x1="{x(p.start):.1f}" y1="{AXIS_H}" x2="{x(p.start):.1f}" y2="{height}" '
            'stroke="#7a8699" stroke-dasharray="4 3"/>'
            f'<text x="{x(p.start) + 3:.1f}" y="{AXIS_H + 10}" fill="#56627a">{esc(p.phase)}</text>'
        )
    return out


def timeline_svg(a: Analysis) -> str:
    """The Gantt chart: a row per instance, its alive spans pale, its attempts as bars."""
    span = max(a.wall_s, max((s.end for s in a.attempts), default=0.0), 1e-6)
    names = [i.name for i in a.instances]
    for s in a.attempts:
        if s.instance not in names:
            names.append(s.instance)
    height = AXIS_H + 14 + ROW_H * max(1, len(names))
    scale = CHART_W / span

    def x(t: float) -> float:
        return LABEL_W + max(0.0, min(span, t)) * scale

    parts = _axis(span, height, x)
    row_y = {name: AXIS_H + 14 + k * ROW_H for k, name in enumerate(names)}
    for inst in a.instances:
        y = row_y[inst.name]
        parts.append(
            f'<text x="{LABEL_W - 6}" y="{y + BAR_H - 2}" text-anchor="end">{esc(inst.name)}'
            f"<title>{esc(inst.name)}: {fmt_pct(inst.utilization)} busy</title></text>"
        )
        for a0, a1 in inst.alive:
            parts.append(
                f'<rect class="alive" x="{x(a0):.1f}" y="{y - 2}" '
                f'width="{max(0.0, x(a1) - x(a0)):.1f}" height="{BAR_H + 4}" fill="#eef1f5"/>'
            )
    parts += _phase_marks(a.phases, height, x)
    parts += [_bar(s, row_y[s.instance], x) for s in a.attempts]
    width = LABEL_W + CHART_W + 20
    return (
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="timeline of attempts per instance">{"".join(parts)}</svg>'
    )


def _legend() -> str:
    items = [("ok", "ok"), ("failed", "failed / error"), ("timeout", "timeout")]
    items += [("cancelled", "cancelled")]
    spans = "".join(
        f'<span><i class="swatch" style="background:{_colour(k)}"></i>{esc(label)}</span>'
        for k, label in items
    )
    return (
        f'<div class="legend">{spans}<span><i class="swatch" style="background:#fff;'
        'border:2.5px solid #111;box-sizing:border-box"></i>critical path</span></div>'
    )


# ---------------------------------------------------------------- CPU


def cpu_svg(samples: Sequence[Sample], wall: float) -> str:
    """CPU over time as a line; running attempts as a second, dashed line on its own scale."""
    points = [s for s in samples if s.cpu is not None]
    if not points:
        return '<p class="muted">No CPU samples were journaled for this run.</p>'
    span = max(wall, points[-1].time, 1e-6)
    h = 160
    top = AXIS_H

    def x(t: float) -> float:
        return LABEL_W + max(0.0, min(span, t)) * CHART_W / span

    def y(frac: float) -> float:
        return top + (1 - max(0.0, min(1.0, frac))) * h

    parts = _axis(span, top + h, x)
    for pct in (0, 50, 100):
        parts.append(
            f'<text x="{LABEL_W - 6}" y="{y(pct / 100) + 4:.1f}" text-anchor="end">{pct}%</text>'
        )
    cpu = " ".join(f"{x(s.time):.1f},{y((s.cpu or 0) / 100):.1f}" for s in points)
    parts.append(f'<polyline points="{cpu}" fill="none" stroke="#3b7dd8" stroke-width="2"/>')
    running = [s for s in samples if s.running is not None]
    most = max((s.running or 0 for s in running), default=0)
    if most > 0:
        line = " ".join(f"{x(s.time):.1f},{y((s.running or 0) / most):.1f}" for s in running)
        parts.append(
            f'<polyline points="{line}" fill="none" stroke="#2e9e44" stroke-width="1.5" '
            f'stroke-dasharray="5 3"/><text x="{LABEL_W + 4}" y="{top - 2}" fill="#2e9e44">'
            f"dashed: attempts running (max {most})</text>"
        )
    width = LABEL_W + CHART_W + 20
    return (
        f'<svg id="cpu" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + h + 10}"'
        f' role="img" aria-label="CPU over time">{"".join(parts)}</svg>'
    )


# ---------------------------------------------------------------- tables


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int]) -> str:
    """Cells arrive already escaped (some hold markup); headers are escaped here."""
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{c}</td>' if k in numeric else f"<td>{c}</td>"
            for k, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _meter(frac: float) -> str:
    width = max(0.0, min(1.0, frac)) * 100
    return f'<div class="meter"><i style="width:{width:.0f}%"></i></div>'


def _claimed(p: PhaseStats) -> str:
    if p.claimed_speedup is None:
        return "–"
    low, high = p.claimed_speedup
    return f"{low:g}–{high:g}×"


def phases_table(a: Analysis) -> str:
    rows = [
        [
            esc(p.phase),
            str(p.tasks),
            fmt_s(p.wall_s),
            fmt_s(p.task_s),
            fmt_x(p.parallelism),
            _claimed(p),
            str(p.slots),
            f"{fmt_s(p.lower_bound_s)} <span class='muted'>({esc(p.bound_by)})</span>",
            fmt_pct(p.efficiency),
        ]
        for p in a.phases
    ]
    rows.append(
        [
            "<b>whole run</b>",
            str(sum(p.tasks for p in a.phases)),
            fmt_s(a.wall_s),
            fmt_s(a.task_s),
            fmt_x(a.parallelism),
            "",
            str(a.slots),
            fmt_s(a.lower_bound_s),
            fmt_pct(a.efficiency),
        ]
    )
    head = ["phase", "tasks", "wall", "task time", "parallelism", "claimed speedup", "slots"]
    head += ["lower bound", "efficiency"]
    return _table(head, rows, {1, 2, 3, 4, 5, 6, 8})


def instances_table(a: Analysis) -> str:
    rows = [
        [
            f'<span class="mono">{esc(i.name)}</span>',
            str(i.attempts),
            fmt_s(i.busy_s),
            fmt_s(i.alive_s),
            fmt_pct(i.utilization),
            _meter(i.utilization),
        ]
        for i in a.instances
    ]
    return _table(["instance", "attempts", "busy", "alive", "utilization", ""], rows, {1, 2, 3, 4})


def specialists_table(a: Analysis) -> str:
    rows = [
        [
            esc(s.name),
            f"{s.instances} / {s.limit}",
            fmt_s(s.work_s),
            fmt_pct(s.utilization),
            f"{fmt_s(s.busy_min_s)} / {fmt_s(s.busy_mean_s)} / {fmt_s(s.busy_max_s)}",
            f"{s.imbalance:.2f}",
            fmt_s(s.saturated_s),
        ]
        for s in a.specialists
    ]
    head = ["specialist", "instances / limit", "work", "utilization"]
    head += ["busy min / mean / max", "max ÷ mean", "saturated"]
    return _table(head, rows, {1, 2, 3, 5, 6})


def _id_list(ids: Sequence[str]) -> str:
    if not ids:
        return '<span class="muted">none</span>'
    return ", ".join(f'<span class="mono">{esc(i)}</span>' for i in ids)


def bottlenecks(a: Analysis) -> str:
    slow = _table(
        ["task", "specialist", "phase", "state", "time"],
        (
            [
                f'<span class="mono">{esc(t.task)}</span>',
                esc(t.specialist),
                esc(t.phase),
                esc(t.state),
                fmt_s(t.duration_s),
            ]
            for t in a.slowest
        ),
        {4},
    )
    return (
        f"<p><b>Critical path</b> ({fmt_s(a.critical_path_s)}, "
        f"{fmt_pct(a.critical_path_s / a.wall_s if a.wall_s > 0 else 0)} of the wall): "
        f"{' → '.join(esc(t) for t in a.critical_path) or 'none'}</p>"
        f"<p><b>Saturated specialists</b> (all instances busy with work queued): "
        f"{_id_list(a.saturated)}</p>"
        f"<p><b>Idle</b> (utilization below 50%): specialists {_id_list(a.idle_specialists)}; "
        f"instances {_id_list(a.idle_instances)}</p>"
        f"<p><b>Slowest tasks</b></p>{slow}"
    )


def overhead_section(a: Analysis) -> str:
    if not a.timings:
        return '<p class="muted">The engine journaled no step timings for this run.</p>'
    rows = [
        [esc(step), fmt_s(sec), fmt_pct(sec / a.wall_s if a.wall_s else 0)]
        for step, sec in sorted(a.timings.items(), key=lambda kv: -kv[1])
    ]
    rows.append(["<b>total</b>", fmt_s(a.overhead_s), fmt_pct(a.overhead)])
    return _table(["step", "seconds", "of wall"], rows, {1, 2})


def failures_section(s: Summary) -> str:
    failed = [t for t in s.tasks if t.state == "failed"]
    skipped = [t for t in s.tasks if t.state == "skipped"]
    if not failed and not skipped:
        return '<p class="muted">No failures.</p>'
    out = []
    for t in failed:
        log = f' <span class="muted mono">{esc(t.log)}</span>' if t.log else ""
        tail = "\n".join(t.tail)
        out.append(
            f'<h3 class="mono">{esc(t.id)}</h3><p>{esc(t.cause or "failed")}{log}</p>'
            + (f"<pre>{esc(tail)}</pre>" if tail else "")
        )
    if skipped:
        out.append(
            _table(
                ["skipped task", "cause"],
                ([f'<span class="mono">{esc(t.id)}</span>', esc(t.cause or "")] for t in skipped),
                set(),
            )
        )
    return "".join(out)


def undone_section(s: Summary) -> str:
    """Changes guildrun put back, and the extra files tasks run alone needed."""
    out = []
    if s.undone:
        out.append(
            _table(
                ["undone change", "tasks running then"],
                (
                    [
                        "<br>".join(f'<span class="mono">{esc(p)}</span>' for p in u.paths),
                        esc(", ".join(u.running) or "none"),
                    ]
                    for u in s.undone
                ),
                set(),
            )
        )
        out.append(f"<p>{esc(UNDONE_HINT)}</p>")
    extra = [t for t in s.tasks if t.extra_files]
    if extra:
        out.append(
            _table(
                ["task run again alone", "files it needed beyond its own"],
                (
                    [f'<span class="mono">{esc(t.id)}</span>', esc(", ".join(t.extra_files))]
                    for t in extra
                ),
                set(),
            )
        )
    return "".join(out) or '<p class="muted">Nothing was undone.</p>'


# ---------------------------------------------------------------- the page


def render_html(analysis: Analysis, summary: Summary) -> str:
    """The whole report as one HTML document that needs nothing but a browser."""
    a = analysis
    sections = [
        _header(a, summary),
        "<h2>Timeline</h2>",
        _legend(),
        f'<div class="chart">{timeline_svg(a)}</div>',
        "<h2>Phases</h2>",
        phases_table(a),
        "<h2>Bottlenecks</h2>",
        bottlenecks(a),
        "<h2>Utilization per instance</h2>",
        instances_table(a),
        "<h2>Specialists</h2>",
        specialists_table(a),
        "<h2>CPU over time</h2>",
        f'<div class="chart">{cpu_svg(a.samples, a.wall_s)}</div>',
        "<h2>Coordination overhead</h2>",
        overhead_section(a),
        "<h2>Failures</h2>",
        failures_section(summary),
        "<h2>Undone changes</h2>",
        undone_section(summary),
        '<p class="muted">Definitions of every figure: docs/metrics.md in guildrun.</p>',
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No script, no remote anything: a hostile string in a log cannot become code.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>guildrun report {esc(a.run_id)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )


def _data(analysis: Analysis, summary: Summary) -> dict[str, Any]:
    return {"summary": summary.to_json(details=True), "analysis": analysis.to_json()}


def report_json(journal: Journal, run_id: str) -> dict[str, Any]:
    """What `guildrun report --json` prints: the data the HTML report is drawn from."""
    return _data(analyze(journal, run_id), summarize(journal, run_id))


def write_atomic(path: Path, text: str) -> None:
    """Readers (a browser reloading, a CI upload) see the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        tmp.chmod(0o644)  # mkstemp's 0600 would hide the report from a web server
        tmp.replace(path)  # os.replace: atomic within one file system
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def default_report_path(root: Path, run_id: str) -> Path:
    return root / STATE_DIR / "runs" / run_id / "report.html"


def cmd_report(root: str | None, run: str | None, html: str | None, as_json: bool) -> int:
    """`guildrun report [RUN] [--html FILE] [--json]`.

    With neither option the HTML goes to .guildrun/runs/RUN/report.html. With --json the
    JSON alone is on stdout (the path of a written file goes to stderr) so it can be piped.
    """
    project = find_root(root)
    journal = Journal(journal_path(project), readonly=True)
    try:
        run_id: str = journal.run(run)["id"]
        analysis = analyze(journal, run_id)
        summary, gone = as_seen(summarize(journal, run_id), project)
    finally:
        journal.close()
    if gone is not None:  # the journal says running, but no engine is: say so
        analysis = dataclasses.replace(analysis, status=summary.status)
    target = Path(html) if html else None
    if target is None and not as_json:
        target = default_report_path(project, run_id)
    if target is not None:
        write_atomic(target, render_html(analysis, summary))
        print(f"report written to {target}", file=sys.stderr if as_json else sys.stdout)
    if as_json:
        print(json.dumps(_data(analysis, summary)))
    return 0
