"""`agent: claude` specialists through the whole engine, with the real Claude Code CLI
against the scripted model server on 127.0.0.1.

The plan names only `agent: claude`; guildrun builds the command line, runs several
instances at once under its limits, reads each agent's own verdict, cost and tokens,
throttles the provider on a rate limit, stops at a budget and resumes past it.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from guildrun.testing import Error, Hang, ModelServer, Text, ToolCall, Usage, WriteFile

from .agent_support import clean_env, git_repo, need_cli

pytestmark = pytest.mark.slow


def _run(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guildrun", *args, "--root", str(root), "--json"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _project(
    tmp_path: Path, server: ModelServer, n: int, agent: str = "claude", **settings: Any
) -> dict[str, str]:
    root = git_repo(tmp_path / "proj")
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home)
    env.update(server.env())
    env["CLAUDE_CODE_MAX_RETRIES"] = "0"  # the CLI's own patience: none
    plan = {
        "settings": {"per_agent_type": 2, "sample_interval": 0, **settings},
        "specialists": {"coder": {"agent": agent, "timeout": 120}},
        "tasks": [
            {
                "id": f"m{i}",
                "specialist": "coder",
                "files": [f"src/m{i}.py"],
                "prompt": f"write module m{i}",
            }
            for i in range(n)
        ],
    }
    (root / "plan.yaml").write_text(yaml.safe_dump(plan))
    env["GUILDRUN_TEST_ROOT"] = str(root)
    return env


def _script(server: ModelServer, n: int) -> None:
    for i in range(n):
        server.script(
            WriteFile(f"src/m{i}.py", f"X = {i}\n", usage=Usage(1000, 40)),
            Text(f"wrote m{i}", usage=Usage(1100, 20)),
            match=f"write module m{i}",
        )


def _attempts(root: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(root / ".guildrun" / "journal.db")
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute("SELECT * FROM attempts ORDER BY started"))
    finally:
        db.close()


def most_at_once(rows: list[sqlite3.Row]) -> int:
    edges = sorted([(r["started"], 1) for r in rows] + [(r["ended"], -1) for r in rows])
    most = now = 0
    for _, d in edges:
        now += d
        most = max(most, now)
    return most


def test_claude_tasks_edit_files_in_parallel_within_limits_and_add_up_their_cost(
    tmp_path: Path,
) -> None:
    need_cli("claude")
    with ModelServer() as server:
        _script(server, 4)
        env = _project(tmp_path, server, 4)
        root = Path(env["GUILDRUN_TEST_ROOT"])
        done = _run(root, env, "run", "plan.yaml")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["done"] == 4
    for i in range(4):
        assert (root / f"src/m{i}.py").read_text() == f"X = {i}\n"  # the CLI's own Write tool
    rows = _attempts(root)
    assert 2 <= most_at_once(rows) <= 2  # several at once, never more than the limit
    assert all(r["cost_usd"] and r["cost_usd"] > 0 and r["tokens"] for r in rows)
    assert summary["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows), rel=1e-6)
    assert summary["tokens"] == sum(r["tokens"] for r in rows)
    assert all(r["session_id"] for r in rows)


def test_a_rate_limit_storm_throttles_the_provider_and_every_task_finishes(
    tmp_path: Path,
) -> None:
    need_cli("claude")
    with ModelServer() as server:
        _script(server, 4)
        env = _project(tmp_path, server, 4, retry={"attempts": 1, "base": 0.5, "jitter": 0})
        root = Path(env["GUILDRUN_TEST_ROOT"])
        server.storm(4.0, status=429, retry_after_s=2.0)
        started = time.monotonic()
        done = _run(root, env, "run", "plan.yaml")
        during = [r for r in server.requests if r.status == 429]
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["done"] == 4 and summary["rate_limited"] >= 1
    # Rate-limited attempts did not count against the single try the plan allows.
    rows = _attempts(root)
    assert any(r["status"] == "rate_limited" for r in rows)
    # Throttled: no agent was relaunched blindly into the storm. Relaunching at once
    # would send a request per agent about every process start (~1 s) for 4 s.
    assert len(during) <= 6, [(r.at, r.path) for r in during]
    # A rate-limited agent's retry continued its own session (`claude --resume`).
    db = sqlite3.connect(root / ".guildrun" / "journal.db")
    try:
        resumed = db.execute(
            "SELECT COUNT(*) FROM events"
            " WHERE kind='task_started' AND data LIKE '%resumes_session%'"
        ).fetchone()[0]
    finally:
        db.close()
    assert resumed >= 1
    assert time.monotonic() - started < 300


def test_a_budget_stops_new_starts_and_a_resume_with_more_finishes(tmp_path: Path) -> None:
    need_cli("claude")
    with ModelServer() as server:
        _script(server, 4)
        env = _project(tmp_path, server, 4, per_agent_type=1)
        root = Path(env["GUILDRUN_TEST_ROOT"])
        first = _run(root, env, "run", "plan.yaml", "--max-cost-usd", "0.000001")
        assert first.returncode == 1, first.stderr
        stopped = json.loads(first.stdout)
        assert stopped["status"] == "budget" and stopped["done"] == 1
        assert stopped["pending"] == 3 and stopped["cost_usd"] > 0
        again = _run(root, env, "resume", "--max-cost-usd", "100")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["done"] == 4
    assert all((root / f"src/m{i}.py").exists() for i in range(4))


def test_not_logged_in_is_shown_as_such_and_not_retried(tmp_path: Path) -> None:
    need_cli("claude")
    with ModelServer() as server:
        server.script(Error(401))
        env = _project(tmp_path, server, 1, retry={"attempts": 3, "base": 0.1})
        root = Path(env["GUILDRUN_TEST_ROOT"])
        out = _run(root, env, "run", "plan.yaml")
    assert out.returncode == 1
    rows = _attempts(root)
    assert [r["status"] for r in rows] == ["auth"]  # one attempt: retrying cannot help
    (failure,) = json.loads(out.stdout)["failures"]
    assert failure["task"] == "m0" and failure["cause"]


# aider is proven through its preset (tests/test_agents_aider.py); through the engine two
# aider instances in one shared git repository collide on `.git/config.lock` (aider's
# GitPython writes the repository's config), which the worktree mode is for.
@pytest.mark.parametrize("agent", ["codex", "gemini"])
def test_the_other_agents_edit_files_through_the_engine(tmp_path: Path, agent: str) -> None:
    need_cli(agent)
    with ModelServer() as server:
        _script(server, 2)
        env = _project(tmp_path, server, 2, agent)
        root = Path(env["GUILDRUN_TEST_ROOT"])
        done = _run(root, env, "run", "plan.yaml")
    assert done.returncode == 0, done.stderr + done.stdout
    summary = json.loads(done.stdout)
    assert summary["done"] == 2
    for i in range(2):
        assert (root / f"src/m{i}.py").read_text().strip() == f"X = {i}"
    assert summary["tokens"] > 0


def test_a_denied_permission_ends_as_needs_input_with_the_way_to_allow_it(
    tmp_path: Path,
) -> None:
    need_cli("claude")
    call = ToolCall(
        "Bash", {"command": "python3 -c \"open('ran.txt','w').write('x')\"", "description": "run"}
    )
    with ModelServer() as server:
        server.script(call, Text("I could not run it."))
        env = _project(tmp_path, server, 1, retry={"attempts": 3, "base": 0.1})
        root = Path(env["GUILDRUN_TEST_ROOT"])
        out = _run(root, env, "run", "plan.yaml")
    assert out.returncode == 1, out.stderr
    assert [r["status"] for r in _attempts(root)] == ["needs_input"]  # not retried blindly
    (failure,) = json.loads(out.stdout)["failures"]
    assert "Bash" in failure["cause"] and "tools:" in failure["cause"]
    assert not (root / "ran.txt").exists()


def test_a_server_that_never_answers_ends_by_timeout_with_no_process_left(
    tmp_path: Path,
) -> None:
    need_cli("claude")
    with ModelServer(Hang()) as server:
        env = _project(tmp_path, server, 1)
        root = Path(env["GUILDRUN_TEST_ROOT"])
        plan = yaml.safe_load((root / "plan.yaml").read_text())
        plan["specialists"]["coder"]["timeout"] = 5
        (root / "plan.yaml").write_text(yaml.safe_dump(plan))
        out = _run(root, env, "run", "plan.yaml")
    assert out.returncode == 1, out.stderr
    (attempt,) = _attempts(root)
    assert attempt["status"] == "timeout"
    leftovers = [
        p.pid
        for p in psutil.process_iter(["environ"])
        if (p.info["environ"] or {}).get("GUILDRUN_RUN_ID") == attempt["run_id"]
    ]
    assert leftovers == []
