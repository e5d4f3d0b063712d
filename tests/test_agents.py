"""Agent presets without running the CLIs: readers on real recorded output, command lines,
state folders, and the scripted model server spoken to over real HTTP.

The recordings in tests/data/agents/ are the stdout of real runs made by the slow tests
(`GUILDRUN_RECORD_AGENT_LINES=tests/data/agents pytest tests/test_agents_claude.py`).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from guildrun._agents import (
    PRESETS,
    AgentSpec,
    RateLimited,
    Refused,
    SessionStarted,
    Signal,
    Verdict,
)
from guildrun._agents.prices import PRICES
from guildrun.testing import Error, Hang, Malformed, ModelServer, Text, ToolCall, Usage, WriteFile

DATA = Path(__file__).parent / "data" / "agents"


def replay(kind: str, name: str) -> tuple[Verdict, list[Signal]]:
    reader = PRESETS[kind].reader()
    signals: list[Signal] = []
    for line in (DATA / f"{name}.jsonl").read_text().splitlines(keepends=True):
        signals += reader.feed(line)
    stderr = DATA / f"{name}.stderr"
    said = stderr.read_text() if stderr.exists() else ""
    for line in said.splitlines(keepends=True):
        signals += reader.feed_stderr(line)
    exit_code = int((DATA / f"{name}.exit").read_text())
    return reader.finish(exit_code, said[-2000:]), signals


def result_line(name: str) -> dict[str, Any]:
    lines = (DATA / f"{name}.jsonl").read_text().splitlines()
    found: dict[str, Any] = json.loads(next(x for x in lines if '"type":"result"' in x))
    return found


# -- claude: readers on recorded output ---------------------------------------------


def test_claude_reader_success() -> None:
    verdict, signals = replay("claude", "claude_write")
    reported = result_line("claude_write")
    assert verdict.kind == "done"
    assert verdict.result == "Wrote src/hello.py."
    assert verdict.cost_usd == reported["total_cost_usd"] and verdict.cost_estimated is False
    assert verdict.tokens == 1000 + 50 + 1200 + 30
    assert verdict.session_id == reported["session_id"]
    assert signals == [SessionStarted(reported["session_id"])]


def test_claude_reader_rate_limit_signals_and_verdict() -> None:
    verdict, signals = replay("claude", "claude_429")
    limited = [s for s in signals if isinstance(s, RateLimited)]
    assert [(s.status, s.attempt) for s in limited] == [(429, 1), (429, 2)]
    assert all(s.retry_after_s is not None and s.retry_after_s >= 1 for s in limited)
    assert verdict.kind == "rate_limited"
    assert verdict.retry_after_s == limited[-1].retry_after_s


@pytest.mark.parametrize(
    ("name", "kind", "words"),
    [
        ("claude_529", "rate_limited", "529"),
        ("claude_not_logged_in", "auth", "log in"),
        ("claude_401", "auth", "ANTHROPIC_API_KEY"),
        ("claude_denied", "needs_input", "tools: [Bash]"),
        ("claude_max_turns", "failed", "maximum number of turns"),
        ("claude_budget", "failed", "budget"),
        ("claude_malformed", "error", "malformed response"),
    ],
)
def test_claude_reader_endings(name: str, kind: str, words: str) -> None:
    verdict, _ = replay("claude", name)
    assert verdict.kind == kind
    assert words in (verdict.message or "")


@pytest.mark.parametrize(
    ("kind", "name"), [("claude", "claude_401"), ("codex", "codex_auth_refused")]
)
def test_refused_logins_are_signalled_live(kind: str, name: str) -> None:
    verdict, signals = replay(kind, name)
    refused = [s for s in signals if isinstance(s, Refused)]
    assert refused and all(s.status == 401 for s in refused)
    assert [s.attempt for s in refused] == list(range(1, len(refused) + 1))
    assert not [s for s in signals if isinstance(s, RateLimited)]
    assert verdict.kind == "auth"


def test_claude_reader_denial_names_the_tool_and_what_it_wanted() -> None:
    verdict, _ = replay("claude", "claude_denied")
    assert verdict.denied_tools == ("Bash",)
    assert "python3 -c" in (verdict.message or "")


def test_claude_reader_without_a_result_line_is_an_error() -> None:
    reader = PRESETS["claude"].reader()
    lines = (DATA / "claude_write.jsonl").read_text().splitlines()
    for line in lines[:2]:
        reader.feed(line)
    reader.feed("not json at all")
    verdict = reader.finish(-9, "")
    assert verdict.kind == "error"
    assert "killed by signal 9" in (verdict.message or "")
    assert verdict.session_id is not None


def test_claude_reader_ignores_junk_lines() -> None:
    reader = PRESETS["claude"].reader()
    for line in [
        "",
        "{",
        "[1,2]",
        '{"type": "system", "subtype": "api_retry", "error_status": 500}',
    ]:
        assert reader.feed(line) == []
    assert reader.finish(0, "boom").kind == "error"


# -- claude: command line and state --------------------------------------------------


def test_claude_invocation_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    inv = PRESETS["claude"].invocation(
        AgentSpec("claude"),
        prompt="fix it",
        files=("a.py",),
        workdir=tmp_path,
        state_dir=tmp_path / "state",
        resume_session=None,
    )
    assert inv.argv == [
        "claude", "-p", "--output-format", "stream-json", "--verbose",
        "--permission-mode", "acceptEdits", "--", "fix it",
    ]  # fmt: skip
    assert inv.env["CLAUDE_CONFIG_DIR"] == str(tmp_path / "state")
    assert inv.stdin_devnull


def test_claude_invocation_every_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    spec = AgentSpec(
        "claude",
        program="/opt/claude",
        model="claude-sonnet-4-5",
        system_prompt="be brief",
        tools=("Edit", "Bash(git diff:*)"),
        permission_mode="plan",
        max_turns=7,
        flags=("--debug",),
        max_cost_usd=1.5,
    )
    inv = PRESETS["claude"].invocation(
        spec,
        prompt="-x",
        files=(),
        workdir=tmp_path,
        state_dir=tmp_path / "s",
        resume_session="abc",
    )
    argv = inv.argv
    assert argv[0] == "/opt/claude"
    assert argv[argv.index("--permission-mode") + 1] == "plan"
    assert argv[argv.index("--model") + 1] == "claude-sonnet-4-5"
    assert argv[argv.index("--append-system-prompt") + 1] == "be brief"
    assert argv[argv.index("--allowedTools") + 1] == "Edit,Bash(git diff:*)"
    assert argv[argv.index("--max-turns") + 1] == "7"
    assert argv[argv.index("--max-budget-usd") + 1] == "1.5"
    assert argv[argv.index("--resume") + 1] == "abc"
    assert argv[-3:] == ["--debug", "--", "-x"]


def test_claude_state_is_seeded_from_the_users_config_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / "settings.json").write_text('{"model": "opus"}')
    (home / ".claude" / ".credentials.json").write_text('{"token": "secret"}')
    (home / ".claude.json").write_text('{"userID": "u"}')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    state = tmp_path / "state"
    preset = PRESETS["claude"]
    preset.invocation(
        AgentSpec("claude"),
        prompt="p",
        files=(),
        workdir=tmp_path,
        state_dir=state,
        resume_session=None,
    )
    assert json.loads((state / "settings.json").read_text()) == {"model": "opus"}
    assert (state / ".claude.json").read_text() == '{"userID": "u"}'
    assert stat.S_IMODE((state / ".credentials.json").stat().st_mode) == 0o600
    # The instance owns its copy from then on: a second task does not overwrite it.
    (state / "settings.json").write_text('{"model": "changed by the CLI"}')
    preset.invocation(
        AgentSpec("claude"),
        prompt="p",
        files=(),
        workdir=tmp_path,
        state_dir=state,
        resume_session=None,
    )
    assert "changed by the CLI" in (state / "settings.json").read_text()


def test_claude_state_follows_claude_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "elsewhere"
    config.mkdir()
    (config / "settings.json").write_text("{}")
    (config / ".claude.json").write_text('{"where": "config dir"}')
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(config))
    state = tmp_path / "state"
    PRESETS["claude"].invocation(
        AgentSpec("claude"),
        prompt="p",
        files=(),
        workdir=tmp_path,
        state_dir=state,
        resume_session=None,
    )
    assert (state / "settings.json").exists()
    assert "config dir" in (state / ".claude.json").read_text()


def test_missing_program_is_named(tmp_path: Path) -> None:
    preset = PRESETS["claude"]
    message = preset.check(AgentSpec("claude"), str(tmp_path))
    assert message == "claude not found on PATH; install it or set specialists.NAME.program"
    fake = tmp_path / "claude"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert preset.check(AgentSpec("claude"), str(tmp_path)) is None
    assert preset.check(AgentSpec("claude", program=str(fake)), None) is None
    assert "not an executable" in (
        preset.check(AgentSpec("claude", program=str(tmp_path / "no")), None) or ""
    )


# -- codex ----------------------------------------------------------------------------


def test_codex_reader_success_estimates_cost_from_tokens() -> None:
    verdict, signals = replay("codex", "codex_write")
    assert verdict.kind == "done"
    assert verdict.result == "Wrote src/hello.py."
    assert verdict.tokens == 2200 + 80
    assert verdict.cost_estimated is True
    assert verdict.cost_usd == pytest.approx((2200 * 1.25 + 80 * 10.0) / 1e6)
    assert signals == [SessionStarted(verdict.session_id or "")]


def test_codex_reader_prices_are_overridable() -> None:
    from guildrun._agents.codex import Codex
    from guildrun._agents.prices import PRICES, Price

    preset = Codex(PRICES.merged({"my-model": Price(input=10.0, output=100.0)}))
    reader = preset.reader(AgentSpec("codex", model="my-model-2025"))
    for line in (DATA / "codex_write.jsonl").read_text().splitlines():
        reader.feed(line)
    assert reader.finish(0, "").cost_usd == pytest.approx((2200 * 10.0 + 80 * 100.0) / 1e6)


def test_codex_reader_rate_limit() -> None:
    verdict, signals = replay("codex", "codex_429")
    limited = [s for s in signals if isinstance(s, RateLimited)]
    assert [(s.status, s.attempt) for s in limited] == [(429, n) for n in range(1, 6)]
    assert verdict.kind == "rate_limited"


@pytest.mark.parametrize(
    ("name", "kind", "words"),
    [
        ("codex_auth_refused", "auth", "OPENAI_API_KEY"),
        ("codex_auth_missing", "auth", "OPENAI_API_KEY"),
        ("codex_read_only", "failed", "changed no file"),
    ],
)
def test_codex_reader_endings(name: str, kind: str, words: str) -> None:
    verdict, _ = replay("codex", name)
    assert verdict.kind == kind
    assert words in (verdict.message or "")


def test_codex_invocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text('model = "o4-mini"\n')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CODEX_HOME", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    preset = PRESETS["codex"]
    state = tmp_path / "state"
    spec = AgentSpec("codex", model="gpt-5", system_prompt='say "hi"', flags=("--oss",))
    inv = preset.invocation(
        spec, prompt="-p", files=(), workdir=tmp_path, state_dir=state, resume_session="S1"
    )
    argv = inv.argv
    assert argv[:6] == [
        "codex",
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--sandbox",
        "workspace-write",
    ]
    assert argv[argv.index("--model") + 1] == "gpt-5"
    assert 'developer_instructions="say \\"hi\\""' in argv
    assert 'model_provider="guildrun"' in argv
    assert any('base_url="http://127.0.0.1:9/v1"' in a for a in argv)
    assert argv[-5:] == ["--oss", "resume", "S1", "--", "-p"]
    assert inv.env == {"CODEX_HOME": str(state)}
    assert (state / "config.toml").read_text() == 'model = "o4-mini"\n'
    assert preset.check(AgentSpec("codex", permission_mode="acceptEdits"), None) == (
        "codex permission_mode must be one of read-only, workspace-write, danger-full-access, "
        "not 'acceptEdits'"
    )


# -- gemini ---------------------------------------------------------------------------


def test_gemini_reader_success() -> None:
    verdict, signals = replay("gemini", "gemini_write")
    stats = result_line("gemini_write")["stats"]
    assert verdict.kind == "done"
    assert verdict.result == "Wrote src/hello.py."
    assert verdict.tokens == stats["total_tokens"]
    expected = sum(
        PRICES.price(model).cost(f["input_tokens"], f["output_tokens"], f["cached"])
        for model, f in stats["models"].items()
    )
    assert verdict.cost_usd == pytest.approx(expected) and verdict.cost_estimated
    assert signals == [SessionStarted(verdict.session_id or "")]


def test_gemini_reader_rate_limit_from_stderr() -> None:
    verdict, signals = replay("gemini", "gemini_429")
    limited = [s for s in signals if isinstance(s, RateLimited)]
    assert [(s.status, s.attempt) for s in limited] == [(429, 1), (429, 2)]
    assert verdict.kind == "rate_limited"
    assert verdict.retry_after_s == 1.0


@pytest.mark.parametrize(
    ("name", "kind", "words"),
    [
        ("gemini_auth_refused", "auth", "GEMINI_API_KEY"),
        ("gemini_auth_missing", "auth", "GEMINI_API_KEY"),
        ("gemini_denied", "needs_input", "tools: [run_shell_command]"),
    ],
)
def test_gemini_reader_endings(name: str, kind: str, words: str) -> None:
    verdict, _ = replay("gemini", name)
    assert verdict.kind == kind
    assert words in (verdict.message or "")


def test_gemini_invocation_and_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".gemini").mkdir(parents=True)
    (home / ".gemini" / "settings.json").write_text('{"ui": {"theme": "dark"}}')
    (home / ".gemini" / "GEMINI.md").write_text("Use tabs.\n")
    (home / ".gemini" / "oauth_creds.json").write_text('{"t": 1}')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("GEMINI_CLI_HOME", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    state = tmp_path / "state"
    spec = AgentSpec(
        "gemini", model="gemini-2.5-pro", system_prompt="Be the test writer.", tools=("a", "b")
    )
    inv = PRESETS["gemini"].invocation(
        spec, prompt="-x", files=(), workdir=tmp_path, state_dir=state, resume_session="S"
    )
    assert inv.argv[:6] == [
        "gemini", "--prompt=-x", "--output-format", "stream-json", "--approval-mode", "auto_edit",
    ]  # fmt: skip
    assert inv.argv[6:] == [
        "--model", "gemini-2.5-pro", "--allowed-tools", "a", "--allowed-tools", "b",
        "--resume", "S",
    ]  # fmt: skip
    assert inv.env == {"GEMINI_CLI_HOME": str(state), "GEMINI_CLI_TRUST_WORKSPACE": "true"}
    settings = json.loads((state / ".gemini" / "settings.json").read_text())
    assert settings == {
        "ui": {"theme": "dark"},
        "security": {"auth": {"selectedType": "gemini-api-key"}},
    }
    assert (state / ".gemini" / "GEMINI.md").read_text() == "Use tabs.\n\nBe the test writer.\n"
    assert stat.S_IMODE((state / ".gemini" / "oauth_creds.json").stat().st_mode) == 0o600
    assert PRESETS["gemini"].check(AgentSpec("gemini", permission_mode="acceptEdits"), None) == (
        "gemini permission_mode must be one of default, auto_edit, yolo, plan, not 'acceptEdits'"
    )


# -- aider ----------------------------------------------------------------------------


def test_aider_reader_success_reads_its_printed_figures() -> None:
    verdict, signals = replay("aider", "aider_write")
    assert verdict.kind == "done"
    assert verdict.tokens == 800 + 50
    assert verdict.cost_usd == 0.0025 and verdict.cost_estimated is False
    assert signals == []


def test_aider_reader_rate_limit() -> None:
    verdict, signals = replay("aider", "aider_429")
    limited = [s for s in signals if isinstance(s, RateLimited)]
    assert len(limited) >= 5
    assert [s.attempt for s in limited] == list(range(1, len(limited) + 1))
    delays = [s.retry_after_s or 0 for s in limited]
    assert delays == sorted(delays)  # its own exponential backoff
    assert verdict.kind == "rate_limited"


@pytest.mark.parametrize(
    ("name", "kind", "words"),
    [("aider_401", "auth", "OPENAI_API_KEY"), ("aider_no_edit", "failed", "applied no edit")],
)
def test_aider_reader_endings(name: str, kind: str, words: str) -> None:
    verdict, _ = replay("aider", name)
    assert verdict.kind == kind
    assert words in (verdict.message or "")


def test_aider_reader_rounded_token_figures() -> None:
    reader = PRESETS["aider"].reader()
    reader.feed(
        "Tokens: 2.5k sent, 1.2k cache hit, 16 received. Cost: $0.0063 message, $0.01 session."
    )
    reader.feed("Applied edit to a.py")
    verdict = reader.finish(0, "")
    assert verdict.tokens == 2500 + 16  # sent and received; cache hits are part of "sent"
    assert verdict.cost_usd == 0.01


def test_aider_invocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".aider.conf.yml").write_text("dark-mode: true\n")
    monkeypatch.setenv("HOME", str(home))
    state = tmp_path / "state"
    spec = AgentSpec(
        "aider", model="openai/gpt-4o", system_prompt="Tabs.", flags=("--map-tokens", "0")
    )
    inv = PRESETS["aider"].invocation(
        spec,
        prompt="-x",
        files=("a.py", "b.py"),
        workdir=tmp_path,
        state_dir=state,
        resume_session=None,
    )
    argv = inv.argv
    assert argv[:3] == ["aider", "--message=-x", "--yes-always"]
    assert {"--no-auto-commits", "--no-stream", "--no-gitignore"} <= set(argv)
    assert "--model=openai/gpt-4o" in argv
    assert f"--read={state / 'CONVENTIONS.md'}" in argv
    assert (state / "CONVENTIONS.md").read_text() == "Tabs."
    assert argv[-5:] == ["--map-tokens", "0", "--", "a.py", "b.py"]
    assert inv.env["HOME"] == str(state)
    assert (state / ".aider.conf.yml").read_text() == "dark-mode: true\n"


# -- the scripted model server over real HTTP ---------------------------------------


def post(url: str, body: dict[str, Any], timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(  # noqa: S310 (127.0.0.1)
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (127.0.0.1)
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def sse_events(raw: bytes) -> list[tuple[str | None, Any]]:
    events: list[tuple[str | None, Any]] = []
    for chunk in raw.decode().split("\n\n"):
        name = None
        for line in chunk.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
                events.append((name, data if data == "[DONE]" else json.loads(data)))
    return events


def turn(prompt: str, *, stream: bool = True) -> dict[str, Any]:
    return {
        "model": "m",
        "stream": stream,
        "tools": [{"name": "Write"}],
        "system": [{"type": "text", "text": " - Primary working directory: /w/d\n"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
    }


def test_server_streams_anthropic_events_per_conversation() -> None:
    with ModelServer() as server:
        server.script(WriteFile("a.txt", "A", usage=Usage(7, 3)), Text("done"), match="alpha")
        status, headers, raw = post(f"{server.url}/v1/messages?beta=true", turn("do alpha"))
        assert status == 200 and headers["content-type"] == "text/event-stream"
        events = sse_events(raw)
        assert [name for name, _ in events] == [
            "message_start", "content_block_start", "content_block_delta",
            "content_block_stop", "message_delta", "message_stop",
        ]  # fmt: skip
        block = events[1][1]["content_block"]
        assert (block["type"], block["name"]) == ("tool_use", "Write")
        assert json.loads(events[2][1]["delta"]["partial_json"]) == {
            "file_path": "/w/d/a.txt",
            "content": "A",
        }
        assert events[0][1]["message"]["usage"]["input_tokens"] == 7
        assert events[4][1]["usage"] == {"output_tokens": 3}
        assert events[4][1]["delta"]["stop_reason"] == "tool_use"
        # Another conversation starts its own copy of the default script.
        _, _, other = post(f"{server.url}/v1/messages", turn("something else"))
        assert sse_events(other)[2][1]["delta"]["text"] == "Done."
        # The same conversation moves on, then repeats its last reply.
        for _ in range(2):
            _, _, again = post(f"{server.url}/v1/messages", turn("do alpha"))
            assert sse_events(again)[2][1]["delta"]["text"] == "done"
        # Side requests (no tools) do not move any script.
        status, _, raw = post(
            f"{server.url}/v1/messages", {**turn("title?", stream=False), "tools": []}
        )
        assert status == 200 and json.loads(raw)["content"][0]["text"] == "OK"
        assert [r.status for r in server.requests] == [200] * 5
        assert len(server.turns()) == 4


def test_server_errors_with_retry_after_and_storms() -> None:
    with ModelServer(Error(429, retry_after_s=2.5)) as server:
        status, headers, raw = post(f"{server.url}/v1/messages", turn("x"))
        assert status == 429 and headers["retry-after"] == "2.5"
        assert json.loads(raw)["error"]["type"] == "rate_limit_error"
        server.script(Text("fine"))
        server.storm(30, status=529, retry_after_s=None)
        status, headers, _ = post(f"{server.url}/v1/messages", turn("y"))
        assert status == 529 and "retry-after" not in {k.lower() for k in headers}
        server.storm(0)
        assert post(f"{server.url}/v1/messages", turn("y"))[0] == 200


def test_server_malformed_and_unknown_paths() -> None:
    with ModelServer(Malformed()) as server:
        status, _, raw = post(f"{server.url}/v1/messages", turn("x"))
        assert status == 200
        with pytest.raises(ValueError):
            json.loads(raw)
        assert post(f"{server.url}/nothing/here", {})[0] == 404


def test_server_hang_is_released_by_stop() -> None:
    server = ModelServer(Hang()).start()
    outcome: list[BaseException | int] = []

    def ask() -> None:
        try:
            outcome.append(post(f"{server.url}/v1/messages", turn("x"), timeout=30)[0])
        except Exception as error:
            outcome.append(error)

    asker = threading.Thread(target=ask)
    asker.start()
    deadline = time.monotonic() + 10
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r.status for r in server.requests] == [None]
    started = time.monotonic()
    server.stop()
    asker.join(timeout=10)
    assert not asker.is_alive()
    assert time.monotonic() - started < 10
    assert outcome and not isinstance(outcome[0], int)


def test_server_records_no_credentials() -> None:
    with ModelServer() as server:
        request = urllib.request.Request(  # noqa: S310 (127.0.0.1)
            f"{server.url}/v1/messages",
            data=json.dumps(turn("x")).encode(),
            headers={"authorization": "Bearer sk-secret", "x-api-key": "sk-secret2"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (127.0.0.1)
            response.read()
        assert "sk-secret" not in json.dumps(server.requests[0].headers)


def test_tool_call_is_passed_through_unchanged() -> None:
    with ModelServer(
        ToolCall("Edit", {"file_path": "rel", "old_string": "a", "new_string": "b"})
    ) as server:
        _, _, raw = post(f"{server.url}/v1/messages", turn("x"))
        assert json.loads(sse_events(raw)[2][1]["delta"]["partial_json"])["file_path"] == "rel"


# -- Claude Code subagent files ---------------------------------------------------------


def write_agent(root: Path, name: str, text: str) -> Path:
    folder = root / ".claude" / "agents"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_subagents_become_claude_specs(tmp_path: Path) -> None:
    write_agent(
        tmp_path,
        "reviewer.md",
        "---\nname: code-reviewer\ndescription: Reviews diffs\n"
        "tools: Read, Grep, Bash(git diff:*)\nmodel: sonnet\n---\nYou review code.\n\nBe terse.\n",
    )
    write_agent(tmp_path, "plain.md", "---\nname: plain\ndescription: x\nmodel: inherit\n---\n")
    (tmp_path / ".claude" / "agents" / "notes.txt").write_text("not an agent")
    from guildrun._agents.subagents import discover

    found = discover(tmp_path)
    assert sorted(found) == ["code-reviewer", "plain"]
    reviewer = found["code-reviewer"]
    assert reviewer.description == "Reviews diffs"
    assert reviewer.spec == AgentSpec(
        "claude",
        model="sonnet",
        system_prompt="You review code.\n\nBe terse.",
        tools=("Read", "Grep", "Bash(git diff:*)"),
    )
    assert found["plain"].spec == AgentSpec("claude")
    assert discover(tmp_path / "nowhere") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no front matter\n", "reviewer.md:1: a subagent file starts with '---'"),
        ("---\nname: x\n", "reviewer.md:1: the front matter has no closing '---'"),
        ("---\nname: [x\n---\n", "reviewer.md:2: front matter is not valid YAML"),
        ("---\nname: x\n---\n", "reviewer.md:1: description: must be a non-empty string"),
        ("---\nname: a b\ndescription: d\n---\n", "reviewer.md:2: name: use letters"),
        (
            "---\nname: a\ndescription: d\ntools: 3\n---\n",
            "reviewer.md:4: tools: a comma-separated",
        ),
        (
            "---\nname: a\ndescription: d\ntools: [Read, 7]\n---\n",
            "reviewer.md:4: tools: every tool",
        ),
    ],
)
def test_subagent_errors_name_file_field_and_line(tmp_path: Path, text: str, message: str) -> None:
    from guildrun._agents.subagents import discover
    from guildrun._errors import PlanError

    write_agent(tmp_path, "reviewer.md", text)
    with pytest.raises(PlanError) as caught:
        discover(tmp_path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_subagent_names_are_unique(tmp_path: Path) -> None:
    from guildrun._agents.subagents import discover
    from guildrun._errors import PlanError

    write_agent(tmp_path, "a.md", "---\nname: same\ndescription: d\n---\n")
    write_agent(tmp_path, "b.md", "---\nname: same\ndescription: d\n---\n")
    with pytest.raises(PlanError, match=r"b\.md:2: name: subagent 'same' is also defined in a\.md"):
        discover(tmp_path)


# -- follow: a real process's pipes into a reader ---------------------------------------


async def _follow(argv: list[str], kind: str) -> tuple[Verdict, list[Signal], bytes, str]:
    import asyncio
    import io

    from guildrun._agents.follow import follow

    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    reader = PRESETS[kind].reader()
    signals: list[Signal] = []
    log = io.BytesIO()
    tail = await asyncio.wait_for(follow(process, reader, signals.append, stdout_log=log), 30)
    code = await process.wait()
    return reader.finish(code, tail), signals, log.getvalue(), tail


def test_follow_replays_a_recorded_run_through_real_pipes() -> None:
    import asyncio

    out, err = DATA / "gemini_429.jsonl", DATA / "gemini_429.stderr"
    script = f'cat "{out}"; cat "{err}" >&2; exit 173'
    verdict, signals, log, tail = asyncio.run(_follow(["sh", "-c", script], "gemini"))
    expected_verdict, expected_signals = replay("gemini", "gemini_429")
    assert signals == expected_signals
    assert verdict == expected_verdict
    assert log == out.read_bytes()
    assert tail.strip() and err.read_text().endswith(tail)


def test_follow_cuts_an_over_long_line_but_logs_it() -> None:
    import asyncio

    from guildrun._agents.follow import MAX_LINE

    program = (
        "import sys, json\n"
        f"sys.stdout.write('x' * {MAX_LINE + 5000} + '\\n')\n"
        "sys.stdout.write(json.dumps({'type': 'system', 'subtype': 'init', 'session_id': 'S'}))\n"
    )
    verdict, signals, log, _ = asyncio.run(_follow([sys.executable, "-c", program], "claude"))
    assert signals == [SessionStarted("S")]  # the last line has no newline and still counts
    assert len(log) > MAX_LINE + 5000
    assert verdict.kind == "error" and verdict.session_id == "S"


def test_testing_module_exports_exactly_its_documented_names() -> None:
    import guildrun.testing

    assert set(guildrun.testing.__all__) == {
        "Error", "Hang", "Malformed", "ModelServer", "Reply", "Request",
        "Text", "ToolCall", "Usage", "WriteFile", "overloaded",
    }  # fmt: skip
    for name in guildrun.testing.__all__:
        assert getattr(guildrun.testing, name).__doc__, name


def test_server_env_points_every_cli_here() -> None:
    with ModelServer() as server:
        env = server.env()
        bases = [v for k, v in env.items() if "BASE" in k]
        assert len(bases) == 4 and all(v.startswith(server.url) for v in bases)
        assert {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY"} <= set(env)
        status, _, _ = post(f"{env['OPENAI_API_BASE']}/chat/completions", {"messages": []})
        assert status == 200


def test_server_reads_chunked_bodies() -> None:
    import http.client

    with ModelServer(Text("chunked ok")) as server:
        port = int(server.url.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = json.dumps(turn("sent in chunks", stream=False)).encode()
        pieces = iter([body[:10], body[10:]])
        connection.request("POST", "/v1/messages", body=pieces, encode_chunked=True,
                           headers={"content-type": "application/json"})  # fmt: skip
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        assert answer["content"][0]["text"] == "chunked ok"
        assert server.requests[0].conversation == "sent in chunks"


def test_a_task_may_name_a_claude_subagent_as_its_specialist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from guildrun import Plan
    from guildrun._prepare import prepare

    agents = tmp_path / ".claude" / "agents"
    agents.mkdir(parents=True)
    (agents / "reviewer.md").write_text(
        "---\nname: reviewer\ndescription: reviews code\ntools: Read, Grep\nmodel: sonnet\n---\n"
        "You review code carefully.\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "claude"  # only looked up on PATH here, never run
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    plan = Plan.model_validate(
        {
            "specialists": {"w": {"run": ["true"]}},
            "tasks": [{"id": "r", "specialist": "reviewer", "prompt": "review api.py"}],
        }
    )
    prepared = prepare(plan, root=tmp_path)
    agent = prepared.plan.specialists["reviewer"].agent
    assert agent is not None and agent.agent == "claude"
    assert agent.tools == ("Read", "Grep") and agent.model == "sonnet"
    assert "review code carefully" in (agent.system_prompt or "")
    # The journaled plan carries it, so a resume needs no file.
    assert "reviewer" in prepared.source.specialists
