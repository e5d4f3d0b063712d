"""One clock for a run: what time it is, and how to wait.

Everything in a run that reads the time or waits (the engine's stamps, the executor's
timeouts, retry backoff, the monitor's sampling interval) goes through the event loop
and one `Clock`, injected at the top. In production that is the wall clock and the
real loop. In tests it is `VirtualClock`: a loop whose time jumps to its next timer
whenever nothing is ready to run, as trio's `MockClock(autojump_threshold=0)` does, so
a plan of hour-long fake tasks runs in milliseconds with every stamp exact.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    """Seconds since the epoch, consistent with the running loop's timers."""

    def now(self) -> float: ...


class WallClock:
    """The real time; waits are the real loop's."""

    def now(self) -> float:
        return time.time()


class _VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop whose time stands still while work is ready and jumps when idle.

    Only timers move it: an idle loop jumps straight to its earliest timer, so waits
    cost nothing. Real I/O still works (the journal, pipes), but a test on this loop
    should not wait on real processes: their time is not the loop's.
    """

    def __init__(self) -> None:
        super().__init__()
        # Loop time starts at 0, like a monotonic clock: at epoch magnitudes a float
        # cannot hold the loop's 1 ns resolution, and a due timer would never fire.
        self._virtual = 0.0

    def time(self) -> float:
        return self._virtual

    def _run_once(self) -> None:
        ready: Any = getattr(self, "_ready")  # noqa: B009 - CPython's loop internals
        scheduled: list[asyncio.TimerHandle] = getattr(self, "_scheduled")  # noqa: B009
        if not ready and scheduled:
            while scheduled and scheduled[0].cancelled():
                heapq.heappop(scheduled)
            if scheduled and scheduled[0].when() > self._virtual:
                self._virtual = scheduled[0].when()
        super()._run_once()  # type: ignore[misc]


class VirtualClock:
    """Virtual time for tests: `run(coro)` drives a coroutine on a loop that jumps."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.start = start
        self.loop = _VirtualLoop()

    def now(self) -> float:
        return self.start + self.loop.time()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        asyncio.set_event_loop(self.loop)
        try:
            return self.loop.run_until_complete(coro)
        finally:
            asyncio.set_event_loop(None)

    def close(self) -> None:
        self.loop.close()
