"""Choosing the Ray backend: settings, flags and the policy for lost attempts (no cluster)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from guildrun._errors import UsageError
from guildrun._executors.base import Ending, Outcome
from guildrun._policies.endings import Ended, Retry, default_policy
from guildrun._policies.retry import RetryPolicy
from guildrun._settings import Settings, resolve_settings

from .conftest import Runner, write_plan
from .worktree_helpers import make_repo


def test_backend_ray_means_worktree_mode() -> None:
    s = resolve_settings(plan=Settings.model_validate({"backend": "ray"}))
    assert (s.backend, s.workspace) == ("ray", "worktree")
    assert resolve_settings(overrides={"backend": "ray"}).workspace == "worktree"
    assert resolve_settings().backend == "local"


def test_an_explicit_shared_tree_with_ray_is_refused() -> None:
    with pytest.raises(UsageError, match="backend ray runs every task in a clone"):
        resolve_settings(
            plan=Settings.model_validate({"workspace": "shared"}), overrides={"backend": "ray"}
        )


def test_address_is_for_the_ray_backend(tmp_path: Path, guildrun: Runner) -> None:
    repo = make_repo(tmp_path)
    write_plan(repo, {"specialists": {"w": {"run": ["true"]}}, "tasks": [{"id": "t"}]})
    got = guildrun("run", "plan.yaml", "--backend", "local", "--address", "auto", cwd=repo)
    assert got.returncode == 2
    assert got.stderr.strip() == "guildrun: error: --address is for --backend ray"


def test_a_run_resumes_on_the_backend_it_ran_on(tmp_path: Path, guildrun: Runner) -> None:
    repo = make_repo(tmp_path)
    write_plan(
        repo,
        {"specialists": {"w": {"run": ["true"]}}, "tasks": [{"id": "t", "specialist": "w"}]},
    )
    env = {"GUILDRUN_TEST_CRASH_AFTER_COMMIT": "2"}  # the engine dies early: resumable
    first = guildrun("run", "plan.yaml", cwd=repo, env=env)
    assert first.returncode != 0
    got = guildrun("resume", "--backend", "ray", cwd=repo)
    assert got.returncode == 2, got.stderr
    assert "ran on the local backend: resume it with --backend local" in got.stderr


def test_specialist_resources_are_numbers_of_zero_or_more(tmp_path: Path) -> None:
    from guildrun import Plan

    def plan(resources: dict[str, float]) -> Plan:
        spec = {"run": ["true"], "resources": resources}
        return Plan.model_validate({"specialists": {"w": spec}, "tasks": [{"id": "t"}]})

    assert plan({"num_cpus": 1, "gpu_host": 0.5}).specialists["w"].resources == {
        "num_cpus": 1,
        "gpu_host": 0.5,
    }
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        plan({"x": -1})


def _ended(outcome: Outcome, free: int = 0) -> Ended:
    return Ended("t", 1 + free, outcome, RetryPolicy(attempts=1), "fail", False, None, free)


def test_a_lost_attempt_is_retried_without_counting_a_few_times() -> None:
    policy = default_policy(isolation="none", fail_fast=False)
    rng = random.Random(0)
    lost = Outcome(Ending.ERROR, 0, 1, error="lost node 10.0.0.2", lost=True)
    assert policy(_ended(lost), rng) == Retry(0.0, counts=False)
    assert policy(_ended(lost, free=2), rng) == Retry(0.0, counts=False)
    assert not isinstance(policy(_ended(lost, free=3), rng), Retry)  # then it fails
    broken = Outcome(Ending.ERROR, 0, 1, error="cannot start")  # the task's own error
    assert not isinstance(policy(_ended(broken), rng), Retry)  # attempts: 1, as before


@pytest.mark.slow  # two command lines that import Ray
def test_no_cluster_at_the_address_is_said_at_once(tmp_path: Path, guildrun: Runner) -> None:
    repo = make_repo(tmp_path)
    write_plan(
        repo,
        {"specialists": {"w": {"run": ["true"]}}, "tasks": [{"id": "t", "specialist": "w"}]},
    )
    got = guildrun("run", "plan.yaml", "--backend", "ray", "--address", "127.0.0.1:1", cwd=repo)
    assert got.returncode == 2
    assert got.stderr == (
        "guildrun: error: cannot reach the Ray cluster at 127.0.0.1:1: Connection refused\n"
    )
    got = guildrun("run", "plan.yaml", "--address", "no-port", cwd=repo)
    assert got.returncode == 2
    assert got.stderr == "guildrun: error: --address no-port: expected HOST:PORT\n"
