"""Aider, the real CLI (in its own virtual environment), against the scripted model server.

Pointed at 127.0.0.1 with OPENAI_API_BASE; it speaks chat completions, and a scripted
SEARCH/REPLACE block in the reply is what edits the file. It exits 0 whatever happens,
so every verdict here comes from its output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from guildrun._agents import AgentSpec, RateLimited
from guildrun.testing import Error, Hang, ModelServer, Text, Usage, WriteFile

from .agent_support import Run, clean_env, drive, git_repo, group_gone, need_cli, record

pytestmark = pytest.mark.slow
MODEL = "openai/gpt-4o"
PRICE_LIST = json.dumps(
    {
        "gpt-4o": {
            "input_cost_per_token": 2.5e-06,
            "output_cost_per_token": 1e-05,
            "litellm_provider": "openai",
            "mode": "chat",
            "max_input_tokens": 128000,
            "max_output_tokens": 16384,
            "max_tokens": 16384,
        }
    }
)


@pytest.fixture
def aider() -> str:
    return need_cli("aider")


def _run(
    tmp_path: Path,
    server: ModelServer,
    monkeypatch: pytest.MonkeyPatch,
    spec: AgentSpec | None = None,
    *,
    prompt: str = "make hello.txt say hi",
    files: tuple[str, ...] = ("hello.txt",),
    timeout: float = 120,
) -> tuple[Path, Run]:
    work = git_repo(tmp_path / "work")
    if not (work / "hello.txt").exists():
        (work / "hello.txt").write_text("old line\n")
    home = tmp_path / "home"
    # The user's aider keeps a price list; a fresh one means it fetches none (offline).
    (home / ".aider" / "caches").mkdir(parents=True, exist_ok=True)
    (home / ".aider" / "caches" / "model_prices_and_context_window.json").write_text(PRICE_LIST)
    env = clean_env(home)
    env["OPENAI_API_BASE"] = f"{server.url}/v1"
    env["OPENAI_API_KEY"] = "sk-test-not-a-key"
    run = drive(
        spec or AgentSpec("aider", model=MODEL),
        prompt=prompt,
        files=files,
        workdir=work,
        state_dir=tmp_path / "state",
        env=env,
        timeout=timeout,
        monkeypatch=monkeypatch,
    )
    return work, run


def test_aider_edits_files_through_search_replace(
    aider: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer() as server:
        server.script(WriteFile("hello.txt", "hi\n", usage=Usage(800, 50)))
        spec = AgentSpec("aider", model=MODEL, system_prompt="Always answer in English.")
        work, run = _run(tmp_path, server, monkeypatch, spec, prompt="-make hello.txt say hi")
        turns = server.turns()
    record(run, "aider_write")
    assert run.exit_code == 0
    assert run.verdict.kind == "done", run.verdict
    assert (work / "hello.txt").read_text() == "hi\n"
    assert run.verdict.tokens == 800 + 50
    printed = [line for line in run.lines if line.startswith("Tokens:")]
    session = re.search(r"\$([\d.]+) session", printed[-1])
    assert session and run.verdict.cost_usd == float(session.group(1))
    assert run.verdict.cost_usd == pytest.approx(800 * 2.5e-6 + 50 * 10e-6, rel=0.05)
    assert turns[0].conversation == "-make hello.txt say hi"
    assert "Always answer in English." in str(turns[0].body["messages"])
    # Its histories went to the instance's folder, not the workspace (its repo-map cache,
    # .aider.tags.cache.v4, has no setting: the engine ignores it as a cache).
    assert not list(work.glob(".aider*history*"))
    assert (tmp_path / "state" / ".aider.chat.history.md").exists()


def test_aider_reply_without_an_edit_is_a_finding(
    aider: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer(Text("I would rather not.")) as server:
        work, run = _run(tmp_path, server, monkeypatch)
    record(run, "aider_no_edit")
    assert run.exit_code == 0
    assert run.verdict.kind == "failed", run.verdict
    assert "applied no edit" in (run.verdict.message or "")
    assert (work / "hello.txt").read_text() == "old line\n"


def test_aider_rides_out_a_few_429s_with_live_signals(
    aider: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first four answers are 429: its HTTP client retries twice by itself, then aider
    # reports the limit and backs off.
    with ModelServer(
        *[Error(429, retry_after_s=0.1)] * 4, WriteFile("hello.txt", "hi\n")
    ) as server:
        work, run = _run(tmp_path, server, monkeypatch)
        statuses = [r.status for r in server.turns()]
    assert run.verdict.kind == "done", run.verdict
    assert (work / "hello.txt").read_text() == "hi\n"
    limited = [s for _, s in run.signals if isinstance(s, RateLimited)]
    assert limited and [s.attempt for s in limited] == list(range(1, len(limited) + 1))
    assert statuses[-1] == 200 and 429 in statuses


def test_aider_rate_limited_when_its_retries_run_out(
    aider: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Aider backs off by itself for about a minute (not configurable): a long test.
    with ModelServer(Error(429, retry_after_s=0.1)) as server:
        _, run = _run(tmp_path, server, monkeypatch, timeout=240)
    record(run, "aider_429")
    assert run.exit_code == 0
    assert run.verdict.kind == "rate_limited", run.verdict
    assert len([s for _, s in run.signals if isinstance(s, RateLimited)]) >= 5


def test_aider_refused_key_is_auth(
    aider: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer(Error(401)) as server:
        _, run = _run(tmp_path, server, monkeypatch)
    record(run, "aider_401")
    assert run.exit_code == 0
    assert run.verdict.kind == "auth", run.verdict


def test_aider_never_answered_is_ended_by_the_timeout(
    aider: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ModelServer(Hang()) as server:
        _, run = _run(tmp_path, server, monkeypatch, timeout=10)
        assert [r.status for r in server.turns()] == [None]
    assert run.timed_out
    assert run.verdict.kind == "error"
    assert group_gone(run.pid)
