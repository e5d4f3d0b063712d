"""The command line a new user meets first: the version, the list of commands, help
for every argument, and an empty project."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from guildrun import __version__
from guildrun._cli import _parser

from .conftest import Runner


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("guildrun has no commands")


def test_version(guildrun: Runner, tmp_path: Path) -> None:
    proc = guildrun("--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"guildrun {__version__}"


def test_no_arguments_lists_every_command_on_one_line(guildrun: Runner, tmp_path: Path) -> None:
    proc = guildrun(cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # asking for the list is not a mistake
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    commands = _subparsers(_parser())
    assert len(commands) >= 10
    helps = {
        choice.dest: choice.help
        for action in _parser()._actions
        if isinstance(action, argparse._SubParsersAction)
        for choice in action._choices_actions
    }
    for name in commands:
        mine = [line for line in lines if line.split()[:1] == [name]]
        assert len(mine) == 1, (name, proc.stdout)
        assert helps[name] and mine[0].strip().endswith(str(helps[name])), mine
    assert "guildrun COMMAND --help" in proc.stdout


def test_every_option_of_every_command_says_what_it_does() -> None:
    parser = _parser()
    missing = []
    for name, sub in {"guildrun": parser, **_subparsers(parser)}.items():
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


@pytest.mark.slow  # one interpreter per command
def test_every_command_help_runs(guildrun: Runner, tmp_path: Path) -> None:
    for name in _subparsers(_parser()):
        proc = guildrun(name, "--help", cwd=tmp_path)
        assert proc.returncode == 0, (name, proc.stderr)
        assert proc.stdout.startswith(f"usage: guildrun {name}"), proc.stdout


def test_runs_in_a_project_without_runs_says_so(guildrun: Runner, project: Path) -> None:
    proc = guildrun("runs", "--root", str(project), cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"no runs yet in {project.resolve()}"
    as_json = guildrun("runs", "--root", str(project), "--json", cwd=project)
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == []
    assert not (project / ".guildrun").exists()  # looking made nothing
