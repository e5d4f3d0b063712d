"""Worktree mode on real repositories: instances, patches, integration, gates, apply, clean."""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guildrun._errors import UsageError
from guildrun._worktree import Gate, GateResult, WorktreeSet
from guildrun._worktree._gates import _search
from guildrun._worktree._integrate import CRASH_ENV

from .worktree_helpers import TWO_FUNCTIONS, edit, make_repo, plain_env, sh_git, show

REPO_ROOT = Path(__file__).resolve().parent.parent


def owns(*paths: str) -> Callable[[str], bool]:
    """The task's `may_write`: exactly these paths."""
    allowed = set(paths)
    return lambda p: p in allowed


def test_instances_editing_different_files_are_all_integrated(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"README.md": "hi\n", "src/a.py": "A = 1\n"})
    head_before = sh_git(repo, "rev-parse", "HEAD")
    ws = WorktreeSet(repo, "r1")
    base = ws.open()
    assert base.commit == head_before and base.branch == "main" and not base.snapshot
    assert "main at" in base.describe()
    for name, task, rel in (
        ("a#1", "t1", "src/b.py"),
        ("a#2", "t2", "src/c.py"),
        ("b#1", "t3", "d.txt"),
    ):
        inst = ws.instance(name)
        ws.sync(name)
        assert inst.state_dir.is_dir() and not inst.state_dir.is_relative_to(inst.path)
        (inst.path / rel).parent.mkdir(parents=True, exist_ok=True)
        (inst.path / rel).write_text(f"{task}\n")
        patch = ws.commit_task(name, task, owns(rel))
        assert patch.ok and patch.commit is not None
        assert [c.path for c in patch.changes] == [rel]
    results = ws.integrate(["t1", "t2", "t3"])
    assert [r.status for r in results] == ["integrated"] * 3
    assert ws.integrated() == ["t1", "t2", "t3"]
    head = ws.head()
    assert show(repo, head, "src/b.py") == "t1"
    assert show(repo, head, "src/c.py") == "t2"
    assert show(repo, head, "d.txt") == "t3"
    # The user's checkout was never switched or written.
    assert sh_git(repo, "rev-parse", "HEAD") == head_before
    assert sh_git(repo, "symbolic-ref", "--short", "HEAD") == "main"
    assert sh_git(repo, "status", "--porcelain") == ""
    assert not (repo / "src" / "b.py").exists()


def test_patch_holds_binary_mode_and_deletion_and_refuses_the_rest(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"tool.sh": "echo hi\n", "old.txt": "x\n", "theirs.txt": "t\n"})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    inst = ws.instance("w")
    ws.sync("w")
    (inst.path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (inst.path / "tool.sh").chmod(0o755)
    (inst.path / "old.txt").unlink()
    (inst.path / "theirs.txt").write_text("stray\n")  # not the task's
    (inst.path / "escape").symlink_to("/etc/passwd")
    config = repo / ".git" / "config"
    config_before = config.read_bytes()
    with config.open("a") as fh:
        fh.write('[core]\n\tfsmonitor = "touch planted"\n')
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\ntouch planted\n")
    (repo / ".git" / "info" / "attributes").write_text("* filter=planted\n")
    may = owns("blob.bin", "tool.sh", "old.txt", "escape")
    patch = ws.commit_task("w", "t1", may)
    got = {(c.path, c.status) for c in patch.changes}
    assert got == {("blob.bin", "A"), ("tool.sh", "M"), ("old.txt", "D")}
    assert {c.new_mode for c in patch.changes if c.path == "tool.sh"} == {"100755"}
    kinds = {(v.path, v.kind) for v in patch.violations}
    assert ("theirs.txt", "unowned") in kinds
    assert ("escape", "link-outside") in kinds
    assert (".git/config", "git-internals") in kinds
    assert (".git/hooks/pre-commit", "git-internals") in kinds
    assert (".git/info/attributes", "git-internals") in kinds
    # Put back, and never committed.
    assert config.read_bytes() == config_before
    assert not hook.exists()
    assert not (repo / ".git" / "info" / "attributes").exists()
    assert patch.commit is not None
    blob = subprocess.run(
        ["git", "cat-file", "blob", f"{patch.commit}:blob.bin"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout
    assert blob == bytes(range(256)) * 4
    assert show(repo, patch.commit, "theirs.txt") == "t"
    assert sh_git(repo, "ls-tree", patch.commit, "old.txt") == ""
    assert sh_git(repo, "ls-tree", patch.commit, "tool.sh").startswith("100755")
    # The checkout is left exactly at the patch: the refused changes are gone.
    assert (inst.path / "theirs.txt").read_text() == "t\n"
    assert not (inst.path / "escape").exists()


def test_agent_commits_and_index_games_do_not_hide_changes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n", "b.txt": "b\n"})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    inst = ws.instance("w")
    ws.sync("w")
    (inst.path / "a.txt").write_text("A\n")
    sh_git(inst.path, "commit", "-q", "-am", "agent's own commit")
    (inst.path / "b.txt").write_text("B\n")
    sh_git(inst.path, "update-index", "--assume-unchanged", "b.txt")
    patch = ws.commit_task("w", "t1", owns("a.txt", "b.txt"))
    assert {c.path for c in patch.changes} == {"a.txt", "b.txt"}
    assert patch.commit is not None
    assert sh_git(repo, "rev-parse", f"{patch.commit}^") == patch.start


def test_failed_attempt_is_discarded(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    inst = ws.instance("w")
    ws.sync("w")
    (inst.path / "a.txt").write_text("half done\n")
    (inst.path / "junk.txt").write_text("junk\n")
    (inst.path / ".git").write_text("gitdir: /tmp/elsewhere\n")
    violations = ws.discard("w")
    assert [v.kind for v in violations] == ["git-internals"]
    assert (inst.path / "a.txt").read_text() == "a\n"
    assert not (inst.path / "junk.txt").exists()
    assert sh_git(inst.path, "status", "--porcelain") == ""


def test_two_tasks_editing_different_functions_of_one_file_merge(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"m.py": TWO_FUNCTIONS})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    a, b = ws.instance("a"), ws.instance("b")
    ws.sync("a")
    ws.sync("b")
    edit(a.path / "m.py", "value = 1", "value = 100")
    edit(b.path / "m.py", "value = 2", "value = 200")
    ws.commit_task("a", "ta", owns("m.py"))
    ws.commit_task("b", "tb", owns("m.py"))
    results = ws.integrate(["ta", "tb"])
    assert [r.status for r in results] == ["integrated", "integrated"]
    merged = show(repo, ws.head(), "m.py")
    assert "value = 100" in merged and "value = 200" in merged


def test_true_conflict_is_a_result_kept_as_a_patch_then_resolved(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"m.py": TWO_FUNCTIONS})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    a, b = ws.instance("a"), ws.instance("b")
    ws.sync("a")
    ws.sync("b")
    edit(a.path / "m.py", "value = 1", "value = 'a'")
    edit(b.path / "m.py", "value = 1", "value = 'b'")
    ws.commit_task("a", "ta", owns("m.py"))
    ws.commit_task("b", "tb", owns("m.py"))
    first = ws.integrate(["ta"])[0]
    head = ws.head()
    second = ws.integrate(["tb"])[0]
    assert first.status == "integrated"
    assert second.status == "conflict" and second.conflicts == ("m.py",)
    assert ws.head() == head  # the branch did not move
    assert second.patch_file is not None and second.patch_file.is_file()
    assert second.patch_file.is_relative_to(repo / ".guildrun" / "runs" / "r1" / "conflicts")
    assert "value = 'b'" in second.patch_file.read_text()
    # The integration worktree is clean again: a conflict leaves nothing behind.
    assert sh_git(ws.layout.integration_dir, "status", "--porcelain") == ""
    # Re-run on top: after a sync the instance sees the integrated state.
    ws.sync("b")
    assert "value = 'a'" in (b.path / "m.py").read_text()
    # Or a person merges by hand in the integration worktree, and resolve records it.
    ws.sync("a")
    (a.path / "other.txt").write_text("other\n")
    ws.commit_task("a", "tc", owns("other.txt"))
    where = ws.start_resolution("tb")
    assert "<<<<<<<" in (where / "m.py").read_text()
    with pytest.raises(UsageError, match="hand merge of task 'tb' is under way"):
        ws.integrate(["tc"])  # the person's work is never reset under them
    assert "<<<<<<<" in (where / "m.py").read_text()
    with pytest.raises(UsageError, match="still unmerged"):
        ws.resolve("tb")
    (where / "m.py").write_text(TWO_FUNCTIONS.replace("value = 1", "value = 'ab'"))
    sh_git(where, "add", "m.py")
    done = ws.resolve("tb")
    assert done.status == "integrated"
    assert ws.integrated() == ["ta", "tb"]
    assert "value = 'ab'" in show(repo, ws.head(), "m.py")
    assert ws.integrate(["tc"])[0].status == "integrated"
    assert ws.integrate(["tb"])[0].status == "already"


def test_dependent_task_sees_its_dependency_after_sync(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"api.py": "def old(): ...\n"})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    a, b = ws.instance("a"), ws.instance("b")
    ws.sync("b")  # b exists from the start, before its dependency ran
    ws.sync("a")
    (a.path / "api.py").write_text("def new(): ...\n")
    ws.commit_task("a", "define", owns("api.py"))
    assert ws.integrate(["define"])[0].status == "integrated"
    assert (b.path / "api.py").read_text() == "def old(): ...\n"
    ws.sync("b")
    assert (b.path / "api.py").read_text() == "def new(): ...\n"
    (b.path / "use.py").write_text("from api import new\n")
    patch = ws.commit_task("b", "use", owns("use.py"))
    assert ws.integrate(["use"])[0].status == "integrated"
    assert patch.start == sh_git(repo, "rev-parse", "guildrun/r1~1")


def test_task_that_changed_nothing_is_empty(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ws = WorktreeSet(repo, "r1")
    ws.open()
    ws.instance("a")
    ws.sync("a")
    patch = ws.commit_task("a", "noop", owns())
    assert patch.commit is None and patch.ok
    assert ws.integrate(["noop"])[0].status == "empty"
    # A re-run that changes nothing replaces an earlier attempt's patch.
    ws.sync("a")
    (ws.instance("a").path / "x.txt").write_text("x\n")
    assert ws.commit_task("a", "again", owns("x.txt")).commit is not None
    ws.sync("a")
    assert ws.commit_task("a", "again", owns("x.txt")).commit is None
    assert ws.integrate(["again"])[0].status == "empty"


GATE_SCRIPT = textwrap.dedent(
    """
    import pathlib, sys
    bad = [p.name for p in pathlib.Path('.').glob('*.txt') if 'BROKEN' in p.read_text()]
    print('broken files:', bad)
    sys.exit(1 if bad else 0)
    """
)


@pytest.mark.slow
def test_failing_gate_is_bisected_to_the_culprit_and_the_rest_kept(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"gate.py": GATE_SCRIPT})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    gate = Gate("tests", (sys.executable, "gate.py"), "implementation", timeout=60)
    assert ws.gate(gate).ok  # green at the base
    ws.instance("w")
    tasks = [f"t{i}" for i in range(1, 7)]
    for task in tasks:
        inst = ws.instance("w")
        ws.sync("w")
        text = "BROKEN\n" if task == "t4" else f"{task}\n"
        (inst.path / f"{task}.txt").write_text(text)
        ws.commit_task("w", task, owns(f"{task}.txt"))
        assert ws.integrate([task])[0].status == "integrated"
    failed = ws.gate(gate)
    assert not failed.ok and "t4.txt" in failed.output
    result = ws.bisect(gate, slots=2, failed=failed)
    assert [c.task for c in result.culprits] == ["t4"]
    assert "t4.txt" in result.culprits[0].output
    assert result.final.ok and result.ok
    assert ws.integrated() == ["t1", "t2", "t3", "t5", "t6"]
    assert result.probes < len(tasks)  # fewer than testing every prefix
    assert not result.left_out


@pytest.mark.slow
def test_two_culprits_are_both_taken_out_and_a_dependent_patch_left_out(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"gate.py": GATE_SCRIPT})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    gate = Gate("tests", (sys.executable, "gate.py"), timeout=60)
    writes = {
        "t1": ("a.txt", "a\n"),
        "t2": ("b.txt", "BROKEN\n"),
        "t3": ("c.txt", "c\n"),
        "t4": ("b.txt", "BROKEN\nand more\n"),  # builds on t2's file
        "t5": ("e.txt", "BROKEN again\n"),
        "t6": ("f.txt", "f\n"),
    }
    inst = ws.instance("w")
    for task, (rel, text) in writes.items():
        ws.sync("w")
        (inst.path / rel).write_text(text)
        ws.commit_task("w", task, owns(rel))
        assert ws.integrate([task])[0].status == "integrated"
    results = ws.run_gates([gate, Gate("always", ("true",))], slots=2)
    assert [r.ok for r in results] == [False, True]
    result = ws.bisect(gate, slots=3, failed=results[0])
    assert [c.task for c in result.culprits] == ["t2", "t5"]
    assert [(i.task, i.status) for i in result.left_out] == [("t4", "conflict")]
    assert result.left_out[0].patch_file is not None
    assert result.final.ok
    assert ws.integrated() == ["t1", "t3", "t6"]


def test_gate_failing_at_its_start_blames_no_patch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"gate.py": GATE_SCRIPT, "x.txt": "BROKEN\n"})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    inst = ws.instance("w")
    ws.sync("w")
    (inst.path / "y.txt").write_text("fine\n")
    ws.commit_task("w", "t1", owns("y.txt"))
    ws.integrate(["t1"])
    result = ws.bisect(Gate("tests", (sys.executable, "gate.py")), slots=2)
    assert result.culprits == () and not result.ok
    assert ws.integrated() == ["t1"]


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from guildrun._worktree import WorktreeSet
    ws = WorktreeSet(Path(sys.argv[1]), "r1")
    ws.resume()
    print(ws.integrate([sys.argv[2]]))
    """
)


def _prepared(tmp_path: Path, files: int = 3) -> tuple[Path, WorktreeSet]:
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    inst = ws.instance("w")
    ws.sync("w")
    for i in range(files):
        (inst.path / f"gen/f{i:05d}.txt").parent.mkdir(exist_ok=True)
        (inst.path / f"gen/f{i:05d}.txt").write_text(f"{i}\n" * 50)
    ws.commit_task("w", "big", lambda p: p.startswith("gen/"))
    return repo, ws


def _integrate_in_child(repo: Path, crash_at: str | None) -> subprocess.Popen[bytes]:
    env = {**plain_env(), "PYTHONPATH": str(REPO_ROOT / "src")}
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(repo), "big"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _consistent(repo: Path, ws: WorktreeSet) -> None:
    """The integration worktree is clean, detached at the branch head, no git op under way."""
    where = ws.layout.integration_dir
    assert sh_git(where, "status", "--porcelain", "--untracked-files=all") == ""
    assert sh_git(where, "rev-parse", "HEAD") == ws.head()
    gitdir = Path(sh_git(where, "rev-parse", "--absolute-git-dir"))
    assert not (gitdir / "CHERRY_PICK_HEAD").exists()
    assert not (gitdir / "index.lock").exists()
    assert not ws.layout.intent_file.exists()


@pytest.mark.parametrize(
    ("point", "landed"),
    [("before-cherry-pick", False), ("after-cherry-pick", False), ("after-update-ref", True)],
)
def test_crash_in_the_middle_of_integration_recovers(
    tmp_path: Path, point: str, landed: bool
) -> None:
    repo, ws = _prepared(tmp_path)
    head = ws.head()
    proc = _integrate_in_child(repo, point)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert ws.layout.intent_file.exists()
    again = WorktreeSet(repo, "r1")
    recovery = again.resume()
    assert recovery.interrupted == "big" and recovery.landed is landed
    assert (again.head() != head) is landed
    assert ("big" in again.integrated()) is landed
    _consistent(repo, again)
    # The run goes on: integrating again lands it exactly once.
    assert again.integrate(["big"])[0].status == ("already" if landed else "integrated")
    assert again.integrated() == ["big"]


def test_recover_undoes_a_stopped_cherry_pick_with_a_stale_lock(tmp_path: Path) -> None:
    repo, ws = _prepared(tmp_path)
    head = ws.head()
    where = ws.layout.integration_dir
    gitdir = Path(sh_git(where, "rev-parse", "--absolute-git-dir"))
    # The state a SIGKILL inside git leaves: a half-applied pick and its index lock.
    sh_git(where, "cherry-pick", "--no-commit", "guildrun/r1.w")
    (gitdir / "index.lock").write_bytes(b"")
    (where / "a.txt").write_text("torn\n")
    ws.integrator._intend({"op": "integrate", "task": "big", "head": head})
    recovery = WorktreeSet(repo, "r1").resume()
    assert recovery.interrupted == "big" and not recovery.landed
    _consistent(repo, ws)
    assert ws.head() == head


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_large_integration(tmp_path: Path) -> None:
    """A real SIGKILL while a 2,000-file patch is being merged: once the intent is written,
    the integrating process is killed after a few delays; every outcome is consistent."""
    repo, ws = _prepared(tmp_path, files=2000)
    head = ws.head()
    cut_short = 0
    for delay in (0.0, 0.15, 0.4):
        proc = _integrate_in_child(repo, None)
        deadline = time.monotonic() + 60
        while not ws.layout.intent_file.exists() and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        again = WorktreeSet(repo, "r1")
        recovery = again.resume()
        _consistent(repo, again)
        landed = "big" in again.integrated()
        assert (again.head() != head) is landed
        if recovery.interrupted == "big":
            cut_short += 1
            assert recovery.landed is landed
        if landed:
            break
    assert cut_short >= 1  # at least one kill landed inside the integration
    final = WorktreeSet(repo, "r1")
    final.resume()
    final.integrate(["big"])
    assert final.integrated() == ["big"]
    assert final.layout.integration_dir.joinpath("gen/f01999.txt").is_file()


def test_dirty_tree_is_refused_and_allowed_without_touching_the_user(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n", "b.txt": "b\n"})
    (repo / "a.txt").write_text("edited\n")
    (repo / "b.txt").write_text("staged\n")
    sh_git(repo, "add", "b.txt")
    (repo / "new.txt").write_text("untracked\n")
    (repo / ".gitignore").write_text("*.log\n")
    (repo / "debug.log").write_text("ignored\n")
    with pytest.raises(UsageError, match=r"uncommitted changes \(.*a\.txt"):
        WorktreeSet(repo, "r1").open()
    status_before = sh_git(repo, "status", "--porcelain")  # (plain git may refresh the index)
    index = repo / ".git" / "index"
    index_before = (index.read_bytes(), index.stat().st_mtime_ns)
    head_before = sh_git(repo, "rev-parse", "HEAD")
    ws = WorktreeSet(repo, "r2")
    base = ws.open(allow_dirty=True)
    assert base.snapshot and base.head == head_before and base.commit != head_before
    assert "uncommitted changes" in base.describe()
    assert show(repo, base.commit, "a.txt") == "edited"
    assert show(repo, base.commit, "b.txt") == "staged"
    assert show(repo, base.commit, "new.txt") == "untracked"
    assert sh_git(repo, "ls-tree", base.commit, "debug.log") == ""
    assert sh_git(repo, "ls-tree", "-r", "--name-only", base.commit).find(".guildrun") == -1
    assert (index.read_bytes(), index.stat().st_mtime_ns) == index_before
    assert sh_git(repo, "status", "--porcelain") == status_before
    assert sh_git(repo, "rev-parse", "HEAD") == head_before
    inst = ws.instance("w")
    ws.sync("w")
    assert (inst.path / "new.txt").read_text() == "untracked\n"


def test_apply_fast_forwards_the_users_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    inst = ws.instance("w")
    ws.sync("w")
    (inst.path / "a.txt").write_text("A\n")
    ws.commit_task("w", "t1", owns("a.txt"))
    ws.integrate(["t1"])
    applied = ws.apply()
    assert applied.how == "fast-forward" and applied.branch == "main"
    assert (repo / "a.txt").read_text() == "A\n"
    assert sh_git(repo, "status", "--porcelain") == ""
    assert ws.apply().how == "up to date"


def test_apply_merges_a_moved_branch_and_refuses_a_conflicting_one(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n", "b.txt": "b\n"})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    inst = ws.instance("w")
    ws.sync("w")
    (inst.path / "a.txt").write_text("A\n")
    ws.commit_task("w", "t1", owns("a.txt"))
    ws.integrate(["t1"])
    (repo / "a.txt").write_text("mine\n")
    sh_git(repo, "commit", "-q", "-am", "user moved on")
    moved = sh_git(repo, "rev-parse", "HEAD")
    with pytest.raises(UsageError, match=r"moved since run r1 started and conflicts .*a\.txt"):
        ws.apply()
    assert sh_git(repo, "rev-parse", "HEAD") == moved
    assert sh_git(repo, "status", "--porcelain") == ""
    sh_git(repo, "reset", "-q", "--hard", "HEAD~1")
    (repo / "b.txt").write_text("B\n")
    sh_git(repo, "commit", "-q", "-am", "user edits another file")
    applied = ws.apply()
    assert applied.how == "merge"
    assert (repo / "a.txt").read_text() == "A\n" and (repo / "b.txt").read_text() == "B\n"
    assert sh_git(repo, "rev-parse", "HEAD^2") == ws.head()


def test_apply_refuses_a_dirty_tree_and_a_branch_checked_out_elsewhere(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    inst = ws.instance("w")
    ws.sync("w")
    (inst.path / "a.txt").write_text("A\n")
    ws.commit_task("w", "t1", owns("a.txt"))
    ws.integrate(["t1"])
    (repo / "scratch.txt").write_text("wip\n")
    head = sh_git(repo, "rev-parse", "HEAD")
    with pytest.raises(UsageError, match=r"uncommitted changes \(scratch\.txt\)"):
        ws.apply()
    (repo / "scratch.txt").unlink()
    sh_git(repo, "branch", "release")
    other = tmp_path / "other"
    sh_git(repo, "worktree", "add", "-q", str(other), "release")
    with pytest.raises(UsageError, match=r"release is checked out in another worktree"):
        ws.apply(into="release")
    assert sh_git(repo, "rev-parse", "release") == head
    assert sh_git(repo, "rev-parse", "HEAD") == head
    assert (repo / "a.txt").read_text() == "a\n"
    # Not checked out anywhere: the branch itself moves, no checkout is touched.
    sh_git(repo, "worktree", "remove", str(other))
    assert ws.apply(into="release").how == "fast-forward"
    assert sh_git(repo, "rev-parse", "release") == ws.head()
    assert sh_git(repo, "rev-parse", "HEAD") == head


def test_nothing_is_left_after_clean(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n", "gate.py": GATE_SCRIPT})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    for name in ("x", "y"):
        inst = ws.instance(name)
        ws.sync(name)
        (inst.path / f"{name}.txt").write_text(name)
        ws.commit_task(name, name, owns(f"{name}.txt"))
    ws.integrate(["x", "y"])
    assert ws.gate(Gate("g", (sys.executable, "gate.py"))).ok
    other = WorktreeSet(repo, "r2")
    other.open()
    kept = ws.clean(keep_result=True)
    assert "guildrun/r1" not in kept.branches
    assert sh_git(repo, "branch", "--list", "guildrun/r1") != ""
    cleaned = ws.clean()
    assert cleaned.branches == ("guildrun/r1",) and cleaned.kept == ()
    worktrees = sh_git(repo, "worktree", "list", "--porcelain")
    assert "/r1/" not in worktrees
    assert sh_git(repo, "branch", "--list", "guildrun/r1*") == ""
    assert sh_git(repo, "for-each-ref", "refs/guildrun/r1") == ""
    assert not ws.layout.worktrees.exists()
    assert sh_git(repo, "branch", "--list", "guildrun/r2") != ""  # another run's stays
    other.clean()
    assert sh_git(repo, "worktree", "list").count("\n") == 0
    assert sh_git(repo, "branch", "--list", "guildrun/*") == ""
    assert sh_git(repo, "for-each-ref", "refs/guildrun/") == ""


def test_a_checkout_removed_by_its_task_is_made_again(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    inst = ws.instance("w")
    ws.sync("w")
    shutil.rmtree(inst.path)
    patch = ws.commit_task("w", "t1", owns("a.txt"))
    assert patch.commit is None
    assert [v.kind for v in patch.violations] == ["git-internals"]
    ws.sync("w")
    (inst.path / "a.txt").write_text("A\n")
    assert ws.commit_task("w", "t2", owns("a.txt")).ok
    assert ws.integrate(["t2"])[0].status == "integrated"


def test_resume_after_a_crash_inside_open(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    with pytest.raises(UsageError, match="already open"):
        WorktreeSet(repo, "r1").open()
    sh_git(repo, "update-ref", "-d", "refs/heads/guildrun/r1")  # as if killed inside open()
    again = WorktreeSet(repo, "r1")
    assert again.resume().integrated == ()
    assert again.head() == sh_git(repo, "rev-parse", "HEAD")
    with pytest.raises(UsageError, match="no worktree state"):
        WorktreeSet(repo, "r9").resume()


def test_refs_moved_by_someone_else_are_refused(tmp_path: Path) -> None:
    """Agents share the repository: a branch or patch ref they move is never built on."""
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    inst = ws.instance("w")
    ws.sync("w")
    (inst.path / "a.txt").write_text("A\n")
    patch = ws.commit_task("w", "t1", owns("a.txt"))
    assert patch.commit is not None
    evil = make_repo(tmp_path, {"a.txt": "planted\n"}, name="evil")
    sh_git(repo, "fetch", "-q", str(evil), "main:refs/evil")
    sh_git(repo, "update-ref", "refs/guildrun/r1/patches/t1", "refs/evil")
    with pytest.raises(UsageError, match="patch of task 't1' was changed outside guildrun"):
        ws.integrate(["t1"])
    sh_git(repo, "update-ref", "refs/guildrun/r1/patches/t1", patch.commit)
    assert ws.integrate(["t1"])[0].status == "integrated"
    sh_git(repo, "update-ref", "refs/heads/guildrun/r1", "refs/evil")
    with pytest.raises(UsageError, match="guildrun/r1 was moved outside guildrun"):
        ws.apply()
    assert (repo / "a.txt").read_text() == "a\n"


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed child its dead parent cannot reap)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(errors="replace").rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError):
        return False
    return fields[0] != "Z"


def test_a_gate_past_its_timeout_is_stopped_with_its_children(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pidfile}; echo started; sleep 60"
    began = time.monotonic()
    result = ws.gate(Gate("hangs", ("sh", "-c", script), timeout=0.5))
    assert time.monotonic() - began < 30
    assert not result.ok and result.returncode is None and "started" in result.output
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child)
    assert ws.gate(Gate("missing", ("/no/such/program",))).returncode == 127


def test_a_second_task_without_a_sync_holds_only_its_own_changes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n", "b.txt": "b\n"})
    ws = WorktreeSet(repo, "r1")
    ws.open()
    inst = ws.instance("w")
    ws.sync("w")
    (inst.path / "a.txt").write_text("A\n")
    first = ws.commit_task("w", "t1", owns("a.txt"))
    (inst.path / "b.txt").write_text("B\n")
    second = ws.commit_task("w", "t2", owns("b.txt"))
    assert [c.path for c in second.changes] == ["b.txt"] and second.ok
    assert second.start == first.commit


def test_worktree_mode_needs_a_repositorys_top_folder(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"sub/a.txt": "a\n"})
    with pytest.raises(UsageError, match="top folder of a git repository"):
        WorktreeSet(repo / "sub", "r1").open()
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(UsageError, match="top folder of a git repository"):
        WorktreeSet(plain, "r1").open()
    with pytest.raises(UsageError, match="cannot name a git branch"):
        WorktreeSet(repo, "../x")


@given(
    n=st.integers(min_value=1, max_value=200),
    first_bad=st.integers(min_value=0, max_value=200),
    slots=st.integers(min_value=1, max_value=8),
    known_good=st.booleans(),
)
def test_bisection_finds_the_first_failing_prefix(
    n: int, first_bad: int, slots: int, known_good: bool
) -> None:
    """Over any monotone gate, the search names the first failing prefix, and probes no
    more than `slots` points per round, in about log_(slots+1) rounds."""
    first_bad = min(first_bad, n) if not known_good else max(1, min(first_bad, n))
    rounds: list[list[int]] = []

    def probe(ks: list[int]) -> list[GateResult]:
        assert 0 < len(ks) <= slots and all(k < n for k in ks)
        rounds.append(ks)
        return [GateResult("g", str(k), k < first_bad, 0, "") for k in ks]

    outputs: dict[int, GateResult] = {}
    found, probes = _search(n, 0 if known_good else -1, slots, probe, outputs)
    assert found == first_bad
    assert probes == sum(len(r) for r in rounds)
    assert len(rounds) <= math.ceil(math.log(n + 2, slots + 1)) + 1
