"""Everyday use (issue 10): nothing undone silently, read-only inputs, rollback that says
who changed a file, messages that say what to do."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest
from rich.console import Console

from guildrun._display import print_summary
from guildrun._executors.fake import Act
from guildrun._metrics import UNDONE_HINT, Undone

from .conftest import Runner, compiled, write_plan
from .test_behaviour import Harness
from .test_faults import agent

TEMP_NAME = re.compile(r"\.[A-Za-z0-9_]{8}\.guildrun\b")  # write_file's temporary files


def shown(summary: object) -> str:
    buf = io.StringIO()
    print_summary(summary, Console(file=buf, width=400, color_system=None))  # type: ignore[arg-type]
    return buf.getvalue()


# ------------------------------------------------------------------ nothing undone silently


def test_a_stray_write_while_several_ran_is_in_the_summary_and_fails_the_run(
    project: Path,
) -> None:
    (project / "shared.cfg").write_text("v1\n")
    ran = Harness("fake", project).run(
        {
            "settings": {"per_agent_type": 2},
            "specialists": {"w": {}},
            "tasks": [
                {"id": "x", "specialist": "w", "files": ["x.txt"]},
                {"id": "y", "specialist": "w", "files": ["y.txt"]},
            ],
        },
        {
            "x": [Act(0.2, writes={"x.txt": b"x", "shared.cfg": b"by x"})],
            "y": [Act(1.0, writes={"y.txt": b"y"})],
        },
    )
    s = ran.summary
    assert s.done == 2
    assert (project / "shared.cfg").read_text() == "v1\n"
    assert s.undone == [Undone(["shared.cfg"], ["x", "y"])]
    assert not s.ok and s.exit_code == 1
    data = s.to_json()
    assert data["undone"] == [{"paths": ["shared.cfg"], "running": ["x", "y"]}]
    assert data["undone_hint"] == UNDONE_HINT
    text = shown(s)
    assert "undone shared.cfg (running then: x, y)" in text
    assert "some changes were undone" in text
    for way in ("files:", "writes:", "on_violation: sequential", "worktree mode"):
        assert way in text


def test_a_clean_run_has_nothing_undone(project: Path) -> None:
    ran = Harness("fake", project).run(
        {"specialists": {"w": {}}, "tasks": [{"id": "a", "specialist": "w", "files": ["a"]}]},
        {"a": [Act(0.1, writes={"a": b"1"})]},
    )
    assert ran.summary.undone == [] and ran.summary.exit_code == 0
    assert "undone" not in shown(ran.summary)


@pytest.mark.slow  # several real runs of the command line
def test_undone_changes_reach_run_json_status_and_the_report(
    guildrun: Runner, project: Path
) -> None:
    (project / "shared.cfg").write_text("v1\n")
    write_plan(
        project,
        {
            "specialists": {"w": agent(project)},
            "tasks": [
                {"id": "x", "specialist": "w", "files": ["x.txt"], "prompt": "stray=shared.cfg"},
                {"id": "y", "specialist": "w", "files": ["y.txt"], "prompt": "sleep=0.8"},
            ],
        },
    )
    root = ("--root", str(project))
    proc = guildrun("run", "plan.yaml", *root, "--json", cwd=project)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert data["undone"] == [{"paths": ["shared.cfg"], "running": ["x", "y"]}]
    assert "some changes were undone" in proc.stderr
    assert (project / "shared.cfg").read_text() == "v1\n"

    status = guildrun("status", *root, cwd=project)
    assert status.returncode == 0, status.stderr
    assert "undone shared.cfg (running then: x, y)" in status.stdout
    assert "on_violation: sequential" in status.stdout
    status_json = json.loads(guildrun("status", *root, "--json", cwd=project).stdout)
    assert status_json["undone"] == data["undone"]

    report = guildrun("report", *root, "--json", "--html", str(project / "r.html"), cwd=project)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["summary"]["undone"] == data["undone"]
    page = (project / "r.html").read_text()
    assert "Undone changes" in page and "shared.cfg" in page and "worktree mode" in page

    human = guildrun("run", "plan.yaml", *root, cwd=project)
    assert human.returncode == 1
    assert "UNDONE  shared.cfg (running then: x, y)" in human.stdout  # as it happened
    assert "undone shared.cfg (running then: x, y)" in human.stdout  # and in the summary
    assert "some changes were undone" in human.stdout
    runs = guildrun("runs", *root, cwd=project)
    assert runs.stdout.count("undone 1") == 2, runs.stdout


# ------------------------------------------------------------------ sequential: extra files


def test_a_task_run_alone_lists_its_extra_files_without_temporary_names(project: Path) -> None:
    ran = Harness("fake", project).run(
        {
            "settings": {"on_violation": "sequential"},
            "specialists": {"w": {}},
            "tasks": [{"id": "greedy", "specialist": "w", "files": ["src/g.py"]}],
        },
        # The fake executor writes through guildrun's write_file, temporary file and all.
        {"greedy": [Act(0.1, writes={"src/g.py": b"g", "src/index.py": b"i"})]},
    )
    s = ran.summary
    assert s.ok, s.to_json()
    (line,) = s.tasks
    assert line.extra_files == ["src/index.py"]
    assert s.to_json()["extra_files"] == {"greedy": ["src/index.py"]}
    for ev in ran.events:
        assert not TEMP_NAME.search(ev["data"] or ""), ev["data"]
    text = shown(s)
    assert "greedy needed files beyond its own: src/index.py" in text
    assert (project / "src/index.py").read_text() == "i"
    assert not [p for p in project.rglob("*") if TEMP_NAME.search(p.name)]


def test_the_extra_files_of_a_task_run_alone_are_shown_to_people(
    guildrun: Runner, project: Path
) -> None:
    write_plan(
        project,
        {
            "settings": {"on_violation": "sequential"},
            "specialists": {"w": agent(project)},
            "tasks": [
                {"id": "greedy", "specialist": "w", "files": ["g.txt"], "prompt": "stray=idx.txt"}
            ],
        },
    )
    proc = guildrun("run", "plan.yaml", "--root", str(project), cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ran alone, needed idx.txt)" in proc.stdout  # the live line
    assert "ran alone greedy needed files beyond its own: idx.txt" in proc.stdout
    assert ".guildrun" not in proc.stdout.split("needed")[1].split("\n")[0]


def test_a_file_named_like_a_temporary_one_is_still_judged(project: Path) -> None:
    """An agent cannot hide a write by choosing guildrun's temporary-name pattern."""
    ran = Harness("fake", project).run(
        {"specialists": {"w": {}}, "tasks": [{"id": "t", "specialist": "w", "files": ["a"]}]},
        {"t": [Act(0.1, writes={"a": b"1", ".b.abcd1234.guildrun": b"hidden"})]},
    )
    assert ran.summary.failed == 1
    assert ".b.abcd1234.guildrun" in (ran.summary.tasks[0].cause or "")
    assert not (project / ".b.abcd1234.guildrun").exists()


# ------------------------------------------------------------------ rollback


def test_a_refused_rollback_lists_every_conflict_and_who_made_it(
    guildrun: Runner, project: Path
) -> None:
    ran = Harness("fake", project).run(
        {
            "settings": {"per_agent_type": 1},
            "specialists": {"w": {}},
            "tasks": [
                {"id": "t1", "specialist": "w", "files": ["a.txt"], "scope": "s"},
                {"id": "t2", "specialist": "w", "files": ["b.txt"], "scope": "s"},
                {"id": "t3", "specialist": "w", "files": ["a.txt"], "depends_on": ["t1"]},
            ],
        },
        {
            "t1": [Act(0.1, writes={"a.txt": b"t1"})],
            "t2": [Act(0.1, writes={"b.txt": b"t2"})],
            "t3": [Act(0.1, writes={"a.txt": b"t3"})],
        },
    )
    assert ran.summary.ok
    (project / "b.txt").write_text("edited by a person")
    rid = ran.summary.run_id
    proc = guildrun("rollback", rid, "--scope", "s", "--root", str(project), cwd=project)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert any(
        "task 't2': b.txt was changed after it finished, outside guildrun" in x for x in lines
    ), proc.stderr
    assert any(
        "task 't1': a.txt was changed after it finished by 't3'; roll that back first" in x
        for x in lines
    ), proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing was touched.
    assert (project / "a.txt").read_text() == "t3"
    assert (project / "b.txt").read_text() == "edited by a person"


def test_after_a_per_task_rollback_the_whole_run_still_rolls_back(
    guildrun: Runner, project: Path
) -> None:
    """A later task that owned a file only to read it never blocks a rollback."""
    (project / "lib.py").write_text("v0")
    ran = Harness("fake", project).run(
        {
            "specialists": {"w": {}},
            "tasks": [
                {"id": "fmt", "specialist": "w", "files": ["lib.py"]},
                {"id": "lint", "specialist": "w", "files": ["lib.py"], "depends_on": ["fmt"]},
                {"id": "doc", "specialist": "w", "files": ["doc.md"]},
            ],
        },
        {
            "fmt": [Act(0.1, writes={"lib.py": b"v1"})],
            "lint": [Act(0.1)],
            "doc": [Act(0.1, writes={"doc.md": b"d"})],
        },
    )
    rid = ran.summary.run_id
    root = ("--root", str(project))
    proc = guildrun("rollback", rid, "--task", "fmt", *root, cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert (project / "lib.py").read_text() == "v0"
    proc = guildrun("rollback", rid, *root, cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "rolled back doc" in proc.stdout and "rolled back lint" in proc.stdout
    assert (project / "lib.py").read_text() == "v0"
    assert not (project / "doc.md").exists()
    proc = guildrun("rollback", rid, *root, cwd=project)
    assert proc.returncode == 0 and "nothing to roll back" in proc.stdout


# ------------------------------------------------------------------ read-only inputs


def test_reads_expand_globs_against_the_tree_and_leave_owned_files_out(project: Path) -> None:
    for name in ("src/a.py", "src/b.py", "src/deep/c.py", "README.md"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x")
    plan = compiled(
        {
            "specialists": {"lint": {"run": ["lint", "{reads}"], "reads": ["pyproject.toml"]}},
            "tasks": [
                {"id": "t", "specialist": "lint", "files": ["src/a.py"], "reads": ["src/**.py"]},
                {"id": "u", "specialist": "lint", "reads": ["README.md", "src/*.py"]},
            ],
        },
        project,
    )
    t, u = plan.tasks
    assert t.reads == ("pyproject.toml", "src/b.py", "src/deep/c.py")
    assert u.reads == ("pyproject.toml", "README.md", "src/a.py", "src/b.py")
    assert t.resources == ("file:src/a.py",)  # reads are no resource: they never exclude


def test_bad_reads_are_named_with_their_field(project: Path) -> None:
    from guildrun._errors import PlanError

    data = {
        "specialists": {"w": {"run": ["w", "x{reads}"]}},
        "tasks": [{"id": "t", "specialist": "w", "reads": ["../secret", "/etc/*"]}],
    }
    try:
        compiled(data, project)
    except PlanError as exc:
        text = str(exc)
    else:
        raise AssertionError("refused plan was accepted")
    assert "{reads} must stand alone" in text
    assert "leaves the project root" in text and "tasks[0].reads" in text


def test_a_reads_glob_that_matches_nothing_is_a_warning(project: Path) -> None:
    from guildrun._plan import Plan, compile_plan, plan_warnings

    plan = Plan.model_validate(
        {
            "specialists": {"w": {"run": ["true"]}},
            "tasks": [{"id": "t", "specialist": "w", "reads": ["docs/**.md"]}],
        }
    )
    compile_plan(plan, project)
    assert any("matches no file" in w for w in plan_warnings(plan))


def test_readers_of_one_file_run_together_and_may_not_write_it(project: Path) -> None:
    (project / "lib.py").write_text("v0")
    ran = Harness("fake", project).run(
        {
            "settings": {"per_agent_type": 3},
            "specialists": {"w": {"writes": ["**"]}},
            "tasks": [
                {"id": "r1", "specialist": "w", "reads": ["lib.py"], "files": ["o1"]},
                {"id": "r2", "specialist": "w", "reads": ["lib.py"], "files": ["o2"]},
                {"id": "rw", "specialist": "w", "reads": ["lib.py"], "depends_on": ["r1"]},
            ],
        },
        {
            "r1": [Act(1.0, writes={"o1": b"1"})],
            "r2": [Act(1.0, writes={"o2": b"2"})],
            "rw": [Act(0.1, writes={"lib.py": b"changed"})],
        },
    )
    span = {a["task_id"]: (a["started"], a["ended"]) for a in ran.attempts}
    assert span["r2"][0] < span["r1"][1]  # two readers of lib.py at once
    assert ran.tasks["rw"]["state"] == "failed"  # its writes: ["**"] does not cover an input
    assert "ownership violation: wrote lib.py" in ran.tasks["rw"]["cause"]
    assert (project / "lib.py").read_text() == "v0"


@pytest.mark.slow  # several real runs of the command line
def test_reads_reach_the_command_and_never_block_rollback(guildrun: Runner, project: Path) -> None:
    (project / "lib.py").write_text("v0\n")
    (project / "echo_reads.py").write_text(
        "import os, sys\n"
        "out = os.environ['GUILDRUN_FILES']\n"
        "with open(out, 'w') as fh:\n"
        "    fh.write(repr(sys.argv[1:]) + '|' + repr(os.environ['GUILDRUN_READS']))\n"
    )
    write_plan(
        project,
        {
            "specialists": {
                "fmt": {"run": ["sh", "-c", "echo v1 > lib.py"]},
                "check": {"run": [sys.executable, "echo_reads.py", "{reads}"]},
            },
            "tasks": [
                {"id": "fmt", "specialist": "fmt", "files": ["lib.py"]},
                {
                    "id": "check",
                    "specialist": "check",
                    "files": ["report.txt"],
                    "reads": ["lib.py", "echo_*.py"],
                    "depends_on": ["fmt"],
                },
            ],
        },
    )
    root = ("--root", str(project))
    proc = guildrun("run", "plan.yaml", *root, "--json", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert (project / "report.txt").read_text() == (
        "['lib.py', 'echo_reads.py']|'lib.py\\necho_reads.py'"
    )
    rid = json.loads(proc.stdout)["run_id"]
    proc = guildrun("rollback", rid, "--task", "fmt", *root, cwd=project)
    assert proc.returncode == 0, proc.stderr  # the reader does not hold lib.py
    assert (project / "lib.py").read_text() == "v0\n"
    proc = guildrun("rollback", rid, *root, cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert not (project / "report.txt").exists()


# ------------------------------------------------------------------ validation


def test_a_specialist_error_does_not_hide_the_plans_other_errors(
    guildrun: Runner, project: Path
) -> None:
    (project / "plan.yaml").write_text(
        "specialists:\n"
        "  lint:\n"
        "    run: [lint, '{files}']\n"
        "  other:\n"
        "    run: [true]\n"  # YAML's true, not a string: one error, not one per union member
        "tasks:\n"
        "  - id: a\n"
        "    specialist: lnt\n"
        "    depends_on: [aa]\n"
    )
    proc = guildrun("validate", "plan.yaml", "--root", str(project), cwd=project)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 3, proc.stderr
    assert lines[0].startswith("guildrun: error: plan.yaml:5: specialists.other.run[0]: ")
    assert "plan.yaml:8: tasks[0].specialist: task 'a': unknown specialist 'lnt'" in lines[1]
    assert "(did you mean 'lint'?)" in lines[1]
    assert "plan.yaml:9: tasks[0].depends_on[0]" in lines[2] and "'aa'" in lines[2]
