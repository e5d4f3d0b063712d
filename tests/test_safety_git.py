"""A task cannot plant code that git (or guildrun's own git calls) runs later: changes
to .git/config, .git/hooks and .git/info are an ownership violation, undone."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import guildrun

PLANT = r"""
printf '[core]\n\tfsmonitor = "touch pwned"\n' >> .git/config
printf '#!/bin/sh\ntouch pwned\n' > .git/hooks/pre-commit
chmod +x .git/hooks/pre-commit
echo exclude-me >> .git/info/exclude
echo done > mine.txt
"""


def _repo(root: Path) -> None:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    for args in (
        ["init", "-q", "-b", "main"],
        ["config", "user.email", "t@example.invalid"],
        ["config", "user.name", "t"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)
    (root / "a.txt").write_text("a\n")
    subprocess.run(["git", "add", "a.txt"], cwd=root, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "a"], cwd=root, check=True, env=env)


def test_git_config_hooks_and_info_are_protected(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    _repo(root)
    config = (root / ".git" / "config").read_bytes()
    exclude = (root / ".git" / "info" / "exclude").read_bytes()
    plan = guildrun.Plan.model_validate(
        {
            "settings": {"retry": {"attempts": 1}},
            "specialists": {"sh": {"run": ["sh", "-c", PLANT], "writes": ["**"]}},
            "tasks": [{"id": "plant", "specialist": "sh", "files": ["mine.txt"]}],
        }
    )
    summary = guildrun.run(plan, root=root)
    assert summary.failed == 1
    db = sqlite3.connect(root / ".guildrun" / "journal.db")
    (error,) = db.execute("SELECT error FROM attempts WHERE task_id='plant'").fetchone()
    assert error.startswith("ownership violation: wrote ")
    for name in (".git/config", ".git/hooks/pre-commit", ".git/info/exclude"):
        assert name in error
    assert (root / ".git" / "config").read_bytes() == config
    assert (root / ".git" / "info" / "exclude").read_bytes() == exclude
    assert not (root / ".git" / "hooks" / "pre-commit").exists()
    assert not (root / "mine.txt").exists()  # the attempt is rolled back as a whole
    # A later git command in the repository runs nothing planted.
    subprocess.run(["git", "status"], cwd=root, check=True, capture_output=True)
    assert not (root / "pwned").exists()


def test_a_task_may_still_use_git(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    _repo(root)
    plan = guildrun.Plan.model_validate(
        {
            "specialists": {
                "sh": {"run": ["sh", "-c", "echo b > b.txt && git add b.txt && git commit -qm b"]}
            },
            "tasks": [{"id": "commit", "specialist": "sh", "files": ["b.txt"]}],
        }
    )
    assert guildrun.run(plan, root=root).ok
    log = subprocess.run(["git", "log", "--oneline"], cwd=root, capture_output=True, text=True)
    assert len(log.stdout.splitlines()) == 2
