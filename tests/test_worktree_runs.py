"""Worktree mode through the real command line: real git repositories, real agents."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import Runner, write_plan
from .worktree_helpers import TWO_FUNCTIONS, make_repo, sh_git, show

# A stand-in agent. Its prompt is a list of steps, one a line:
#   write PATH|TEXT        the file becomes TEXT (\n for line breaks)
#   replace PATH|OLD|NEW   OLD becomes NEW in the file
#   expect PATH|TEXT       fail (exit 3) unless the file holds TEXT
#   fail-first             fail the first attempt
#   sleep SECONDS
#   write-root PATH|TEXT   write into the project itself, not the task's checkout
AGENT = r"""
import os, sys, time
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
    elif op == "write-root":
        open(os.path.join(os.environ["GUILDRUN_ROOT"], parts[0]), "w").write(parts[1])
    elif op == "sleep":
        time.sleep(float(rest))
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


@pytest.mark.slow
def test_two_tasks_editing_different_functions_of_one_file_are_merged(
    guildrun: Runner, tmp_path: Path
) -> None:
    repo, plan = setup(
        tmp_path,
        {"mod.py": TWO_FUNCTIONS},
        [
            {"id": "first", "writes": ["mod.py"], "prompt": "replace mod.py|value = 1|value = 10"},
            {"id": "second", "writes": ["mod.py"], "prompt": "replace mod.py|value = 2|value = 20"},
        ],
    )
    code, summary, err = run(guildrun, repo, plan)
    assert code == 0, (summary, err)
    branch = f"guildrun/{summary['run_id']}"
    merged = show(repo, branch, "mod.py")
    assert "value = 10" in merged and "value = 20" in merged
    assert merged == TWO_FUNCTIONS.replace("value = 1", "value = 10").replace(
        "value = 2", "value = 20"
    ).rstrip("\n")  # as git show prints it, less the last line break
    # Without --apply the user's tree is untouched and the summary says how to apply.
    assert (repo / "mod.py").read_text() == TWO_FUNCTIONS
    notes = "\n".join(summary["workspace"])
    assert f"guildrun apply {summary['run_id']}" in notes and branch in notes
    assert leftovers(repo)[0] == []  # worktrees gone, the result branch kept


@pytest.mark.slow
def test_a_dependent_task_sees_its_dependencys_change(guildrun: Runner, tmp_path: Path) -> None:
    repo, plan = setup(
        tmp_path,
        {"README.md": "hi\n"},
        [
            {"id": "api", "files": ["api.py"], "prompt": "write api.py|def api(): ...\\n"},
            {
                "id": "use",
                "depends_on": ["api"],
                "files": ["use.py"],
                "prompt": "expect api.py|def api()\nwrite use.py|from api import api\\n",
            },
        ],
    )
    code, summary, err = run(guildrun, repo, plan, "--apply")
    assert code == 0, (summary, err)
    assert (repo / "use.py").read_text() == "from api import api\n"
    assert (repo / "api.py").read_text() == "def api(): ...\n"


@pytest.mark.slow
def test_a_dirty_tree_is_refused_and_allowed_on_a_snapshot(
    guildrun: Runner, tmp_path: Path
) -> None:
    repo, plan = setup(
        tmp_path,
        {"README.md": "hi\n"},
        [{"id": "t", "files": ["new.txt"], "prompt": "expect README.md|mine\nwrite new.txt|x"}],
    )
    (repo / "README.md").write_text("mine\n")
    got = guildrun("run", str(plan), "--root", str(repo), cwd=repo)
    assert got.returncode == 2
    assert "uncommitted changes (README.md)" in got.stderr and "--allow-dirty" in got.stderr
    assert "Traceback" not in got.stderr
    assert "no runs yet" in guildrun("runs", "--root", str(repo), cwd=repo).stdout
    code, summary, err = run(guildrun, repo, plan, "--allow-dirty")
    assert code == 0, (summary, err)
    assert "plus its uncommitted changes" in summary["workspace"][0]
    assert (repo / "README.md").read_text() == "mine\n"  # the user's file, never touched
    assert sh_git(repo, "status", "--porcelain") == "M README.md"
    # --apply and --allow-dirty mean nothing in the shared tree: said so, not ignored.
    got = guildrun(
        "run", str(plan), "--root", str(repo), "--workspace", "shared", "--apply", cwd=repo
    )
    assert got.returncode == 2 and "apply needs workspace: worktree" in got.stderr


@pytest.mark.slow
def test_apply_refuses_a_branch_checked_out_elsewhere(guildrun: Runner, tmp_path: Path) -> None:
    repo, plan = setup(
        tmp_path,
        {"README.md": "hi\n"},
        [{"id": "t", "files": ["a.txt"], "prompt": "write a.txt|a"}],
    )
    sh_git(repo, "branch", "feature")
    other = tmp_path / "other"
    sh_git(repo, "worktree", "add", "-q", str(other), "feature")
    code, summary, err = run(guildrun, repo, plan)
    assert code == 0, (summary, err)
    rid = summary["run_id"]
    before = sh_git(repo, "rev-parse", "feature")
    got = guildrun("apply", rid, "--root", str(repo), "--into", "feature", cwd=repo)
    assert got.returncode == 2, got.stderr
    assert "checked out in another worktree" in got.stderr and str(other) in got.stderr
    assert sh_git(repo, "rev-parse", "feature") == before
    assert not (other / "a.txt").exists()
    # Into the current branch it goes, and the run's branch goes with the clean-up.
    got = guildrun("apply", rid, "--root", str(repo), cwd=repo)
    assert got.returncode == 0, got.stderr
    assert (repo / "a.txt").read_text() == "a"
    assert leftovers(repo) == ([f"worktree {other}"], [])


@pytest.mark.slow
def test_a_true_conflict_is_rerun_then_kept_resolved_by_hand_and_resumed(
    guildrun: Runner, tmp_path: Path
) -> None:
    # Three tasks rewrite one file at once. a lands first; b and c conflict with it and
    # are re-run on top of a; b's re-run lands before c's ends, so c conflicts again.
    repo, plan = setup(
        tmp_path,
        {"f.txt": "base\n"},
        [
            {"id": "a", "writes": ["f.txt"], "prompt": "sleep 0.2\nwrite f.txt|from a\\n"},
            {"id": "b", "writes": ["f.txt"], "prompt": "sleep 1.5\nwrite f.txt|from b\\n"},
            {"id": "c", "writes": ["f.txt"], "prompt": "sleep 2.5\nwrite f.txt|from c\\n"},
            {
                "id": "after-c",
                "depends_on": ["c"],
                "files": ["g.txt"],
                "prompt": "expect f.txt|by hand\nwrite g.txt|done",
            },
        ],
    )
    code, summary, err = run(guildrun, repo, plan)
    assert code == 1, (summary, err)
    rid = summary["run_id"]
    assert summary["done"] == 2 and summary["failed"] == 1 and summary["skipped"] == 1
    [failure] = summary["failures"]
    kept = f".guildrun/runs/{rid}/conflicts/c.patch"
    assert (
        failure["task"] == "c" and failure["cause"] == f"conflict in f.txt (patch kept in {kept})"
    )
    assert "from c" in (repo / kept).read_text()
    assert f"conflicting patch kept: {kept}" in summary["workspace"]
    assert not any("b.patch" in note for note in summary["workspace"])  # b landed in the end
    assert show(repo, f"guildrun/{rid}", "f.txt") == "from b"
    status = json.loads(guildrun("status", rid, "--root", str(repo), "--json", cwd=repo).stdout)
    attempts = {t["id"]: [a["status"] for a in t["attempt_list"]] for t in status["tasks"]}
    assert attempts["a"] == ["ok"] and attempts["b"] == ["conflict", "ok"]
    assert attempts["c"] == ["conflict", "conflict"]
    # A person merges it in the integration worktree, then guildrun records it.
    got = guildrun("resolve", rid, "c", "--start", "--root", str(repo), cwd=repo)
    assert got.returncode == 0, got.stderr
    where = repo / ".guildrun" / "worktrees" / rid / "_integration"
    assert "<<<<<<<" in (where / "f.txt").read_text()
    got = guildrun("resolve", rid, "c", "--root", str(repo), cwd=repo)
    assert got.returncode == 2 and "still unmerged: f.txt" in got.stderr
    sh_git(where, "add", "f.txt")
    got = guildrun("resolve", rid, "c", "--root", str(repo), cwd=repo)
    assert got.returncode == 2 and "conflict markers left in f.txt" in got.stderr
    (where / "f.txt").write_text("from b and c, by hand\n")
    got = guildrun("resolve", rid, "c", "--root", str(repo), cwd=repo)
    assert got.returncode == 0, got.stderr
    assert f"guildrun resume {rid}" in got.stdout
    got = guildrun("resume", rid, "--root", str(repo), "--json", cwd=repo)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout.splitlines()[-1])["done"] == 4
    assert show(repo, f"guildrun/{rid}", "g.txt") == "done"
    assert show(repo, f"guildrun/{rid}", "f.txt") == "from b and c, by hand"


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after-cherry-pick", "after-update-ref"])
def test_sigkill_in_the_middle_of_integration_then_resume(
    guildrun: Runner, tmp_path: Path, point: str
) -> None:
    repo, plan = setup(
        tmp_path,
        {"README.md": "hi\n"},
        [{"id": f"t{i}", "files": [f"m{i}.txt"], "prompt": f"write m{i}.txt|{i}"} for i in range(4)]
        + [{"id": "last", "depends_on": ["t0"], "files": ["z.txt"], "prompt": "write z.txt|z"}],
        settings={"per_agent_type": 1},
    )
    got = guildrun(
        "run",
        str(plan),
        "--root",
        str(repo),
        "-q",
        cwd=repo,
        env={"GUILDRUN_TEST_WORKTREE_CRASH_AT": point},
    )
    assert got.returncode == -signal.SIGKILL, got.stderr
    env = {k: v for k, v in os.environ.items() if k != "GUILDRUN_TEST_WORKTREE_CRASH_AT"}
    resumed = guildrun("resume", "--root", str(repo), "--json", cwd=repo, env=env)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout.splitlines()[-1])
    assert summary["done"] == 5
    how = "it had landed" if point == "after-update-ref" else "undone; the task runs again"
    assert any(
        re.fullmatch(rf"integration of t\d was cut short \({how}\)", n)
        for n in summary["workspace"]
    ), summary["workspace"]
    rid = f"guildrun/{summary['run_id']}"
    tasks = sh_git(repo, "log", "--format=%(trailers:key=Guildrun-Task,valueonly)", "main.." + rid)
    assert sorted(tasks.split()) == ["last", "t0", "t1", "t2", "t3"]  # each exactly once
    for i in range(4):
        assert show(repo, rid, f"m{i}.txt") == str(i)


GATE = (
    "import glob, sys\n"
    "bad = sorted(f for f in glob.glob('m*.txt') if 'BAD' in open(f).read())\n"
    "print('bad files:', bad)\n"
    "sys.exit(1 if bad else 0)\n"
)


@pytest.mark.slow
def test_a_failing_gate_is_bisected_to_the_culprit_and_the_rest_kept(
    guildrun: Runner, tmp_path: Path
) -> None:
    gate = tmp_path / "gate.py"
    gate.write_text(GATE)
    tasks: list[dict[str, Any]] = [
        {
            "id": f"t{i}",
            "files": [f"m{i}.txt"],
            "prompt": f"write m{i}.txt|{'BAD' if i == 2 else i}",
            "scope": "api" if i < 2 else "core",
        }
        for i in range(5)
    ]
    tasks += [
        {"id": "uses-t2", "phase": "validation", "depends_on": ["t2"], "files": ["v.txt"]},
        {
            "id": "uses-t1",
            "phase": "validation",
            "depends_on": ["t1"],
            "files": ["w.txt"],
            "prompt": "expect m1.txt|1\nwrite w.txt|w",
        },
    ]
    repo, plan = setup(
        tmp_path,
        {"README.md": "hi\n"},
        tasks,
        gates=[
            {"name": "no-bad", "run": [sys.executable, str(gate)], "after": "implementation"},
            {
                "name": "api-ok",
                "run": [sys.executable, "-c", "open('m0.txt'), open('m1.txt')"],
                "after": "scope:api",
            },
        ],
    )
    code, summary, err = run(guildrun, repo, plan)
    assert code == 1, (summary, err)
    rid = summary["run_id"]
    [failure] = summary["failures"]
    assert failure["task"] == "t2"
    assert failure["cause"].startswith("broke gate no-bad: ")
    assert "bad files: ['m2.txt']" in failure["cause"]
    assert [s["task"] for s in summary["skips"]] == ["uses-t2"]
    assert summary["done"] == 5  # t0, t1, t3, t4 and uses-t1
    branch = f"guildrun/{rid}"
    for i in (0, 1, 3, 4):
        assert show(repo, branch, f"m{i}.txt") == str(i)
    assert show(repo, branch, "w.txt") == "w"
    assert sh_git(repo, "ls-tree", "--name-only", branch, "m2.txt") == ""
    [note] = [n for n in summary["workspace"] if n.startswith("gate no-bad")]
    assert "bisected" in note and "to t2; taken out, it passes now" in note
    # The api scope's gate ran when its last task ended, on the tree as it was then.
    assert any(n.startswith("gate api-ok (scope:api) passed on ") for n in summary["workspace"])


def test_gates_are_checked_before_anything_runs(guildrun: Runner, tmp_path: Path) -> None:
    repo, plan = setup(
        tmp_path,
        {"README.md": "hi\n"},
        [{"id": "t", "files": ["a.txt"], "scope": "api"}],
        gates=[{"name": "g", "run": ["true"], "after": "scope:apx"}],
    )
    got = guildrun("run", str(plan), "--root", str(repo), cwd=repo)
    assert got.returncode == 2, got.stderr
    assert "gates[0].after: no task has scope 'apx'" in got.stderr
    got = guildrun("run", str(plan), "--root", str(repo), "--workspace", "shared", cwd=repo)
    assert got.returncode == 2 and "set workspace: worktree" in got.stderr
    assert not (repo / ".guildrun" / "worktrees").exists()


@pytest.mark.slow
def test_a_stray_write_is_blamed_on_its_task_alone_and_clean_removes_a_failed_run(
    guildrun: Runner, tmp_path: Path
) -> None:
    repo, plan = setup(
        tmp_path,
        {"README.md": "hi\n"},
        [
            {"id": "rude", "files": ["a.txt"], "prompt": "write a.txt|a\nwrite README.md|mine"},
            {"id": "polite", "files": ["b.txt"], "prompt": "sleep 0.3\nwrite b.txt|b"},
        ],
    )
    code, summary, err = run(guildrun, repo, plan)
    assert code == 1, (summary, err)
    [failure] = summary["failures"]
    assert failure["task"] == "rude"
    assert failure["cause"] == "ownership violation: wrote README.md"
    rid = summary["run_id"]
    assert show(repo, f"guildrun/{rid}", "b.txt") == "b"  # the other task is unharmed
    assert show(repo, f"guildrun/{rid}", "README.md") == "hi"
    worktrees, refs = leftovers(repo)
    assert worktrees and f"refs/heads/guildrun/{rid}" in refs  # kept for inspection
    sh_git(repo, "branch", "guildrun/mine")  # the user's own: not a run's
    got = guildrun("clean", "--root", str(repo), cwd=repo)
    assert got.returncode == 0, got.stderr
    assert f"run {rid}: removed" in got.stdout
    assert leftovers(repo) == ([], ["refs/heads/guildrun/mine"])
    assert (repo / "README.md").read_text() == "hi\n"


def test_ownership_off_puts_every_change_in_the_patch(guildrun: Runner, tmp_path: Path) -> None:
    repo, plan = setup(
        tmp_path,
        {"README.md": "hi\n"},
        [{"id": "t", "files": ["a.txt"], "prompt": "write a.txt|a\nwrite README.md|changed"}],
        settings={"ownership": False},
    )
    code, summary, err = run(guildrun, repo, plan)
    assert code == 0, (summary, err)
    assert show(repo, f"guildrun/{summary['run_id']}", "README.md") == "changed"


def test_a_write_into_the_project_itself_is_named_and_not_applied_over(
    guildrun: Runner, tmp_path: Path
) -> None:
    repo, plan = setup(
        tmp_path,
        {"README.md": "hi\n"},
        [{"id": "t", "files": ["a.txt"], "prompt": "write a.txt|a\nwrite-root escaped.txt|x"}],
    )
    code, summary, err = run(guildrun, repo, plan, "--apply")
    assert code == 0, (summary, err)  # the task did its work; the stray write is named
    notes = summary["workspace"]
    assert "changed in the project itself during the run, in no patch: escaped.txt" in notes
    assert any(n.startswith("not applied: ") and "escaped.txt" in n for n in notes), notes
    assert not (repo / "a.txt").exists()  # the user's branch was not moved over it
    assert show(repo, f"guildrun/{summary['run_id']}", "a.txt") == "a"
