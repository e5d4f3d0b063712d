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


# One test per scenario, so that they spread over the test workers.
SCENARIOS = {
    "seed-table": ["1. The seed's table"],
    "schedule": ["2. Schedule quality", "longest-first: worst wall / bound"],
    "trivial": ["3. Engine overhead", "guildrun / xargs"],
    "callables": ["4. In-process"],
    "utilization": ["5. Coordination overhead"],
    "phases": ["6. The seed's phase"],
    "scale": ["7. Scale", "resume (prepare)"],
    "worktree": ["8. Worktree mode"],
    "ratelimit": ["9. A rate-limit storm"],
    "ray": ["10. Ray backend", "plain Ray / task"],
}


def test_every_scenario_is_tested() -> None:
    from benchmarks.__main__ import SCENARIOS as REGISTERED

    assert set(SCENARIOS) == set(REGISTERED)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_quick_mode_runs_the_scenario(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for text in SCENARIOS[name]:
        assert text in out
    assert "== Targets (quick mode" in out
    assert "not available yet" not in out
