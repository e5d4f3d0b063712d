"""The rich consoles guildrun prints through, made once for every command.

Off a terminal (a pipe, a file, CI) nobody reflows text: a log path or a tool's error
cut at 80 columns can no longer be copied, clicked or grepped. So there lines are as
long as they are, and only a terminal gets rich's wrapping at its own width.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

# Wide enough that nothing guildrun prints is wrapped; tables still size to their content.
UNWRAPPED_WIDTH = 100_000


def make_console(*, stderr: bool = False, file: IO[str] | None = None) -> Console:
    from rich.console import Console

    console = Console(stderr=stderr, file=file, highlight=False)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, file=file, highlight=False, soft_wrap=True, width=UNWRAPPED_WIDTH)
