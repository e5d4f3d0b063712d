"""Bad input: one clear line naming the file, the field and the line; exit 2; no traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from guildrun import Plan, PlanError, Specialist, Task, load_plan, plan_schema
from guildrun._plan import compile_plan

from .conftest import Runner

GOOD = """\
settings:
  per_agent_type: 2
specialists:
  interface:
    run: [echo, "{task_id}", "{files}"]
    files: ["src/components/**"]
  service:
    run: echo {task_id}
tasks:
  - id: a
    specialist: service
    files: [src/services/user.py]
  - id: b
    files: [src/components/UserList.py]
    depends_on: [a]
"""


def check_error(
    guildrun: Runner, root: Path, text: str, *needles: str, name: str = "plan.yaml"
) -> str:
    (root / name).write_text(text)
    proc = guildrun("validate", name, "--root", str(root), cwd=root)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"guildrun: error: {name}"), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


def test_good_plan_validates_and_routes_by_pattern(guildrun: Runner, project: Path) -> None:
    (project / "plan.yaml").write_text(GOOD)
    proc = guildrun("validate", "plan.yaml", "--root", str(project), cwd=project)
    assert proc.returncode == 0, proc.stderr
    plan = compile_plan(load_plan(project / "plan.yaml"), project)
    assert plan.by_id["b"].specialist == "interface"


def test_unknown_specialist(guildrun: Runner, project: Path) -> None:
    text = GOOD.replace("specialist: service", "specialist: servce")
    check_error(guildrun, project, text, "plan.yaml:11:", "tasks[0].specialist", "'servce'")


def test_duplicate_id(guildrun: Runner, project: Path) -> None:
    text = GOOD.replace("  - id: b", "  - id: a")
    check_error(guildrun, project, text, ":13:", "tasks[1].id", "duplicate task id 'a'")


def test_cycle_names_its_members(guildrun: Runner, project: Path) -> None:
    text = GOOD + "  - id: c\n    specialist: service\n    depends_on: [d]\n"
    text += "  - id: d\n    specialist: service\n    depends_on: [c]\n"
    err = check_error(guildrun, project, text, "dependency cycle", "tasks[2].depends_on")
    assert "'c' -> 'd' -> 'c'" in err


def test_missing_dependency(guildrun: Runner, project: Path) -> None:
    text = GOOD.replace("depends_on: [a]", "depends_on: [zz]")
    check_error(guildrun, project, text, ":15:", "tasks[1].depends_on[0]", "'zz'")


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/etc/passwd", "absolute"),
        ("../outside.py", "leaves the project root"),
        ("src/../../outside.py", "leaves the project root"),
        (".git/config", "guildrun keeps for itself"),
        ("link/evil.py", "through a symlink"),
    ],
)
def test_paths_outside_the_root(guildrun: Runner, project: Path, path: str, why: str) -> None:
    (project / "link").symlink_to(project.parent)
    text = GOOD.replace("files: [src/services/user.py]", f"files: ['{path}']")
    check_error(guildrun, project, text, ":12:", "tasks[0].files[0]", why)


def test_unknown_field_and_wrong_type(guildrun: Runner, project: Path) -> None:
    check_error(
        guildrun,
        project,
        GOOD.replace("depends_on:", "depend_on:"),
        "unknown field 'depend_on'",
        "tasks[1].depend_on",
        ":15:",
    )
    check_error(
        guildrun,
        project,
        GOOD.replace("per_agent_type: 2", "per_agent_type: lots"),
        "settings.per_agent_type",
        ":2:",
    )
    check_error(
        guildrun,
        project,
        GOOD.replace("per_agent_type: 2", "per_agent_type: 0"),
        "settings.per_agent_type",
        "greater than or equal to 1",
    )


def test_broken_yaml_and_json_name_the_line(guildrun: Runner, project: Path) -> None:
    check_error(guildrun, project, GOOD.replace("  - id: b", "  - id: [b"), "invalid YAML", ":14")
    check_error(
        guildrun,
        project,
        '{\n  "tasks": [\n    1,,\n  ]\n}\n',
        "invalid JSON",
        "plan.json:3",
        name="plan.json",
    )
    check_error(guildrun, project, GOOD + "specialists: {}\n", "duplicate key 'specialists'")


def test_missing_plan_file(guildrun: Runner, project: Path) -> None:
    proc = guildrun("run", "nope.yaml", "--root", str(project), cwd=project)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "guildrun: error: nope.yaml: no such file"


def test_template_errors(guildrun: Runner, project: Path) -> None:
    check_error(
        guildrun,
        project,
        GOOD.replace('"{task_id}"', '"{taskid}"'),
        "specialists.interface.run[1]",
        "unknown placeholder {taskid}",
    )
    check_error(
        guildrun,
        project,
        GOOD.replace('"{files}"', '"--files={files}"'),
        "{files} must stand alone",
    )
    text = GOOD.replace("    depends_on: [a]\n", "    prompt: 'see {result:c}'\n")
    text += "  - id: c\n    specialist: service\n"
    check_error(guildrun, project, text, "tasks[1].prompt", "is not a dependency")
    text = GOOD.replace("    depends_on: [a]\n", "    prompt: 'see {results:validation}'\n")
    check_error(guildrun, project, text, "not an earlier phase")


def test_dependency_on_a_later_phase(guildrun: Runner, project: Path) -> None:
    text = GOOD.replace(
        "    files: [src/services/user.py]\n",
        "    files: [src/services/user.py]\n    phase: validation\n",
    )
    check_error(guildrun, project, text, "tasks[1].depends_on[0]", "later phase validation")


def test_no_specialist_and_no_route(guildrun: Runner, project: Path) -> None:
    text = GOOD.replace("files: [src/components/UserList.py]", "files: [docs/x.md]")
    check_error(guildrun, project, text, "tasks[1]", "names no specialist")


def test_shell_specialist_must_be_a_string(guildrun: Runner, project: Path) -> None:
    text = GOOD.replace("    run: echo {task_id}\n", "    run: [echo]\n    shell: true\n")
    check_error(guildrun, project, text, "specialists.service.run", "one string")


def test_bad_environment_and_flag(guildrun: Runner, project: Path) -> None:
    (project / "plan.yaml").write_text(GOOD)
    proc = guildrun(
        "validate",
        "plan.yaml",
        "--root",
        str(project),
        cwd=project,
        env={"GUILDRUN_TOTAL_PARALLEL": "zero"},
    )
    assert proc.returncode == 2
    assert "GUILDRUN_TOTAL_PARALLEL" in proc.stderr and "Traceback" not in proc.stderr
    proc = guildrun("run", "plan.yaml", "--per-agent-type", "0", cwd=project)
    assert proc.returncode == 2 and "must be at least 1" in proc.stderr
    proc = guildrun("frobnicate", cwd=project)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_plan_built_in_code_matches_the_file() -> None:
    plan = Plan(
        specialists={"interface": Specialist(run=["echo", "{task_id}"])},
        tasks=[Task(id="1", specialist="interface"), Task(id="2", specialist="nobody")],
    )
    with pytest.raises(PlanError, match=r"tasks\[1\]\.specialist: .*unknown specialist"):
        compile_plan(plan, Path.cwd())


def test_schema_is_published_and_describes_tasks(guildrun: Runner, project: Path) -> None:
    proc = guildrun("schema", cwd=project)
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert schema == plan_schema()
    task = schema["$defs"]["Task"]["properties"]
    assert {
        "id",
        "specialist",
        "files",
        "locks",
        "depends_on",
        "scope",
        "phase",
        "prompt",
        "timeout",
    } <= set(task)
    assert "func" not in schema["$defs"]["Specialist"]["properties"]


def test_settings_precedence(guildrun: Runner, project: Path) -> None:
    """flag > environment > plan > project config > default."""
    (project / "plan.yaml").write_text(
        GOOD.replace("  per_agent_type: 2\n", "  total_parallel: 7\n")
    )

    def limits(*args: str, env: dict[str, str] | None = None) -> tuple[int, int]:
        proc = guildrun(
            "plan",
            "plan.yaml",
            "--json",
            "--root",
            str(project),
            *args,
            cwd=project,
            env={**(env or {})},
        )
        assert proc.returncode == 0, proc.stderr
        s = json.loads(proc.stdout)["settings"]
        return s["per_agent_type"], s["total_parallel"]

    clean = {k: "" for k in os.environ if k.startswith("GUILDRUN_")}
    assert limits(env=clean) == (3, 7)
    (project / "guildrun.toml").write_text("per_agent_type = 4\ntotal_parallel = 9\n")
    assert limits(env=clean) == (4, 7)
    env = {**clean, "GUILDRUN_PER_AGENT_TYPE": "5", "GUILDRUN_TOTAL_PARALLEL": "11"}
    assert limits(env=env) == (5, 11)
    assert limits("--per-agent-type", "6", env=env) == (6, 11)
    (project / "guildrun.toml").unlink()
    (project / "pyproject.toml").write_text("[tool.guildrun]\nper_agent_type = 8\n")
    assert limits(env=clean) == (8, 7)


def test_bad_globs_and_unloadable_python_are_plan_errors(guildrun: Runner, project: Path) -> None:
    check_error(
        guildrun,
        project,
        GOOD.replace('files: ["src/components/**"]', 'files: ["[z-a]"]'),
        "specialists.interface.files[0]",
        "bad glob pattern",
    )
    text = GOOD.replace("    run: echo {task_id}\n", "    python: no_such_module_x:f\n")
    check_error(guildrun, project, text, "specialists.service.python", "no_such_module_x")
