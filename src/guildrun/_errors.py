"""The error tree, with the exit code on each class (as click does).

    GuildrunError                 exit 1: something went wrong
    ├── InputError                exit 2: the user's input is wrong; nothing ran
    │   ├── PlanError             a plan file (or plan object) is invalid
    │   └── UsageError            a command line, setting or run id is wrong
    └── Interrupted               exit 130: Ctrl-C or SIGTERM stopped the run

Task failures are not exceptions: they are outcomes, journaled and summarised,
and the run's exit code (1) comes from the summary.
"""

from __future__ import annotations


class GuildrunError(Exception):
    """Base of every error guildrun raises on purpose."""

    exit_code = 1


class InputError(GuildrunError):
    """The input is wrong; the message says where, so the user can fix it without a traceback."""

    exit_code = 2


class PlanError(InputError):
    """A plan is invalid. Carries the file, the field path and, where known, the line."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.file = file
        self.field = field
        self.line = line
        self.reason = message
        where = file or "<plan>"
        if line is not None:
            where += f":{line}"
        if field:
            where += f": {field}"
        super().__init__(f"{where}: {message}")


class UsageError(InputError):
    """A command line, environment variable, config value or run id is wrong."""


class Interrupted(GuildrunError):
    """The run was stopped by a signal; its state is journaled and it can be resumed."""

    exit_code = 130
