"""Bad input: one clear line naming the file, the field and the line; exit 2; no traceback."""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
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


@pytest.mark.slow
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


# ---------------------------------------------------------------- hostile and helpful plans


def validate_in_process(
    root: Path, text: str, capsys: pytest.CaptureFixture[str], name: str = "plan.yaml"
) -> tuple[int, list[str], list[str]]:
    """`guildrun validate` in this process: exit code, stdout lines, stderr lines."""
    from guildrun._cli import main

    (root / name).write_text(text)
    code = main(["validate", str(root / name), "--root", str(root)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def refused(root: Path, text: str, capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    code, _, err = validate_in_process(root, text, capsys)
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("guildrun: error: ") and len(err[0]) < 600, err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


BASE = "specialists:\n  s:\n    run: [echo]\ntasks:\n  - id: a\n    specialist: s\n"


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[" * 1000 + "]" * 1000, ("invalid JSON", "nested too deeply")),
        ('{"tasks": ' + "9" * 5000 + "}", ("invalid JSON", "digits")),
    ],
)
def test_hostile_json_is_one_line(
    project: Path, capsys: pytest.CaptureFixture[str], text: str, needles: tuple[str, ...]
) -> None:
    from guildrun._cli import main

    (project / "p.json").write_text(text)
    assert main(["validate", str(project / "p.json"), "--root", str(project)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and all(n in err[0] for n in needles), err


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        (("id: a", "id: " + "9" * 5000), ("invalid YAML", "digits")),
        (("id: a", "id: a\x00b"), ("invalid YAML", "not allowed", ":5:")),
        (("id: a", "id: " + "x" * 1_000_000), ("tasks[0].id", "at most 256")),
        (("run: [echo]", 'run: [echo]\n    env: {A: "x\\0y"}'), ("env", "NUL")),
        (("run: [echo]", 'run: [echo, "x\\0y"]'), ("run[1]", "NUL")),
        (("id: a", "id: a\n    prompt: " + "p" * 200_000), ("tasks[0].prompt", "131072")),
        (("id: a", "id: a\n    files: ['" + "d/" * 2500 + "']"), ("too long",)),
        (("run: [echo]", "run: [echo]\n    files: ['[[a]', '[z-a]']"), ("files[1]", "bad range")),
    ],
)
def test_plans_that_can_never_run_are_refused_in_one_line(
    project: Path,
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, str],
    needles: tuple[str, ...],
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a FutureWarning from a glob is a failure
        refused(project, BASE.replace(*change), capsys, *needles)


def test_a_long_plan_file_name_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from guildrun._cli import main

    assert main(["validate", "x" * 5000 + ".yaml"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "File name too long" in err[0] and len(err[0]) < 300


def test_a_long_cycle_names_a_few_members_and_the_count(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 5000
    text = "specialists:\n  s:\n    run: [echo]\ntasks:\n" + "".join(
        f"  - id: t{i}\n    specialist: s\n    depends_on: [t{(i + 1) % n}]\n" for i in range(n)
    )
    err = refused(project, text, capsys, "dependency cycle", "'t0' -> 't1'", "5000 tasks")
    assert len(err) < 150 + len(str(project))


def test_hostile_glob_validates_quickly(guildrun: Runner, project: Path) -> None:
    # The backtracking regex took over 114 s here.
    pattern = "**a" * 12 + "**b"
    text = BASE.replace("run: [echo]", f'run: [echo]\n    files: ["{pattern}"]')
    text += f"  - id: b\n    files: [{'a' * 40}]\n"
    (project / "plan.yaml").write_text(text)
    started = time.monotonic()
    proc = guildrun("validate", "plan.yaml", "--root", str(project), cwd=project, timeout=60)
    assert time.monotonic() - started < 30
    assert proc.returncode == 2 and "names no specialist" in proc.stderr


def test_special_files_and_links_out_are_refused(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(project / "fifo")
    (project / "zero").symlink_to("/dev/zero")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(project / "sock"))
    try:
        for name, why in [("fifo", "is a FIFO"), ("sock", "is a socket"), ("zero", "symlink")]:
            text = BASE.replace("id: a", f"id: a\n    files: [{name}]")
            refused(project, text, capsys, "tasks[0].files[0]", why)
    finally:
        sock.close()
    (project / "pipe-link").symlink_to(project / "fifo")
    refused(project, BASE.replace("id: a", "id: a\n    files: [pipe-link]"), capsys, "FIFO")


def test_every_error_at_once_with_did_you_mean(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "specialists:\n  writer:\n    run: [echo]\n"
        "tasks:\n  - id: parse\n    specialist: writer\n"
        "  - id: render\n    specialist: writr\n    depends_on: [pars]\n"
        "  - id: ship\n    specialist: writer\n    depend_on: [render]\n"
    )
    code, _, err = validate_in_process(project, text, capsys)
    assert code == 2
    assert len(err) == 3, err
    assert "plan.yaml:8: tasks[1].specialist" in err[0] and "did you mean 'writer'?" in err[0]
    assert "plan.yaml:9: tasks[1].depends_on[0]" in err[1] and "did you mean 'parse'?" in err[1]
    assert "plan.yaml:12: tasks[2].depend_on" in err[2] and "did you mean 'depends_on'?" in err[2]


def test_many_errors_are_counted_not_all_printed(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "specialists:\n  s:\n    run: [echo]\ntasks:\n" + "".join(
        f"  - id: t{i}\n    specialist: nope\n" for i in range(500)
    )
    code, _, err = validate_in_process(project, text, capsys)
    assert code == 2 and 10 < len(err) <= 30, len(err)
    assert "more problems" in err[-1]


def test_warnings_are_shown_and_do_not_stop_a_run(guildrun: Runner, project: Path) -> None:
    text = (
        "specialists:\n"
        "  sh:\n    run: [bash, -lc, 'echo {prompt}']\n    files: ['docs/**']\n"
        "  ghost:\n    run: [no-such-program-xyz]\n"
        "  idle:\n    run: [echo]\n"
        "tasks:\n  - id: a\n    specialist: sh\n    prompt: hi\n"
    )
    (project / "plan.yaml").write_text(text)
    for command in ("validate", "plan"):
        proc = guildrun(command, "plan.yaml", "--root", str(project), cwd=project)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stderr.splitlines()
        assert all(line.startswith("warning: plan.yaml:") for line in lines), lines
        joined = "\n".join(lines)
        assert "specialists.sh.run[2]: {prompt}" in joined and "shell: true" in joined
        assert "$GUILDRUN_PROMPT" in joined
        assert "'no-such-program-xyz' is not found on PATH" in joined
        assert "specialist 'idle' has no tasks" in joined
        assert "specialists.sh.files[0]: pattern 'docs/**' matches no file" in joined
    proc = guildrun("run", "plan.yaml", "--root", str(project), "--quiet", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning" not in proc.stderr


def test_python_specialist_is_found_in_the_project_root(guildrun: Runner, project: Path) -> None:
    (project / "myagents_root_only.py").write_text("def write_tests(ctx):\n    return 'ok'\n")
    text = (
        "specialists:\n  t:\n    python: 'myagents_root_only:write_tests'\n"
        "tasks:\n  - id: a\n    specialist: t\n"
    )
    (project / "plan.yaml").write_text(text)
    elsewhere = project.parent
    proc = guildrun("validate", str(project / "plan.yaml"), "--root", str(project), cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    from guildrun._loader import load_specialist

    assert load_specialist("myagents_root_only:write_tests", project)(None) == "ok"


def _compile_seconds(root: Path, n: int) -> float:
    plan = Plan.model_validate(
        {
            "specialists": {"s": {"python": "json:dumps"}},
            "tasks": [
                {"id": "t", "specialist": "s", "files": [f"d{i % 50}/f{i}.py" for i in range(n)]}
            ],
        }
    )
    started = time.perf_counter()
    compiled = compile_plan(plan, root)
    assert len(compiled.tasks[0].files) == n
    return time.perf_counter() - started


def test_large_file_lists_validate_in_near_linear_time(project: Path) -> None:
    # It was quadratic: 1.3 / 3.9 / 14.4 s for 12.5k / 25k / 50k files.
    small = min(_compile_seconds(project, 4_000) for _ in range(2))
    large = _compile_seconds(project, 32_000)
    assert large < 2.5 + 20 * small, (small, large)


@pytest.mark.parametrize(
    ("run", "warned"),
    [
        (["sh", "-c", "echo {prompt}"], True),
        (["/bin/bash", "-lc", "cat; echo {task_id}"], True),
        (["env", "FOO=1", "python3", "-c", "print('{prompt}')"], True),
        (["python3.11", "-c", "print('{phase}')"], True),
        (["node", "-e", "console.log('{prompt}')"], True),
        (["perl", "-ne", "print if /{prompt}/"], True),
        (["ruby", "-e", "puts '{scope}'"], True),
        (["sh", "-c", 'echo "$GUILDRUN_PROMPT"'], False),
        (["python3", "agent.py", "{prompt}"], False),
        (["sh", "-c", "exec agent", "{prompt}"], False),
        (["echo", "-c", "{prompt}"], False),
    ],
)
def test_placeholders_in_inline_code_are_warned(
    project: Path, run: list[str], warned: bool
) -> None:
    from guildrun._plan import plan_warnings

    plan = Plan.model_validate(
        {
            "specialists": {"s": {"run": run}},
            "tasks": [
                {"id": "a", "specialist": "s", "prompt": "p"},
                {"id": "b", "specialist": "s"},
            ],
        }
    )
    compile_plan(plan, project)
    hits = [w for w in plan_warnings(plan) if "is pasted into code" in w]
    assert bool(hits) == warned, plan_warnings(plan)


def test_did_you_mean_for_settings_fields(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = BASE.replace("specialists:", "settings:\n  per_agent_typ: 2\nspecialists:", 1)
    refused(project, text, capsys, "settings.per_agent_typ", "did you mean 'per_agent_type'?")


def test_yaml_aliases_that_multiply_are_refused_quickly(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "Billion laughs": aliases of aliases; nothing may walk the expanded tree.
    rows = ["  l0: &l0 [a, a, a, a, a, a, a, a, a, a]"]
    rows += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    text = BASE.replace("tasks:", "anchors:\n" + "\n".join(rows) + "\ntasks:")
    text += "    locks: *l8\n    prompt: *l8\n"
    started = time.monotonic()
    code, _, err = validate_in_process(project, text, capsys)
    assert code == 2 and "unknown field 'anchors'" in err[0], err
    assert time.monotonic() - started < 10
