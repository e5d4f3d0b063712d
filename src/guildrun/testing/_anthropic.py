"""Anthropic's Messages API (`POST /v1/messages`), as Claude Code speaks it.

Streaming answers are the documented event sequence: `message_start`,
`content_block_start` / `_delta` / `_stop` per block, `message_delta` (stop reason and
output tokens), `message_stop`. Claude Code's system prompt names its working directory
("Working directory: /abs/path"), which turns a relative `WriteFile` into the absolute
`file_path` its `Write` tool demands.
"""

from __future__ import annotations

import itertools
import json
import posixpath
import re
from typing import Any

from ._dialect import Answer, sse, text_of
from ._replies import Error, Malformed, Reply, Text, ToolCall, Usage, WriteFile

_WORKDIR = re.compile(r"[Ww]orking directory: (/\S+)")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_ids = itertools.count(1)


class Anthropic:
    name = "anthropic"

    def conversation(self, body: dict[str, Any]) -> str:
        for message in body.get("messages") or []:
            if isinstance(message, dict) and message.get("role") == "user":
                return text_of(message.get("content"))
        return ""

    def workdir(self, body: dict[str, Any]) -> str | None:
        texts = [text_of(body.get("system"))]
        texts += [
            text_of(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict)
        ]
        for text in texts:
            found = _WORKDIR.search(text)
            if found:
                return found.group(1)
        return None

    def auxiliary(self, path: str, body: dict[str, Any]) -> bool:
        # A turn of the agent offers it tools and streams; titles, topic checks and quota
        # probes do neither.
        return path.endswith("/count_tokens") or not body.get("tools")

    def error(self, status: int, message: str) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def render(self, reply: Reply, path: str, body: dict[str, Any], workdir: str | None) -> Answer:
        if path.endswith("/count_tokens"):
            return Answer(body={"input_tokens": 100})
        if isinstance(reply, Error):
            return Answer(status=reply.status, body=self.error(reply.status, reply.message or ""))
        if isinstance(reply, Malformed):
            return Answer(raw=reply.text.encode(), headers={"content-type": "application/json"})
        blocks, usage = _blocks(reply, workdir)
        model = str(body.get("model") or "claude-sonnet-4-5")
        stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        message_id = f"msg_{next(_ids):06d}"
        usage_start = {
            "input_tokens": usage.input_tokens,
            "output_tokens": 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        if not body.get("stream"):
            return Answer(
                body={
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": blocks,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": {**usage_start, "output_tokens": usage.output_tokens},
                }
            )
        events = [
            sse(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": usage_start,
                    },
                },
            )
        ]
        for index, block in enumerate(blocks):
            events.extend(_stream_block(index, block))
        events.append(
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": usage.output_tokens},
                },
            )
        )
        events.append(sse("message_stop", {"type": "message_stop"}))
        return Answer(events=events)


def _blocks(reply: Reply, workdir: str | None) -> tuple[list[dict[str, Any]], Usage]:
    if isinstance(reply, Text):
        return [{"type": "text", "text": reply.text}], reply.usage
    if isinstance(reply, WriteFile):
        target = reply.path
        if workdir and not posixpath.isabs(target):
            target = posixpath.join(workdir, target)
        call = ToolCall("Write", {"file_path": target, "content": reply.content}, reply.usage)
        return _blocks(call, workdir)
    if isinstance(reply, ToolCall):
        block = {
            "type": "tool_use",
            "id": f"toolu_{next(_ids):06d}",
            "name": reply.name,
            "input": reply.arguments,
        }
        return [block], reply.usage
    return [{"type": "text", "text": ""}], Usage()


def _stream_block(index: int, block: dict[str, Any]) -> list[bytes]:
    start: dict[str, Any]
    delta: dict[str, Any]
    if block["type"] == "text":
        start = {"type": "text", "text": ""}
        delta = {"type": "text_delta", "text": block["text"]}
    else:
        start = {**block, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
    return [
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        ),
        sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}),
        sse("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]
