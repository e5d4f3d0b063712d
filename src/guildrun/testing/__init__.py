"""guildrun.testing: rehearse a plan with the real agent CLIs against a scripted model.

`ModelServer` is a model provider on 127.0.0.1 that answers from a script instead of a
model, at no cost: point a CLI at it and the real program runs, calls its own tools and
edits real files, while you decide what the "model" says, when it is rate limited, and
when it never answers.

    from guildrun.testing import ModelServer, Text, WriteFile, Error

    with ModelServer() as server:
        server.script(WriteFile("api.py", "def f(): ...\\n"), Text("Added f."), match="api")
        server.script(Error(429, retry_after_s=2), Text("Done."), match="tests")
        env = {**os.environ, **server.env()}  # points claude, codex, gemini, aider here
        # claude: ANTHROPIC_BASE_URL=server.url ANTHROPIC_API_KEY=anything
        # codex:  a provider whose base_url is server.url + "/v1" (wire_api = "responses"),
        #         which guildrun's preset makes from OPENAI_BASE_URL
        # gemini: GOOGLE_GEMINI_BASE_URL=server.url GEMINI_API_KEY=anything
        # aider:  OPENAI_API_BASE=server.url + "/v1", --model openai/NAME
        subprocess.run(["claude", "-p", "add f to api.py"], env=env)
        print(len(server.requests), [r.status for r in server.turns()])

Replies (one per request of a conversation; the last one repeats):

- `Text(text)`: the model answers and ends its turn.
- `WriteFile(path, content)`: the model calls the CLI's own file-writing tool.
- `ToolCall(name, arguments)`: any tool call, passed through as written.
- `Error(status, retry_after_s=None)`, `overloaded()`: an HTTP error as the provider sends it.
- `Malformed()`: a 200 whose body is broken.
- `Hang()`: no answer until the server stops.

Each reply carries `Usage(input_tokens, output_tokens)`, which the CLIs turn into their
own token and cost figures. `server.storm(seconds, status=429, retry_after_s=1)` refuses
every request for a while, as a provider-wide limit does. `server.requests` records every
request (time, path, status, conversation, headers without credentials, JSON body).
"""

from ._replies import Error as Error
from ._replies import Hang as Hang
from ._replies import Malformed as Malformed
from ._replies import Reply as Reply
from ._replies import Text as Text
from ._replies import ToolCall as ToolCall
from ._replies import Usage as Usage
from ._replies import WriteFile as WriteFile
from ._replies import overloaded as overloaded
from ._server import ModelServer as ModelServer
from ._server import Request as Request

__all__ = [
    "Error",
    "Hang",
    "Malformed",
    "ModelServer",
    "Reply",
    "Request",
    "Text",
    "ToolCall",
    "Usage",
    "WriteFile",
    "overloaded",
]
