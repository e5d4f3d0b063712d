"""What to do about an ended attempt, decided by small composable rules.

Each rule looks at the facts of one ending (`Ended`) and returns a verdict, or None to
let the next rule decide; `a | b` asks `a` first. The engine carries the verdict out
and knows no rule of its own, so a new kind of ending (a rate limit, a merge conflict)
is a new rule, not a new branch in the engine.

    policy = accept_done | rerun_on_conflict | rerun_alone_on_violation \\
        | retry_rate_limited(50) | retry_by_policy \\
        | fail_and_stop(isolation="scope", fail_fast=False)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .._executors.base import Ending, Outcome
from .retry import RetryPolicy


@dataclass(frozen=True)
class Ended:
    """The facts of one ended attempt, as a policy sees them."""

    task: str
    attempt: int  # counting every attempt made
    outcome: Outcome
    retry: RetryPolicy
    on_violation: str  # "fail" or "sequential"
    widened: bool  # already re-run alone after a violation
    scope: str | None
    free_attempts: int = 0  # earlier attempts that did not count (rate limits)
    conflicts: int = 0  # earlier attempts whose patch did not merge (worktree mode)


@dataclass(frozen=True)
class Accept:
    """Done: the effect stays."""


@dataclass(frozen=True)
class Retry:
    """Try again after `delay` seconds. `counts`: whether this attempt uses up one of
    the task's tries (a rate limit is not the task's fault, so it does not).
    `throttle`: the task's provider should start nothing new for that long."""

    delay: float
    counts: bool = True
    throttle: float | None = None


@dataclass(frozen=True)
class RunAlone:
    """Undo and run again alone at the end of the phase (the fallback to sequential)."""


@dataclass(frozen=True)
class Fail:
    """The task failed; `stop` says what else stops with it."""

    stop: Literal["scope", "all"] | None = None


Verdict = Accept | Retry | RunAlone | Fail


class Policy:
    """A rule: `ended -> verdict | None`. Compose with `|`."""

    def __init__(self, rule: Callable[[Ended, random.Random], Verdict | None], name: str) -> None:
        self.rule = rule
        self.name = name

    def __call__(self, ended: Ended, rng: random.Random) -> Verdict | None:
        return self.rule(ended, rng)

    def __or__(self, other: Policy) -> Policy:
        def first(ended: Ended, rng: random.Random) -> Verdict | None:
            verdict = self(ended, rng)
            return verdict if verdict is not None else other(ended, rng)

        return Policy(first, f"{self.name} | {other.name}")

    def __repr__(self) -> str:
        return self.name


def _accept_done(e: Ended, rng: random.Random) -> Verdict | None:
    return Accept() if e.outcome.status is Ending.DONE else None


accept_done = Policy(_accept_done, "accept_done")


def _rerun_alone(e: Ended, rng: random.Random) -> Verdict | None:
    if e.outcome.status is Ending.VIOLATION and e.on_violation == "sequential" and not e.widened:
        return RunAlone()
    return None


rerun_alone_on_violation = Policy(_rerun_alone, "rerun_alone_on_violation")


def _rerun_on_conflict(e: Ended, rng: random.Random) -> Verdict | None:
    """A patch that does not merge is re-run once on top of the integrated state (the
    seed's fallback to sequential: it now starts from its rivals' work); a second
    conflict is the task's result (the last rule fails it), and its dependents do not
    start."""
    if e.outcome.status is Ending.CONFLICT and e.conflicts == 0:
        return Retry(0.0, counts=False)
    return None


rerun_on_conflict = Policy(_rerun_on_conflict, "rerun_on_conflict")


def retry_rate_limited(most: int = 50) -> Policy:
    """A rate-limited attempt is retried after the provider's delay (or the task's
    backoff), without counting as a try, up to `most` times."""

    def rule(e: Ended, rng: random.Random) -> Verdict | None:
        if e.outcome.status is not Ending.RATE_LIMITED or e.free_attempts >= most:
            return None
        delay = e.outcome.retry_after
        if delay is None:
            delay = e.retry.delay(e.free_attempts + 1, rng)
        return Retry(delay, counts=False, throttle=delay)

    return Policy(rule, f"retry_rate_limited({most})")


def retry_lost(most: int = 3) -> Policy:
    """An attempt the executor lost (its node or worker died: `Outcome.lost`) runs
    again at once on a live instance, without counting as a try, up to `most` times."""

    def rule(e: Ended, rng: random.Random) -> Verdict | None:
        if e.outcome.lost and e.outcome.status is Ending.ERROR and e.free_attempts < most:
            return Retry(0.0, counts=False)
        return None

    return Policy(rule, f"retry_lost({most})")


def _retry_by_policy(e: Ended, rng: random.Random) -> Verdict | None:
    o = e.outcome
    if o.status is Ending.VIOLATION:
        return None
    counted = e.attempt - e.free_attempts
    if e.retry.should_retry(counted, o.status.value, o.exit_code):
        return Retry(e.retry.delay(counted, rng))
    return None


retry_by_policy = Policy(_retry_by_policy, "retry_by_policy")


def fail_and_stop(*, isolation: str, fail_fast: bool) -> Policy:
    """The last word: fail, stopping the scope (`isolation: scope`) or everything."""

    def rule(e: Ended, rng: random.Random) -> Verdict:
        if fail_fast:
            return Fail("all")
        if isolation == "scope" and e.scope is not None:
            return Fail("scope")
        return Fail()

    return Policy(rule, f"fail_and_stop(isolation={isolation!r}, fail_fast={fail_fast})")


def default_policy(*, isolation: str, fail_fast: bool) -> Policy:
    return (
        accept_done
        | rerun_on_conflict
        | rerun_alone_on_violation
        | retry_rate_limited()
        | retry_lost()
        | retry_by_policy
        | fail_and_stop(isolation=isolation, fail_fast=fail_fast)
    )


def decide(policy: Policy, ended: Ended, rng: random.Random) -> Verdict:
    verdict = policy(ended, rng)
    return verdict if verdict is not None else Fail()
