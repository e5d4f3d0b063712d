"""Scenario 10: what the Ray backend costs per task, and what its cluster costs.

A 2-node Ray cluster runs on this machine's loopback (`LoopbackCluster`: token auth on,
every address 127.0.0.1). On it, one task after another (one instance, so per-task
cost is wall / tasks) runs three ways, alternating, in the same session:

- guildrun's Ray executor (`backend: ray`): an actor with its own clone, an incremental
  git bundle out, the task's patch back and applied to the driver's mirror;
- guildrun's local executor in the same worktree mode (same sync, commit, integration);
- plain Ray: the same command run by an actor method (`subprocess.run`), no guildrun.

Tasks are `true` (trivial: the cost is all overhead) and `sleep 1` (one second). The
cluster's start-up time and its memory (PSS of its processes, idle, and after the runs)
are measured too.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

import guildrun
from guildrun._executors._ray_cluster import LoopbackCluster

from ._common import Mode, Section, Target, project, run_api

TRIVIAL = "trivial (`true`)"
LONG = "1 s (`sleep 1`)"


class _Plain:
    """The baseline: an actor that runs a command, and nothing else."""

    def run(self, argv: list[str]) -> int:
        return subprocess.run(argv, check=False).returncode


def _repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("bench\n")

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("config", "user.name", "bench")
    git("config", "user.email", "bench@example.invalid")
    git("add", "-A")
    git("commit", "-q", "-m", "base")
    return repo


def _plan(argv: list[str], tasks: int, backend: str) -> guildrun.Plan:
    return guildrun.Plan.model_validate(
        {
            "settings": {
                "per_agent_type": 1,
                "sample_interval": 0,
                "workspace": "worktree",
                "backend": backend,
            },
            "specialists": {"w": {"run": argv}},
            "tasks": [{"id": f"t{i:03d}", "specialist": "w"} for i in range(tasks)],
        }
    )


def _guildrun(argv: list[str], tasks: int, backend: str) -> float:
    """Seconds per task of a guildrun run (a new repository, so a first run)."""
    with project() as root:
        repo = _repo(root)
        t0 = time.perf_counter()
        summary = run_api(_plan(argv, tasks, backend), repo)
        wall = time.perf_counter() - t0
        if summary.done != tasks:
            raise RuntimeError(f"benchmark: {backend} run did {summary.done} of {tasks} tasks")
    return wall / tasks


def _plain(actor: Any, argv: list[str], tasks: int) -> float:
    import ray

    t0 = time.perf_counter()
    for _ in range(tasks):
        if ray.get(actor.run.remote(argv)) != 0:
            raise RuntimeError("benchmark: the plain actor's command failed")
    return (time.perf_counter() - t0) / tasks


def _pss_mb(cluster: LoopbackCluster) -> float:
    total = 0
    for proc in cluster.processes():
        try:
            total += proc.memory_full_info().pss
        except psutil.Error:
            continue
    return total / 2**20


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms"


def run(mode: Mode) -> Section:
    import ray

    trivial = 3 if mode.quick else 20
    long = 2 if mode.quick else 4
    reps = 1 if mode.quick else 2
    tmp = Path(tempfile.mkdtemp(prefix="gr-bench-ray-", dir="/tmp"))
    cluster = LoopbackCluster(nodes=2, num_cpus=1, tmp=tmp)
    try:
        started = cluster.start_seconds
        t0 = time.perf_counter()
        ray.init(
            address=cluster.address,
            namespace="guildrun",
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        joined = time.perf_counter() - t0
        idle_mb = _pss_mb(cluster)
        t0 = time.perf_counter()
        plain: Any = ray.remote(_Plain)
        actor = plain.options(num_cpus=0).remote()
        ray.get(actor.run.remote(["true"]))
        first_actor = time.perf_counter() - t0
        # Per task: (wall of n tasks - wall of 1 task) / (n - 1), so the run's fixed
        # costs (prepare, worktrees, the actor's start, closing) are not spread over it.
        figures: dict[tuple[str, str], list[float]] = {}
        fixed: dict[str, list[float]] = {}
        for label, argv, tasks in (
            (TRIVIAL, ["true"], trivial),
            (LONG, ["sleep", "1"], long),
        ):
            for _ in range(reps):  # alternating, so the machine's mood moves all three
                for backend in ("ray", "local"):
                    one = _guildrun(argv, 1, backend)
                    many = _guildrun(argv, tasks, backend) * tasks
                    figures.setdefault((label, backend), []).append((many - one) / (tasks - 1))
                    if label == TRIVIAL:
                        fixed.setdefault(backend, []).append(one)
                figures.setdefault((label, "plain"), []).append(_plain(actor, argv, tasks))
        busy_mb = _pss_mb(cluster)
        outward = cluster.outward_sockets()
    finally:
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in figures.items()}
    rows = []
    for label, tasks in ((TRIVIAL, trivial), (LONG, long)):
        r, loc, p = med[(label, "ray")], med[(label, "local")], med[(label, "plain")]
        rows.append([label, str(tasks), _ms(r), _ms(loc), _ms(p), _ms(r - loc), _ms(r - p)])
    ray_one, local_one = statistics.median(fixed["ray"]), statistics.median(fixed["local"])
    rows.append(
        ["a run of 1 trivial task (fixed costs)", "1", _ms(ray_one), _ms(local_one), "-"]
        + [_ms(ray_one - local_one), "-"]
    )
    over_local = med[(TRIVIAL, "ray")] - med[(TRIVIAL, "local")]
    over_long = med[(LONG, "ray")] - 1.0
    targets = [
        Target(
            "Ray executor: overhead per task over the local executor (trivial tasks)",
            "< 150 ms",
            _ms(over_local),
            over_local < 0.150,
            "" if over_local < 0.150 else "bundle, actor call and patch round trip per task",
        ),
        Target(
            "Ray executor: a 1 s task's wall time",
            "< 1.3 s (30% over the task)",
            f"{1.0 + over_long:.2f} s",
            over_long < 0.3,
        ),
        Target(
            "Ray: 2-node loopback cluster start-up",
            "< 10 s",
            f"{started:.1f} s",
            started < 10,
        ),
        Target(
            "Ray: no socket of the cluster off loopback",
            "none",
            str(len(outward)),
            not outward,
        ),
    ]
    return Section(
        key="ray",
        title="10. Ray backend: cost per task and of the cluster",
        command="python -m benchmarks --only ray",
        about=(
            "A 2-node Ray cluster on loopback (token auth on). One instance runs the tasks "
            "one after another; a figure per task is (wall of n tasks - wall of 1) / (n - 1), "
            "so a run's fixed costs are shown apart; medians of "
            f"{reps} alternating run(s) of each. `ray`: guildrun's Ray executor (actor with "
            "its own clone, bundle out, patch back); `local`: guildrun's local executor in "
            "the same worktree mode; `plain`: an actor method running the same command "
            "with `subprocess.run`, no guildrun."
        ),
        columns=[
            "tasks",
            "n",
            "ray / task",
            "local / task",
            "plain Ray / task",
            "ray - local",
            "ray - plain",
        ],
        rows=rows,
        targets=targets,
        notes=[
            f"cluster start-up (2 nodes, `Cluster`): {started:.1f} s; joining it "
            f"(`ray.init`): {joined:.1f} s; first actor and call: {_ms(first_actor)}",
            f"memory of the cluster's processes (PSS): {idle_mb:.0f} MB idle, "
            f"{busy_mb:.0f} MB after the runs (workers of the actors kept for reuse)",
            "a guildrun run also pays, once, the actor's start (a new worker process, "
            "about 0.4 s, less when Ray reuses one) and the first bundle of the base commit",
        ],
    )
