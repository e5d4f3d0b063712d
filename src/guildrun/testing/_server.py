"""The scripted model server: real HTTP on 127.0.0.1, replies from a script.

Each conversation (told apart by its first user message, which every turn repeats)
walks its own copy of the script, one reply per request; the last reply repeats once
the script runs out, so `script(Error(401))` refuses every turn and a finished agent
asked again just ends again. Side requests (titles, quota probes, token counts) are
answered with a short text without moving the script. Every request is recorded with
its time and status, so a test can assert how much traffic a storm of 429s caused.
"""

from __future__ import annotations

import gzip
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._anthropic import Anthropic
from ._dialect import Answer, Dialect
from ._gemini import Gemini
from ._openai import Chat, Responses
from ._replies import Error, Hang, Reply, Text

_MAX_BODY = 64 << 20
# Never recorded: a test's record may be printed, and a user may rehearse with a real key.
_SECRET_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key", "api-key", "cookie"})


@dataclass
class Request:
    """One request the server received, as a test sees it afterwards."""

    at: float  # time.monotonic() when it arrived
    method: str
    path: str
    dialect: str | None
    conversation: str
    auxiliary: bool
    headers: dict[str, str]
    body: dict[str, Any]
    status: int | None = None  # None while it hangs, or when the client went away


@dataclass
class _Script:
    replies: tuple[Reply, ...]
    match: str | None
    cursors: dict[str, int] = field(default_factory=dict)

    def next(self, conversation: str) -> Reply:
        at = self.cursors.get(conversation, 0)
        self.cursors[conversation] = at + 1
        return self.replies[min(at, len(self.replies) - 1)]


@dataclass
class _Storm:
    until: float
    status: int
    retry_after_s: float | None


def _dialect_for(path: str) -> Dialect | None:
    if path.endswith(("/messages", "/messages/count_tokens")):
        return Anthropic()
    if path.endswith("/responses"):
        return Responses()
    if path.endswith("/chat/completions"):
        return Chat()
    if ":" in path.rsplit("/", 1)[-1]:
        return Gemini()
    return None


class ModelServer:
    """A model provider on 127.0.0.1 that answers from a script.

        with ModelServer() as server:
            server.script(WriteFile("hello.txt", "hi\\n"), Text("Wrote hello.txt."))
            env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "test"}
            ...  # run `claude -p ...` with env; then look at server.requests

    It speaks Anthropic Messages (`/v1/messages`), OpenAI Responses (`/v1/responses`),
    OpenAI chat completions (`/v1/chat/completions`) and Gemini
    (`/v1beta/models/M:streamGenerateContent`), streamed or not as the client asks.
    """

    def __init__(self, *replies: Reply) -> None:
        self._lock = threading.Lock()
        self._scripts: list[_Script] = []
        self._default = _Script(replies or (Text("Done."),), None)
        self._storm: _Storm | None = None
        self._stopping = threading.Event()
        self._requests: list[Request] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting -------------------------------------------------------------------

    def script(self, *replies: Reply, match: str | None = None) -> None:
        """The replies for conversations whose first user message contains `match`.

        Without `match` it replaces the default script. Scripts with a `match` are tried
        in the order they were given, the default last.
        """
        if not replies:
            raise ValueError("a script needs at least one reply")
        with self._lock:
            if match is None:
                self._default = _Script(tuple(replies), None)
            else:
                self._scripts.append(_Script(tuple(replies), match))

    def storm(
        self, seconds: float, *, status: int = 429, retry_after_s: float | None = 1.0
    ) -> None:
        """Answer every request with `status` for the next `seconds` (a provider-wide limit)."""
        with self._lock:
            self._storm = _Storm(time.monotonic() + seconds, status, retry_after_s)

    @property
    def requests(self) -> list[Request]:
        """A copy of every request so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def turns(self) -> list[Request]:
        """The requests that were turns of a conversation (side requests left out)."""
        return [r for r in self.requests if r.dialect and not r.auxiliary]

    # -- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`, without a trailing slash or `/v1`."""
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def env(self) -> dict[str, str]:
        """Environment variables that point every supported CLI at this server (with
        keys that are not keys), for a rehearsal: `{**os.environ, **server.env()}`."""
        return {
            "ANTHROPIC_BASE_URL": self.url,
            "ANTHROPIC_API_KEY": "rehearsal-not-a-key",
            "OPENAI_BASE_URL": f"{self.url}/v1",  # codex, through the preset's provider
            "OPENAI_API_BASE": f"{self.url}/v1",  # aider
            "OPENAI_API_KEY": "rehearsal-not-a-key",
            "GOOGLE_GEMINI_BASE_URL": self.url,
            "GEMINI_API_KEY": "rehearsal-not-a-key",
        }

    def start(self) -> ModelServer:
        handler = type("_Handler", (_Handler,), {"model_server": self})
        self._httpd = _QuietServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="guildrun-model-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; requests held by `Hang` are released and closed unanswered."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answering (called from the handler threads) --------------------------------

    def _choose(self, request: Request, dialect: Dialect) -> Reply:
        with self._lock:
            self._requests.append(request)
            storm = self._storm
            if storm is not None and time.monotonic() < storm.until:
                return Error(storm.status, storm.retry_after_s, "rate limited (storm)")
            if request.auxiliary:
                return Text("OK")
            for script in self._scripts:
                if script.match is not None and script.match in request.conversation:
                    return script.next(request.conversation)
            return self._default.next(request.conversation)


class _QuietServer(ThreadingHTTPServer):
    """A client that drops a kept-alive connection is normal, not an error to print."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    model_server: ModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the server's record is `ModelServer.requests`, not stderr."""

    def do_GET(self) -> None:
        self._handle({})

    def do_POST(self) -> None:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            raw = self._read_chunked()
        else:
            length = min(int(self.headers.get("content-length") or 0), _MAX_BODY)
            raw = self.rfile.read(length) if length else b""
        if self.headers.get("content-encoding", "").lower() == "gzip":
            raw = gzip.decompress(raw)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        self._handle(body if isinstance(body, dict) else {})

    def _read_chunked(self) -> bytes:
        data = bytearray()
        while len(data) <= _MAX_BODY:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():  # trailers, up to the blank line
                    pass
                break
            data += self.rfile.read(size)
            self.rfile.readline()  # the CRLF after each chunk
        return bytes(data)

    def _handle(self, body: dict[str, Any]) -> None:
        server = self.model_server
        path = self.path.split("?", 1)[0]
        dialect = _dialect_for(path)
        request = Request(
            at=time.monotonic(),
            method=self.command,
            path=self.path,
            dialect=dialect.name if dialect else None,
            conversation=dialect.conversation(body) if dialect else "",
            auxiliary=dialect.auxiliary(path, body) if dialect else True,
            headers={
                k.lower(): v for k, v in self.headers.items() if k.lower() not in _SECRET_HEADERS
            },
            body=body,
        )
        if dialect is None:
            with server._lock:
                server._requests.append(request)
            self._send(request, Answer(status=404, body={"error": {"message": "not found"}}))
            return
        reply = server._choose(request, dialect)
        if isinstance(reply, Hang):
            server._stopping.wait(reply.max_s)
            self.close_connection = True
            return
        answer = dialect.render(reply, path, body, dialect.workdir(body))
        if isinstance(reply, Error) and reply.retry_after_s is not None:
            answer.headers["retry-after"] = f"{reply.retry_after_s:g}"
        self._send(request, answer)

    def _send(self, request: Request, answer: Answer) -> None:
        request.status = answer.status
        try:
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            if answer.streaming:
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                self.end_headers()
                for chunk in answer.events:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                self.close_connection = True
                return
            data = answer.raw if answer.raw is not None else json.dumps(answer.body).encode()
            if "content-type" not in answer.headers:
                self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            request.status = None
            self.close_connection = True
