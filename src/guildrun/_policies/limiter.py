"""Admission: a limiter per specialist, honoured every time a task starts.

Like trio's `CapacityLimiter`, a limiter is a sack that starts out holding some number
of tokens: a task takes one to start and gives it back when it ends, and the limiter
knows who holds each. Its size can change while the run goes on: lowered, no new task
starts until enough have ended (running ones are never stopped); raised, the next
dispatch fills the room. Rate-limit handling lowers and raises it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LimiterStatistics:
    borrowed_tokens: int
    total_tokens: int
    borrowers: tuple[str, ...]


class Limiter:
    def __init__(self, total_tokens: int) -> None:
        # `paused` stops lending without losing the size: a rate limit's wait, then the
        # same size again (a pause is always lifted by a timer, so it never stalls a run).
        if total_tokens < 1:
            raise ValueError("a limiter needs at least one token")
        self._total = total_tokens
        self._borrowers: set[str] = set()
        self.paused = False  # a provider asked us to wait: no token is lent meanwhile

    @property
    def total_tokens(self) -> int:
        return self._total

    @total_tokens.setter
    def total_tokens(self, value: int) -> None:
        # At least one: a specialist with work and no token at all would stall the run.
        self._total = max(1, value)

    @property
    def available_tokens(self) -> int:
        if self.paused:
            return 0
        return max(0, self._total - len(self._borrowers))

    def acquire_on_behalf_of(self, borrower: str) -> bool:
        """Take a token for `borrower` if one is free; never waits (the scheduler asks)."""
        if borrower in self._borrowers:
            raise RuntimeError(f"{borrower!r} already holds a token")
        if self.available_tokens == 0:
            return False
        self._borrowers.add(borrower)
        return True

    def take_on_behalf_of(self, borrower: str) -> None:
        """Lend a token the caller already found free (the scheduler checks, then starts)."""
        self._borrowers.add(borrower)

    def release_on_behalf_of(self, borrower: str) -> None:
        self._borrowers.remove(borrower)

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(len(self._borrowers), self._total, tuple(sorted(self._borrowers)))
