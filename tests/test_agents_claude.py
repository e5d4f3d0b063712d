"""Claude Code, the real CLI, against the scripted model server on 127.0.0.1.

Each test runs `claude -p` exactly as the preset builds it, in a git repository made by
the test, reads its stdout live through the preset's reader, and checks the verdict
against what the server saw and what the CLI itself printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guildrun._agents import AgentSpec, RateLimited, Refused, SessionStarted
from guildrun.testing import (
    Error,
    Hang,
    Malformed,
    ModelServer,
    Text,
    ToolCall,
    Usage,
    WriteFile,
    overloaded,
)

from .agent_support import (
    Run,
    as_the_user,
    clean_env,
    drive,
    follow_run,
    git_repo,
    group_gone,
    need_cli,
    record,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def claude() -> str:
    return need_cli("claude")


def _setup(tmp_path: Path, server: ModelServer, **extra: str) -> tuple[Path, Path, dict[str, str]]:
    work = git_repo(tmp_path / "work")
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home)
    env.update({"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-test-not-a-key"})
    env.update(extra)
    return work, tmp_path / "state", env


def _result_line(lines: list[str]) -> dict[str, object]:
    results = [json.loads(line) for line in lines if '"type":"result"' in line]
    assert len(results) == 1
    value = results[0]
    assert isinstance(value, dict)
    return value


def _cost(result: dict[str, object]) -> float:
    value = result["total_cost_usd"]
    assert isinstance(value, int | float)
    return float(value)


def test_claude_edits_a_file_through_its_write_tool(
    claude: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer() as server:
        server.script(
            WriteFile("src/hello.py", "print('hello')\n", usage=Usage(1000, 50)),
            Text("Wrote src/hello.py.", usage=Usage(1200, 30)),
        )
        work, state, env = _setup(tmp_path, server)
        run = drive(
            AgentSpec("claude"),
            prompt="create src/hello.py",
            workdir=work,
            state_dir=state,
            env=env,
            monkeypatch=monkeypatch,
        )
        turns = server.turns()
    record(run, "claude_write")
    assert run.verdict.kind == "done", run.verdict
    assert (work / "src" / "hello.py").read_text() == "print('hello')\n"
    assert run.verdict.result == "Wrote src/hello.py."
    # Tokens are what the server said it used, as the CLI added them up.
    assert run.verdict.tokens == 1000 + 50 + 1200 + 30
    reported = _result_line(run.lines)
    assert run.verdict.cost_usd == reported["total_cost_usd"]
    assert run.verdict.cost_usd is not None and run.verdict.cost_usd > 0
    assert run.verdict.cost_estimated is False
    # The session is the one the CLI told the server about, and it was announced live.
    assert len(turns) == 2
    assert run.verdict.session_id == turns[0].headers["x-claude-code-session-id"]
    assert SessionStarted(run.verdict.session_id) in [s for _, s in run.signals]
    # The second turn carried the Write tool's result back.
    assert "tool_result" in json.dumps(turns[1].body["messages"][-1])
    # Its state stayed in the instance's own folder, not the user's HOME.
    assert (state / "projects").is_dir()
    assert not (tmp_path / "home" / ".claude").exists()


def test_claude_rate_limit_gives_live_signals_then_a_rate_limited_verdict(
    claude: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer(Error(429, retry_after_s=1)) as server:
        work, state, env = _setup(tmp_path, server, CLAUDE_CODE_MAX_RETRIES="2")
        run = drive(
            AgentSpec("claude"),
            prompt="do it",
            workdir=work,
            state_dir=state,
            env=env,
            monkeypatch=monkeypatch,
        )
        statuses = [r.status for r in server.turns()]
    record(run, "claude_429")
    limited = [(at, s) for at, s in run.signals if isinstance(s, RateLimited)]
    assert [s.attempt for _, s in limited] == [1, 2]
    assert all(s.status == 429 for _, s in limited)
    # It honours the server's retry-after (1 s), so the reported delay is at least that.
    assert all(s.retry_after_s is not None and s.retry_after_s >= 1.0 for _, s in limited)
    assert statuses == [429, 429, 429]
    assert run.verdict.kind == "rate_limited", run.verdict
    assert run.verdict.retry_after_s is not None and run.verdict.retry_after_s >= 1.0
    assert run.exit_code == 1


def test_claude_overloaded_without_own_retries_is_rate_limited(
    claude: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer(overloaded()) as server:
        work, state, env = _setup(tmp_path, server, CLAUDE_CODE_MAX_RETRIES="0")
        run = drive(
            AgentSpec("claude"),
            prompt="go",
            workdir=work,
            state_dir=state,
            env=env,
            monkeypatch=monkeypatch,
        )
        assert [r.status for r in server.turns()] == [529]
    record(run, "claude_529")
    assert run.verdict.kind == "rate_limited", run.verdict
    assert "529" in (run.verdict.message or "")


def test_claude_not_logged_in_is_auth(
    claude: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer() as server:
        work, state, env = _setup(tmp_path, server)
        del env["ANTHROPIC_API_KEY"]
        run = drive(
            AgentSpec("claude"),
            prompt="go",
            workdir=work,
            state_dir=state,
            env=env,
            monkeypatch=monkeypatch,
        )
        assert server.turns() == []
    record(run, "claude_not_logged_in")
    assert run.verdict.kind == "auth", run.verdict
    assert "log in" in (run.verdict.message or "")
    assert run.exit_code == 1


def test_claude_refused_key_is_auth(
    claude: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Claude Code retries a 401 too (for minutes by default): each retry is a live
    # Refused signal, so the engine can end it at the first.
    with ModelServer(Error(401)) as server:
        work, state, env = _setup(tmp_path, server, CLAUDE_CODE_MAX_RETRIES="1")
        run = drive(
            AgentSpec("claude"),
            prompt="go",
            workdir=work,
            state_dir=state,
            env=env,
            monkeypatch=monkeypatch,
        )
        assert [r.status for r in server.turns()] == [401, 401]
    record(run, "claude_401")
    assert [s for _, s in run.signals if isinstance(s, Refused)] == [Refused(401, 1)]
    assert run.verdict.kind == "auth", run.verdict


def test_claude_permission_denied_needs_input_and_the_advice_works(
    claude: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    call = ToolCall(
        "Bash", {"command": "python3 -c \"open('ran.txt','w').write('x')\"", "description": "run"}
    )
    with ModelServer() as server:
        server.script(call, Text("I could not run it."))
        work, state, env = _setup(tmp_path, server)
        denied = drive(
            AgentSpec("claude"),
            prompt="run it",
            workdir=work,
            state_dir=state,
            env=env,
            monkeypatch=monkeypatch,
        )
        record(denied, "claude_denied")
        assert denied.verdict.kind == "needs_input", denied.verdict
        assert denied.verdict.denied_tools == ("Bash",)
        assert "tools: [Bash]" in (denied.verdict.message or "")
        assert not (work / "ran.txt").exists()

        server.script(call, Text("Ran it."), match="run it again")
        allowed = drive(
            AgentSpec("claude", tools=("Bash",)),
            prompt="run it again",
            workdir=work,
            state_dir=state,
            env=env,
            monkeypatch=monkeypatch,
        )
    assert allowed.verdict.kind == "done", allowed.verdict
    assert (work / "ran.txt").read_text() == "x"


def test_claude_resume_continues_the_session(
    claude: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer() as server:
        server.script(WriteFile("a.txt", "one\n"), Text("First done."), match="first task")
        server.script(Text("Second done."), match="second task")
        work, state, env = _setup(tmp_path, server)
        first = drive(
            AgentSpec("claude"),
            prompt="first task",
            workdir=work,
            state_dir=state,
            env=env,
            monkeypatch=monkeypatch,
        )
        assert first.verdict.kind == "done" and first.verdict.session_id
        before = len(server.turns())
        second = drive(
            AgentSpec("claude"),
            prompt="second task",
            workdir=work,
            state_dir=state,
            env=env,
            resume_session=first.verdict.session_id,
            monkeypatch=monkeypatch,
        )
        resumed = server.turns()[before]
    assert second.verdict.kind == "done", second.verdict
    # The resumed turn carries the first task's conversation, tool call included.
    history = json.dumps(resumed.body["messages"])
    assert "first task" in history and "a.txt" in history and "second task" in history


def test_claude_spec_fields_reach_the_model(
    claude: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer() as server:
        server.script(WriteFile("x.txt", "x"), Text("never reached"))
        work, state, env = _setup(tmp_path, server)
        spec = AgentSpec(
            "claude",
            model="claude-sonnet-4-5",
            system_prompt="You are the interface specialist.",
            max_turns=1,
        )
        run = drive(
            spec,
            prompt="-starts with a dash",
            workdir=work,
            state_dir=state,
            env=env,
            monkeypatch=monkeypatch,
        )
        turns = server.turns()
    record(run, "claude_max_turns")
    assert turns[0].body["model"] == "claude-sonnet-4-5"
    assert "You are the interface specialist." in json.dumps(turns[0].body["system"])
    assert "-starts with a dash" in turns[0].conversation
    assert run.verdict.kind == "failed", run.verdict
    assert "maximum number of turns" in (run.verdict.message or "")


def test_claude_budget_flag_stops_the_agent(
    claude: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer() as server:
        server.script(*[WriteFile(f"f{i}.txt", "x", usage=Usage(100_000, 1000)) for i in range(5)])
        work, state, env = _setup(tmp_path, server)
        run = drive(
            AgentSpec("claude", max_cost_usd=0.01),
            prompt="spend",
            workdir=work,
            state_dir=state,
            env=env,
            monkeypatch=monkeypatch,
        )
        assert len(server.turns()) < 5
    record(run, "claude_budget")
    assert run.verdict.kind == "failed", run.verdict
    assert "budget" in (run.verdict.message or "").lower()
    assert run.verdict.cost_usd is not None and run.verdict.cost_usd >= 0.01


def test_claude_never_answered_is_ended_by_the_timeout(
    claude: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer(Hang()) as server:
        work, state, env = _setup(tmp_path, server)
        run = drive(
            AgentSpec("claude"),
            prompt="hang",
            workdir=work,
            state_dir=state,
            env=env,
            timeout=8,
            monkeypatch=monkeypatch,
        )
        assert [r.status for r in server.turns()] == [None]
    assert run.timed_out
    assert run.verdict.kind == "error"
    assert "without a result" in (run.verdict.message or "")
    assert group_gone(run.pid)


def test_claude_instances_run_in_parallel_each_in_its_own_state(
    claude: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from guildrun._agents import PRESETS

    preset, count = PRESETS["claude"], 4
    with ModelServer() as server:
        work, _, env = _setup(tmp_path, server)
        as_the_user(env, monkeypatch)
        jobs = []
        for i in range(count):
            server.script(
                WriteFile(f"part{i}.txt", f"part {i}\n", usage=Usage(100 * (i + 1), 10)),
                Text(f"Wrote part{i}.txt.", usage=Usage(50, 5)),
                match=f"task number {i}",
            )
            invocation = preset.invocation(
                AgentSpec("claude"),
                prompt=f"task number {i}",
                files=(f"part{i}.txt",),
                workdir=work,
                state_dir=tmp_path / f"instance-{i}",
                resume_session=None,
            )
            jobs.append(follow_run(invocation, preset.reader(), work, env, 120))

        async def together() -> list[Run]:
            return list(await asyncio.gather(*jobs))

        runs = asyncio.run(together())
        sessions = {r.headers["x-claude-code-session-id"] for r in server.turns()}
    assert [r.verdict.kind for r in runs] == ["done"] * count
    for i in range(count):
        assert (work / f"part{i}.txt").read_text() == f"part {i}\n"
        assert runs[i].verdict.tokens == 100 * (i + 1) + 10 + 50 + 5
        assert (tmp_path / f"instance-{i}" / "projects").is_dir()
    assert sessions == {r.verdict.session_id for r in runs} and len(sessions) == count
    # Cost adds up to what each CLI reported.
    reported = sum(_cost(_result_line(r.lines)) for r in runs)
    assert sum(r.verdict.cost_usd or 0 for r in runs) == pytest.approx(reported)


def test_claude_malformed_answer_is_an_api_error(
    claude: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer(Malformed()) as server:
        work, state, env = _setup(tmp_path, server, CLAUDE_CODE_MAX_RETRIES="0")
        run = drive(
            AgentSpec("claude"),
            prompt="go",
            workdir=work,
            state_dir=state,
            env=env,
            monkeypatch=monkeypatch,
        )
    record(run, "claude_malformed")
    assert run.verdict.kind == "error", run.verdict
    assert "malformed" in (run.verdict.message or "")
