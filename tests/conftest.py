"""Shared fixtures: real project folders, real plans, the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from guildrun._plan import CompiledPlan, Plan, compile_plan

Runner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project root (not a git repository, so --root is never guessed wrong)."""
    root = tmp_path / "proj"
    root.mkdir()
    return root


def write_plan(root: Path, data: dict[str, Any], name: str = "plan.yaml") -> Path:
    path = root / name
    if name.endswith(".json"):
        path.write_text(json.dumps(data, indent=2))
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def guildrun() -> Runner:
    """Run the real `guildrun` command line in a subprocess."""

    def run(
        *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "guildrun", *args],
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


def compiled(data: dict[str, Any], root: Path | None = None) -> CompiledPlan:
    return compile_plan(Plan.model_validate(data), root or Path.cwd())


def tasks_plan(n: int, specialist: str = "interface", **extra: Any) -> dict[str, Any]:
    return {
        "specialists": {specialist: {"run": ["true"]}},
        "tasks": [{"id": str(i), "specialist": specialist, **extra} for i in range(1, n + 1)],
    }


NODE_SECRET = ("GUILDRUN_TEST_NODE_API_KEY", "node-only-secret-7f3a9c")


@pytest.fixture(scope="session")
def ray_cluster() -> Any:
    """One 2-node Ray cluster on loopback per test worker, with token auth, joined by
    this process (`ray.init`); shut down, its processes and files gone, at the end."""
    import logging
    import shutil
    import tempfile

    import ray  # in the test extra: a missing Ray fails these tests, never skips them

    from guildrun._executors._ray_cluster import LoopbackCluster

    # A short folder: Ray's Unix sockets live under it, and their paths have a limit.
    tmp = Path(tempfile.mkdtemp(prefix="gr-ray-", dir="/tmp"))
    # A secret only the nodes have (a worker's own API key), not the drivers the tests
    # start: what a task prints of it must be masked all the same.
    os.environ[NODE_SECRET[0]] = NODE_SECRET[1]
    try:
        cluster = LoopbackCluster(nodes=2, num_cpus=1, tmp=tmp)
    finally:
        del os.environ[NODE_SECRET[0]]
    try:
        ray.init(
            address=cluster.address,
            namespace="guildrun",
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
