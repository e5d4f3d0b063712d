"""Google's gemini-cli (`gemini --prompt=... --output-format stream-json`).

Checked against gemini 0.61: stdout is JSON lines, `init` (the session id), `message`
(the assistant's text comes in `delta` pieces), `tool_use`/`tool_result`, and a last
`result` with `status` "success" or "error" and `stats` (tokens per model, no cost).
The exit code is the HTTP status modulo 256 on API errors (429 gives 173, 401 gives 145);
41 is "no auth configured". It retries by itself (`general.maxAttempts`, default 10) and
says so only on stderr ("Attempt N failed with status 429"), so the stderr lines are
read too. In non-interactive mode a tool it may not use is not even registered: the
`tool_result` error `tool_not_registered` is its permission denial.

State: a private GEMINI_CLI_HOME per instance, seeded from the user's own `~/.gemini`
(settings, login); the auth choice is set to the API key when GEMINI_API_KEY is given and
the user chose none (without one it exits 41), and the workspace is trusted (else 55).
A `system_prompt` is added to the instance's user memory file (GEMINI.md).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import (
    RATE_LIMIT_STATUSES,
    AgentSpec,
    Invocation,
    RateLimited,
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

DEFAULT_APPROVAL = "auto_edit"
APPROVAL_MODES = ("default", "auto_edit", "yolo", "plan")
_ATTEMPT = re.compile(r"Attempt (\d+) failed(?: with status (\d{3})|: (RESOURCE_EXHAUSTED))")
_RETRY_AFTER = re.compile(r"retry after (\d+(?:\.\d+)?)s", re.IGNORECASE)
_EXIT_STATUS = {173: 429, 17: 529, 145: 401, 147: 403}
_AUTH_TEXTS = (
    "unauthenticated",
    "api key not valid",
    "gemini_api_key",
    "permission_denied",
    "/auth",
)
_SEEDED = ("oauth_creds.json", "google_accounts.json", "installation_id")


class Gemini:
    kind = "gemini"

    def __init__(self, prices: Prices = PRICES) -> None:
        self.prices = prices

    def check(self, spec: AgentSpec, path_env: str | None) -> str | None:
        return check_agent(spec, "gemini", path_env, APPROVAL_MODES)

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
        # `--prompt=TEXT` in one argument: a prompt starting with "-" stays a prompt.
        argv = [
            spec.program or "gemini",
            f"--prompt={prompt}",
            "--output-format",
            "stream-json",
            "--approval-mode",
            spec.permission_mode or DEFAULT_APPROVAL,
        ]
        if spec.model:
            argv += ["--model", spec.model]
        for tool in spec.tools:
            argv += ["--allowed-tools", tool]
        if resume_session:
            argv += ["--resume", resume_session]
        argv += list(spec.flags)
        prepare_state(state_dir, os.environ, spec)
        env = {"GEMINI_CLI_HOME": str(state_dir), "GEMINI_CLI_TRUST_WORKSPACE": "true"}
        return Invocation(argv=argv, env=env)

    def reader(self, spec: AgentSpec | None = None) -> GeminiReader:
        return GeminiReader(self.prices)


def user_config_dir(environ: Mapping[str, str]) -> Path:
    configured = environ.get("GEMINI_CLI_HOME")
    home = Path(configured).expanduser() if configured else Path(environ.get("HOME") or Path.home())
    return home / ".gemini"


def prepare_state(state_dir: Path, environ: Mapping[str, str], spec: AgentSpec) -> None:
    """The instance's `.gemini` folder: the user's login copied once, settings and memory
    written from the user's each time (they carry the spec's system prompt)."""
    target = state_dir / ".gemini"
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    source = user_config_dir(environ)
    if source.resolve() == target.resolve():
        return
    for name in _SEEDED:
        copy_private(source / name, target / name)
    settings: dict[str, Any] = {}
    try:
        loaded = json.loads((source / "settings.json").read_text())
        if isinstance(loaded, dict):
            settings = loaded
    except (OSError, ValueError):
        settings = {}
    auth = settings.setdefault("security", {}).setdefault("auth", {})
    if isinstance(auth, dict) and not auth.get("selectedType") and environ.get("GEMINI_API_KEY"):
        auth["selectedType"] = "gemini-api-key"
    _write_private(target / "settings.json", json.dumps(settings, indent=2))
    memory = ""
    if (source / "GEMINI.md").is_file():
        memory = (source / "GEMINI.md").read_text(errors="replace")
    if spec.system_prompt:
        memory = f"{memory.rstrip()}\n\n{spec.system_prompt}\n".lstrip()
    if memory:
        _write_private(target / "GEMINI.md", memory)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


class GeminiReader:
    """Follows one `gemini --output-format stream-json` run, stdout and stderr."""

    def __init__(self, prices: Prices = PRICES) -> None:
        self.prices = prices
        self.session_id: str | None = None
        self.text: list[str] = []
        self.tools: dict[str, str] = {}
        self.denied: list[str] = []
        self.result: dict[str, Any] | None = None
        self.retry_after_s: float | None = None

    def feed(self, line: str) -> list[Signal]:
        event = parse_json_line(line)
        if event is None:
            return []
        kind = event.get("type")
        if kind == "init" and isinstance(event.get("session_id"), str):
            self.session_id = event["session_id"]
            return [SessionStarted(event["session_id"])]
        if kind == "message" and event.get("role") == "assistant":
            content = event.get("content")
            if isinstance(content, str):
                if not event.get("delta"):
                    self.text.clear()
                self.text.append(content)
        elif kind == "tool_use":
            if isinstance(event.get("tool_id"), str) and isinstance(event.get("tool_name"), str):
                self.tools[event["tool_id"]] = event["tool_name"]
            self.text.clear()
        elif kind == "tool_result":
            error = event.get("error")
            if isinstance(error, dict) and error.get("type") == "tool_not_registered":
                self.denied.append(self.tools.get(str(event.get("tool_id")), "a tool"))
        elif kind == "result":
            self.result = event
        return []

    def feed_stderr(self, line: str) -> list[Signal]:
        found = _ATTEMPT.search(line)
        delay = _RETRY_AFTER.search(line)
        if delay:
            self.retry_after_s = float(delay.group(1))
        if found:
            status = int(found.group(2)) if found.group(2) else 429
            if status in RATE_LIMIT_STATUSES:
                return [RateLimited(status, None, int(found.group(1)))]
        return []

    def finish(self, exit_code: int, stderr_tail: str) -> Verdict:
        verdict = Verdict(
            kind="done", result="".join(self.text) or None, message=None, session_id=self.session_id
        )
        result = self.result or {}
        self._stats(result.get("stats"), verdict)
        error = result.get("error")
        said = str(error.get("message")) if isinstance(error, dict) else ""
        said = said or stderr_tail
        delay = _RETRY_AFTER.search(said)
        if delay:
            self.retry_after_s = float(delay.group(1))
        status = _EXIT_STATUS.get(exit_code)
        if result.get("status") == "success" and exit_code == 0:
            if self.denied:
                names = tuple(dict.fromkeys(self.denied))
                verdict.kind = "needs_input"
                verdict.denied_tools = names
                verdict.message = (
                    f"gemini may not use {', '.join(names)} here; allow it with "
                    f"`tools: [{', '.join(names)}]` or `permission_mode: yolo` on the specialist"
                )
            return verdict
        lowered = said.lower()
        if status in RATE_LIMIT_STATUSES or "resource_exhausted" in lowered:
            verdict.kind = "rate_limited"
            verdict.retry_after_s = self.retry_after_s
            verdict.message = f"rate limited ({status or 429}) after gemini's own retries ran out"
        elif exit_code == 41 or status in (401, 403) or any(t in lowered for t in _AUTH_TEXTS):
            verdict.kind = "auth"
            verdict.message = (
                f"gemini is not logged in or its key was refused ({tail(said, 200)}): "
                "run `gemini` once to log in, or set GEMINI_API_KEY"
            )
        else:
            verdict.kind = "error"
            how = f"killed by signal {-exit_code}" if exit_code < 0 else f"exit {exit_code}"
            verdict.message = f"gemini failed ({how})" + (
                f": {tail(said, 300)}" if said.strip() else ""
            )
        return verdict

    def _stats(self, stats: Any, verdict: Verdict) -> None:
        if not isinstance(stats, dict):
            return
        verdict.tokens = integer(stats.get("total_tokens")) or None
        models = stats.get("models")
        if isinstance(models, dict) and models:
            cost = 0.0
            for model, figures in models.items():
                if isinstance(figures, dict):
                    cost += self.prices.price(str(model)).cost(
                        integer(figures.get("input_tokens")),
                        integer(figures.get("output_tokens")),
                        integer(figures.get("cached")),
                    )
            verdict.cost_usd = cost
            verdict.cost_estimated = True
