"""Google's gemini-cli, the real CLI, against the scripted model server.

Pointed at 127.0.0.1 with GOOGLE_GEMINI_BASE_URL and a test GEMINI_API_KEY; the "user's"
settings (in the test's HOME) set `general.maxAttempts: 2` so its own retries end fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guildrun._agents import AgentSpec, RateLimited, SessionStarted
from guildrun._agents.prices import PRICES
from guildrun.testing import Error, Hang, ModelServer, Text, ToolCall, Usage, WriteFile

from .agent_support import Run, clean_env, drive, git_repo, group_gone, need_cli, record

pytestmark = pytest.mark.slow


@pytest.fixture
def gemini() -> str:
    return need_cli("gemini")


def _run(
    tmp_path: Path,
    server: ModelServer,
    monkeypatch: pytest.MonkeyPatch,
    spec: AgentSpec | None = None,
    *,
    prompt: str = "make hello.txt",
    key: bool = True,
    resume_session: str | None = None,
    timeout: float = 90,
) -> tuple[Path, Run]:
    work = git_repo(tmp_path / "work")
    home = tmp_path / "home"
    (home / ".gemini").mkdir(parents=True, exist_ok=True)
    (home / ".gemini" / "settings.json").write_text(json.dumps({"general": {"maxAttempts": 2}}))
    env = clean_env(home)
    env["GOOGLE_GEMINI_BASE_URL"] = server.url
    if key:
        env["GEMINI_API_KEY"] = "test-not-a-key"
    run = drive(
        spec or AgentSpec("gemini"),
        prompt=prompt,
        workdir=work,
        state_dir=tmp_path / "state",
        env=env,
        resume_session=resume_session,
        timeout=timeout,
        monkeypatch=monkeypatch,
    )
    return work, run


def test_gemini_edits_a_file_through_write_file(
    gemini: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer() as server:
        server.script(
            WriteFile("src/hello.py", "print('hello')\n", usage=Usage(1000, 50)),
            Text("Wrote src/hello.py.", usage=Usage(1200, 30)),
        )
        spec = AgentSpec("gemini", system_prompt="You are the API specialist.")
        work, run = _run(tmp_path, server, monkeypatch, spec, prompt="-create src/hello.py")
        turns = server.turns()
        everything = server.requests
    record(run, "gemini_write")
    assert run.verdict.kind == "done", run.verdict
    assert (work / "src" / "hello.py").read_text() == "print('hello')\n"
    assert run.verdict.result == "Wrote src/hello.py."
    # Tokens as the CLI counted them: both turns and its side requests (routing checks).
    side = sum(
        100 + 20
        for r in everything
        if r.auxiliary and ":generateContent" in r.path and r.status == 200
    )
    assert run.verdict.tokens == 1000 + 50 + 1200 + 30 + side
    assert run.verdict.cost_estimated is True and run.verdict.cost_usd is not None
    assert run.verdict.cost_usd >= PRICES.price("gemini").cost(2200, 80) * 0.1
    assert SessionStarted(run.verdict.session_id or "") in [s for _, s in run.signals]
    assert "-create src/hello.py" in turns[0].conversation
    assert "You are the API specialist." in json.dumps(turns[0].body)
    assert not (tmp_path / "home" / ".gemini" / "tmp").exists()


def test_gemini_rate_limit_signals_then_rate_limited(
    gemini: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer(Error(429, retry_after_s=1)) as server:
        _, run = _run(tmp_path, server, monkeypatch)
        statuses = [r.status for r in server.turns()]
    record(run, "gemini_429")
    limited = [s for _, s in run.signals if isinstance(s, RateLimited)]
    assert [(s.status, s.attempt) for s in limited] == [(429, 1), (429, 2)]
    assert statuses == [429, 429]
    assert run.exit_code == 173
    assert run.verdict.kind == "rate_limited", run.verdict
    assert run.verdict.retry_after_s == 1.0


@pytest.mark.parametrize("case", ["refused", "missing"])
def test_gemini_auth(
    gemini: str, case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer(Error(401)) as server:
        _, run = _run(tmp_path, server, monkeypatch, key=case == "refused")
    record(run, f"gemini_auth_{case}")
    assert run.exit_code == (145 if case == "refused" else 41)
    assert run.verdict.kind == "auth", run.verdict
    assert "GEMINI_API_KEY" in (run.verdict.message or "")


def test_gemini_tool_it_may_not_use_needs_input_and_the_advice_works(
    gemini: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    call = ToolCall("run_shell_command", {"command": "touch ran.txt"})
    with ModelServer() as server:
        server.script(call, Text("I could not run it."))
        work, denied = _run(tmp_path, server, monkeypatch)
        record(denied, "gemini_denied")
        assert denied.verdict.kind == "needs_input", denied.verdict
        assert denied.verdict.denied_tools == ("run_shell_command",)
        assert "tools: [run_shell_command]" in (denied.verdict.message or "")
        assert not (work / "ran.txt").exists()
        server.script(call, Text("Ran it."), match="run it again")
        spec = AgentSpec("gemini", tools=("run_shell_command",))
        _, allowed = _run(tmp_path, server, monkeypatch, spec, prompt="run it again")
    assert allowed.verdict.kind == "done", allowed.verdict
    assert (work / "ran.txt").exists()


def test_gemini_never_answered_is_ended_by_the_timeout(
    gemini: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer(Hang()) as server:
        _, run = _run(tmp_path, server, monkeypatch, timeout=10)
        assert [r.status for r in server.turns()] == [None]
    assert run.timed_out
    assert run.verdict.kind == "error"
    assert group_gone(run.pid)


def test_gemini_resume_continues_the_session(
    gemini: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer() as server:
        server.script(WriteFile("a.txt", "one\n"), Text("First done."), match="first task")
        _, first = _run(tmp_path, server, monkeypatch, prompt="first task")
        assert first.verdict.kind == "done" and first.verdict.session_id
        before = len(server.turns())
        _, second = _run(
            tmp_path,
            server,
            monkeypatch,
            prompt="second task",
            resume_session=first.verdict.session_id,
        )
        resumed = server.turns()[before]
    assert second.verdict.kind == "done", second.verdict
    history = json.dumps(resumed.body["contents"])
    assert "first task" in history and "a.txt" in history and "second task" in history
