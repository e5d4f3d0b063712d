"""Random and malformed plans: exit 2 with one line per problem, or valid; never a
traceback, never a hang. Plans are often written by language models: anything goes in.

Most cases go through `prepare`, the in-process path of `guildrun validate`; a few
through the real command.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from guildrun._errors import PlanError, UsageError
from guildrun._plan import parse_plan
from guildrun._prepare import prepare

NASTY_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "~/x",
    "~",
    ".git/config",
    ".guildrun/journal.db",
    "link/out.py",
    "fifo",
    "src/a.py",
    "src\\..\\..\\x",
    "C:/x",
    "{prompt}",
    "{files}",
    "{result:a}",
    "{results:research}",
    "{nope}",
    "{",
    "}",
    "{{}}",
    "$(rm -rf ~)",
    "\u202e\u0000\ud7ff",
    "é" * 300,
    "x" * 5000,
    "**a" * 12 + "**b",
    "[[a]",
    "[z-a]",
    "[!]",
    "**/",
    "***",
    "?*?*?*?*?*",
    "\n\n",
    "- a\n- b",
]
HUGE_NUMBERS = [0, -1, 1, 2**63, -(2**63), 10**4000, 1e308, -1e308, float("inf"), float("nan")]


def random_scalar(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice(NASTY_STRINGS)
    if kind == 1:
        return rng.choice(HUGE_NUMBERS)
    if kind == 2:
        return rng.choice([None, True, False])
    if kind == 3:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(12)))
    if kind == 4:
        return rng.choice(["a", "b", "c", "t0", "t1", "s", "w"])
    return rng.randrange(-3, 5)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.6:
        return random_scalar(rng)
    if roll < 0.8:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(random_scalar(rng)): random_value(rng, depth + 1) for _ in range(rng.randrange(3))}


def base_plan(rng: random.Random) -> dict[str, Any]:
    n = rng.randrange(1, 7)
    tasks: list[dict[str, Any]] = []
    for i in range(n):
        task: dict[str, Any] = {"id": f"t{i}", "specialist": rng.choice(["s", "w"])}
        if rng.random() < 0.4 and i:
            task["depends_on"] = [f"t{rng.randrange(n)}"]  # sometimes a cycle
        if rng.random() < 0.5:
            task["files"] = [rng.choice(["src/a.py", "src/b.py", "docs/x.md", "fifo", "link/o"])]
        if rng.random() < 0.3:
            task["prompt"] = rng.choice(["do {task_id}", "see {result:t0}", "x"])
        tasks.append(task)
    return {
        "settings": {"per_agent_type": rng.randrange(1, 4)},
        "specialists": {
            "s": {"run": ["echo", "{task_id}", "{files}"], "files": ["src/**"]},
            "w": {"run": "echo {prompt}", "writes": ["docs/**"]},
        },
        "tasks": tasks,
    }


FIELDS = [
    "id", "specialist", "files", "depends_on", "prompt", "timeout", "estimate", "phase",
    "scope", "locks", "writes", "retry", "on_violation", "run", "shell", "env", "python",
    "instances", "can_help", "affinity", "bogus",
]  # fmt: skip


def mutate(rng: random.Random, plan: Any) -> Any:
    """Change one random place of the plan to a random value."""
    path: list[Any] = []
    node = plan
    while isinstance(node, dict | list) and node and rng.random() < 0.75:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append(key)
        node = node[key]
    if not path:
        return random_value(rng) if rng.random() < 0.1 else plan
    parent = plan
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and rng.random() < 0.3:
        parent[rng.choice(FIELDS)] = random_value(rng)
    else:
        parent[path[-1]] = random_value(rng)
    return plan


def render(rng: random.Random, plan: Any) -> tuple[str, str]:
    """(file name, text): YAML or JSON, sometimes broken on purpose."""
    as_json = rng.random() < 0.4
    try:
        text = json.dumps(plan) if as_json else yaml.safe_dump(plan, allow_unicode=True)
    except (ValueError, yaml.YAMLError):
        text = repr(plan)
    roll = rng.random()
    if roll < 0.1 and text:
        cut = rng.randrange(len(text))
        text = (
            text[:cut] + rng.choice(["\x00", "[", "{", ":", "\t", "'", '"', "&a *a"]) + text[cut:]
        )
    elif roll < 0.15:
        text = text[: rng.randrange(len(text) + 1)]
    elif roll < 0.18:
        text = "[" * rng.choice([10, 1000, 5000]) if as_json else "- " * 2000
    return ("plan.json" if as_json else "plan.yaml"), text


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.py").write_text("")
    (root / "link").symlink_to(tmp_path)
    os.mkfifo(root / "fifo")
    return root


def check_one(root: Path, name: str, text: str) -> str:
    """Validate in process; a PlanError must be one line per problem."""
    path = root / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        prepare(path, root=root)
    except (PlanError, UsageError) as exc:
        lines = str(exc).splitlines()
        assert lines and all(0 < len(line) < 1000 for line in lines), str(exc)[:2000]
        assert exc.exit_code == 2
        return "refused"
    return "valid"


def fuzz(tmp_path: Path, seed: int, count: int) -> dict[str, int]:
    root = make_root(tmp_path)
    rng = random.Random(seed)
    seen = {"valid": 0, "refused": 0}
    for case in range(count):
        plan = base_plan(rng)
        for _ in range(rng.randrange(4)):
            plan = mutate(rng, plan)
        name, text = render(rng, plan)
        try:
            seen[check_one(root, name, text)] += 1
        except AssertionError:
            raise
        except BaseException as exc:  # any other exception is the bug we hunt
            raise AssertionError(
                f"seed {seed} case {case}: {type(exc).__name__}: {exc}\n{text[:3000]}"
            ) from exc
    return seen


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_fuzzed_plans_are_valid_or_refused_in_one_line_each(tmp_path: Path) -> None:
    seen = fuzz(tmp_path, seed=20261129, count=1200)
    # Both outcomes happen: the fuzzing reaches the checks behind the parser.
    assert seen["valid"] > 30 and seen["refused"] > 300, seen


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_more_fuzzed_plans(tmp_path: Path, seed: int) -> None:
    seen = fuzz(tmp_path, seed=seed, count=4000)
    assert seen["refused"] > 0


def run_cli(root: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guildrun", "validate", name, "--root", str(root)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli_cases(tmp_path: Path, seed: int, count: int) -> None:
    root = make_root(tmp_path)
    rng = random.Random(seed)
    for case in range(count):
        plan = base_plan(rng)
        for _ in range(rng.randrange(1, 4)):
            plan = mutate(rng, plan)
        name, text = render(rng, plan)
        (root / name).write_text(text, encoding="utf-8", errors="surrogatepass")
        proc = run_cli(root, name)
        where = f"seed {seed} case {case}: {text[:500]!r}"
        assert "Traceback" not in proc.stderr, where + proc.stderr
        assert proc.returncode in (0, 2), where + proc.stderr
        lines = proc.stderr.splitlines()
        if proc.returncode == 2:
            assert lines and all(line.startswith("guildrun: error: ") for line in lines), where
        else:
            assert all(line.startswith("warning: ") for line in lines), where + proc.stderr


def test_fuzzed_plans_through_the_command(tmp_path: Path) -> None:
    cli_cases(tmp_path, seed=7, count=3)


@pytest.mark.slow
def test_more_fuzzed_plans_through_the_command(tmp_path: Path) -> None:
    cli_cases(tmp_path, seed=8, count=30)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.booleans())
def test_any_text_is_a_plan_or_a_plan_error(text: str, as_json: bool) -> None:
    try:
        parse_plan(text, "p", json_format=as_json)
    except PlanError as exc:
        assert all(0 < len(line) < 1000 for line in str(exc).splitlines())
