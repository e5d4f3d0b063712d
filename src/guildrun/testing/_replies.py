"""What a scripted model says next: one reply per request the agent makes.

Replies are written once, without naming an API; each dialect of the server renders them
the way its CLI expects (a `WriteFile` is Claude Code's `Write` tool, codex's
`apply_patch`, gemini's `write_file`, or an aider SEARCH/REPLACE block), so the same
script rehearses a plan whichever agent runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Usage:
    """Tokens a reply claims it used; the CLIs turn these into their own cost and token figures."""

    input_tokens: int = 100
    output_tokens: int = 20


@dataclass(frozen=True)
class Text:
    """The model answers with text and ends its turn."""

    text: str
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class WriteFile:
    """The model asks the CLI's own file-writing tool to create or overwrite `path`.

    `path` is relative to the agent's working directory (the server makes it absolute
    where the CLI's tool wants that, from the working directory the CLI announces).
    """

    path: str
    content: str
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class ToolCall:
    """The model calls a tool by its exact name with exact arguments (no translation).

    For Responses-API custom tools (codex `apply_patch`) `arguments` is `{"input": TEXT}`.
    """

    name: str
    arguments: dict[str, Any]
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class Error:
    """An HTTP error, as the provider sends it; `retry_after_s` becomes a `retry-after` header."""

    status: int
    retry_after_s: float | None = None
    message: str | None = None


def overloaded() -> Error:
    """Anthropic's 529: the provider is overloaded, not the account."""
    return Error(529, message="Overloaded")


@dataclass(frozen=True)
class Malformed:
    """A 200 whose body is not what the API promises (cut JSON in a stream)."""

    text: str = '{"type": "message_start", "message": {"id": '


@dataclass(frozen=True)
class Hang:
    """Never answer: the request is held open until the server stops (or `max_s` passes)."""

    max_s: float = 600.0


Reply = Text | WriteFile | ToolCall | Error | Malformed | Hang
