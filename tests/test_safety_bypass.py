"""The ownership check cannot be bypassed by a hard link or a chmod: both are caught,
undone (mode included) and blamed on the task."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import guildrun


def _run(root: Path, script: str, files: list[str]) -> str:
    plan = guildrun.Plan.model_validate(
        {
            "settings": {"retry": {"attempts": 1}},
            "specialists": {"sh": {"run": ["sh", "-c", script]}},
            "tasks": [{"id": "t", "specialist": "sh", "files": files}],
        }
    )
    summary = guildrun.run(plan, root=root)
    assert summary.failed == 1
    db = sqlite3.connect(root / ".guildrun" / "journal.db")
    (error,) = db.execute("SELECT error FROM attempts ORDER BY rowid DESC").fetchone()
    return str(error)


def test_a_hard_link_to_an_unowned_file_is_caught(project: Path) -> None:
    (project / "unowned.txt").write_text("original\n")
    error = _run(project, "ln unowned.txt owned.txt && echo evil > owned.txt", ["owned.txt"])
    assert error == "ownership violation: wrote unowned.txt"
    assert (project / "unowned.txt").read_text() == "original\n"
    assert not (project / "owned.txt").exists()


def test_a_chmod_is_a_change_and_is_undone(project: Path) -> None:
    (project / "data.txt").write_text("d\n")
    (project / "data.txt").chmod(0o644)
    (project / "tool.sh").write_text("#!/bin/sh\n")
    (project / "tool.sh").chmod(0o755)
    error = _run(project, "chmod 777 data.txt && echo x >> tool.sh", [])
    assert error == "ownership violation: wrote data.txt, tool.sh"
    assert stat.S_IMODE((project / "data.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((project / "tool.sh").stat().st_mode) == 0o755
    assert (project / "tool.sh").read_text() == "#!/bin/sh\n"
