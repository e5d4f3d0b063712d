"""Claude Code (`claude -p`), followed through its stream-json output.

Checked against claude 2.1.x: every line is a JSON object; `system/init` names the
session, `system/api_retry` is printed each time it backs off (with `error_status` and
the delay it honours, from the server's retry-after), and the last line is a `result`
whose `is_error`, `api_error_status`, `permission_denials`, `total_cost_usd` and `usage`
are the verdict. Not logged in, it ends `"subtype": "success"` with `"is_error": true`;
a denied tool ends with `is_error` false and a `permission_denials` entry, so the
denials are read before success is believed.

State: each instance gets its own `CLAUDE_CONFIG_DIR` (parallel instances corrupt a
shared `~/.claude.json`), seeded from the user's own settings and login, so what works
at the user's shell works here; sessions (`--resume`) live in it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import (
    AUTH_STATUSES,
    RATE_LIMIT_STATUSES,
    AgentSpec,
    Invocation,
    LineLog,
    RateLimited,
    Refused,
    SessionStarted,
    Signal,
    Verdict,
    check_program,
    copy_private,
    head,
    integer,
    number,
    parse_json_line,
    tail,
)

DEFAULT_PERMISSION_MODE = "acceptEdits"
_AUTH_TEXTS = ("not logged in", "invalid api key", "failed to authenticate", "oauth token")
# Files of the user's Claude Code configuration that make an instance behave as the
# user's own `claude` does: settings, login, user memory. Sessions and history are not
# copied; each instance keeps its own.
_SEEDED = ("settings.json", ".credentials.json", "CLAUDE.md")


class Claude:
    kind = "claude"

    def check(self, spec: AgentSpec, path_env: str | None) -> str | None:
        return check_program(spec, "claude", path_env)

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
            spec.program or "claude",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            spec.permission_mode or DEFAULT_PERMISSION_MODE,
        ]
        if spec.model:
            argv += ["--model", spec.model]
        if spec.system_prompt:
            argv += ["--append-system-prompt", spec.system_prompt]
        if spec.tools:
            argv += ["--allowedTools", ",".join(spec.tools)]
        if spec.max_turns is not None:
            argv += ["--max-turns", str(spec.max_turns)]
        if spec.max_cost_usd is not None:
            argv += ["--max-budget-usd", f"{spec.max_cost_usd:g}"]
        if resume_session:
            argv += ["--resume", resume_session]
        argv += list(spec.flags)
        # The prompt goes last, after `--`: a prompt starting with "-" is not an option,
        # and a variadic option (--allowedTools) cannot swallow it.
        argv += ["--", prompt]
        prepare_state(state_dir, os.environ)
        env = {
            "CLAUDE_CONFIG_DIR": str(state_dir),
            # No auto-update or telemetry from dozens of parallel instances.
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        return Invocation(argv=argv, env=env)

    def reader(self, spec: AgentSpec | None = None) -> ClaudeReader:
        return ClaudeReader()


def user_config_dir(environ: Mapping[str, str]) -> Path:
    """Where the user's own `claude` keeps its configuration."""
    configured = environ.get("CLAUDE_CONFIG_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(environ.get("HOME") or Path.home()) / ".claude"


def prepare_state(state_dir: Path, environ: Mapping[str, str]) -> None:
    """Seed an instance's config folder from the user's (once; the instance owns it after)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    source = user_config_dir(environ)
    if source.resolve() == state_dir.resolve():
        return
    for name in _SEEDED:
        copy_private(source / name, state_dir / name)
    # Without CLAUDE_CONFIG_DIR the global state file sits beside the folder, in HOME.
    global_state = (
        source / ".claude.json"
        if environ.get("CLAUDE_CONFIG_DIR")
        else source.parent / ".claude.json"
    )
    copy_private(global_state, state_dir / ".claude.json")


class ClaudeReader:
    """Follows one `claude -p --output-format stream-json --verbose` run."""

    def __init__(self) -> None:
        self.result: dict[str, Any] | None = None
        self.session_id: str | None = None
        self.last_text: str | None = None
        self.last_delay_s: float | None = None
        self.auth_failed = False
        self.unparsed = LineLog(limit=20)

    def feed(self, line: str) -> list[Signal]:
        event = parse_json_line(line)
        if event is None:
            if line.strip():
                self.unparsed.add(line.rstrip())
            return []
        kind, subtype = event.get("type"), event.get("subtype")
        signals: list[Signal] = []
        session = event.get("session_id")
        if isinstance(session, str) and session and session != self.session_id:
            self.session_id = session
            signals.append(SessionStarted(session))
        if kind == "system" and subtype == "api_retry":
            delay_ms = number(event.get("retry_delay_ms"))
            self.last_delay_s = delay_ms / 1000 if delay_ms is not None else None
            status = event.get("error_status")
            attempt = event.get("attempt") if isinstance(event.get("attempt"), int) else None
            if isinstance(status, int) and status in RATE_LIMIT_STATUSES:
                signals.append(RateLimited(status, self.last_delay_s, attempt))
            elif isinstance(status, int) and status in AUTH_STATUSES:
                self.auth_failed = True
                signals.append(Refused(status, attempt))
        elif kind == "assistant":
            if event.get("error") == "authentication_failed":
                self.auth_failed = True
            text = _message_text(event.get("message"))
            if text:
                self.last_text = text
        elif kind == "result":
            self.result = event
        return signals

    def feed_stderr(self, line: str) -> list[Signal]:
        return []

    def finish(self, exit_code: int, stderr_tail: str) -> Verdict:
        result = self.result
        if result is None:
            said = stderr_tail.strip() or "\n".join(self.unparsed.lines)
            how = f"killed by signal {-exit_code}" if exit_code < 0 else f"exit {exit_code}"
            return Verdict(
                kind="error",
                result=self.last_text,
                message=f"claude ended without a result ({how})"
                + (f": {tail(said)}" if said else ""),
                session_id=self.session_id,
            )
        text = result.get("result") if isinstance(result.get("result"), str) else None
        cost = number(result.get("total_cost_usd"))
        verdict = Verdict(
            kind="done",
            result=text,
            message=None,
            cost_usd=cost,
            tokens=_tokens(result.get("usage")),
            session_id=result.get("session_id")
            if isinstance(result.get("session_id"), str)
            else self.session_id,
        )
        status = result.get("api_error_status")
        errors = result.get("errors")
        said = text or (
            "; ".join(e for e in errors if isinstance(e, str)) if isinstance(errors, list) else ""
        )
        denials = _denials(result.get("permission_denials"))
        if result.get("is_error"):
            if isinstance(status, int) and status in RATE_LIMIT_STATUSES:
                verdict.kind = "rate_limited"
                verdict.retry_after_s = self.last_delay_s
                verdict.message = f"rate limited ({status}) after claude's own retries ran out"
            elif self.auth_failed or status in AUTH_STATUSES or _is_auth_text(said):
                verdict.kind = "auth"
                verdict.message = (
                    f"claude is not logged in or its key was refused ({tail(said, 200)}): "
                    "run `claude` once to log in, or set ANTHROPIC_API_KEY"
                )
            elif isinstance(status, int) or result.get("terminal_reason") == "api_error":
                verdict.kind = "error"
                verdict.message = f"API error{f' {status}' if status else ''}: {head(said)}"
            else:
                verdict.kind = "failed"
                verdict.message = tail(said, 300) or f"claude ended with {result.get('subtype')}"
        elif denials:
            names = tuple(dict.fromkeys(name for name, _ in denials))
            what = ", ".join(
                f"{name} ({detail})" if detail else name for name, detail in denials[:3]
            )
            verdict.kind = "needs_input"
            verdict.denied_tools = names
            verdict.message = (
                f"claude was denied {what}; allow it with `tools: [{', '.join(names)}]` "
                "or a wider `permission_mode:` on the specialist"
            )
        elif exit_code != 0:
            verdict.kind = "failed"
            verdict.message = f"claude exited {exit_code}: {tail(stderr_tail or said, 300)}"
        return verdict


def _message_text(message: Any) -> str | None:
    if not isinstance(message, dict):
        return None
    parts = [
        block["text"]
        for block in message.get("content") or []
        if isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    ]
    return "\n".join(parts) or None


def _tokens(usage: Any) -> int | None:
    if not isinstance(usage, dict):
        return None
    return (
        integer(usage.get("input_tokens"))
        + integer(usage.get("output_tokens"))
        + integer(usage.get("cache_creation_input_tokens"))
        + integer(usage.get("cache_read_input_tokens"))
    )


def _denials(value: Any) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for denial in value if isinstance(value, list) else []:
        if not isinstance(denial, dict) or not isinstance(denial.get("tool_name"), str):
            continue
        given = denial.get("tool_input")
        detail = ""
        if isinstance(given, dict):
            for key in ("command", "file_path", "path", "url", "pattern"):
                if isinstance(given.get(key), str):
                    detail = given[key]
                    break
            else:
                detail = json.dumps(given)[:80]
        found.append((denial["tool_name"], tail(detail, 80)))
    return found


def _is_auth_text(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _AUTH_TEXTS)
