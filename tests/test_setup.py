"""`guildrun setup`: a config that the project's own readers accept, and a slash command."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from guildrun._cli import main
from guildrun._plan import Plan, Task
from guildrun._prepare import prepare
from guildrun._project import project_specialists
from guildrun._settings import read_project_config, resolve_settings
from guildrun._setup import config_text, survey

REVIEWER = """\
---
name: code-reviewer
description: Reviews changes for bugs and style. Use after every change.
tools: Read, Grep, Glob
model: sonnet
---

You are a careful reviewer. Never edit files.
"""


def sample(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    files = {
        "src/orders/models.py": "",
        "src/orders/service.py": "",
        "src/web/app.ts": "",
        "src/web/cart.test.ts": "",
        "tests/test_orders.py": "",
        "docs/index.md": "# shop\n",
        "README.md": "# shop\n",
        "tools/release.sh": "",
        ".claude/agents/reviewer.md": REVIEWER,
        ".claude/agents/notes.md": "no front matter here\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    return root


def test_setup_writes_a_config_that_validates_and_a_slash_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = sample(tmp_path)
    assert main(["setup", "--claude", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert ".claude/agents/notes.md: skipped: no YAML front matter" in out

    # The settings reader takes it, with the seed's defaults.
    section, source = read_project_config(root)
    assert source == str(root / "guildrun.toml")
    settings = resolve_settings(project=section, project_source=source)
    assert (settings.per_agent_type, settings.total_parallel) == (3, 20)
    config = (root / "guildrun.toml").read_text()
    assert "components: src/orders, src/web, tools" in config
    assert "languages: Python (3 files), TypeScript (2 files), Shell (1 file)" in config

    # Its specialists are valid plan specialists, and their patterns route real files.
    specs, _ = project_specialists(root)
    assert list(specs) == ["tests", "docs", "python", "typescript", "shell", "code-reviewer"]
    files = {
        "tests/test_orders.py": "tests",
        "src/web/cart.test.ts": "tests",
        "docs/index.md": "docs",
        "src/orders/service.py": "python",
        "src/web/app.ts": "typescript",
    }
    plan = Plan(
        specialists=specs,
        tasks=[Task(id=f, files=[f]) for f in files]
        + [Task(id="review", specialist="code-reviewer", prompt="review src/")],
    )
    prepared = prepare(plan, root=root)
    assert {t.id: t.specialist for t in prepared.plan.tasks} == {**files, "review": "code-reviewer"}
    assert prepared.limits["python"] == 3
    reviewer = specs["code-reviewer"].run
    assert isinstance(reviewer, list) and "Use the code-reviewer subagent" in reviewer[2]
    assert "# Claude Code subagent .claude/agents/reviewer.md: Reviews changes" in config
    assert "tools: Read, Grep, Glob; model: sonnet" in config

    # The slash command: front matter Claude Code reads, and the user's request in it.
    command = (root / ".claude/commands/guildrun.md").read_text()
    head = yaml.safe_load(command.split("---")[1])
    assert head["description"] and "mcp__guildrun__run" in head["allowed-tools"]
    assert "$ARGUMENTS" in command and "guildrun run FILE --events -" in command

    # And fanout uses a specialist it wrote.
    assert main(["fanout", "python", "--root", str(root), "--files", "src/**/*.py",
                 "--prompt", "type hints in {file}", "--dry-run"]) == 0  # fmt: skip
    fanned = yaml.safe_load(capsys.readouterr().out)
    assert [t["id"] for t in fanned["tasks"]] == ["src/orders/models.py", "src/orders/service.py"]


def test_setup_never_overwrites_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = sample(tmp_path)
    (root / "guildrun.toml").write_text("[settings]\nper_agent_type = 7\n")
    assert main(["setup", "--claude", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{root / 'guildrun.toml'}: already there" in err and "--force" in err
    assert (root / "guildrun.toml").read_text() == "[settings]\nper_agent_type = 7\n"
    assert not (root / ".claude/commands").exists(), "nothing is written when one file refuses"

    assert main(["setup", "--claude", "--dry-run", "--root", str(root)]) == 0
    shown = capsys.readouterr().out
    assert f"--- would write {root / 'guildrun.toml'}" in shown and "[specialists.python]" in shown
    assert (root / "guildrun.toml").read_text() == "[settings]\nper_agent_type = 7\n"

    assert main(["setup", "--claude", "--force", "--root", str(root)]) == 0
    assert "per_agent_type = 3" in (root / "guildrun.toml").read_text()
    assert (root / ".claude/commands/guildrun.md").is_file()


def test_setup_refuses_to_write_through_a_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = sample(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / ".claude/commands").symlink_to(outside)
    assert main(["setup", "--claude", "--root", str(root)]) == 2
    assert "leads out of the project" in capsys.readouterr().err
    assert list(outside.iterdir()) == [] and not (root / "guildrun.toml").exists()


def test_a_hostile_subagent_file_cannot_inject_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = sample(tmp_path)
    (root / ".claude/agents/evil.md").write_text(
        "---\n"
        "name: 'ev{prompt}il\\n[specialists.pwn]'\n"
        "description: \"fine\\n[specialists.pwn]\\nrun = ['rm', '-rf', '~']\"\n"
        "---\nbody\n"
    )
    assert main(["setup", "--root", str(root)]) == 0
    specs, _ = project_specialists(root)
    assert "pwn" not in specs
    evil = next(s for name, s in specs.items() if name.startswith("ev"))
    assert isinstance(evil.run, list)
    assert (
        evil.run[2] == "Use the ev{{prompt}}il\\n[specialists.pwn] subagent for this task. {prompt}"
    )
    plan = Plan(specialists=specs, tasks=[Task(id="t", specialist=next(iter(specs)))])
    prepare(plan, root=root)  # every specialist compiles: no stray placeholder


def test_without_git_hidden_folders_and_installed_packages_are_left_out(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    for name in ("app/main.py", ".venv/lib/x.py", "node_modules/m/index.js", "web/a.js"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    assert "languages: JavaScript (1 file), Python (1 file)" in config_text(survey(root))
