"""Worktree mode through the real command line: real git repositories, real agents."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import Runner, write_plan
from .worktree_helpers import make_repo, sh_git

# A stand-in agent. Its prompt is a list of steps, one a line:
#   write PATH|TEXT        the file becomes TEXT (\n for line breaks)
#   replace PATH|OLD|NEW   OLD becomes NEW in the file
#   expect PATH|TEXT       fail (exit 3) unless the file holds TEXT
#   fail-first             fail the first attempt
AGENT = r"""
import os, sys
if os.environ.get("AGENT_LOG"):
    with open(os.environ["AGENT_LOG"], "a") as fh:
        fh.write(os.environ["GUILDRUN_TASK_ID"] + " " + os.getcwd() + "\n")
for line in os.environ["GUILDRUN_PROMPT"].splitlines():
    op, _, rest = line.partition(" ")
    parts = [p.replace("\\n", "\n") for p in rest.split("|")]
    if op == "write":
        os.makedirs(os.path.dirname(parts[0]) or ".", exist_ok=True)
        open(parts[0], "w").write(parts[1])
    elif op == "replace":
        text = open(parts[0]).read()
        assert parts[1] in text, (parts[0], parts[1])
        open(parts[0], "w").write(text.replace(parts[1], parts[2]))
    elif op == "expect":
        if not os.path.exists(parts[0]) or parts[1] not in open(parts[0]).read():
            print("missing", parts, file=sys.stderr)
            sys.exit(3)
    elif op == "fail-first" and os.environ["GUILDRUN_ATTEMPT"] == "1":
        sys.exit(1)
print("did", os.environ["GUILDRUN_TASK_ID"])
"""


def setup(
    tmp_path: Path, files: dict[str, str], tasks: list[dict[str, Any]], **extra: Any
) -> tuple[Path, Path]:
    """A repository and a plan outside it (a plan inside would make the tree dirty)."""
    repo = make_repo(tmp_path, files)
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    plan = {
        "settings": {"workspace": "worktree", "sample_interval": 0, **extra.pop("settings", {})},
        "specialists": {
            "dev": {"run": [sys.executable, str(agent)], "instances": 3},
        },
        "tasks": [{"specialist": "dev", **t} for t in tasks],
        **extra,
    }
    return repo, write_plan(tmp_path, plan)


def run(
    guildrun: Runner, repo: Path, plan: Path, *args: str, env: dict[str, str] | None = None
) -> Any:
    got = guildrun("run", str(plan), "--root", str(repo), "--json", *args, cwd=repo, env=env)
    assert got.stdout, got.stderr
    return got.returncode, json.loads(got.stdout.splitlines()[-1]), got.stderr


def leftovers(repo: Path) -> tuple[list[str], list[str]]:
    worktrees = [
        line
        for line in sh_git(repo, "worktree", "list", "--porcelain").splitlines()
        if line.startswith("worktree ")
    ]
    refs = sh_git(
        repo, "for-each-ref", "--format=%(refname)", "refs/heads/guildrun/", "refs/guildrun/"
    )
    return worktrees[1:], refs.split()


@pytest.mark.slow
def test_instances_editing_different_files_end_to_end_and_nothing_left(
    guildrun: Runner, tmp_path: Path
) -> None:
    repo, plan = setup(
        tmp_path,
        {"README.md": "hi\n", "src/a.py": "A = 1\n"},
        [
            {"id": f"t{i}", "files": [f"src/m{i}.py"], "prompt": f"write src/m{i}.py|M = {i}\\n"}
            for i in range(6)
        ]
        + [{"id": "edit", "files": ["src/a.py"], "prompt": "replace src/a.py|A = 1|A = 2"}],
    )
    head = sh_git(repo, "rev-parse", "HEAD")
    code, summary, err = run(guildrun, repo, plan, "--apply")
    assert code == 0, (summary, err)
    assert summary["done"] == 7
    notes = "\n".join(summary["workspace"])
    assert f"base: main at {head[:12]}" in notes and "applied to main (fast-forward" in notes
    # The user's branch moved forward by the run's commits; the tree holds every change.
    assert sh_git(repo, "merge-base", "--is-ancestor", head, "HEAD") == ""
    for i in range(6):
        assert (repo / f"src/m{i}.py").read_text() == f"M = {i}\n"
    assert (repo / "src/a.py").read_text() == "A = 2\n"
    assert sh_git(repo, "status", "--porcelain") == ""
    tasks = sh_git(repo, "log", "--format=%(trailers:key=Guildrun-Task,valueonly)", f"{head}..HEAD")
    assert sorted(tasks.split()) == sorted([f"t{i}" for i in range(6)] + ["edit"])
    assert leftovers(repo) == ([], [])
    assert not (repo / ".guildrun" / "worktrees" / summary["run_id"]).exists()
