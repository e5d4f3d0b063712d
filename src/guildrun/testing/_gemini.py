"""Google's Gemini API (`/v1beta/models/M:streamGenerateContent?alt=sse`), as gemini-cli
speaks it.

A turn is a streamed request that offers function declarations; the CLI's side requests
(`:generateContent` with a JSON schema, for its next-speaker and routing checks, and
`:countTokens`) are answered without moving the script, with the smallest JSON that fits
the schema asked for (the first value of each enum: "user" speaks next, so the agent stops).
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any

from ._dialect import Answer, sse
from ._replies import Error, Malformed, Reply, Text, ToolCall, Usage, WriteFile

_WORKDIR = re.compile(r"working in the directory:?\s*(/\S+)", re.IGNORECASE)
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def _user_texts(body: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    for content in body.get("contents") or []:
        if isinstance(content, dict) and content.get("role", "user") == "user":
            for part in content.get("parts") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return texts


class Gemini:
    name = "gemini"

    def conversation(self, body: dict[str, Any]) -> str:
        return "\n".join(_user_texts(body))

    def workdir(self, body: dict[str, Any]) -> str | None:
        for text in _user_texts(body):
            found = _WORKDIR.search(text)
            if found:
                return found.group(1).rstrip(".")
        return None

    def auxiliary(self, path: str, body: dict[str, Any]) -> bool:
        return ":streamGenerateContent" not in path

    def error(self, status: int, message: str) -> dict[str, Any]:
        return {"error": {"code": status, "message": message or _STATUS.get(status, "error"),
                          "status": _STATUS.get(status, "UNKNOWN")}}  # fmt: skip

    def render(self, reply: Reply, path: str, body: dict[str, Any], workdir: str | None) -> Answer:
        if ":countTokens" in path:
            return Answer(body={"totalTokens": 100})
        if isinstance(reply, Error):
            body_ = self.error(reply.status, reply.message or "")
            if reply.retry_after_s is not None:
                # Gemini says when to retry in the body (google.rpc.RetryInfo), not a header.
                body_["error"]["details"] = [
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                     "retryDelay": f"{reply.retry_after_s:g}s"}
                ]  # fmt: skip
            return Answer(status=reply.status, body=body_)
        if isinstance(reply, Malformed):
            return Answer(events=[f"data: {reply.text}\n\n".encode()])
        config = body.get("generationConfig") or {}
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        if self.auxiliary(path, body) and isinstance(schema, dict):
            reply = Text(json.dumps(fill(schema)))
        part, usage = _part(reply, workdir)
        chunk = {
            "candidates": [
                {"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}
            ],
            "usageMetadata": {
                "promptTokenCount": usage.input_tokens,
                "candidatesTokenCount": usage.output_tokens,
                "totalTokenCount": usage.input_tokens + usage.output_tokens,
            },
            "modelVersion": path.rsplit("/", 1)[-1].split(":", 1)[0],
        }
        if ":streamGenerateContent" in path:
            return Answer(events=[sse(None, chunk)])
        return Answer(body=chunk)


def _part(reply: Reply, workdir: str | None) -> tuple[dict[str, Any], Usage]:
    if isinstance(reply, WriteFile):
        target = reply.path
        if workdir and not posixpath.isabs(target):
            target = posixpath.join(workdir, target)
        reply = ToolCall("write_file", {"file_path": target, "content": reply.content}, reply.usage)
    if isinstance(reply, ToolCall):
        return {"functionCall": {"name": reply.name, "args": reply.arguments}}, reply.usage
    if isinstance(reply, Text):
        return {"text": reply.text}, reply.usage
    return {"text": ""}, Usage()


def fill(schema: dict[str, Any]) -> Any:
    """The smallest value that fits a JSON schema (first enum value, empty string, ...)."""
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = str(schema.get("type", "object")).lower()
    if kind == "object":
        properties = schema.get("properties") or {}
        return {k: fill(v) for k, v in properties.items() if isinstance(v, dict)}
    if kind == "array":
        return []
    if kind in ("number", "integer"):
        low = schema.get("minimum")
        return low if isinstance(low, int | float) else 0
    if kind == "boolean":
        return False
    return "ok"
