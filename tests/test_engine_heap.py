"""While runs last, what they made at their start is kept out of the collector's full
passes (`gc.freeze`); when the last run of the process ends, it goes back."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import guildrun

seen: list[int] = []


async def note(ctx: guildrun.TaskContext) -> None:
    """A task that notes how many objects the collector leaves alone right now."""
    seen.append(gc.get_freeze_count())
    await asyncio.sleep(0.01)


def _plan(n: int) -> guildrun.Plan:
    return guildrun.Plan(
        settings=guildrun.Settings(per_agent_type=2),
        specialists={"n": guildrun.Specialist(func=note)},
        tasks=[guildrun.Task(id=f"t{i}", specialist="n") for i in range(n)],
    )


def test_a_run_settles_its_heap_and_gives_it_back(tmp_path: Path) -> None:
    seen.clear()
    assert gc.get_freeze_count() == 0
    summary = guildrun.run(_plan(4), root=tmp_path, handle_signals=False)
    assert summary.ok
    assert len(seen) == 4 and min(seen) > 0  # the plan and the scheduler, frozen
    assert gc.get_freeze_count() == 0  # all back with the collector


def test_runs_at_once_keep_it_settled_until_the_last_ends(tmp_path: Path) -> None:
    seen.clear()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    async def both() -> tuple[int, int]:
        short = asyncio.ensure_future(
            guildrun.run_async(_plan(1), root=tmp_path / "a", handle_signals=False)
        )
        long = asyncio.ensure_future(
            guildrun.run_async(_plan(40), root=tmp_path / "b", handle_signals=False)
        )
        await short
        after_short = gc.get_freeze_count()  # the other run still going
        await long
        return after_short, gc.get_freeze_count()

    after_short, after_both = asyncio.run(both())
    assert after_short > 0
    assert after_both == 0


def test_a_host_that_froze_its_own_heap_keeps_it_frozen(tmp_path: Path) -> None:
    """A program that froze its heap itself (a pre-fork server does, so its children
    share those pages) runs guildrun in-process: what it froze stays frozen, since
    `gc.unfreeze` cannot give back only guildrun's part."""
    seen.clear()
    keep = [[i] for i in range(1000)]  # noqa: F841 - objects of the host's own
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        summary = guildrun.run(_plan(2), root=tmp_path, handle_signals=False)
        assert summary.ok
        # Not exactly as many: a frozen object is still freed when its last reference goes.
        assert gc.get_freeze_count() > frozen // 2
    finally:
        gc.unfreeze()
