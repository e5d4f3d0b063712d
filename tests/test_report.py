"""The HTML and JSON report of real runs, hostile task ids included, and in a real browser.

Task ids, errors and logs are whatever the plan and the agents wrote, so the run used
here fails a task whose id is a script tag and whose log tries to close the page's
markup; the report must show those strings, never execute or parse them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

import guildrun
from guildrun import Plan, Settings, Specialist, Task, TaskContext
from guildrun._analysis import Analysis, analyze
from guildrun._journal import Journal, journal_path
from guildrun._metrics import Summary, summarize
from guildrun._report import cmd_report, render_html, report_json

EVIL_ID = "<script>alert(1)</script>"
QUOTE_ID = "q\"'><iframe onload=alert(3)>"
EVIL_LOG = "</pre><img src=x onerror=alert(2)>"


async def agent(ctx: TaskContext) -> str:
    """Sleeps `scope` seconds; a scope of "fail" fails the way a crashing agent would."""
    if ctx.scope == "fail":
        raise RuntimeError(f"boom {EVIL_LOG}")
    await asyncio.sleep(float(ctx.scope or 0))
    return "ok"


@dataclass
class Made:
    root: Path
    summary: Summary
    analysis: Analysis


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """One run with every outcome the timeline colours: ok, failed, timeout, skipped."""
    root = tmp_path_factory.mktemp("hostile")
    plan = Plan(
        settings=Settings(per_agent_type=2),
        specialists={"w": Specialist(func=agent)},
        tasks=[
            Task(id=EVIL_ID, specialist="w", scope="fail"),
            Task(id=QUOTE_ID, specialist="w", scope="0.1"),
            Task(id="slow", specialist="w", scope="5", timeout=0.2),
            Task(id="after", specialist="w", scope="0.1", depends_on=[EVIL_ID]),
            Task(id="check", specialist="w", scope="0.1", phase="validation"),
        ],
    )
    summary = guildrun.run(plan, root=root, env={})
    journal = Journal(journal_path(root), readonly=True)
    try:
        return Made(root, summarize(journal, summary.run_id), analyze(journal, summary.run_id))
    finally:
        journal.close()


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Elements:
    parser = Elements()
    parser.feed(page)
    parser.close()
    return parser


def injected(doc: Elements) -> list[str]:
    """Elements or event handlers the report never writes itself: only input can add them."""
    bad = [t for t, _ in doc.tags if t in ("script", "img", "iframe", "link", "object")]
    return bad + [f"{t}[{k}]" for t, a in doc.tags for k in a if k.startswith("on")]


def bars(doc: Elements) -> list[dict[str, str]]:
    """The timeline's bars: elements with class "bar" after the svg#timeline start tag."""
    tags = doc.tags
    start = next(k for k, (t, a) in enumerate(tags) if t == "svg" and a.get("id") == "timeline")
    end = next(
        (k for k in range(start + 1, len(tags)) if tags[k][0] == "svg"),
        len(tags),
    )
    return [a for _, a in tags[start:end] if "bar" in a.get("class", "").split()]


def test_hostile_ids_and_logs_are_escaped(hostile: Made) -> None:
    s, a = hostile.summary, hostile.analysis
    assert (s.done, s.failed, s.skipped) == (2, 2, 1)
    page = render_html(a, s)
    lowered = page.lower()
    assert "<script" not in lowered and "<img" not in lowered and "<iframe" not in lowered
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;/pre&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    doc = parse(page)
    assert not injected(doc)
    # The ids survive escaping intact: the data-task attributes decode to the real ids.
    found = bars(doc)
    assert len(found) == len(a.attempts) == 4
    assert {b["data-task"] for b in found} == {EVIL_ID, QUOTE_ID, "slow", "check"}
    statuses = {b["data-task"]: b["data-status"] for b in found}
    assert statuses[EVIL_ID] == "failed" and statuses["slow"] == "timeout"
    assert statuses[QUOTE_ID] == "ok"
    text = "".join(doc.text)
    assert EVIL_ID in text and EVIL_LOG in text  # shown as text, in the failures section
    assert "RuntimeError" in text  # the log tail (traceback) is in the page
    assert "after" in text and "skipped" in text


def test_bar_colours_critical_path_and_phases(hostile: Made) -> None:
    a = hostile.analysis
    found = bars(parse(render_html(a, hostile.summary)))
    fill = {b["data-task"]: b["fill"] for b in found}
    assert fill[QUOTE_ID] == "#2e9e44"  # ok: green
    assert fill[EVIL_ID] == "#d43c3c"  # failed: red
    assert fill["slow"] == "#f08c00"  # timeout: orange
    critical = {b["data-task"] for b in found if "critical" in b["class"].split()}
    assert critical == set(a.critical_path) and "slow" in critical and "check" in critical
    assert [p.phase for p in a.phases] == ["implementation", "validation"]
    assert a.phases[0].wall_s >= 0.2  # the timeout held the phase open for its 0.2 s


def test_report_json_matches_the_analysis(hostile: Made) -> None:
    journal = Journal(journal_path(hostile.root), readonly=True)
    try:
        data = report_json(journal, hostile.summary.run_id)
    finally:
        journal.close()
    json.dumps(data)  # plain JSON types all the way down
    assert data["summary"]["failed"] == 2
    assert {f["task"] for f in data["summary"]["failures"]} == {EVIL_ID, "slow"}
    analysis = data["analysis"]
    assert analysis["run_id"] == hostile.summary.run_id
    assert len(analysis["attempts"]) == 4
    assert [p["phase"] for p in analysis["phases"]] == ["implementation", "validation"]
    assert analysis["phases"][0]["claimed_speedup"] == [4.0, 6.0]


def test_cmd_report_writes_html_atomically_and_prints_json(
    hostile: Made, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out" / "report.html"
    rid = hostile.summary.run_id
    assert cmd_report(str(hostile.root), rid[:-2], str(out), as_json=True) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["analysis"]["run_id"] == rid
    assert str(out) in captured.err
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left
    # Neither option: the HTML goes next to the run's logs; None picks the latest run.
    assert cmd_report(str(hostile.root), None, None, as_json=False) == 0
    default = hostile.root / ".guildrun" / "runs" / rid / "report.html"
    assert str(default) in capsys.readouterr().out
    assert 'id="timeline"' in default.read_text(encoding="utf-8")


# ---------------------------------------------------------------- in a real browser


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed, and CI must run the browser test")
    pytest.skip("chromium is not installed (apt-get install chromium) for the browser test")


def browse(exe: str, page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the decompressed (still filtered) scanlines of a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return size[0], size[1], zlib.decompress(idat)


@pytest.mark.slow
def test_report_renders_in_chromium(hostile: Made, tmp_path: Path) -> None:
    exe = chromium()
    page = tmp_path / "report.html"
    page.write_text(render_html(hostile.analysis, hostile.summary), encoding="utf-8")
    dom = browse(exe, page, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    doc = parse(dom.stdout)
    assert len(bars(doc)) == len(hostile.analysis.attempts)
    assert not injected(doc)
    assert EVIL_ID in "".join(doc.text)

    shot = tmp_path / "report.png"
    run = browse(exe, page, tmp_path / "profile-shot", f"--screenshot={shot}")
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    width, height, raw = png_pixels(shot)
    assert (width, height) == (1400, 1000)
    # A blank page filters to a handful of byte values; text, bars and tables to many.
    assert len(set(raw)) > 64
    assert raw.count(0) < 0.98 * len(raw)
