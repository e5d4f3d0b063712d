"""OpenAI's two APIs: Responses (`POST /v1/responses`, codex) and chat completions
(`POST /v1/chat/completions`, aider through litellm).

A `WriteFile` becomes what the request offers: codex's `apply_patch` (a custom tool, or a
function taking `input`), else its shell tool; for chat completions, which carry no tools
in aider's use, it is an aider SEARCH/REPLACE block in the text.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import time
from typing import Any

from ._dialect import Answer, sse, text_of
from ._replies import Error, Malformed, Reply, Text, ToolCall, Usage, WriteFile

_ids = itertools.count(1)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_overloaded",
}


def _error(status: int, message: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "server_error")
    return {"error": {"message": message or kind, "type": kind, "code": kind, "param": None}}


def add_file_patch(path: str, content: str) -> str:
    """An apply_patch envelope that creates (or replaces) one file."""
    lines = content.splitlines() or [""]
    body = "".join(f"+{line}\n" for line in lines)
    return f"*** Begin Patch\n*** Add File: {path}\n{body}*** End Patch\n"


def _tools(body: dict[str, Any]) -> dict[str, str]:
    """The offered tools by name, with their type ("function" or "custom").

    Codex 0.17x sends them in `tools`, or as an `additional_tools` input item grouped in
    namespaces; both are walked.
    """
    found: dict[str, str] = {}
    pending: list[Any] = list(body.get("tools") or [])
    for item in body.get("input") or []:
        if isinstance(item, dict) and item.get("type") == "additional_tools":
            pending += item.get("tools") or []
    while pending:
        tool = pending.pop()
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "namespace":
            pending += tool.get("tools") or []
            continue
        name = tool.get("name") or (tool.get("function") or {}).get("name")
        if isinstance(name, str):
            found[name] = str(tool.get("type") or "function")
    return found


class Responses:
    name = "responses"

    def conversation(self, body: dict[str, Any]) -> str:
        """The user messages before the model's first item (codex sends its environment
        and instructions as user messages ahead of the prompt)."""
        leading: list[str] = []
        for item in body.get("input") or []:
            if not isinstance(item, dict):
                continue
            role = item.get("role")
            if item.get("type", "message") == "message" and role == "user":
                leading.append(text_of(item.get("content")))
            elif role not in ("developer", "system"):
                break
        return "\n".join(leading)

    def workdir(self, body: dict[str, Any]) -> str | None:
        text = self.conversation(body)
        start = text.find("<cwd>")
        end = text.find("</cwd>", start)
        return text[start + 5 : end].strip() if start >= 0 and end > start else None

    def auxiliary(self, path: str, body: dict[str, Any]) -> bool:
        return not _tools(body)

    def error(self, status: int, message: str) -> dict[str, Any]:
        return _error(status, message)

    def render(self, reply: Reply, path: str, body: dict[str, Any], workdir: str | None) -> Answer:
        if isinstance(reply, Error):
            return Answer(status=reply.status, body=self.error(reply.status, reply.message or ""))
        if isinstance(reply, Malformed):
            return Answer(events=[f"event: response.created\ndata: {reply.text}\n\n".encode()])
        item, usage = self._item(reply, body)
        response_id = f"resp_{next(_ids):06d}"
        base = {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
        }
        done = {
            **base,
            "status": "completed",
            "output": [item],
            "usage": {
                "input_tokens": usage.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": usage.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage.input_tokens + usage.output_tokens,
            },
        }
        if not body.get("stream"):
            return Answer(body=done)
        events = [
            sse("response.created", {"type": "response.created", "response": base}),
            sse(
                "response.output_item.added",
                {"type": "response.output_item.added", "output_index": 0, "item": item},
            ),
        ]
        if item["type"] == "message":
            text = item["content"][0]["text"]
            events.append(
                sse(
                    "response.output_text.delta",
                    {"type": "response.output_text.delta", "item_id": item["id"], "output_index": 0,
                     "content_index": 0, "delta": text},
                )
            )  # fmt: skip
        events.append(
            sse(
                "response.output_item.done",
                {"type": "response.output_item.done", "output_index": 0, "item": item},
            )
        )
        events.append(sse("response.completed", {"type": "response.completed", "response": done}))
        return Answer(events=events)

    def _item(self, reply: Reply, body: dict[str, Any]) -> tuple[dict[str, Any], Usage]:
        call_id = f"call_{next(_ids):06d}"
        if isinstance(reply, WriteFile):
            reply = self._write_call(reply, _tools(body))
        if isinstance(reply, ToolCall):
            if _tools(body).get(reply.name) == "custom":
                item: dict[str, Any] = {
                    "type": "custom_tool_call",
                    "id": f"ctc_{call_id}",
                    "status": "completed",
                    "call_id": call_id,
                    "name": reply.name,
                    "input": str(reply.arguments.get("input", "")),
                }
                return item, reply.usage
            return self._function(reply, call_id), reply.usage
        text = reply.text if isinstance(reply, Text) else ""
        usage = reply.usage if isinstance(reply, Text) else Usage()
        item = {
            "type": "message",
            "id": f"msg_{call_id}",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        return item, usage

    def _write_call(self, reply: WriteFile, offered: dict[str, str]) -> ToolCall:
        """Codex's own way to write a file, from the tools this request offers."""
        patch = add_file_patch(reply.path, reply.content)
        if "apply_patch" in offered:
            return ToolCall("apply_patch", {"input": patch}, reply.usage)
        if offered.get("exec") == "custom":
            # Code mode (codex 0.17x): nested tools are called from a JavaScript cell.
            source = f"text(await tools.apply_patch({json.dumps(patch)}))"
            return ToolCall("exec", {"input": source}, reply.usage)
        path = shlex.quote(reply.path)
        script = (
            f'mkdir -p "$(dirname {path})" && '
            f"cat > {path} <<'GUILDRUN_EOF'\n{reply.content}GUILDRUN_EOF"
        )
        if "exec_command" in offered:
            return ToolCall("exec_command", {"cmd": script}, reply.usage)
        return ToolCall("shell", {"command": ["bash", "-lc", script]}, reply.usage)

    def _function(self, reply: ToolCall, call_id: str) -> dict[str, Any]:
        return {
            "type": "function_call",
            "id": f"fc_{call_id}",
            "status": "completed",
            "call_id": call_id,
            "name": reply.name,
            "arguments": json.dumps(reply.arguments),
        }


class Chat:
    name = "chat"

    def conversation(self, body: dict[str, Any]) -> str:
        """The first user message that is not a preamble (aider sends the files, the repo
        map and read-only files as user messages, each answered "Ok" by the assistant)."""
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        for i, message in enumerate(messages):
            if message.get("role") != "user":
                continue
            after = messages[i + 1] if i + 1 < len(messages) else {}
            if after.get("role") == "assistant" and text_of(after.get("content")).startswith("Ok"):
                continue
            return text_of(message.get("content"))
        return ""

    def workdir(self, body: dict[str, Any]) -> str | None:
        return None

    def auxiliary(self, path: str, body: dict[str, Any]) -> bool:
        return False

    def error(self, status: int, message: str) -> dict[str, Any]:
        return _error(status, message)

    def render(self, reply: Reply, path: str, body: dict[str, Any], workdir: str | None) -> Answer:
        if isinstance(reply, Error):
            return Answer(status=reply.status, body=self.error(reply.status, reply.message or ""))
        if isinstance(reply, Malformed):
            return Answer(raw=reply.text.encode(), headers={"content-type": "application/json"})
        usage = getattr(reply, "usage", Usage())
        if isinstance(reply, WriteFile):
            text = search_replace_block(reply.path, reply.content, _shown(body, reply.path))
        elif isinstance(reply, Text):
            text = reply.text
        else:
            text = json.dumps(reply.arguments) if isinstance(reply, ToolCall) else ""
        chat_id = f"chatcmpl-{next(_ids):06d}"
        model = str(body.get("model") or "gpt-4o")
        counts = {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        }
        common = {"id": chat_id, "created": int(time.time()), "model": model}
        if not body.get("stream"):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
            return Answer(
                body={**common, "object": "chat.completion", "choices": [choice], "usage": counts}
            )
        chunk = {**common, "object": "chat.completion.chunk"}
        first = {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}
        events = [
            sse(None, {**chunk, "choices": [first]}),
            sse(None, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            sse(None, {**chunk, "choices": [], "usage": counts}),
            sse(None, "[DONE]"),
        ]  # fmt: skip
        return Answer(events=events)


def search_replace_block(path: str, content: str, current: str = "") -> str:
    """Aider's edit format: SEARCH the file's whole current text (empty for a new file)
    and REPLACE it."""
    return f"{path}\n```\n<<<<<<< SEARCH\n{current}=======\n{content}>>>>>>> REPLACE\n```\n"


def _shown(body: dict[str, Any], path: str) -> str:
    """The file's text as aider last showed it to the model ("PATH\n```\n...\n```")."""
    listing = re.compile(rf"(?:^|\n){re.escape(path)}\n```[^\n]*\n(.*?)^```", re.M | re.S)
    found = ""
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            for match in listing.finditer(text_of(message.get("content"))):
                found = match.group(1)
    return found
