"""Scenario 8: what worktree mode costs per task, against the shared tree's snapshot.

A generated git repository of about 5,000 small files (500 in quick mode) is run through
worktree mode's steps as the engine would call them: the run opens (base and integration
worktree) once, each instance gets its checkout once, and every task then pays a sync to
the integrated head, the commit of its changes (three files edited) and their integration
onto the run's branch. The shared mode's per-task cost for the same work is a snapshot of
the task's files with `Store.capture`, in a copy of the same tree. No agent runs: the
figures are guildrun's own cost around a task, which a language-model call dwarfs.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from pathlib import Path

from guildrun._workspaces.shared import Store
from guildrun._worktree import WorktreeSet

from ._common import Mode, Section, project


def _make_repo(root: Path, files: int) -> list[str]:
    rels: list[str] = []
    for i in range(files):
        rel = f"pkg{i // 250:03d}/mod{i:05d}.py"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"VALUE = {i}\n" * 20)
        rels.append(rel)

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("config", "user.name", "bench")
    git("config", "user.email", "bench@example.invalid")
    git("add", "-A")
    git("commit", "-q", "-m", "generated")
    return rels


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def run(mode: Mode) -> Section:
    files = 500 if mode.quick else 5000
    tasks = 6 if mode.quick else 30
    instances = 2 if mode.quick else 3
    per_task = 3  # files each task edits
    steps: dict[str, list[float]] = {"sync": [], "commit": [], "integrate": []}
    capture: list[float] = []
    with project() as root:
        repo = root / "repo"
        repo.mkdir()
        rels = _make_repo(repo, files)
        shared = root / "shared"
        shutil.copytree(repo, shared, ignore=shutil.ignore_patterns(".git"))
        store = Store(shared)
        ws = WorktreeSet(repo, "bench")
        t0 = time.perf_counter()
        ws.open()
        opened = time.perf_counter() - t0
        made: list[float] = []
        for k in range(instances):
            t0 = time.perf_counter()
            ws.instance(f"agent#{k}")
            made.append(time.perf_counter() - t0)
        for n in range(tasks):
            name = f"agent#{n % instances}"
            task = f"t{n:03d}"
            mine = rels[n * per_task : (n + 1) * per_task]
            t0 = time.perf_counter()
            ws.sync(name)
            t1 = time.perf_counter()
            inst = ws.instance(name)
            for rel in mine:
                (inst.path / rel).write_text(f"VALUE = {task}\n")
            t2 = time.perf_counter()
            patch = ws.commit_task(name, task, set(mine).__contains__)
            t3 = time.perf_counter()
            result = ws.integrate([task])[0]
            t4 = time.perf_counter()
            if patch.commit is None or result.status != "integrated":
                raise RuntimeError(f"benchmark task {task} did not integrate: {result.status}")
            steps["sync"].append(t1 - t0)
            steps["commit"].append(t3 - t2)
            steps["integrate"].append(t4 - t3)
            c0 = time.perf_counter()
            store.capture(mine)
            capture.append(time.perf_counter() - c0)
        if len(ws.integrated()) != tasks:
            raise RuntimeError("benchmark: not every task reached the integration branch")
        t0 = time.perf_counter()
        ws.clean()
        cleaned = time.perf_counter() - t0
    med = {k: statistics.median(v) for k, v in steps.items()}
    total = sum(med.values())
    shared_cost = statistics.median(capture)
    rows = [
        ["run start: base and integration worktree (once)", _ms(opened), "-"],
        ["instance checkout (once per instance)", _ms(statistics.median(made)), "-"],
        ["sync to the integrated head (per task)", _ms(med["sync"]), "-"],
        ["commit the task's patch (per task)", _ms(med["commit"]), "-"],
        ["integrate the patch (per task)", _ms(med["integrate"]), "-"],
        ["per task, all steps", _ms(total), _ms(shared_cost)],
        ["clean: worktrees and branches (once)", _ms(cleaned), "-"],
    ]
    return Section(
        key="worktree",
        title="8. Worktree mode: cost per task",
        command="python -m benchmarks --only worktree",
        about=(
            f"A generated git repository of {files:,} files; {tasks} tasks on {instances} "
            f"instances, each editing {per_task} files. Worktree mode: medians of each "
            "step guildrun takes around a task (sync, commit, integrate); shared mode: the "
            "median `Store.capture` of the same files, its snapshot before an attempt."
        ),
        columns=["step", "worktree mode", "shared mode"],
        rows=rows,
        notes=[
            f"worktree mode costs {total / shared_cost:.0f}x the shared snapshot per task, "
            f"{_ms(total)} in all: small beside an agent's minutes, and it buys isolation "
            "(no agent sees another's half-done work) and exact attribution.",
        ],
    )
