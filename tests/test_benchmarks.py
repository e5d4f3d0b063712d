"""The benchmark harness keeps working: its quick mode runs every scenario end to end.

The figures of a quick run mean nothing (sizes are tiny); what is checked is that every
scenario still runs against the current engine and the table is printed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_mode_runs_every_scenario() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for title in (
        "1. The seed's table",
        "2. Schedule quality",
        "3. Engine overhead",
        "4. In-process",
        "5. Coordination overhead",
        "6. The seed's phase",
        "7. Scale",
        "8. Worktree mode",
        "9. A rate-limit storm",
    ):
        assert title in out
    assert "== Targets (quick mode" in out
    assert "guildrun / xargs" in out
    # Everything the engine offers is measured now: longest-first and resume included.
    assert "longest-first: worst wall / bound" in out
    assert "resume (prepare)" in out
    assert "not available yet" not in out
