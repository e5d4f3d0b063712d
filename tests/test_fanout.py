"""`guildrun fanout`: one task per file on a real tree, and its dry run is what it runs."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from guildrun._cli import main
from guildrun._plan import load_plan
from tests.conftest import Runner

# Appends a line to each file it is given: a real edit, as an agent would make.
EDIT = (
    "import sys\n"
    "for f in sys.argv[2:]:\n"
    "    with open(f, 'a') as fh:\n"
    "        fh.write(sys.argv[1] + '\\n')\n"
    "print('edited', *sys.argv[2:])\n"
)


def git_tree(root: Path, names: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# {name}\n")
    (root / "edit.py").write_text(EDIT)
    (root / ".gitignore").write_text("build/\n.guildrun/\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)


def runs(root: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(root / ".guildrun" / "journal.db")
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute("SELECT * FROM runs ORDER BY created"))
    finally:
        db.close()


def tasks(root: Path, run_id: str) -> list[tuple[str, list[str], str]]:
    db = sqlite3.connect(root / ".guildrun" / "journal.db")
    try:
        return [
            (tid, json.loads(files), state)
            for tid, files, state in db.execute(
                "SELECT id, files_json, state FROM tasks WHERE run_id=? ORDER BY seq", (run_id,)
            )
        ]
    finally:
        db.close()


SIX = [f"src/mod{i}.py" for i in range(1, 7)]


def test_fanout_edits_six_files_end_to_end(tmp_path: Path, guildrun: Runner) -> None:
    root = tmp_path / "repo"
    git_tree(root, [*SIX, "src/notes.txt", "build/mod9.py"])
    out = guildrun(
        "fanout",
        "--files",
        "src/**/*.py",
        "--prompt",
        "reviewed {file}",
        "--json",
        "--",
        sys.executable,
        "edit.py",
        "{prompt}",
        "{}",
        cwd=root,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["done"], summary["failed"]) == (6, 0)
    for name in SIX:
        assert (root / name).read_text() == f"# {name}\nreviewed {name}\n"
    # Not matched, and ignored by git: untouched.
    assert (root / "src/notes.txt").read_text() == "# src/notes.txt\n"
    assert (root / "build/mod9.py").read_text() == "# build/mod9.py\n"
    rows = tasks(root, summary["run_id"])
    assert rows == [(name, [name], "done") for name in SIX]


def test_dry_run_is_the_plan_fanout_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "repo"
    git_tree(root, SIX)
    args = [
        "fanout",
        "--root",
        str(root),
        "--files",
        "src/*.py",
        "--prompt",
        "add a docstring to {file} ({{literal}})",
        "--per-agent-type",
        "2",
        "--run",
        f"{sys.executable} edit.py {{prompt}} {{file}}",
    ]
    assert main([*args, "--dry-run"]) == 0
    text = capsys.readouterr().out
    saved = tmp_path / "saved.yaml"
    saved.write_text(text)
    plan = load_plan(saved)
    assert [t.id for t in plan.tasks] == SIX
    assert [t.files for t in plan.tasks] == [[n] for n in SIX]
    assert {t.prompt for t in plan.tasks} == {"add a docstring to {files} ({{literal}})"}
    assert plan.settings.per_agent_type == 2
    assert not (root / ".guildrun").exists(), "a dry run runs nothing"

    assert main([*args, "-q", "--json"]) == 0
    fanned = json.loads(capsys.readouterr().out)
    assert main(["run", str(saved), "--root", str(root), "-q", "--json"]) == 0
    ran = json.loads(capsys.readouterr().out)
    first, second = runs(root)
    assert first["id"] == fanned["run_id"] and second["id"] == ran["run_id"]
    # The very same plan, settings and limits were journaled for both runs.
    assert first["plan_json"] == second["plan_json"]
    # Except the strategy: `auto` (the default) learned the first run's task lengths.
    first_settings, second_settings = (json.loads(r["settings_json"]) for r in (first, second))
    assert first_settings.pop("strategy") == "work-stealing"
    assert second_settings.pop("strategy") in ("work-stealing", "longest-first")
    assert first_settings == second_settings
    assert first["limits_json"] == second["limits_json"]
    assert json.loads(first["limits_json"]) == {Path(sys.executable).name: 2}
    assert tasks(root, first["id"]) == tasks(root, second["id"])
    for name in SIX:
        line = f"add a docstring to {name} ({{literal}})"
        assert (root / name).read_text() == f"# {name}\n{line}\n{line}\n"


def test_groups_and_a_project_specialist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "repo"
    git_tree(root, [f"docs/p{i}.md" for i in range(1, 6)])
    (root / "guildrun.toml").write_text(
        "[settings]\nper_agent_type = 2\n\n"
        "[specialists.writer]\n"
        f'run = ["{sys.executable}", "edit.py", "{{prompt}}", "{{files}}"]\n'
        'files = ["docs/**"]\n'
    )
    assert main(["fanout", "writer", "--root", str(root), "--files", "docs/*.md", "--group",
                 "2", "--prompt", "seen with {file}", "-q", "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["done"] == 3
    assert tasks(root, summary["run_id"]) == [
        ("group-1", ["docs/p1.md", "docs/p2.md"], "done"),
        ("group-2", ["docs/p3.md", "docs/p4.md"], "done"),
        ("group-3", ["docs/p5.md"], "done"),
    ]
    assert (root / "docs/p2.md").read_text() == "# docs/p2.md\nseen with docs/p1.md docs/p2.md\n"
    assert json.loads(runs(root)[0]["limits_json"]) == {"writer": 2}


def test_file_names_are_never_parsed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "repo"
    evil = "src/$(touch pwned); {prompt} `x`.py"
    git_tree(root, [evil])
    assert main(["fanout", "--root", str(root), "--files", "src/*", "-q", "--json", "--",
                 sys.executable, "edit.py", "ok", "{file}"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["done"] == 1
    assert (root / evil).read_text() == f"# {evil}\nok\n"
    assert not (root / "pwned").exists() and not (root / "src/pwned").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--files", "nothing/*.py", "--", "true"], "--files 'nothing/*.py': no file matches"),
        (["--files", "../*", "--", "true"], "globs are relative to the project root"),
        (["nosuch", "--files", "src/*.py"], "no specialist 'nosuch' in the project config"),
        (["--files", "src/*.py"], "name a specialist, or give the command after '--'"),
        (
            ["--files", "src/*.py", "--group", "2", "--", "cp", "{file}", "{file}.bak"],
            "with --group, {file} must stand alone",
        ),
        (["--files", "src/*.py", "--prompt", "{nope}", "--", "true"], "--prompt: unknown"),
        (["--files", "src/*.py", "--", "echo", "{result:x}"], "has no meaning in a fanout"),
        (["--files", "src/*.py", "--run", "a", "b"], "not both"),
    ],
)
def test_bad_fanout_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    root = tmp_path / "repo"
    git_tree(root, ["src/a.py"])
    assert main(["fanout", "--root", str(root), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (root / ".guildrun").exists()


def test_a_file_that_looks_like_an_option_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "plain"  # not a git repository: the tree is walked
    root.mkdir()
    (root / "-rf").write_text("x")
    assert main(["fanout", "--root", str(root), "--files", "*", "--", "rm"]) == 2
    assert "'-rf' would be read as an option" in capsys.readouterr().err
    assert (root / "-rf").exists()


def test_specialists_in_pyproject_beside_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "repo"
    git_tree(root, ["a.py", "b.py"])
    (root / "pyproject.toml").write_text(
        "[tool.guildrun]\ntotal_parallel = 1\n\n"
        "[tool.guildrun.specialists.touch]\n"
        f'run = ["{sys.executable}", "edit.py", "touched", "{{files}}"]\n'
    )
    assert main(["fanout", "touch", "--root", str(root), "--files", "[ab].py", "-q", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 2
    assert json.loads(runs(root)[0]["settings_json"])["total_parallel"] == 1
    assert (root / "b.py").read_text() == "# b.py\ntouched\n"
    (root / "pyproject.toml").write_text("[tool.guildrun.specialists.bad]\nrun = 3\n")
    assert main(["fanout", "bad", "--root", str(root), "--files", "*.py"]) == 2
    assert "[tool.guildrun.specialists].bad.run" in capsys.readouterr().err
