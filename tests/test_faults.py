"""Fault tolerance with real processes: retries, timeouts, ownership, rollback, resume."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import guildrun
from guildrun import wait_exponential, wait_random
from guildrun._policies.retry import RetrySettings, merge_retry

from .conftest import Runner, write_plan

# A stand-in agent. It notes each start, sleeps, may misbehave as its prompt says, then
# writes its owned files: each gets "<task>:" plus the content of the files it read.
AGENT = r"""
import os, sys, time, random
task = os.environ["GUILDRUN_TASK_ID"]
prompt = os.environ["GUILDRUN_PROMPT"]
# Starts are noted beside the project, not in it: a failed attempt's writes are undone.
notes = os.environ["GUILDRUN_ROOT"] + ".starts"
os.makedirs(notes, exist_ok=True)
with open(os.path.join(notes, task), "a") as fh:
    fh.write(f"{os.environ['GUILDRUN_ATTEMPT']}\n")
opts = dict(p.split("=", 1) for p in prompt.split() if "=" in p)
time.sleep(float(opts.get("sleep", "0")))
if "fail_until" in opts and int(os.environ["GUILDRUN_ATTEMPT"]) < int(opts["fail_until"]):
    sys.exit(int(opts.get("code", "1")))
if "exit" in opts:
    sys.exit(int(opts["exit"]))
if "flaky" in opts and random.random() < float(opts["flaky"]):
    sys.exit(3)
inputs = ""
for dep in filter(None, opts.get("read", "").split(",")):
    with open(dep) as fh:
        inputs += fh.read()
files = [f for f in os.environ["GUILDRUN_FILES"].split("\n") if f]
for f in files:
    os.makedirs(os.path.dirname(f) or ".", exist_ok=True)
    with open(f, "w") as fh:
        fh.write(f"{task}:" + inputs.replace("\n", "|") + "\n")
for f in filter(None, opts.get("stray", "").split(",")):
    with open(f, "w") as fh:
        fh.write("stray write by " + task)
for f in filter(None, opts.get("delete", "").split(",")):
    os.remove(f)
if "then_fail" in opts:
    sys.exit(5)
print("ok", task)
"""


def agent(root: Path, **extra: Any) -> dict[str, Any]:
    (root / "agent.py").write_text(AGENT)
    return {"run": [sys.executable, str(root / "agent.py")], "writes": ["starts/*"], **extra}


def journal(root: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(root / ".guildrun" / "journal.db")
    conn.row_factory = sqlite3.Row
    return conn


def starts(root: Path, task: str) -> int:
    path = Path(f"{root}.starts") / task
    return len(path.read_text().splitlines()) if path.exists() else 0


# ------------------------------------------------------------------ retry


def test_backoff_is_arithmetic() -> None:
    rng = random.Random(7)
    wait = wait_exponential(base=1, factor=2, cap=5)
    assert [wait(n, rng) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    jittered = wait_exponential(base=1, factor=2, cap=60) + wait_random(0, 0.5)
    for n in range(1, 5):
        assert 2 ** (n - 1) <= jittered(n, rng) <= 2 ** (n - 1) + 0.5
    policy = merge_retry(
        RetrySettings(attempts=3), RetrySettings(permanent_exit_codes=[2]), RetrySettings(base=0)
    )
    assert policy.attempts == 3
    assert policy.should_retry(1, "failed", 1) and policy.should_retry(2, "timeout", None)
    assert not policy.should_retry(3, "failed", 1)
    assert not policy.should_retry(1, "failed", 2)


@pytest.mark.slow
def test_retries_then_succeeds_and_every_attempt_is_journaled(
    guildrun: Runner, project: Path
) -> None:
    write_plan(
        project,
        {
            "settings": {"retry": {"attempts": 4, "base": 0.1, "factor": 2, "jitter": 0}},
            "specialists": {"w": agent(project)},
            "tasks": [
                {
                    "id": "flaky",
                    "specialist": "w",
                    "prompt": "fail_until=3 code=7",
                    "files": ["f.txt"],
                },
                {"id": "broken", "specialist": "w", "prompt": "exit=9", "files": ["g.txt"]},
            ],
        },
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), "--json", cwd=project)
    assert proc.returncode == 1, proc.stderr
    s = json.loads(proc.stdout)
    assert (s["done"], s["failed"]) == (1, 1)
    with journal(project) as db:
        att = db.execute(
            "SELECT attempt, status, exit_code, ended - started AS d FROM attempts"
            " WHERE task_id='flaky' ORDER BY attempt"
        ).fetchall()
        delays = [
            json.loads(r["data"])["retry_in"]
            for r in db.execute(
                "SELECT data FROM events WHERE kind='task_retry' AND task='flaky' ORDER BY seq"
            )
        ]
        broken = db.execute("SELECT COUNT(*) FROM attempts WHERE task_id='broken'").fetchone()[0]
    assert [(r["attempt"], r["status"], r["exit_code"]) for r in att] == [
        (1, "failed", 7),
        (2, "failed", 7),
        (3, "ok", 0),
    ]
    assert delays == [0.1, 0.2]
    assert broken == 4  # exit 9 is not permanent: tried every time, then failed for good
    assert (project / "f.txt").read_text() == "flaky:\n"
    assert not (project / "g.txt").exists()


def test_permanent_exit_codes_are_not_retried(project: Path) -> None:
    plan = guildrun.Plan.model_validate(
        {
            "settings": {"retry": {"attempts": 5, "base": 0}},
            "specialists": {"w": agent(project, retry={"permanent_exit_codes": [9]})},
            "tasks": [{"id": "t", "specialist": "w", "prompt": "exit=9"}],
        }
    )
    summary = guildrun.run(plan, root=project)
    assert summary.failed == 1 and summary.tasks[0].attempts == 1


@pytest.mark.slow
def test_backoff_does_not_hold_the_slot(project: Path) -> None:
    """One instance; A fails and backs off for 1.5 s; B runs in the meantime."""
    plan = guildrun.Plan.model_validate(
        {
            "settings": {"per_agent_type": 1, "retry": {"attempts": 2, "base": 1.5, "jitter": 0}},
            "specialists": {"w": agent(project)},
            "tasks": [
                {"id": "a", "specialist": "w", "prompt": "fail_until=2"},
                {"id": "b", "specialist": "w", "prompt": "sleep=0.3"},
            ],
        }
    )
    summary = guildrun.run(plan, root=project)
    assert summary.ok
    with journal(project) as db:
        rows = db.execute("SELECT task_id, attempt, started, ended FROM attempts").fetchall()
    by = {(r["task_id"], r["attempt"]): r for r in rows}
    assert by[("b", 1)]["started"] < by[("a", 2)]["started"]
    assert by[("b", 1)]["ended"] <= by[("a", 2)]["started"]


@pytest.mark.slow
def test_random_fault_injection_ends_with_everything_done(project: Path) -> None:
    n = 30
    plan = guildrun.Plan.model_validate(
        {
            "settings": {"per_agent_type": 6, "retry": {"attempts": 12, "base": 0.01, "cap": 0.05}},
            "specialists": {"w": agent(project)},
            "tasks": [
                {"id": f"t{i}", "specialist": "w", "prompt": "flaky=0.4", "files": [f"out/{i}.txt"]}
                for i in range(n)
            ],
        }
    )
    summary = guildrun.run(plan, root=project)
    assert summary.done == n, [
        (t.id, t.attempts, t.cause, t.tail) for t in summary.tasks if t.state != "done"
    ]
    with journal(project) as db:
        failed = db.execute("SELECT COUNT(*) FROM attempts WHERE status='failed'").fetchone()[0]
        retries = db.execute("SELECT COUNT(*) FROM events WHERE kind='task_retry'").fetchone()[0]
        total = db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
    assert failed > 0 and retries == failed and total == n + failed
    assert sum(starts(project, f"t{i}") for i in range(n)) == total


# ------------------------------------------------------------------ processes


def test_no_grandchild_outlives_a_task(project: Path) -> None:
    plan = guildrun.Plan.model_validate(
        {
            "specialists": {
                "w": {
                    "run": ["sh", "-c", "sleep 60 & echo $! > bg.pid; exit 0"],
                    "writes": ["bg.pid"],
                }
            },
            "tasks": [{"id": "t", "specialist": "w"}],
        }
    )
    assert guildrun.run(plan, root=project).ok
    pid = int((project / "bg.pid").read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"background process {pid} of a finished task is still alive")


# ------------------------------------------------------------------ isolation


@pytest.mark.slow
def test_scope_isolation_and_fail_fast(guildrun: Runner, project: Path) -> None:
    tasks = [
        {"id": "auth-1", "scope": "auth", "prompt": "exit=1"},
        {"id": "auth-2", "scope": "auth", "prompt": "sleep=0.2"},
        {"id": "auth-3", "scope": "auth"},
        {"id": "pay-1", "scope": "payments", "prompt": "sleep=0.2"},
        {"id": "pay-2", "scope": "payments"},
    ]
    write_plan(
        project,
        {
            # Plan order, on the second run too (`auto` would start the learned longest).
            "settings": {"per_agent_type": 1, "isolation": "scope", "strategy": "work-stealing"},
            "specialists": {"w": agent(project)},
            "tasks": [{**t, "specialist": "w"} for t in tasks],
        },
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), "--json", cwd=project)
    s = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert {k["task"]: k["cause"] for k in s["skips"]} == {
        "auth-2": "scope 'auth' stopped: task 'auth-1' failed",
        "auth-3": "scope 'auth' stopped: task 'auth-1' failed",
    }
    assert s["done"] == 2  # payments went on
    proc = guildrun(
        "run", "plan.yaml", "--root", str(project), "--json", "--fail-fast", cwd=project
    )
    s = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert (s["done"], s["failed"], s["skipped"]) == (0, 1, 4)
    assert all("fail-fast" in k["cause"] for k in s["skips"])


# ------------------------------------------------------------------ ownership


def test_ownership_violation_is_undone_and_fails_the_task(project: Path) -> None:
    (project / "keep.txt").write_text("original\n")
    (project / "victim.txt").write_text("precious\n")
    plan = guildrun.Plan.model_validate(
        {
            "specialists": {"w": agent(project)},
            "tasks": [
                {
                    "id": "rogue",
                    "specialist": "w",
                    "files": ["mine.txt"],
                    "prompt": "stray=keep.txt,new-stray.txt delete=victim.txt",
                },
            ],
        }
    )
    summary = guildrun.run(plan, root=project)
    assert summary.failed == 1
    cause = summary.tasks[0].cause or ""
    assert cause.startswith("ownership violation:")
    for path in ("keep.txt", "new-stray.txt", "victim.txt"):
        assert path in cause
    assert (project / "keep.txt").read_text() == "original\n"
    assert (project / "victim.txt").read_text() == "precious\n"
    assert not (project / "new-stray.txt").exists()
    assert not (project / "mine.txt").exists()  # its own work is rolled back too


def test_ownership_in_a_git_repository(project: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    (project / "tracked.txt").write_text("committed\n")
    (project / ".gitignore").write_text("starts/\nagent.py\n")
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
        cwd=project,
        check=True,
    )
    (project / "tracked.txt").write_text("uncommitted edit of the user\n")
    plan = guildrun.Plan.model_validate(
        {
            "specialists": {"w": agent(project)},
            "tasks": [
                {
                    "id": "rogue",
                    "specialist": "w",
                    "files": ["a.txt"],
                    "prompt": "stray=tracked.txt",
                }
            ],
        }
    )
    assert guildrun.run(plan, root=project).failed == 1
    assert (project / "tracked.txt").read_text() == "uncommitted edit of the user\n"


def test_sequential_fallback_when_the_task_ran_alone(project: Path) -> None:
    plan = guildrun.Plan.model_validate(
        {
            "settings": {"on_violation": "sequential"},
            "specialists": {"w": agent(project)},
            "tasks": [
                {
                    "id": "greedy",
                    "specialist": "w",
                    "files": ["g.txt"],
                    "prompt": "stray=index.txt",
                },
                {
                    "id": "next",
                    "specialist": "w",
                    "files": ["n.txt"],
                    "depends_on": ["greedy"],
                    "prompt": "read=index.txt",
                },
            ],
        }
    )
    summary = guildrun.run(plan, root=project)
    assert summary.ok, summary.to_json()
    with journal(project) as db:
        att = {(r["task_id"], r["attempt"]): r for r in db.execute("SELECT * FROM attempts")}
        ev = db.execute(
            "SELECT data FROM events WHERE kind='task_finished' AND task='greedy' ORDER BY seq DESC"
        ).fetchone()
        seq = db.execute("SELECT data FROM events WHERE kind='task_sequential'").fetchone()
    assert att[("greedy", 1)]["status"] == "violation"
    assert "index.txt" in json.loads(seq["data"])["error"]
    assert att[("greedy", 2)]["status"] == "ok"
    assert json.loads(ev["data"])["extra_files"] == ["index.txt"]
    assert (project / "n.txt").read_text() == "next:stray write by greedy\n"


def test_stray_write_with_several_tasks_running_is_undone_and_reported(project: Path) -> None:
    (project / "shared.cfg").write_text("v1\n")
    plan = guildrun.Plan.model_validate(
        {
            "specialists": {"w": agent(project)},
            "tasks": [
                {
                    "id": "x",
                    "specialist": "w",
                    "files": ["x.txt"],
                    "prompt": "sleep=0.1 stray=shared.cfg",
                },
                {"id": "y", "specialist": "w", "files": ["y.txt"], "prompt": "sleep=0.8"},
            ],
        }
    )
    summary = guildrun.run(plan, root=project)
    assert summary.done == 2
    assert (project / "shared.cfg").read_text() == "v1\n"
    with journal(project) as db:
        row = db.execute("SELECT data FROM events WHERE kind='stray_changes_undone'").fetchone()
    data = json.loads(row["data"])
    assert data == {"paths": ["shared.cfg"], "running": ["x", "y"]}


def test_writes_globs_widen_ownership(project: Path) -> None:
    plan = guildrun.Plan.model_validate(
        {
            "specialists": {"w": agent(project, writes=["starts/*", "docs/**"])},
            "tasks": [{"id": "t", "specialist": "w", "prompt": "stray=docs/index.md"}],
        }
    )
    (project / "docs").mkdir()
    assert guildrun.run(plan, root=project).ok
    assert (project / "docs/index.md").exists()


# ------------------------------------------------------------------ rollback


def test_failed_task_is_rolled_back_and_user_edits_survive(project: Path) -> None:
    (project / "owned.txt").write_text("before\n")
    (project / "notes.txt").write_text("the user's own work in progress\n")
    plan = guildrun.Plan.model_validate(
        {
            "specialists": {"w": agent(project)},
            "tasks": [
                {
                    "id": "t",
                    "specialist": "w",
                    "files": ["owned.txt", "new/made.txt"],
                    "prompt": "then_fail=1",
                }
            ],
        }
    )
    assert guildrun.run(plan, root=project).failed == 1
    assert (project / "owned.txt").read_text() == "before\n"
    assert not (project / "new").exists()
    assert (project / "notes.txt").read_text() == "the user's own work in progress\n"


@pytest.mark.slow
def test_rollback_command_undoes_finished_work_in_order(guildrun: Runner, project: Path) -> None:
    (project / "a.txt").write_text("A0\n")
    write_plan(
        project,
        {
            "specialists": {"w": agent(project)},
            "tasks": [
                {"id": "first", "specialist": "w", "files": ["a.txt"], "scope": "x"},
                {
                    "id": "second",
                    "specialist": "w",
                    "files": ["a.txt", "b.txt"],
                    "scope": "y",
                    "depends_on": ["first"],
                    "prompt": "read=a.txt",
                },
                {"id": "third", "specialist": "w", "files": ["c.txt"], "scope": "x"},
            ],
        },
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), "--json", cwd=project)
    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout)["run_id"]
    assert (project / "a.txt").read_text() == "second:first:|\n"
    # "first" cannot go alone: "second" built on a.txt since.
    proc = guildrun("rollback", run_id, "--task", "first", "--root", str(project), cwd=project)
    assert proc.returncode == 2
    assert "a.txt was changed after it finished by 'second'" in proc.stderr
    assert (project / "a.txt").read_text() == "second:first:|\n"  # nothing touched
    proc = guildrun("rollback", run_id, "--task", "second", "--root", str(project), cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert (project / "a.txt").read_text() == "first:\n" and not (project / "b.txt").exists()
    proc = guildrun("rollback", run_id, "--scope", "x", "--root", str(project), cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert (project / "a.txt").read_text() == "A0\n" and not (project / "c.txt").exists()


# ------------------------------------------------------------------ resume

RESUME_TASKS: list[dict[str, Any]] = [
    {"id": "r1", "phase": "research", "files": ["notes/r1.md"], "prompt": "sleep=0.3"},
    {"id": "r2", "phase": "research", "files": ["notes/r2.md"], "prompt": "sleep=0.5"},
    {
        "id": "i1",
        "files": ["src/i1.py"],
        "depends_on": ["r1"],
        "prompt": "sleep=0.4 read=notes/r1.md",
    },
    {"id": "i2", "files": ["src/i2.py"], "prompt": "sleep=0.6 read=notes/r2.md"},
    {
        "id": "i3",
        "files": ["src/i3.py"],
        "depends_on": ["i1"],
        "prompt": "sleep=0.3 read=src/i1.py",
    },
    {"id": "i4", "files": ["src/i4.py"], "prompt": "sleep=0.5"},
    {
        "id": "v1",
        "phase": "validation",
        "files": ["report.txt"],
        "prompt": "sleep=0.2 read=src/i3.py,src/i2.py",
    },
]
EXPECTED = {
    "notes/r1.md": "r1:\n",
    "notes/r2.md": "r2:\n",
    "src/i1.py": "i1:r1:|\n",
    "src/i2.py": "i2:r2:|\n",
    "src/i3.py": "i3:i1:r1:||\n",
    "src/i4.py": "i4:\n",
    "report.txt": "v1:i3:i1:r1:|||i2:r2:||\n",
}


def resume_plan(root: Path) -> None:
    write_plan(
        root,
        {
            "settings": {"per_agent_type": 2},
            "specialists": {"w": agent(root)},
            "tasks": [{**t, "specialist": "w"} for t in RESUME_TASKS],
        },
    )


def assert_final(root: Path) -> None:
    for path, text in EXPECTED.items():
        assert (root / path).read_text() == text, path
    with journal(root) as db:
        done = db.execute("SELECT task_id, COUNT(*) AS n FROM completions GROUP BY task_id")
        counts = {r["task_id"]: r["n"] for r in done}
    assert counts == {t["id"]: 1 for t in RESUME_TASKS}


@pytest.mark.slow
def test_resume_after_ctrl_c(guildrun: Runner, project: Path) -> None:
    resume_plan(project)
    proc = subprocess.Popen(
        [sys.executable, "-m", "guildrun", "run", "plan.yaml", "--root", str(project), "-q"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while starts(project, "i1") == 0 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    with journal(project) as db:
        done_before = {r[0] for r in db.execute("SELECT id FROM tasks WHERE state='done'")}
    assert "r1" in done_before
    proc2 = guildrun("resume", "--root", str(project), "--json", cwd=project)
    assert proc2.returncode == 0, proc2.stderr
    assert_final(project)
    for tid in done_before:
        assert starts(project, tid) == 1
    proc3 = guildrun("resume", "--root", str(project), cwd=project)
    assert proc3.returncode == 2 and "no interrupted run to resume" in proc3.stderr


@pytest.mark.slow
def test_power_loss_after_every_commit(guildrun: Runner, tmp_path: Path) -> None:
    """Abort the engine right after its k-th journal commit, for every k; resume each time."""
    k = 1
    while True:
        root = tmp_path / f"k{k}"
        root.mkdir()
        write_plan(
            root,
            {
                "settings": {"per_agent_type": 2},
                "specialists": {"w": agent(root)},
                "tasks": [
                    {**t, "specialist": "w", "prompt": t["prompt"].replace("sleep=", "s=")}
                    for t in RESUME_TASKS
                ],
            },
        )
        crashed = guildrun(
            "run",
            "plan.yaml",
            "--root",
            str(root),
            "-q",
            cwd=root,
            env={"GUILDRUN_TEST_CRASH_AFTER_COMMIT": str(k)},
        )
        if crashed.returncode == 0:
            break  # k is past the last commit: every commit of a run has been tried
        assert crashed.returncode == 137, crashed.stderr
        with journal(root) as db:
            status = db.execute("SELECT status FROM runs").fetchone()
        if status is not None and status[0] != "done":  # else: the crash came after the end
            again = guildrun("resume", "--root", str(root), "-q", cwd=root)
            assert again.returncode == 0, again.stderr
        if status is not None:
            assert_final(root)
        k += 1
    assert k > 5


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path: Path) -> None:
    rng = random.Random(2026)
    for trial in range(6):
        root = tmp_path / f"t{trial}"
        root.mkdir()
        resume_plan(root)
        args = ["--root", str(root), "-q"]
        starts_when_done: dict[str, int] = {}
        # Kills come at random moments, later ones later: on a loaded machine a start-up
        # can take most of a short window, and every run must still end.
        for round_ in range(40):
            with journal_exists(root) as has_run:
                verb = "resume" if has_run else "run"
            cmd = [
                sys.executable,
                "-m",
                "guildrun",
                verb,
                *(["plan.yaml"] if verb == "run" else []),
                *args,
            ]
            with (root / "engine.err").open("wb") as err:
                proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=err)
                try:
                    proc.wait(timeout=rng.uniform(0.3, 1.6) * (1 + round_ / 8))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.returncode == 0:
                break
            assert proc.returncode == -signal.SIGKILL, (root / "engine.err").read_text()
            with journal_exists(root) as has_run:
                if not has_run:
                    continue
            with journal(root) as db:
                now_done = {r[0] for r in db.execute("SELECT id FROM tasks WHERE state='done'")}
                ended = db.execute("SELECT status FROM runs").fetchone()[0] == "done"
            for tid in now_done:
                starts_when_done.setdefault(tid, starts(root, tid))
            if ended:  # killed after its last commit: nothing left to resume
                break
        else:
            pytest.fail("the run never finished")
        assert_final(root)
        # A task the journal called done at a kill never started again afterwards.
        for tid, n in starts_when_done.items():
            assert starts(root, tid) == n, tid
        leftover = subprocess.run(
            ["pgrep", "-f", str(root / "agent.py")], capture_output=True, text=True, check=False
        )
        assert leftover.stdout.strip() == "", "agents left running"


@contextlib.contextmanager
def journal_exists(root: Path) -> Iterator[bool]:
    """Whether a run was journaled at all (a kill can land before the first commit)."""
    path = root / ".guildrun" / "journal.db"
    if not path.exists():
        yield False
        return
    conn = sqlite3.connect(path)
    try:
        try:
            yield conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] > 0
        except sqlite3.OperationalError:
            yield False
    finally:
        conn.close()


# ------------------------------------------------------------------ hostile agents


def shell_task(project: Path, script: str, files: list[str], **extra: Any) -> guildrun.Summary:
    plan = guildrun.Plan.model_validate(
        {
            "specialists": {"a": {"shell": True, "run": script, **extra}},
            "tasks": [{"id": "T", "specialist": "a", "files": files}],
        }
    )
    return guildrun.run(plan, root=project)


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): (
            f"-> {os.readlink(p)}" if p.is_symlink() else p.read_text()
        )
        for p in sorted(root.rglob("*"))
        if ".guildrun" not in p.parts and (p.is_file() or p.is_symlink())
    }


@pytest.mark.parametrize(
    "script",
    [
        "mv docs ../gone",
        "mv docs docs2",
        "mv docs/sub ../gone2",
        "rm -rf docs",
        "mkdir -p new/deep && echo z > new/deep/z",
        "ln -s /nonexistent dangling",
        "ln -s /etc docs/etc",
        "mv docs docs2 && ln -s docs2 docs",
        "mv docs ../gone && ln -s ../gone docs",
    ],
)
def test_folder_moves_links_and_deletes_are_caught_and_undone(project: Path, script: str) -> None:
    (project / "docs" / "sub").mkdir(parents=True)
    (project / "docs" / "a.md").write_text("a\n")
    (project / "docs" / "sub" / "b.md").write_text("b\n")
    (project / "f").write_text("x\n")
    before = tree(project)
    summary = shell_task(project, script, ["f"])
    assert summary.failed == 1
    assert (summary.tasks[0].cause or "").startswith("ownership violation")
    assert tree(project) == before


def test_restore_never_writes_through_a_link_out_of_the_root(project: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (project / "sub").mkdir()
    (project / "sub" / "a.txt").write_text("original\n")
    script = f"rm -rf sub && ln -s {outside} sub && exit 1"
    summary = shell_task(project, script, ["sub/a.txt"])
    assert summary.failed == 1
    assert list(outside.iterdir()) == []
    assert not (project / "sub").is_symlink()
    assert (project / "sub" / "a.txt").read_text() == "original\n"


def test_an_owned_file_replaced_by_a_folder_is_rolled_back(project: Path) -> None:
    (project / "f").write_text("orig\n")
    summary = shell_task(project, "rm f; mkdir f; echo 1 > f/x; exit 1", ["f"], writes=["f/**"])
    assert summary.failed == 1 and summary.tasks[0].cause == "exit status 1"
    assert (project / "f").read_text() == "orig\n"
    assert sorted(p.name for p in project.iterdir()) == [".guildrun", "f"]


def test_restore_never_follows_a_planted_temp_link(project: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("someone else's file\n")
    (project / "out").mkdir()
    (project / "out" / "report.md").write_text("the user's report\n")
    plant = " ".join(
        f'ln -s {outside} "out/.report.md.{suffix}";' for suffix in ("guildrun", "tmp", "$PPID")
    )
    summary = shell_task(
        project,
        f"{plant} echo broken > out/report.md; exit 1",
        ["out/report.md"],
        writes=["out/**"],
    )
    assert summary.failed == 1
    assert outside.read_text() == "someone else's file\n"
    assert not (project / "out" / "report.md").is_symlink()
    assert (project / "out" / "report.md").read_text() == "the user's report\n"
