"""What hears about a run as it goes: the seam between the engine and every display.

Kept apart from the engine so that a display (the live view, the event stream) loads
without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._journal import Event
    from ._metrics import Summary
    from ._plan import CompiledPlan


class Reporter:
    """Receives events after they are committed. Subclass and override what you need."""

    def run_started(self, run_id: str, plan: CompiledPlan, limits: Mapping[str, int]) -> None:
        pass

    def events(self, events: Iterable[Event]) -> None:
        pass

    def run_ended(self, summary: Summary) -> None:
        pass
