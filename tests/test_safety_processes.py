"""Nothing a task started survives the task: daemons that leave the task's process
group (setsid, a double fork, setpgid) are found and killed at the task's end."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil

import guildrun

# Each script leaves a sleeper behind and writes its pid to <task>.pid, then exits 0.
SETSID = "setsid sleep 300 & echo $! > setsid.pid"
DOUBLE_FORK = r"""
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open("double.pid", "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(300)
    os._exit(0)
os.wait()
while not os.path.exists("double.pid") or not open("double.pid").read():
    time.sleep(0.01)
"""
SETPGID_NO_ENV = r"""
import os, subprocess, sys, time
# A fresh process group, and no GUILDRUN_* variables: found by its session alone.
p = subprocess.Popen(["sleep", "300"], env=dict(PATH=os.environ["PATH"]),
                     preexec_fn=lambda: os.setpgid(0, 0))
open("setpgid.pid", "w").write(str(p.pid))
"""

# Runs after the three: each daemon must be gone at its own task's end, not the run's.
CHECK = r"""
import sys
for name in ("setsid", "double", "setpgid"):
    pid = open(name + ".pid").read().strip()
    try:
        state = open("/proc/" + pid + "/stat").read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        continue
    if state != "Z":
        sys.exit("alive after its task: " + name)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _marked(run_id: str) -> list[int]:
    out = []
    for proc in psutil.process_iter(["pid", "environ", "status"]):
        try:
            env = proc.info["environ"] or {}
        except psutil.Error:
            continue
        if env.get("GUILDRUN_RUN_ID") == run_id and proc.info["status"] != "zombie":
            out.append(proc.info["pid"])
    return out


def test_daemons_do_not_outlive_their_task(project: Path) -> None:
    plan = guildrun.Plan.model_validate(
        {
            "specialists": {
                "sh": {"run": ["sh", "-c", "{prompt}"]},
                "py": {"run": [sys.executable, "-c", "{prompt}"]},
            },
            "tasks": [
                {"id": "setsid", "specialist": "sh", "prompt": SETSID, "writes": ["setsid.pid"]},
                {
                    "id": "double",
                    "specialist": "py",
                    "prompt": DOUBLE_FORK,
                    "writes": ["double.pid"],
                },
                {
                    "id": "setpgid",
                    "specialist": "py",
                    "prompt": SETPGID_NO_ENV,
                    "writes": ["setpgid.pid"],
                },
                {
                    "id": "check",
                    "specialist": "py",
                    "prompt": CHECK,
                    "depends_on": ["setsid", "double", "setpgid"],
                },
            ],
        }
    )
    summary = guildrun.run(plan, root=project)
    pids = {
        name: int((project / f"{name}.pid").read_text()) for name in ("setsid", "double", "setpgid")
    }
    try:
        assert summary.ok, summary
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [n for n, p in pids.items() if _alive(p)], "a daemon outlived its task"
        assert _marked(summary.run_id) == []
        # Reaped, not left as zombies of this (the engine's) process.
        mine = {c.pid for c in psutil.Process().children()}
        assert not mine & set(pids.values())
    finally:
        for p in pids.values():
            if _alive(p):
                os.kill(p, 9)
