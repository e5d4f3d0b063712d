"""The ending policy's answer to a conflict (worktree mode): re-run once, then fail."""

from __future__ import annotations

import random

from guildrun._executors.base import Ending, Outcome
from guildrun._policies.endings import Ended, Fail, Retry, decide, default_policy
from guildrun._policies.retry import RetryPolicy


def ended(status: Ending, conflicts: int, scope: str | None = None) -> Ended:
    outcome = Outcome(status, 0.0, 1.0, exit_code=0, error="conflict in f.txt")
    return Ended(
        "t",
        1 + conflicts,
        outcome,
        RetryPolicy(attempts=3),
        "fail",
        False,
        scope,
        conflicts=conflicts,
    )


def test_a_conflict_is_rerun_once_without_counting_then_fails() -> None:
    rng = random.Random(0)
    policy = default_policy(isolation="scope", fail_fast=False)
    assert decide(policy, ended(Ending.CONFLICT, 0), rng) == Retry(0.0, counts=False)
    # The second conflict is the task's result: not retried by the retry settings either.
    assert decide(policy, ended(Ending.CONFLICT, 1), rng) == Fail()
    assert decide(policy, ended(Ending.CONFLICT, 1, scope="api"), rng) == Fail("scope")
    # A task that merged after an earlier conflict is simply done.
    assert decide(policy, ended(Ending.DONE, 1), rng).__class__.__name__ == "Accept"
