"""The journal is guildrun's: a task that writes it is caught and blamed."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import guildrun

TAMPER = r"""
import os, sqlite3
db = sqlite3.connect(os.path.join(".guildrun", "journal.db"))
db.execute("UPDATE tasks SET state='done' WHERE id='other'")
db.commit()
"""


def test_a_task_writing_the_journal_is_an_ownership_violation(project: Path) -> None:
    plan = guildrun.Plan.model_validate(
        {
            "settings": {"retry": {"attempts": 1}},
            "specialists": {"py": {"run": [sys.executable, "-c", TAMPER]}},
            "tasks": [
                {"id": "tamper", "specialist": "py"},
                {"id": "other", "specialist": "py", "prompt": "x", "depends_on": ["tamper"]},
            ],
        }
    )
    summary = guildrun.run(plan, root=project)
    db = sqlite3.connect(project / ".guildrun" / "journal.db")
    (error,) = db.execute("SELECT error FROM attempts WHERE task_id='tamper'").fetchone()
    assert error == "ownership violation: wrote .guildrun/journal.db"
    assert summary.failed == 1 and summary.skipped == 1


def test_the_engine_own_writes_are_not_mistaken_for_a_task(project: Path) -> None:
    plan = guildrun.Plan.model_validate(
        {
            "specialists": {"sh": {"run": ["true"]}},
            "tasks": [{"id": str(i), "specialist": "sh"} for i in range(20)],
        }
    )
    assert guildrun.run(plan, root=project).ok


def test_a_rewritten_snapshot_is_never_restored(project: Path) -> None:
    from guildrun._workspaces.shared import Store

    (project / "a.txt").write_text("mine\n")
    store = Store(project)
    manifest = store.capture(["a.txt"])
    digest = manifest["a.txt"]
    assert digest is not None
    blob = project / ".guildrun" / "objects" / digest[:2] / digest[2:]
    blob.write_text("planted by another task\n")
    (project / "a.txt").write_text("changed\n")
    store.restore(manifest)
    assert (project / "a.txt").read_text() == "changed\n"  # not the planted content
    assert store.tampered == ["a.txt"]


def test_a_rewritten_baseline_copy_is_never_restored(project: Path) -> None:
    from guildrun._workspaces.shared import Baseline, Store

    (project / "u.txt").write_text("original\n")
    baseline = Baseline.take(project, Store(project))
    db = sqlite3.connect(project / ".guildrun" / "baseline.db")
    db.execute("UPDATE blobs SET data=?", (b"planted\n",))
    db.commit()
    (project / "u.txt").write_text("stray\n")
    baseline.restore("u.txt")
    assert (project / "u.txt").read_text() == "stray\n"  # not the planted content
    baseline.pack.close()
