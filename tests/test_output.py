"""Output that survives a pipe: long lines whole, and a failed task's first error kept."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from guildrun._logtail import GAP, excerpt, log_excerpt

from .conftest import Runner, write_plan

RUFF_LIKE = [
    "F821 Undefined name `console_width`",
    " --> rich/console.py:511:9",
    "    |",
    "511 |         return console_width",
    "    |                ^^^^^^^^^^^^^ F821",
]


def context(n: int) -> list[str]:
    return [f"    | context line {i}" for i in range(n)]


def test_excerpt_keeps_the_first_error_and_the_last_lines() -> None:
    lines = ["checking 40 files", *RUFF_LIKE, *context(30), "Found 1 error."]
    got = excerpt(lines)
    assert got[:5] == RUFF_LIKE
    assert got[5] == GAP
    assert got[6:] == lines[-10:]
    assert got[-1] == "Found 1 error."


def test_excerpt_of_a_short_log_is_the_log() -> None:
    lines = ["a", "error: b", "c"]
    assert excerpt(lines) == lines


def test_excerpt_without_an_error_line_or_with_it_in_the_tail_is_the_tail() -> None:
    quiet = [f"step {i}" for i in range(40)]
    assert excerpt(quiet) == quiet[-10:]
    late = [*quiet, "Traceback (most recent call last):", "  boom"]
    assert excerpt(late) == late[-10:]


def test_excerpt_recognises_common_tools() -> None:
    for first in (
        "src/x.c:10:5: error: expected ';'",
        "Traceback (most recent call last):",
        "FAILED tests/test_a.py::test_b - assert 1 == 2",
        "E501 Line too long (120 > 88)",
        "mod.py:3: error: Incompatible types in assignment",
    ):
        lines = ["ok"] * 20 + [first] + ["ok"] * 20
        assert excerpt(lines)[0] == first, first


def test_log_excerpt_of_a_large_log_reads_both_ends(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    body = "".join(f"progress {i:08d} " + "." * 60 + "\n" for i in range(20_000))
    log.write_text("start\n" + "\n".join(RUFF_LIKE) + "\n" + body + "Found 1 error.\n")
    assert log.stat().st_size > 1_000_000
    got = log_excerpt(log)
    assert got[:5] == RUFF_LIKE and got[5] == GAP
    assert got[-1] == "Found 1 error." and len(got) == 16
    assert log_excerpt(tmp_path / "missing.log") == []
    assert log_excerpt(None) == []


def test_piped_output_is_not_wrapped_and_keeps_the_first_error(
    guildrun: Runner, project: Path, tmp_path: Path
) -> None:
    long_path = "src/" + "/".join(["a_rather_long_package_name"] * 5) + "/module.py"
    error = f"F821 Undefined name `console_width_of_the_terminal_in_columns` --> {long_path}:511"
    assert len(error) > 150
    script = tmp_path / "lint.py"  # outside the project: the run may not write there
    script.write_text(
        "import sys\n"
        f"print({error!r}, file=sys.stderr)\n"
        "for i in range(30):\n"
        "    print(f'    | context {i}', file=sys.stderr)\n"
        "print('Found 1 error.', file=sys.stderr)\n"
        "sys.exit(1)\n"
    )
    write_plan(
        project,
        {
            "specialists": {"lint": {"run": [sys.executable, str(script)]}},
            "tasks": [{"id": "lint-" + "x" * 90, "specialist": "lint"}],
        },
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), cwd=project)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    status = guildrun("status", "--root", str(project), "--json", cwd=project)
    data = json.loads(status.stdout)
    log = data["failures"][0]["log"]
    assert len(f"  log: {log}") > 100
    assert f"  log: {log}" in lines, proc.stdout  # whole, on one line
    assert f"  | {error}" in lines, proc.stdout  # the first error, whole
    assert "  | Found 1 error." in lines and f"  | {GAP}" in lines
    failed = [line for line in lines if line.startswith("failed lint-")]
    assert len(failed) == 1 and "x" * 90 in failed[0]
    title = [line for line in lines if f"run {data['run_id']}: failed" in line]
    assert len(title) == 1, proc.stdout
    assert data["failures"][0]["tail"][0] == error
