"""Retry policies as small objects, in the manner of tenacity.

A policy answers one question for a failed attempt: retry, and after how long? It
is pure arithmetic on the attempt number plus a random source you can inject, so
backoff is tested as numbers, not as sleeps. Waiting itself is the engine's job, and
it never holds an instance while it waits.

    wait = wait_exponential(base=1, factor=2, cap=60) + wait_random(0, 1)
    policy = RetryPolicy(attempts=3, wait=wait, permanent_exit_codes={2})
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field


class Wait:
    """Seconds to wait before attempt n+1, given that attempt n (1-based) failed."""

    def __call__(self, attempt: int, rng: random.Random) -> float:
        raise NotImplementedError

    def __add__(self, other: Wait) -> Wait:
        return _WaitSum(self, other)


@dataclass(frozen=True)
class _WaitSum(Wait):
    a: Wait
    b: Wait

    def __call__(self, attempt: int, rng: random.Random) -> float:
        return self.a(attempt, rng) + self.b(attempt, rng)


@dataclass(frozen=True)
class wait_exponential(Wait):
    """base * factor**(n-1), capped: 1, 2, 4, 8 ... seconds."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 60.0

    def __call__(self, attempt: int, rng: random.Random) -> float:
        return float(min(self.cap, self.base * self.factor ** max(0, attempt - 1)))


@dataclass(frozen=True)
class wait_random(Wait):
    """Uniform jitter, so agents that failed together (a rate limit) do not retry together."""

    low: float = 0.0
    high: float = 1.0

    def __call__(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class RetryPolicy:
    """How often to try a task, and which failures are worth another try."""

    attempts: int = 1
    wait: Wait = field(default_factory=wait_exponential)
    retry_on_timeout: bool = True
    permanent_exit_codes: Collection[int] = ()

    def should_retry(self, attempt: int, status: str, exit_code: int | None) -> bool:
        if attempt >= self.attempts:
            return False
        if status == "timeout":
            return self.retry_on_timeout
        if status == "failed" and exit_code is not None and exit_code in self.permanent_exit_codes:
            return False
        return status in ("failed", "error")

    def delay(self, attempt: int, rng: random.Random) -> float:
        return max(0.0, self.wait(attempt, rng))


class RetrySettings(BaseModel):
    """The plan's form of a retry policy; any field left out comes from the level above."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int | None = Field(default=None, ge=1, le=100, description="Tries in all.")
    base: float | None = Field(default=None, ge=0, description="First wait, seconds.")
    factor: float | None = Field(default=None, ge=1, description="Growth of each wait.")
    cap: float | None = Field(default=None, ge=0, description="Longest wait, seconds.")
    jitter: float | None = Field(default=None, ge=0, description="Random extra wait, 0..jitter s.")
    retry_on_timeout: bool | None = Field(default=None, description="Retry a timed-out attempt.")
    permanent_exit_codes: list[int] | None = Field(
        default=None, description="Exit codes that mean 'do not retry'."
    )


DEFAULT_RETRY = RetrySettings(
    attempts=1,
    base=1.0,
    factor=2.0,
    cap=60.0,
    jitter=1.0,
    retry_on_timeout=True,
    permanent_exit_codes=[],
)


def merge_retry(*levels: RetrySettings | None) -> RetryPolicy:
    """Most specific last: defaults, settings, specialist, task."""
    merged: dict[str, object] = {}
    for level in (DEFAULT_RETRY, *levels):
        if level is not None:
            # None means "not said here" (a plan read back from the journal spells it out).
            merged.update(
                {
                    k: getattr(level, k)
                    for k in level.model_fields_set
                    if getattr(level, k) is not None
                }
            )
    full = DEFAULT_RETRY.model_copy(update=merged)
    assert full.base is not None and full.factor is not None and full.cap is not None
    wait: Wait = wait_exponential(full.base, full.factor, full.cap)
    if full.jitter:
        wait = wait + wait_random(0.0, full.jitter)
    return RetryPolicy(
        attempts=full.attempts or 1,
        wait=wait,
        retry_on_timeout=bool(full.retry_on_timeout),
        permanent_exit_codes=frozenset(full.permanent_exit_codes or ()),
    )
