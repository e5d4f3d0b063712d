"""One engine per project root: a second run or resume is refused, a crash never sticks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Runner, write_plan


def _start(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "guildrun", *args, "--root", str(root), "-q"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_lock(root: Path, proc: subprocess.Popen[str]) -> dict[str, object]:
    lock = root / ".guildrun" / "lock"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if lock.exists():
            try:
                data = json.loads(lock.read_text() or "null")
            except ValueError:
                data = None
            if isinstance(data, dict) and data.get("pid") == proc.pid:
                return data
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the engine never took its lock")


@pytest.mark.slow
def test_second_run_is_refused_and_a_killed_engine_leaves_no_stale_lock(
    guildrun: Runner, project: Path
) -> None:
    write_plan(
        project,
        {
            "specialists": {"w": {"run": ["sleep", "3"]}},
            "tasks": [{"id": f"t{i}", "specialist": "w"} for i in range(2)],
        },
    )
    first = _start(project, "run", "plan.yaml")
    holder = _wait_for_lock(project, first)
    second = guildrun("run", "plan.yaml", "--root", str(project), "-q", cwd=project)
    assert second.returncode == 2
    assert f"run {holder['run_id']} (pid {first.pid}) is running" in second.stderr
    assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    # Two resumes at once: one wins, the other is refused with the same clear message.
    a = _start(project, "resume")
    _wait_for_lock(project, a)
    b = guildrun("resume", "--root", str(project), "-q", cwd=project)
    assert b.returncode == 2 and "is running in" in b.stderr, b.stderr
    assert "Traceback" not in b.stderr
    _out, err = a.communicate(timeout=60)
    assert a.returncode == 0, err
    # The crashed engine's lock did not stick: a new run starts at once.
    again = guildrun("run", "plan.yaml", "--root", str(project), "-q", cwd=project)
    assert again.returncode == 0, again.stderr
