"""`guildrun demo` end to end: a real repository, real agents, its real test suite."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from guildrun import _demo_agents
from guildrun._demo import (
    build_repo,
    demo_plan,
    owned_files,
    run_demo,
    run_unittest,
    unittest_verdict,
)
from guildrun._engine import run
from guildrun._errors import UsageError

THINK = 0.05
HAS_GIT = shutil.which("git") is not None


def changed_paths(repo: Path) -> set[str]:
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line[3:] for line in out.splitlines()}


def test_fresh_repo_fails_its_own_tests(tmp_path: Path) -> None:
    repo = tmp_path / "shop"
    build_repo(repo)
    ok, verdict = run_unittest(repo)
    assert not ok
    assert verdict.startswith("unittest failed")


@pytest.mark.slow
def test_plan_makes_the_suite_pass_touching_only_owned_files(tmp_path: Path) -> None:
    repo = tmp_path / "shop"
    build_repo(repo)
    plan = demo_plan(THINK)
    summary = run(plan, root=repo, per_agent_type=3)
    assert (summary.done, summary.failed, summary.skipped) == (len(plan.tasks), 0, 0)
    ok, verdict = run_unittest(repo)
    assert ok, verdict
    tests_run = int(re.findall(r"\d+", verdict)[0])
    assert tests_run > 19  # the 19 given tests plus those the test agents wrote
    if HAS_GIT:
        assert changed_paths(repo) == owned_files(plan)


def test_agent_writes_nothing_outside_the_root(tmp_path: Path) -> None:
    repo = tmp_path / "shop"
    build_repo(repo)
    outside = tmp_path / "test_evil.py"
    done = subprocess.run(
        [sys.executable, "-P", _demo_agents.__file__, "test", "t1", "--", "../test_evil.py"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "outside the project root" in done.stderr
    assert not outside.exists()


def test_agent_is_idempotent_on_implemented_files(tmp_path: Path) -> None:
    repo = tmp_path / "shop"
    build_repo(repo)
    argv = [sys.executable, "-m", "guildrun._demo_agents", "interface", "t1"]
    argv += ["--", "shop/components/user_card.py"]
    first = subprocess.run(argv, cwd=repo, capture_output=True, text=True, check=True)
    second = subprocess.run(argv, cwd=repo, capture_output=True, text=True, check=True)
    assert first.stdout.startswith("interface: implemented shop/components/user_card.py")
    assert second.stdout.startswith("interface: nothing left to implement")


def test_build_repo_refuses_a_folder_with_files(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not an empty folder"):
        build_repo(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("....\n---\nRan 4 tests in 0.001s\n\nOK\n", (True, "unittest passed, 4 tests")),
        (
            "E\n---\nRan 1 test in 0.001s\n\nFAILED (errors=1)\n",
            (False, "unittest failed, 1 tests (errors=1)"),
        ),
        ("\n---\nRan 0 tests in 0.000s\n\nOK\n", (False, "unittest failed, 0 tests")),
        ("Traceback: boom\n", (False, "unittest did not finish (no tests found)")),
    ],
)
def test_unittest_verdict(output: str, expected: tuple[bool, str]) -> None:
    assert unittest_verdict(output) == expected


@pytest.mark.slow
def test_run_demo_passes_and_prints_both_wall_times(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_demo(tmp_path / "demo", THINK, out) == 0
    text = out.getvalue()
    assert "stand-ins" in text and "--think" in text
    assert text.count("validation: unittest passed") == 2
    assert re.search(
        r"measured wall time: [\d.]+ s with 1 instance per specialist, [\d.]+ s with 3\n"
        r"  speedup [\d.]+x: measured, 3 instances per specialist against 1\n",
        text,
    ), text
    # One speedup on the screen; each run's own ratio is named parallelism, not speedup.
    assert text.count("speedup") == 1, text
    assert text.count("parallelism") == 3, text  # run 1, run 2, the note under the speedup
    assert (tmp_path / "demo-sequential" / "shop").is_dir()


@pytest.mark.slow
def test_run_demo_in_worktree_mode_applies_one_commit_per_task(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_demo(tmp_path / "demo", THINK, out, "worktree") == 0, out.getvalue()
    text = out.getvalue()
    assert text.count("validation: unittest passed") == 2, text
    repo = tmp_path / "demo"
    log = subprocess.run(
        ["git", "log", "--format=%(trailers:key=Guildrun-Task,valueonly)"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    plan = demo_plan(THINK)
    # Every task that changed a file is one commit on the user's branch; the rest, none.
    assert set(log) <= {t.id for t in plan.tasks} and len(log) == len(set(log)) >= 10
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True
    )
    assert status.stdout == ""
    worktrees = subprocess.run(
        ["git", "worktree", "list"], cwd=repo, capture_output=True, text=True, check=True
    )
    assert len(worktrees.stdout.splitlines()) == 1
