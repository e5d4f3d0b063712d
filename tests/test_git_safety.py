"""guildrun's own git calls never run a program the repository configures (issue 9, item 1)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from guildrun._git import Git, GitError, configured_drivers
from guildrun._worktree import Gate, WorktreeSet

from .worktree_helpers import TWO_FUNCTIONS, edit, make_repo, plain_env, sh_git

HOOKS = (
    "pre-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "post-checkout",
    "post-merge",
    "pre-merge-commit",
    "post-rewrite",
    "reference-transaction",
    "pre-auto-gc",
    "post-index-change",
)


def _program(bin_dir: Path, marks: Path, name: str) -> str:
    """A program that leaves a marker, then behaves (passes its input through)."""
    path = bin_dir / name
    path.write_text(
        f'#!/bin/sh\ntouch "{marks}/{name}"\nif [ $# -gt 0 ]; then cat "$1"; else cat; fi\n'
    )
    path.chmod(0o755)
    return str(path)


def _hostile(repo: Path, tmp: Path) -> Path:
    """Every kind of repository-configured program, each leaving a marker when run."""
    marks = tmp / "marks"
    bin_dir = tmp / "bin"
    marks.mkdir()
    bin_dir.mkdir()

    def prog(name: str) -> str:
        return _program(bin_dir, marks, name)

    settings = {
        "core.fsmonitor": prog("fsmonitor"),
        "core.pager": prog("pager"),
        "pager.status": prog("pager-status"),
        "core.editor": prog("editor"),
        "core.sshCommand": prog("ssh"),
        "core.askPass": prog("askpass"),
        "credential.helper": prog("credential"),
        "diff.external": prog("external-diff"),
        "filter.evil.clean": prog("filter-clean"),
        "filter.evil.smudge": prog("filter-smudge"),
        "filter.evil.required": "true",
        "merge.evil.driver": prog("merge-driver") + " %O %A %B",
        "diff.evil.textconv": prog("textconv"),
        "diff.evil.command": prog("diff-command"),
        "commit.gpgSign": "true",
        "gpg.program": prog("gpg"),
        "log.showSignature": "true",
        "gc.auto": "1",
    }
    for key, value in settings.items():
        sh_git(repo, "config", key, value)
    hooks = repo / ".git" / "hooks"
    for hook in HOOKS:
        (hooks / hook).write_text(f'#!/bin/sh\ntouch "{marks}/hook-{hook}"\n')
        (hooks / hook).chmod(0o755)
    return marks


def test_no_repository_program_runs_through_guildrun(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path,
        {
            "m.py": TWO_FUNCTIONS,
            "b.txt": "b\n",
            ".gitattributes": "* filter=evil merge=evil diff=evil\n",
        },
    )
    marks = _hostile(repo, tmp_path)
    (repo / "b.txt").write_text("dirty\n")  # a snapshot of a dirty tree goes through `add`
    ws = WorktreeSet(repo, "r1")
    ws.open(allow_dirty=True)
    a, b = ws.instance("a"), ws.instance("b")
    ws.sync("a")
    ws.sync("b")
    edit(a.path / "m.py", "value = 1", "value = 100")
    edit(b.path / "m.py", "value = 2", "value = 200")
    (b.path / "new.txt").write_text("new\n")
    ws.commit_task("a", "ta", lambda p: p == "m.py")
    ws.commit_task("b", "tb", lambda p: p in ("m.py", "new.txt"))
    first, second = ws.integrate(["ta", "tb"])
    assert first.status == "integrated"
    # A path whose repository merge driver would be needed conflicts for a person instead.
    assert second.status == "conflict" and second.conflicts == ("m.py",)
    ws.sync("b")
    git = ws.git
    for args in (("status",), ("diff", "HEAD~1"), ("log", "-p", "-1"), ("show", "HEAD")):
        git.run(*args, cwd=a.path)
    assert ws.gate(Gate("g", ("true",))).ok
    assert sorted(p.name for p in marks.iterdir()) == []
    # The user moves on meanwhile (by plain git, whose markers are not guildrun's), so
    # apply has to merge: `merge-tree`, `commit-tree`, `merge --ff-only`.
    (repo / "b.txt").write_text("b\n")
    (repo / "c.txt").write_text("user's own\n")
    sh_git(repo, "add", "c.txt")
    # (without auto gc: plain git would leave it running, writing markers later)
    sh_git(repo, "-c", "gc.auto=0", "commit", "-q", "--no-gpg-sign", "-m", "user's commit")
    shutil.rmtree(marks)
    marks.mkdir()
    assert ws.apply().how == "merge"
    ws.clean()
    assert sorted(p.name for p in marks.iterdir()) == []
    # The same repository run by plain git does run them: the test could have failed.
    (repo / "b.txt").write_text("changed\n")
    sh_git(repo, "status")
    sh_git(repo, "add", "b.txt")
    subprocess.run(
        ["git", "-c", "gc.auto=0", "commit", "-q", "-m", "x"],
        cwd=repo,
        env=plain_env(),
        check=False,
        capture_output=True,
    )
    ran = {p.name for p in marks.iterdir()}
    assert {"fsmonitor", "filter-clean", "hook-pre-commit"} <= ran


def test_a_callers_git_environment_cannot_redirect_guildrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n"}, name="mine")
    other = make_repo(tmp_path, {"b.txt": "b\n"}, name="other")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'core.hooksPath'='/tmp'")
    git = Git(repo)
    assert git.text("ls-files") == "a.txt"


def test_errors_name_the_command_and_gits_reason(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    with pytest.raises(GitError) as info:
        Git(repo).run("rev-parse", "--verify", "no-such-branch")
    assert str(info.value).startswith("git rev-parse --verify no-such-branch failed (exit 128)")
    assert "fatal: Needed a single revision" in str(info.value)
    assert info.value.exit_code == 1


def test_drivers_are_found_in_any_case_and_subsection() -> None:
    keys = [
        "filter.lfs.clean",
        "filter.My.Driver.smudge",
        "merge.npm.driver",
        "diff.pdf.textconv",
        "credential.https://x.example.helper",
        "user.name",
        "Filter.Up.CLEAN",
    ]
    got = dict(configured_drivers(keys))
    assert got == {
        "filter.lfs.clean": "",
        "filter.My.Driver.smudge": "",
        "merge.npm.driver": "false",
        "diff.pdf.textconv": "",
        "credential.https://x.example.helper": "",
        "Filter.Up.CLEAN": "",
    }


def test_git_is_never_given_a_terminal_prompt(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    env = Git(repo).env(drivers=False)
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_CONFIG_NOSYSTEM"] == "1"
    keys = {
        env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"]
        for i in range(int(env["GIT_CONFIG_COUNT"]))
    }
    assert keys["core.hooksPath"] == "/dev/null" and keys["core.fsmonitor"] == "false"
    assert keys["protocol.allow"] == "never"


@pytest.mark.parametrize("through_include", [False, True])
def test_a_driver_added_between_two_calls_is_still_blanked(
    tmp_path: Path, through_include: bool
) -> None:
    """The driver listing is reused only while no config file changed."""
    repo = make_repo(tmp_path, {".gitattributes": "*.txt filter=late\n", "a.txt": "a\n"})
    marks = tmp_path / "marks"
    bin_dir = tmp_path / "bin"
    marks.mkdir()
    bin_dir.mkdir()
    included = tmp_path / "extra.config"
    included.write_text("")
    if through_include:
        sh_git(repo, "config", "include.path", str(included))
    git = Git(repo)
    git.run("status")
    git.run("add", "-A")  # the listing is made, and kept when it can be
    clean = _program(bin_dir, marks, "late-clean")
    if through_include:
        included.write_text(f'[filter "late"]\n\tclean = {clean}\n')
    else:
        sh_git(repo, "config", "filter.late.clean", clean)
    (repo / "a.txt").write_text("changed\n")
    git.run("add", "-A")
    git.run("status")
    assert list(marks.iterdir()) == []
    sh_git(repo, "add", "-A", "--renormalize")  # plain git runs it: the setup is live
    assert [p.name for p in marks.iterdir()] == ["late-clean"]
