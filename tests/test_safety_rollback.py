"""A rollback restores exactly the state before the attempt, folders included: an
empty folder that was there before stays, the folders the attempt made go."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

import guildrun
from guildrun._workspaces.shared import Store


def _plan(tasks: Sequence[Mapping[str, object]]) -> guildrun.Plan:
    return guildrun.Plan.model_validate(
        {
            "settings": {"retry": {"attempts": 1}},
            "specialists": {"sh": {"run": ["sh", "-c", 'eval "$GUILDRUN_PROMPT"']}},
            "tasks": [{**t, "specialist": "sh"} for t in tasks],
        }
    )


def test_a_failed_task_keeps_folders_that_were_there(project: Path) -> None:
    (project / "out").mkdir()
    (project / "keep").mkdir()
    tasks = [
        # writes its file in an existing empty folder, then fails
        {
            "id": "bad",
            "prompt": "echo x > out/x.txt; exit 1",
            "files": ["out/x.txt"],
            "locks": ["out"],
        },
        # makes new folders for its file, then fails
        {
            "id": "deep",
            "prompt": "mkdir -p new/a && echo x > new/a/x.txt; exit 1",
            "files": ["new/a/x.txt"],
        },
        # an independent task that needs out/ afterwards
        {
            "id": "after",
            "prompt": "echo y > out/y.txt",
            "files": ["out/y.txt"],
            "locks": ["out"],
        },
    ]
    summary = guildrun.run(_plan(tasks), root=project)
    db = sqlite3.connect(project / ".guildrun" / "journal.db")
    states = dict(db.execute("SELECT id, state FROM tasks"))
    assert states == {"bad": "failed", "deep": "failed", "after": "done"}
    assert summary.failed == 2
    assert (project / "out" / "y.txt").read_text() == "y\n"
    assert (project / "out").is_dir() and not (project / "out" / "x.txt").exists()
    assert not (project / "new").exists()
    # A file it does not own, written in an existing empty folder: undone, folder kept.
    stray = [{"id": "stray", "prompt": "echo x > keep/s.txt"}]
    assert guildrun.run(_plan(stray), root=project).failed == 1
    assert (project / "keep").is_dir() and list((project / "keep").iterdir()) == []


def test_restore_brings_back_a_removed_folder_and_removes_a_made_one(project: Path) -> None:
    (project / "out").mkdir()
    store = Store(project)
    before = store.capture(["out/x.txt", "made/a/y.txt"])
    assert before == {
        "out/x.txt": None,
        "made/a/y.txt": None,
        "out/": "folder",
        "made/": None,
        "made/a/": None,
    }
    (project / "out").rmdir()
    (project / "made" / "a").mkdir(parents=True)
    (project / "made" / "a" / "y.txt").write_text("y")
    store.restore(before)
    assert (project / "out").is_dir()
    assert not (project / "made").exists()
