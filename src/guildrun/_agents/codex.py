"""OpenAI Codex (`codex exec --json`), followed through its JSONL events.

Checked against codex 0.171: events are `thread.started` (the session id), `turn.started`,
`item.started`/`item.completed` (`agent_message`, `file_change`, `command_execution`, ...),
then `turn.completed` with `usage` (tokens, no cost) or `turn.failed`. While it backs off
it prints `{"type": "error", "message": "Reconnecting... N/5 (... last status: 429 Too Many
Requests)"}`; 429, 5xx and 401 all end in exit 1, told apart only by the message.

It must run with stdin closed (it reads more prompt from stdin otherwise), in a writable
sandbox (in its default read-only one a patch is refused without a word: exit 0, no
`file_change`), so "nothing changed" is a finding, not a success. It ignores
`OPENAI_BASE_URL`: when that is set, a provider with that base URL is selected with `-c`.
Cost is estimated from the price table.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import (
    AUTH_STATUSES,
    RATE_LIMIT_STATUSES,
    AgentSpec,
    Invocation,
    RateLimited,
    Refused,
    SessionStarted,
    Signal,
    Verdict,
    check_agent,
    copy_private,
    integer,
    parse_json_line,
    tail,
)
from .prices import PRICES, Prices

SANDBOXES = ("read-only", "workspace-write", "danger-full-access")
DEFAULT_SANDBOX = "workspace-write"
PROVIDER = "guildrun"
_STATUS = re.compile(r"status:? (\d{3})\b")
_ATTEMPT = re.compile(r"^Reconnecting\.\.\. (\d+)/(\d+)")
_AUTH_TEXTS = ("unauthorized", "invalid_api_key", "missing environment variable", "not logged in")
_SEEDED = ("config.toml", "auth.json", "AGENTS.md")


class Codex:
    kind = "codex"

    def __init__(self, prices: Prices = PRICES) -> None:
        self.prices = prices

    def check(self, spec: AgentSpec, path_env: str | None) -> str | None:
        return check_agent(spec, "codex", path_env, SANDBOXES)

    def invocation(
        self,
        spec: AgentSpec,
        *,
        prompt: str,
        files: Sequence[str],
        workdir: Path,
        state_dir: Path,
        resume_session: str | None,
    ) -> Invocation:
        argv = [
            spec.program or "codex",
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--sandbox",
            spec.permission_mode or DEFAULT_SANDBOX,
        ]
        if spec.model:
            argv += ["--model", spec.model]
        if spec.system_prompt:
            argv += ["-c", f"developer_instructions={json.dumps(spec.system_prompt)}"]
        base_url = os.environ.get("OPENAI_BASE_URL")
        if base_url:
            provider = (
                f"{{name={json.dumps(PROVIDER)}, base_url={json.dumps(base_url)}, "
                'wire_api="responses", env_key="OPENAI_API_KEY"}'
            )
            argv += ["-c", f"model_provider={json.dumps(PROVIDER)}"]
            argv += ["-c", f"model_providers.{PROVIDER}={provider}"]
        argv += list(spec.flags)
        if resume_session:
            argv += ["resume", resume_session]
        argv += ["--", prompt]
        prepare_state(state_dir, os.environ)
        return Invocation(argv=argv, env={"CODEX_HOME": str(state_dir)})

    def reader(self, spec: AgentSpec | None = None) -> CodexReader:
        model = spec.model if spec else None
        return CodexReader(self.prices, model)


def prepare_state(state_dir: Path, environ: Mapping[str, str]) -> None:
    """Seed the instance's CODEX_HOME from the user's (config, login, instructions), once."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    configured = environ.get("CODEX_HOME")
    source = (
        Path(configured).expanduser()
        if configured
        else Path(environ.get("HOME") or Path.home()) / ".codex"
    )
    if source.resolve() == state_dir.resolve():
        return
    for name in _SEEDED:
        copy_private(source / name, state_dir / name)


class CodexReader:
    """Follows one `codex exec --json` run."""

    def __init__(self, prices: Prices = PRICES, model: str | None = None) -> None:
        self.prices = prices
        self.model = model
        self.session_id: str | None = None
        self.last_message: str | None = None
        self.changes: list[str] = []
        self.commands = 0
        self.usage: dict[str, int] = {}
        self.completed = False
        self.failure: str | None = None
        self.errors: list[str] = []

    def feed(self, line: str) -> list[Signal]:
        event = parse_json_line(line)
        if event is None:
            return []
        kind = event.get("type")
        if kind == "thread.started" and isinstance(event.get("thread_id"), str):
            self.session_id = event["thread_id"]
            return [SessionStarted(event["thread_id"])]
        if kind == "error" and isinstance(event.get("message"), str):
            return self._error(event["message"])
        if kind == "item.completed" and isinstance(event.get("item"), dict):
            self._item(event["item"])
        elif kind == "turn.completed":
            self.completed = True
            usage = event.get("usage")
            if isinstance(usage, dict):
                for key, value in usage.items():
                    self.usage[key] = self.usage.get(key, 0) + integer(value)
        elif kind == "turn.failed":
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            self.failure = message if isinstance(message, str) else "turn failed"
        return []

    def _error(self, message: str) -> list[Signal]:
        self.errors.append(message)
        retry = _ATTEMPT.match(message)
        status = _status(message)
        if retry and status in RATE_LIMIT_STATUSES:
            return [RateLimited(status, None, int(retry.group(1)))]
        if retry and status in AUTH_STATUSES:
            return [Refused(status, int(retry.group(1)))]
        return []

    def _item(self, item: dict[str, Any]) -> None:
        kind = item.get("type")
        if kind == "agent_message" and isinstance(item.get("text"), str):
            self.last_message = item["text"]
        elif kind == "file_change" and item.get("status") == "completed":
            for change in item.get("changes") or []:
                if isinstance(change, dict) and isinstance(change.get("path"), str):
                    self.changes.append(change["path"])
        elif kind == "command_execution":
            self.commands += 1

    def feed_stderr(self, line: str) -> list[Signal]:
        return []

    def finish(self, exit_code: int, stderr_tail: str) -> Verdict:
        verdict = Verdict(
            kind="done", result=self.last_message, message=None, session_id=self.session_id
        )
        if self.usage:
            input_tokens = self.usage.get("input_tokens", 0)
            output_tokens = self.usage.get("output_tokens", 0)
            verdict.tokens = input_tokens + output_tokens
            price = self.prices.price(self.model)
            verdict.cost_usd = price.cost(
                input_tokens, output_tokens, self.usage.get("cached_input_tokens", 0)
            )
            verdict.cost_estimated = True
        said = self.failure or (self.errors[-1] if self.errors else "")
        status = _status(said)
        if self.failure is not None or (exit_code != 0 and not self.completed):
            if status in RATE_LIMIT_STATUSES:
                verdict.kind = "rate_limited"
                verdict.message = f"rate limited ({status}) after codex's own retries ran out"
            elif status in (401, 403) or any(t in said.lower() for t in _AUTH_TEXTS):
                verdict.kind = "auth"
                verdict.message = (
                    f"codex is not logged in or its key was refused ({tail(said, 200)}): "
                    "run `codex login`, or set OPENAI_API_KEY"
                )
            else:
                verdict.kind = "error"
                how = f"killed by signal {-exit_code}" if exit_code < 0 else f"exit {exit_code}"
                detail = said or stderr_tail
                verdict.message = f"codex failed ({how})" + (
                    f": {tail(detail, 300)}" if detail.strip() else ""
                )
        elif not self.changes and not self.commands:
            verdict.kind = "failed"
            verdict.message = (
                "codex changed no file (no file_change event): it may have been refused by a "
                "read-only sandbox; the answer was: " + tail(self.last_message or "(none)", 200)
            )
        return verdict


def _status(message: str) -> int | None:
    found = _STATUS.search(message)
    if found:
        return int(found.group(1))
    return 429 if "too many requests" in message.lower() else None
