"""A run marked "running" is shown as running only while a live engine holds the lock.

The holder here is a real process that writes `.guildrun/lock` and holds an exclusive
flock on it, as the engine does; killing it must turn the run into an interrupted one
with the command that resumes it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from guildrun._liveness import engine_gone_note, lock_path, run_is_alive

from .conftest import Runner, write_plan

HOLDER = r"""
import fcntl, json, os, sys, time
path, run_id = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, json.dumps({"pid": os.getpid(), "run_id": run_id, "started": time.time()}).encode())
print("locked", flush=True)
time.sleep(120)
"""


@contextmanager
def engine_lock(root: Path, run_id: str) -> Iterator[subprocess.Popen[str]]:
    """A live process holding the lock for `run_id`; killed (SIGKILL) on leaving."""
    lock_path(root).parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path(root)), run_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_alive_only_while_a_live_process_holds_the_lock_for_this_run(tmp_path: Path) -> None:
    assert not run_is_alive(tmp_path, "r1")  # no lock file
    with engine_lock(tmp_path, "r1") as holder:
        assert run_is_alive(tmp_path, "r1")
        assert run_is_alive(tmp_path, "r1")  # probing takes nothing away
        assert not run_is_alive(tmp_path, "r2")  # the engine runs another run
        holder.kill()
        holder.wait(timeout=10)
        assert not run_is_alive(tmp_path, "r1")  # the kernel let the lock go
    assert lock_path(tmp_path).exists()  # left behind by the dead engine: still not alive
    assert not run_is_alive(tmp_path, "r1")


def test_a_garbled_lock_file_is_not_a_live_engine(tmp_path: Path) -> None:
    lock_path(tmp_path).parent.mkdir()
    lock_path(tmp_path).write_text("{not json")
    assert not run_is_alive(tmp_path, "r1")
    lock_path(tmp_path).write_text('["r1"]')
    assert not run_is_alive(tmp_path, "r1")


@pytest.mark.slow
def test_runs_and_status_show_a_killed_engines_run_as_interrupted(
    guildrun: Runner, project: Path
) -> None:
    write_plan(
        project,
        {
            "settings": {"total_parallel": 1},
            "specialists": {"w": {"run": ["sleep", "0.2"]}},
            "tasks": [{"id": f"t{i}", "specialist": "w"} for i in range(3)],
        },
    )
    killed = guildrun(
        "run",
        "plan.yaml",
        "--root",
        str(project),
        "-q",
        cwd=project,
        env={"GUILDRUN_TEST_CRASH_AFTER_COMMIT": "3"},
    )
    assert killed.returncode == 137, killed.stderr
    runs = guildrun("runs", "--root", str(project), "--json", cwd=project)
    [row] = json.loads(runs.stdout)
    run_id = row["run_id"]
    note = engine_gone_note(run_id)
    assert note == f"interrupted (engine gone; resume with: guildrun resume {run_id})"
    assert row["status"] == "interrupted" and row["engine_gone"] is True
    assert row["resume"] == f"guildrun resume {run_id}"
    listed = guildrun("runs", "--root", str(project), cwd=project)
    assert note in listed.stdout, listed.stdout
    status = guildrun("status", "--root", str(project), cwd=project)
    assert note in status.stdout and f"run {run_id}: interrupted" in status.stdout
    report = guildrun("report", "--root", str(project), "--json", cwd=project)
    assert json.loads(report.stdout)["summary"]["status"] == "interrupted"
    assert json.loads(report.stdout)["analysis"]["status"] == "interrupted"
    with engine_lock(project, run_id):  # an engine working on it: running, as journaled
        alive = guildrun("runs", "--root", str(project), "--json", cwd=project)
        [row] = json.loads(alive.stdout)
        assert row["status"] == "running" and "engine_gone" not in row
        shown = guildrun("status", "--root", str(project), cwd=project)
        assert f"run {run_id}: running" in shown.stdout and "engine gone" not in shown.stdout
    after = guildrun("status", "--root", str(project), "--json", cwd=project)
    assert json.loads(after.stdout)["status"] == "interrupted"
