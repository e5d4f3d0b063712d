"""Aider (`aider --message ... --yes-always`), read from its plain output.

Checked against aider 0.86: it exits 0 even on 401, 429 and 500, so its output is the
verdict: "Applied edit to FILE" for each change, "Tokens: N sent, M received. Cost: $X
message, $Y session." for the spend (with `--no-stream` the token figures are the
provider's own), `litellm.<Kind>Error` lines for API errors and "Retrying in S seconds..."
while it backs off by itself (about a minute in all, not configurable). A run that
applied no edit is a finding, as for codex.

State: HOME is the instance's folder (aider keeps analytics and caches there), seeded from
the user's own aider and git configuration; the chat and input histories go there too,
so the workspace gets none (its repo-map cache `.aider.tags.cache.v4` has no setting: the
engine must treat it as a cache). Aider reads OPENAI_API_BASE / OPENAI_API_KEY (and
its `.env`) as the user set them. A `system_prompt` becomes a read-only conventions file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .base import (
    AgentSpec,
    Invocation,
    RateLimited,
    Signal,
    Verdict,
    check_program,
    copy_private,
    tail,
)

_SEEDED = (
    ".aider.conf.yml",
    ".aider.model.settings.yml",
    ".aider.model.metadata.json",
    ".env",
    ".gitconfig",
    # Aider's own copy of the model price list: with a fresh one it does not fetch it.
    ".aider/caches/model_prices_and_context_window.json",
)
_FIGURE = re.compile(r"([\d.]+)([kM]?) (sent|received)")
_SESSION_COST = re.compile(r"\$([\d.]+) session")
_APPLIED = re.compile(r"^Applied edit to (.+?)\s*$")
_LITELLM_ERROR = re.compile(r"^litellm\.(\w+Error)")
_RETRYING = re.compile(r"^Retrying in ([\d.]+) seconds")
_EDIT_FAILURES = (
    "did not conform to the edit format",
    "reflections allowed, stopping",
    "SearchReplaceNoExactMatch",
    "Failed to apply edit",
)
_SCALE = {"": 1, "k": 1_000, "M": 1_000_000}


class Aider:
    kind = "aider"

    def check(self, spec: AgentSpec, path_env: str | None) -> str | None:
        return check_program(spec, "aider", path_env)

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
        prepare_state(state_dir, os.environ)
        argv = [
            spec.program or "aider",
            f"--message={prompt}",
            "--yes-always",
            "--no-auto-commits",
            "--no-stream",
            "--no-pretty",
            "--no-fancy-input",
            "--no-check-update",
            "--no-show-model-warnings",
            "--no-show-release-notes",
            "--analytics-disable",
            "--no-gitignore",
            f"--chat-history-file={state_dir / '.aider.chat.history.md'}",
            f"--input-history-file={state_dir / '.aider.input.history'}",
        ]
        if resume_session:
            argv.append("--restore-chat-history")
        if spec.model:
            argv.append(f"--model={spec.model}")
        if spec.system_prompt:
            conventions = state_dir / "CONVENTIONS.md"
            conventions.write_text(spec.system_prompt)
            argv.append(f"--read={conventions}")
        argv += list(spec.flags)
        argv += ["--", *files]
        env = {
            "HOME": str(state_dir),
            # litellm would fetch its model price map from the network at import time.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        return Invocation(argv=argv, env=env)

    def reader(self, spec: AgentSpec | None = None) -> AiderReader:
        return AiderReader()


def prepare_state(state_dir: Path, environ: Mapping[str, str]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    home = Path(environ.get("HOME") or Path.home())
    if home.resolve() == state_dir.resolve():
        return
    for name in _SEEDED:
        copy_private(home / name, state_dir / name)


class AiderReader:
    """Follows one aider run through its plain stdout."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.tokens = 0
        self.saw_tokens = False
        self.cost: float | None = None
        self.error: str | None = None  # the last litellm error kind, until a success
        self.error_text: list[str] = []
        self.retries = 0
        self.edit_failure: str | None = None
        self.text: list[str] = []

    def feed(self, line: str) -> list[Signal]:
        line = line.rstrip("\n")
        if line.startswith("Tokens:"):
            for amount, scale, _ in _FIGURE.findall(line):
                self.tokens += round(float(amount) * _SCALE[scale])
            self.saw_tokens = True
            cost = _SESSION_COST.search(line)
            if cost:
                self.cost = float(cost.group(1))
            self.error = None
            return []
        applied = _APPLIED.match(line)
        if applied:
            self.applied.append(applied.group(1))
            return []
        failed = _LITELLM_ERROR.match(line)
        if failed:
            self.error = failed.group(1)
            self.error_text = [line]
            return []
        retrying = _RETRYING.match(line)
        if retrying and self.error == "RateLimitError":
            self.retries += 1
            return [RateLimited(429, float(retrying.group(1)), self.retries)]
        if self.error and line.strip() and len(self.error_text) < 5:
            self.error_text.append(line)
        if any(marker in line for marker in _EDIT_FAILURES):
            self.edit_failure = line.strip()
        if line.strip():
            self.text.append(line)
        return []

    def feed_stderr(self, line: str) -> list[Signal]:
        return []

    def finish(self, exit_code: int, stderr_tail: str) -> Verdict:
        verdict = Verdict(
            kind="done",
            result="\n".join(self.text[-20:]) or None,
            message=None,
            cost_usd=self.cost,
            tokens=self.tokens if self.saw_tokens else None,
        )
        said = " ".join(self.error_text)
        if self.error == "RateLimitError":
            verdict.kind = "rate_limited"
            verdict.message = "rate limited (429) after aider's own retries ran out"
        elif self.error in ("AuthenticationError", "PermissionDeniedError"):
            verdict.kind = "auth"
            verdict.message = (
                f"aider's key was refused ({tail(said, 200)}): set OPENAI_API_KEY "
                "(or the key of the model's provider)"
            )
        elif self.error is not None:
            verdict.kind = "error"
            verdict.message = f"aider met an API error: {tail(said, 300)}"
        elif exit_code != 0:
            verdict.kind = "error"
            how = f"killed by signal {-exit_code}" if exit_code < 0 else f"exit {exit_code}"
            verdict.message = f"aider failed ({how}): {tail(stderr_tail, 300)}"
        elif not self.applied:
            verdict.kind = "failed"
            verdict.message = "aider applied no edit" + (
                f" ({self.edit_failure})" if self.edit_failure else ""
            )
        return verdict
