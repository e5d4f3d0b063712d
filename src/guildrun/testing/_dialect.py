"""The seam between the scripted server and one provider's HTTP API.

A dialect reads what it needs from a request (the conversation's first user text, the
working directory the CLI announces, whether it streams) and writes a reply in the
provider's wire format. The server itself knows no API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._replies import Reply


@dataclass
class Answer:
    """An HTTP answer: a JSON body, or server-sent event chunks written as they come."""

    status: int = 200
    body: Any = None
    events: list[bytes] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None

    @property
    def streaming(self) -> bool:
        return bool(self.events)


class Dialect(Protocol):
    name: str

    def conversation(self, body: dict[str, Any]) -> str:
        """The text of the conversation's first user message: the same on every turn."""
        ...

    def workdir(self, body: dict[str, Any]) -> str | None:
        """The working directory the CLI told the model about, if it did."""
        ...

    def auxiliary(self, path: str, body: dict[str, Any]) -> bool:
        """A side request (title, quota probe, token count) that is not a turn of the script."""
        ...

    def render(self, reply: Reply, path: str, body: dict[str, Any], workdir: str | None) -> Answer:
        """The reply in this API's wire format (streamed when the request asked for it)."""
        ...

    def error(self, status: int, message: str) -> dict[str, Any]:
        """The provider's error body for an HTTP status."""
        ...


def sse(event: str | None, data: Any) -> bytes:
    """One server-sent event; `event` None writes a bare `data:` line (OpenAI chat style)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def text_of(content: Any) -> str:
    """The plain text of a message content: a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""
