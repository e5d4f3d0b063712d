"""OpenAI Codex, the real CLI (`codex exec --json`), against the scripted model server.

Codex ignores OPENAI_BASE_URL; the preset turns it into a provider selected with `-c`,
which is how these tests point it at 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guildrun._agents import AgentSpec, RateLimited, SessionStarted
from guildrun._agents.prices import PRICES
from guildrun.testing import Error, Hang, ModelServer, Text, Usage, WriteFile

from .agent_support import Run, clean_env, drive, git_repo, group_gone, need_cli, record

pytestmark = pytest.mark.slow


@pytest.fixture
def codex() -> str:
    return need_cli("codex")


def _run(
    tmp_path: Path,
    server: ModelServer,
    monkeypatch: pytest.MonkeyPatch,
    spec: AgentSpec | None = None,
    *,
    prompt: str = "make hello.txt",
    key: bool = True,
    resume_session: str | None = None,
    timeout: float = 60,
) -> tuple[Path, Run]:
    work = git_repo(tmp_path / "work")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = clean_env(home)
    env["OPENAI_BASE_URL"] = f"{server.url}/v1"
    if key:
        env["OPENAI_API_KEY"] = "sk-test-not-a-key"
    run = drive(
        spec or AgentSpec("codex"),
        prompt=prompt,
        workdir=work,
        state_dir=tmp_path / "state",
        env=env,
        resume_session=resume_session,
        timeout=timeout,
        monkeypatch=monkeypatch,
    )
    return work, run


def test_codex_edits_a_file_through_apply_patch(
    codex: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer() as server:
        server.script(
            WriteFile("src/hello.py", "print('hello')\n", usage=Usage(1000, 50)),
            Text("Wrote src/hello.py.", usage=Usage(1200, 30)),
        )
        work, run = _run(
            tmp_path,
            server,
            monkeypatch,
            AgentSpec("codex", system_prompt="You are the API specialist."),
        )
        turns = server.turns()
    record(run, "codex_write")
    assert run.verdict.kind == "done", run.verdict
    assert (work / "src" / "hello.py").read_text() == "print('hello')\n"
    assert run.verdict.result == "Wrote src/hello.py."
    assert run.verdict.tokens == 1000 + 50 + 1200 + 30
    assert run.verdict.cost_estimated is True
    assert run.verdict.cost_usd == pytest.approx(PRICES.price(None).cost(2200, 80))
    assert run.verdict.session_id == turns[0].headers["session-id"]
    assert SessionStarted(run.verdict.session_id) in [s for _, s in run.signals]
    assert "You are the API specialist." in json.dumps(turns[0].body)
    assert not (tmp_path / "home" / ".codex").exists()


def test_codex_rate_limit_signals_then_rate_limited(
    codex: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer(Error(429, retry_after_s=1)) as server:
        _, run = _run(tmp_path, server, monkeypatch)
        statuses = [r.status for r in server.turns()]
    record(run, "codex_429")
    limited = [s for _, s in run.signals if isinstance(s, RateLimited)]
    assert [s.attempt for s in limited] == list(range(1, len(limited) + 1))
    assert len(limited) >= 1 and all(s.status == 429 for s in limited)
    assert statuses == [429] * (len(limited) + 1)
    assert run.verdict.kind == "rate_limited", run.verdict
    assert run.exit_code == 1


@pytest.mark.parametrize("case", ["refused", "missing"])
def test_codex_auth(codex: str, case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ModelServer(Error(401)) as server:
        _, run = _run(tmp_path, server, monkeypatch, key=case == "refused")
    record(run, f"codex_auth_{case}")
    assert run.verdict.kind == "auth", run.verdict
    assert "OPENAI_API_KEY" in (run.verdict.message or "")


def test_codex_read_only_sandbox_changes_nothing_and_says_so(
    codex: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer() as server:
        server.script(WriteFile("hello.txt", "hi\n"), Text("Wrote hello.txt."))
        work, run = _run(
            tmp_path, server, monkeypatch, AgentSpec("codex", permission_mode="read-only")
        )
    record(run, "codex_read_only")
    assert run.exit_code == 0
    assert not (work / "hello.txt").exists()
    assert run.verdict.kind == "failed", run.verdict
    assert "changed no file" in (run.verdict.message or "")


def test_codex_resume_continues_the_session(
    codex: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
    history = json.dumps(resumed.body["input"])
    assert "first task" in history and "a.txt" in history and "second task" in history
    assert second.verdict.session_id == first.verdict.session_id


def test_codex_never_answered_is_ended_by_the_timeout(
    codex: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer(Hang()) as server:
        _, run = _run(tmp_path, server, monkeypatch, timeout=8)
        assert [r.status for r in server.turns()] == [None]
    assert run.timed_out
    assert run.verdict.kind == "error"
    assert group_gone(run.pid)
