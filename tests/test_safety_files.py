"""guildrun never follows a link out of the root nor reads anything but regular files
when it snapshots, checks, captures results or restores: a task that leaves a FIFO, a
device or a link to /dev/zero fails with a clear message, and the run goes on."""

from __future__ import annotations

import resource
import sqlite3
from pathlib import Path

import pytest

import guildrun

TRAPS = {
    # owned file -> a link to an endless device
    "zero": "ln -sf /dev/zero zero.txt",
    # owned file -> a FIFO nobody writes
    "fifo": "rm fifo.txt && mkfifo fifo.txt",
    # the result file -> a FIFO
    "result": 'mkfifo "$GUILDRUN_RESULT"',
    # an unowned file -> a FIFO (the ownership check compares it with the baseline)
    "stray": "rm shared.txt && mkfifo shared.txt",
}


def _errors(root: Path) -> dict[str, str]:
    db = sqlite3.connect(root / ".guildrun" / "journal.db")
    return {t: e for t, e in db.execute("SELECT task_id, error FROM attempts") if e}


@pytest.mark.timeout(60)
def test_special_files_fail_the_task_not_the_engine(project: Path) -> None:
    for name in ("zero.txt", "fifo.txt", "shared.txt"):
        (project / name).write_text(f"original {name}\n")
    tasks: list[dict[str, object]] = [
        {"id": "zero", "prompt": TRAPS["zero"], "files": ["zero.txt"]},
        {"id": "fifo", "prompt": TRAPS["fifo"], "files": ["fifo.txt"]},
        {"id": "result", "prompt": TRAPS["result"]},
        {"id": "stray", "prompt": TRAPS["stray"], "phase": "validation"},
        {"id": "fine", "prompt": "echo fine > fine.txt", "files": ["fine.txt"]},
    ]
    plan = guildrun.Plan.model_validate(
        {
            "settings": {"retry": {"attempts": 1}},
            "specialists": {
                "sh": {"run": ["sh", "-c", 'eval "$GUILDRUN_PROMPT"'], "files": ["**"]}
            },
            "tasks": [{**t, "specialist": "sh"} for t in tasks],
        }
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = guildrun.run(plan, root=project)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"the engine grew by {grown_mb:.0f} MB"
    assert (summary.done, summary.failed) == (1, 4), summary
    errors = _errors(project)
    assert "zero.txt leads out of the project root (to /dev/zero)" in errors["zero"]
    assert "fifo.txt is a FIFO, not a regular file" in errors["fifo"]
    assert errors["result"].startswith("$GUILDRUN_RESULT: ")
    assert "is a FIFO, not a regular file" in errors["result"]
    # Rolled back and undone: regular files with their old content again.
    for name in ("zero.txt", "fifo.txt", "shared.txt"):
        path = project / name
        assert path.is_file() and not path.is_symlink(), name
        assert path.read_text() == f"original {name}\n"
    assert (project / "fine.txt").read_text() == "fine\n"
    assert errors["stray"].startswith("ownership violation: wrote shared.txt")


@pytest.mark.timeout(60)
def test_a_fifo_where_the_log_goes_does_not_hang_the_engine(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script = (
        'mkfifo "$GUILDRUN_ROOT/.guildrun/runs/$GUILDRUN_RUN_ID/logs/$GUILDRUN_TASK_ID.out"'
        " && echo hello"
    )
    plan = guildrun.Plan.model_validate(
        {
            "specialists": {"sh": {"run": ["sh", "-c", script]}},
            "tasks": [{"id": "t", "specialist": "sh"}, {"id": "u", "specialist": "sh"}],
        }
    )
    summary = guildrun.run(plan, root=project)
    assert summary.done == 2  # the output is lost, the run is not
    assert not [r for r in caplog.records if r.name == "asyncio"], "an engine callback broke"
