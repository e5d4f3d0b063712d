"""Real runs: real processes, a real journal, the real command line."""

from __future__ import annotations

import itertools
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import guildrun
from guildrun import Plan, Specialist, Task, TaskContext
from guildrun._policies.retry import RetrySettings

from .conftest import Runner, write_plan

# A stand-in agent: records what it was given and when it ran, then sleeps.
RECORDER = """\
import json, os, sys, time
start = time.time()
task = os.environ["GUILDRUN_TASK_ID"]
duration = float(os.environ.get("SLEEP", "0"))
time.sleep(duration)
record = {
    "argv": sys.argv[1:],
    "start": start,
    "end": time.time(),
    "env": {k: v for k, v in os.environ.items() if k.startswith("GUILDRUN_")},
}
os.makedirs("rec", exist_ok=True)
with open(os.path.join("rec", task + ".json"), "w") as fh:
    json.dump(record, fh)
print("result of", task)
"""


def recorder(root: Path) -> list[str]:
    (root / "rec.py").write_text(RECORDER)
    return [sys.executable, str(root / "rec.py")]


def records(root: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in (root / "rec").glob("*.json")}


def db(root: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(root / ".guildrun" / "journal.db")
    conn.row_factory = sqlite3.Row
    return conn


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """Most spans open at one instant (a span is [start, end))."""
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = cur = 0
    for _, step in points:
        cur += step
        best = max(best, cur)
    return best


@pytest.mark.slow
def test_limits_are_never_exceeded(guildrun: Runner, project: Path) -> None:
    argv = recorder(project)
    specs: dict[str, dict[str, Any]] = {
        s: {"run": argv, "writes": ["rec/*"], "env": {"SLEEP": "0.3"}}
        for s in ("interface", "service", "test")
    }
    specs["test"]["instances"] = 1
    tasks = [{"id": f"{s}-{i}", "specialist": s} for s in specs for i in range(8)]
    write_plan(
        project,
        {
            "settings": {"per_agent_type": 3, "total_parallel": 5},
            "specialists": specs,
            "tasks": tasks,
        },
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), "--json", cwd=project)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["done"] == 24
    rec = records(project)
    spans = [(r["start"], r["end"]) for r in rec.values()]
    assert max_overlap(spans) == 5  # the total limit is reached, and never passed
    for spec, limit in (("interface", 3), ("service", 3), ("test", 1)):
        mine = [(r["start"], r["end"]) for t, r in rec.items() if t.startswith(spec)]
        assert max_overlap(mine) <= limit
    assert summary["parallelism"] > 2.5  # 24 x 0.3 s of work on 5 slots


@pytest.mark.slow
def test_same_file_and_same_lock_never_overlap(guildrun: Runner, project: Path) -> None:
    argv = recorder(project)
    tasks = [
        {"id": "a", "files": ["shared.py"]},
        {"id": "b", "files": ["other.py"]},
        {"id": "c", "files": ["./shared.py"]},
        {"id": "d", "locks": ["db"]},
        {"id": "e", "locks": ["db"]},
    ]
    write_plan(
        project,
        {
            "specialists": {
                "w": {"run": argv, "writes": ["rec/*"], "env": {"SLEEP": "0.4"}, "instances": 5}
            },
            "tasks": [{**t, "specialist": "w"} for t in tasks],
        },
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), "--json", cwd=project)
    assert proc.returncode == 0, proc.stderr
    rec = records(project)
    assert rec["a"]["end"] <= rec["c"]["start"]  # plan order decides who goes first
    assert rec["d"]["end"] <= rec["e"]["start"]
    assert rec["b"]["start"] < rec["a"]["end"]  # unrelated work overlaps


@pytest.mark.slow
def test_phases_are_integration_boundaries(guildrun: Runner, project: Path) -> None:
    argv = recorder(project)
    phases = ["validation", "implementation", "research", "planning"] * 2
    tasks = [{"id": f"t{i}", "specialist": "w", "phase": p} for i, p in enumerate(phases)]
    write_plan(
        project,
        {
            "specialists": {"w": {"run": argv, "writes": ["rec/*"], "env": {"SLEEP": "0.2"}}},
            "tasks": tasks,
        },
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), "--json", cwd=project)
    assert proc.returncode == 0, proc.stderr
    rec = records(project)
    order = ["research", "planning", "implementation", "validation"]
    for earlier, later in itertools.pairwise(order):
        ends = [rec[t["id"]]["end"] for t in tasks if t["phase"] == earlier]
        starts = [rec[t["id"]]["start"] for t in tasks if t["phase"] == later]
        assert max(ends) <= min(starts)


def test_placeholders_reach_the_program_literally(guildrun: Runner, project: Path) -> None:
    argv = recorder(project)
    nasty = "rm -rf ~; $(touch pwned) `touch pwned2` \"quoted\" 'single'\nsecond line {{x}}"
    write_plan(
        project,
        {
            "specialists": {
                "w": {
                    "run": [
                        *argv,
                        "--task={task_id}",
                        "{prompt}",
                        "{files}",
                        "{instance}",
                        "{attempt}",
                        "{workdir}",
                    ],
                    "writes": ["rec/*"],
                },
                "sh": {
                    "run": 'printf "%s|%s" "$GUILDRUN_PROMPT" "$*" > shell-out.txt',
                    "shell": True,
                    "writes": ["shell-out.txt"],
                },
            },
            "tasks": [
                {"id": "t1", "specialist": "w", "prompt": nasty, "files": ["a b.py", "src/c.py"]},
                {"id": "t2", "specialist": "sh", "prompt": nasty, "files": ["x y.py"]},
            ],
        },
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec = records(project)["t1"]
    prompt = nasty.replace("{{x}}", "{x}")
    assert rec["argv"] == ["--task=t1", prompt, "a b.py", "src/c.py", "w#1", "1", str(project)]
    assert rec["env"]["GUILDRUN_PROMPT"] == prompt
    assert rec["env"]["GUILDRUN_FILES"] == "a b.py\nsrc/c.py"
    assert (project / "shell-out.txt").read_text() == f"{prompt}|x y.py"
    assert not (project / "pwned").exists() and not (project / "pwned2").exists()


def test_results_flow_to_later_phases(guildrun: Runner, project: Path) -> None:
    argv = recorder(project)
    write_plan(
        project,
        {
            "specialists": {
                "research": {"run": ["sh", "-c", 'echo "facts from $GUILDRUN_TASK_ID"']},
                "writer": {"run": ["sh", "-c", 'echo "$1" > "$GUILDRUN_RESULT"', "x", "{prompt}"]},
                "w": {"run": [*argv, "{prompt}"], "writes": ["rec/*"]},
            },
            "tasks": [
                {"id": "r1", "specialist": "research", "phase": "research"},
                {"id": "r2", "specialist": "research", "phase": "research"},
                {
                    "id": "p1",
                    "specialist": "writer",
                    "phase": "planning",
                    "prompt": "plan from:\n{results:research}",
                },
                {"id": "i1", "specialist": "w", "depends_on": ["p1"], "prompt": "do {result:p1}"},
            ],
        },
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = records(project)["i1"]["argv"][0]
    assert got == "do plan from:\n## r1\n\nfacts from r1\n\n## r2\n\nfacts from r2\n\n"
    run_dir = next((project / ".guildrun" / "runs").iterdir())
    research = (run_dir / "results-research.md").read_text()
    assert "## r1\n\nfacts from r1" in research and "## r2" in research
    with db(project) as conn:
        row = conn.execute("SELECT result FROM tasks WHERE id='r2'").fetchone()
    assert row["result"] == "facts from r2\n"


def test_logs_failures_skips_and_exit_code(guildrun: Runner, project: Path) -> None:
    write_plan(
        project,
        {
            "specialists": {
                "w": {
                    "run": [
                        "sh",
                        "-c",
                        'echo "out $1"; echo "err $1" >&2; exit "$2"',
                        "x",
                        "{task_id}",
                        "{scope}",
                    ]
                }
            },
            "tasks": [
                {"id": "ok", "specialist": "w", "scope": "0"},
                {"id": "bad", "specialist": "w", "scope": "3"},
                {"id": "child", "specialist": "w", "scope": "0", "depends_on": ["bad"]},
                {"id": "grandchild", "specialist": "w", "scope": "0", "depends_on": ["child"]},
                {"id": "unrelated", "specialist": "w", "scope": "0"},
            ],
        },
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), "--json", cwd=project)
    assert proc.returncode == 1, proc.stderr
    s = json.loads(proc.stdout)
    assert (s["done"], s["failed"], s["skipped"]) == (2, 1, 2)
    assert s["failures"][0]["task"] == "bad"
    assert s["failures"][0]["cause"] == "exit status 3"
    assert s["failures"][0]["tail"] == ["err bad"]
    assert {k["task"]: k["cause"] for k in s["skips"]} == {
        "child": "dependency 'bad' failed",
        "grandchild": "dependency 'bad' failed",
    }
    logs = project / ".guildrun" / "runs" / s["run_id"] / "logs"
    assert (logs / "ok.out").read_text() == "out ok\n"
    assert (logs / "ok.err").read_text() == "err ok\n"
    # The human summary names the failure and shows its log tail.
    proc = guildrun("status", "--root", str(project), cwd=project)
    assert "bad" in proc.stdout and "err bad" in proc.stdout and "child" in proc.stdout


@pytest.mark.slow
def test_journal_records_instances_and_steals(guildrun: Runner, project: Path) -> None:
    write_plan(
        project,
        {
            "specialists": {"interface": {"run": ["sleep", "{scope}"]}},
            "tasks": [
                {"id": str(i), "specialist": "interface", "scope": "3" if i == 1 else "0.3"}
                for i in range(1, 8)
            ],
        },
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), "--json", cwd=project)
    assert proc.returncode == 0, proc.stderr
    with db(project) as conn:
        rows = {r["id"]: r for r in conn.execute("SELECT * FROM tasks")}
        steals = [
            r["task"]
            for r in conn.execute(
                "SELECT task FROM events WHERE kind='task_started' AND data LIKE '%stolen_from%'"
                " ORDER BY seq"
            )
        ]
    assert all(r["instance"] for r in rows.values())
    # #1 holds [1,4,7] and is stuck on the 3-second task 1: its siblings take 7, then 4.
    assert steals == ["7", "4"]
    assert rows["7"]["stolen_from"] == rows["4"]["stolen_from"] == "interface#1"
    assert rows["5"]["stolen_from"] is None and rows["5"]["instance"] == "interface#2"


def test_timeout_kills_the_whole_process_group(project: Path) -> None:
    plan = Plan(
        settings=guildrun.Settings(kill_grace=0.5),
        specialists={
            "w": Specialist(
                # Outside the project: a failed attempt's own writes are rolled back.
                run=["sh", "-c", 'sleep 60 & echo $! > "$PIDFILE"; trap "" TERM; wait'],
                env={"PIDFILE": str(project.parent / "grandchild.pid")},
            )
        },
        tasks=[Task(id="slow", specialist="w", timeout=1)],
    )
    start = time.monotonic()
    summary = guildrun.run(plan, root=project)
    assert time.monotonic() - start < 30
    assert summary.failed == 1 and "timed out" in (summary.tasks[0].cause or "")
    pid = int((project.parent / "grandchild.pid").read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        stat = Path(f"/proc/{pid}/stat").read_text().split()
        if stat[2] == "Z":
            break
        time.sleep(0.05)
    assert (
        not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    )


def test_sigint_stops_agents_and_exits_130(project: Path) -> None:
    write_plan(
        project,
        {
            "specialists": {
                "w": {
                    "run": ["sh", "-c", "echo $$ > pid-$1; sleep 60", "x", "{task_id}"],
                    "writes": ["pid-*"],
                }
            },
            "tasks": [{"id": "a", "specialist": "w"}, {"id": "b", "specialist": "w"}],
        },
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "guildrun", "run", "plan.yaml", "--root", str(project), "--json"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not ((project / "pid-a").exists() and (project / "pid-b").exists()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert json.loads(out)["status"] == "interrupted"
    for name in ("pid-a", "pid-b"):
        pid = int((project / name).read_text())
        assert not Path(f"/proc/{pid}").exists()
    with db(project) as conn:
        assert conn.execute("SELECT status FROM runs").fetchone()[0] == "interrupted"
        states = {r[0] for r in conn.execute("SELECT state FROM tasks")}
    assert states == {"interrupted"}


def test_python_api_sync_async_and_callables(project: Path) -> None:
    seen: list[tuple[str, str]] = []

    def write(ctx: TaskContext) -> str:
        for f in ctx.files:
            (ctx.root / f).write_text(f"written by {ctx.task_id}\n")
        seen.append((ctx.task_id, ctx.instance))
        return f"wrote {len(ctx.files)}"

    async def review(ctx: TaskContext) -> str:
        return f"reviewed: {ctx.prompt}"

    plan = Plan(
        specialists={"writer": Specialist(func=write), "reviewer": Specialist(func=review)},
        tasks=[
            Task(id="w1", specialist="writer", files=["a.txt"]),
            Task(id="w2", specialist="writer", files=["b.txt"]),
            Task(
                id="r",
                specialist="reviewer",
                depends_on=["w1", "w2"],
                phase="validation",
                prompt="{result:w1} and {result:w2}",
            ),
        ],
    )
    summary = guildrun.run(plan, root=project)
    assert summary.ok and summary.done == 3
    assert (project / "a.txt").read_text() == "written by w1\n"
    assert sorted(seen) == [("w1", "writer#1"), ("w2", "writer#2")]
    with db(project) as conn:
        result = conn.execute("SELECT result FROM tasks WHERE id='r'").fetchone()[0]
    assert result == "reviewed: wrote 1 and wrote 1"

    import asyncio

    summary2 = asyncio.run(guildrun.run_async(plan, root=project, per_agent_type=1))
    assert summary2.ok and summary2.run_id != summary.run_id


def test_python_callables_time_out_and_their_logs_are_journaled(project: Path) -> None:
    """An async callable past its timeout is cancelled, a sync one is given up on (its
    thread cannot be stopped); a callable that does not stop at its deadline's
    cancellation still ends as timed out. The journal names each attempt's log files as
    the paths the job was given (unsafe ids and later attempts included)."""
    import asyncio

    cancelled: list[str] = []

    async def slow(ctx: TaskContext) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(ctx.task_id)
            raise
        return "never"

    def blocking(ctx: TaskContext) -> None:
        time.sleep(0.6)

    async def flaky(ctx: TaskContext) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("first try fails")
        return "ok"

    plan = Plan(
        specialists={
            "slow": Specialist(func=slow),
            "blocking": Specialist(func=blocking),
            "flaky": Specialist(func=flaky),
        },
        tasks=[
            Task(id="a/sync", specialist="slow", timeout=0.2),
            Task(id="b", specialist="blocking", timeout=0.2),
            Task(
                id="c",
                specialist="flaky",
                timeout=5,
                retry=RetrySettings(attempts=2, base=0, jitter=0),
            ),
        ],
    )
    summary = guildrun.run(plan, root=project)
    by_id = {t.id: t for t in summary.tasks}
    assert (by_id["a/sync"].state, by_id["a/sync"].cause) == ("failed", "timed out after 0.2s")
    assert (by_id["b"].state, by_id["b"].cause) == ("failed", "timed out after 0.2s")
    assert by_id["c"].state == "done"
    assert cancelled == ["a/sync"]
    logs = project / ".guildrun" / "runs" / summary.run_id / "logs"
    with db(project) as conn:
        rows = conn.execute(
            "SELECT task_id, attempt, stdout_path, stderr_path FROM attempts"
            " WHERE run_id=? ORDER BY task_id, attempt",
            (summary.run_id,),
        ).fetchall()
    names = {(t, n): (Path(o), Path(e)) for t, n, o, e in rows}
    assert names[("c", 2)] == (logs / "c.2.out", logs / "c.2.err")
    assert names[("c", 1)] == (logs / "c.out", logs / "c.err")
    out, err = names[("a/sync", 1)]
    assert out.parent == logs and out.name.startswith("a_sync-") and out.suffix == ".out"
    assert err == out.with_suffix(".err")
    assert (logs / "c.err").read_text().count("first try fails") >= 1


def test_python_specialist_by_module_path(project: Path) -> None:
    (project / "myagents.py").write_text(
        "def boom(ctx):\n    raise RuntimeError('no luck for ' + ctx.task_id)\n"
    )
    plan = Plan(
        specialists={"x": Specialist(python="myagents:boom")}, tasks=[Task(id="t", specialist="x")]
    )
    sys.path.insert(0, str(project))
    try:
        summary = guildrun.run(plan, root=project)
    finally:
        sys.path.remove(str(project))
    assert summary.failed == 1
    assert summary.tasks[0].cause == "RuntimeError: no luck for t"
    assert any("RuntimeError" in line for line in summary.tasks[0].tail)


def test_unloadable_python_specialist_is_an_input_error(guildrun: Runner, project: Path) -> None:
    write_plan(
        project,
        {
            "specialists": {"x": {"python": "no_such_module:f"}},
            "tasks": [{"id": "t", "specialist": "x"}],
        },
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), cwd=project)
    assert proc.returncode == 2
    assert "specialists.x.python" in proc.stderr and "no_such_module" in proc.stderr


@pytest.mark.slow
def test_plan_runs_status_commands(guildrun: Runner, project: Path) -> None:
    write_plan(
        project,
        {
            "specialists": {"interface": {"run": ["true"]}},
            "tasks": [{"id": str(i), "specialist": "interface"} for i in range(1, 8)],
        },
    )
    proc = guildrun("plan", "plan.yaml", "--json", "--root", str(project), cwd=project)
    assert json.loads(proc.stdout)["instances"] == {
        "interface": [["1", "4", "7"], ["2", "5"], ["3", "6"]]
    }
    proc = guildrun("plan", "plan.yaml", "--root", str(project), cwd=project)
    assert "interface#1: 1, 4, 7" in proc.stdout
    for _ in range(2):
        assert (
            guildrun("run", "plan.yaml", "--root", str(project), "-q", cwd=project).returncode == 0
        )
    proc = guildrun("runs", "--root", str(project), "--json", cwd=project)
    runs = json.loads(proc.stdout)
    assert len(runs) == 2 and all(r["done"] == 7 for r in runs)
    proc = guildrun("status", runs[1]["run_id"], "--root", str(project), "--json", cwd=project)
    status = json.loads(proc.stdout)
    assert status["run_id"] == runs[1]["run_id"]
    assert all(t["state"] == "done" and len(t["attempt_list"]) == 1 for t in status["tasks"])
    assert all(a["exit_code"] == 0 for t in status["tasks"] for a in t["attempt_list"])
    proc = guildrun("status", "nope", "--root", str(project), cwd=project)
    assert proc.returncode == 2 and "no run 'nope'" in proc.stderr


def test_status_without_runs_is_clear(guildrun: Runner, project: Path) -> None:
    proc = guildrun("status", "--root", str(project), cwd=project)
    assert proc.returncode == 2 and "no runs yet" in proc.stderr


@pytest.mark.slow
def test_many_trivial_tasks_finish(guildrun: Runner, project: Path) -> None:
    write_plan(
        project,
        {
            "settings": {"total_parallel": 20, "per_agent_type": 20},
            "specialists": {"w": {"run": ["true"]}},
            "tasks": [{"id": str(i), "specialist": "w"} for i in range(500)],
        },
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), "--json", cwd=project)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["done"] == 500
