"""Real repositories for the worktree tests: made by plain git, inspected by plain git."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def plain_env() -> dict[str, str]:
    """The caller's environment without GIT_* variables, as a user's shell would run git."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}


def sh_git(repo: Path, *args: str, check: bool = True) -> str:
    """Plain git, as the user would run it (repository programs and all)."""
    out = subprocess.run(
        ["git", *args], cwd=repo, env=plain_env(), capture_output=True, text=True, check=False
    )
    if check and out.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {out.stderr}")
    return out.stdout.strip()


def make_repo(tmp: Path, files: dict[str, str] | None = None, name: str = "repo") -> Path:
    repo = tmp / name
    repo.mkdir()
    sh_git(repo, "init", "-q", "-b", "main")
    sh_git(repo, "config", "user.name", "Test User")
    sh_git(repo, "config", "user.email", "user@example.invalid")
    for rel, text in (files or {"README.md": "hello\n"}).items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    sh_git(repo, "add", "-A")
    sh_git(repo, "commit", "-q", "-m", "initial")
    return repo


def show(repo: Path, rev: str, path: str) -> str:
    return sh_git(repo, "show", f"{rev}:{path}")


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


TWO_FUNCTIONS = (
    "def first():\n"
    "    value = 1\n"
    "    return value\n"
    "\n"
    "\n"
    "def middle():\n"
    "    return 0\n"
    "\n"
    "\n"
    "def second():\n"
    "    value = 2\n"
    "    return value\n"
)
