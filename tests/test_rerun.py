"""`guildrun rerun`: a new run of a past plan that runs exactly the chosen tasks."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from guildrun._cli import main
from tests.conftest import Runner, write_plan

# A task passes once the file ok-ID exists, and says what it read from {prompt}.
PLAN = {
    "specialists": {
        "sh": {
            "run": [
                "sh",
                "-c",
                'test -e "ok-$0" || exit 3; echo "$0 read [$1]"',
                "{task_id}",
                "{prompt}",
            ]
        }
    },
    "tasks": [
        {"id": "a", "specialist": "sh"},
        {"id": "b", "specialist": "sh", "depends_on": ["a"], "prompt": "{result:a}"},
        {"id": "c", "specialist": "sh"},
        {"id": "d", "specialist": "sh", "depends_on": ["a", "c"], "prompt": "{result:a}"},
        {"id": "e", "specialist": "sh"},
        {"id": "f", "specialist": "sh", "depends_on": ["a"]},
    ],
}


def journal(root: Path, sql: str, *params: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(root / ".guildrun" / "journal.db")
    try:
        return list(db.execute(sql, params))
    finally:
        db.close()


def ran(root: Path, run_id: str) -> list[str]:
    rows = journal(root, "SELECT task_id FROM attempts WHERE run_id=? ORDER BY task_id", run_id)
    return [str(r[0]) for r in rows]


def states(root: Path, run_id: str) -> dict[str, tuple[object, object]]:
    rows = journal(root, "SELECT id, state, result FROM tasks WHERE run_id=?", run_id)
    return {str(t): (s, r) for t, s, r in rows}


def failing_run(project: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """c and e fail; d depends on c and is skipped; a, b and f are done."""
    for tid in "abf":
        (project / f"ok-{tid}").touch()
    plan = write_plan(project, PLAN)
    assert main(["run", str(plan), "--root", str(project), "-q", "--json"]) == 1
    first = json.loads(capsys.readouterr().out)
    assert (first["done"], first["failed"], first["skipped"]) == (3, 2, 1)
    return str(first["run_id"])


def test_rerun_failed_runs_exactly_the_failed_and_skipped_tasks(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = failing_run(project, capsys)
    before = states(project, old)
    for tid in "ce":
        (project / f"ok-{tid}").touch()
    (project / "ok-d").touch()
    assert main(["rerun", old, "--failed", "--root", str(project), "-q", "--json"]) == 0
    new = json.loads(capsys.readouterr().out)
    assert new["run_id"] != old
    assert (new["done"], new["failed"], new["skipped"]) == (6, 0, 0)
    # Only the failed and the skipped tasks ran in the new run ...
    assert ran(project, new["run_id"]) == ["c", "d", "e"]
    after = states(project, new["run_id"])
    # ... the done ones were taken as given, and d read a's result from the old run.
    assert after["a"] == before["a"] == ("done", "a read []\n")
    assert after["b"] == before["b"]
    assert after["d"] == ("done", "d read [a read []\n]\n")
    # The old run is left as it was.
    assert states(project, old) == before
    assert ran(project, old) == ["a", "b", "c", "e", "f"]
    plans = journal(project, "SELECT plan_json FROM runs ORDER BY created")
    assert plans[0] == plans[1]


def test_rerun_named_tasks_only(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = failing_run(project, capsys)
    assert main(["rerun", old, "--task", "b", "--task", "c", "--root", str(project),
                 "-q", "--json"]) == 1  # fmt: skip
    new = json.loads(capsys.readouterr().out)
    assert ran(project, new["run_id"]) == ["b", "c"]
    after = states(project, new["run_id"])
    # c failed again (no ok-c); d was not chosen and stays skipped, e stays failed.
    assert after["c"][0] == "failed" and after["d"][0] == "skipped" and after["e"][0] == "failed"
    assert after["b"] == ("done", "b read [a read []\n]\n")


def test_rerun_refusals(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = failing_run(project, capsys)
    assert main(["rerun", old, "--task", "zz", "--root", str(project)]) == 2
    assert "--task 'zz': run " in capsys.readouterr().err
    for tid in "cde":
        (project / f"ok-{tid}").touch()
    assert main(["rerun", old, "--root", str(project), "-q", "--json"]) == 0
    fixed = json.loads(capsys.readouterr().out)["run_id"]
    assert main(["rerun", fixed, "--root", str(project)]) == 2
    assert "has no failed or skipped task" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_of_a_finished_run_points_to_rerun(project: Path, guildrun: Runner) -> None:
    for tid in "abf":
        (project / f"ok-{tid}").touch()
    write_plan(project, PLAN)
    first = guildrun("run", "plan.yaml", "--root", ".", "-q", "--json", cwd=project)
    run_id = json.loads(first.stdout)["run_id"]
    out = guildrun("resume", run_id, "--retry-failed", "--root", ".", cwd=project)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"guildrun: error: run {run_id} ended (failed); there is nothing to resume; to run its "
        f"failed and skipped tasks again as a new run: guildrun rerun {run_id} --failed"
    )
    latest = guildrun("resume", "--root", ".", cwd=project)
    assert latest.returncode == 2
    assert f"the latest run, {run_id}, failed: to run its failed" in latest.stderr
