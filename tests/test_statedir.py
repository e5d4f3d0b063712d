"""`.guildrun/` keeps itself out of git, in a real repository after a real run."""

from __future__ import annotations

import subprocess
from pathlib import Path

from guildrun._statedir import GITIGNORE, ensure_state_dir

from .conftest import Runner, write_plan


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_state_dir_is_made_with_a_gitignore_that_ignores_everything(tmp_path: Path) -> None:
    state = ensure_state_dir(tmp_path)
    assert state == tmp_path / ".guildrun" and state.is_dir()
    assert (state / ".gitignore").read_text() == GITIGNORE
    assert "*" in GITIGNORE.splitlines()
    assert ensure_state_dir(tmp_path) == state  # again: nothing changes, nothing fails
    assert (state / ".gitignore").read_text() == GITIGNORE


def test_a_gitignore_someone_wrote_is_kept(tmp_path: Path) -> None:
    (tmp_path / ".guildrun").mkdir()
    (tmp_path / ".guildrun" / ".gitignore").write_text("journal.db\n")
    ensure_state_dir(tmp_path)
    assert (tmp_path / ".guildrun" / ".gitignore").read_text() == "journal.db\n"


def test_a_link_in_place_of_the_gitignore_is_not_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    root = tmp_path / "proj"
    (root / ".guildrun").mkdir(parents=True)
    (root / ".guildrun" / ".gitignore").symlink_to(outside)
    ensure_state_dir(root)
    assert outside.read_text() == "precious\n"


def test_git_status_is_clean_after_a_run(guildrun: Runner, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    write_plan(
        repo,
        {
            "specialists": {"w": {"run": ["true"]}},
            "tasks": [{"id": "a", "specialist": "w"}, {"id": "b", "specialist": "w"}],
        },
    )
    git(repo, "add", "plan.yaml")
    git(repo, "commit", "-q", "-m", "plan")
    proc = guildrun("run", "plan.yaml", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert (repo / ".guildrun" / "journal.db").exists()  # the run did write its state
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    report = guildrun("report", cwd=repo)  # a report inside .guildrun is ignored too
    assert report.returncode == 0, report.stderr
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
