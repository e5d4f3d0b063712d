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

from collections.abc import Sequence

_MAX_LINE = 400  # characters of one message; a plan's values can be megabytes long


def one_line(text: str, limit: int = _MAX_LINE) -> str:
    """`text` on one line and at most `limit` characters, its middle cut if need be."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    half = (limit - 5) // 2
    return f"{flat[:half]} ... {flat[-half:]}"


class GuildrunError(Exception):
    """Base of every error guildrun raises on purpose."""

    exit_code = 1


class InputError(GuildrunError):
    """The input is wrong; the message says where, so the user can fix it without a traceback."""

    exit_code = 2


class PlanError(InputError):
    """A plan is invalid. Carries the file, the field path and, where known, the line.

    A plan with several mistakes raises one PlanError whose `problems` holds one
    PlanError per mistake (its own message is the first); each is one line.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        field: str | None = None,
        line: int | None = None,
        problems: Sequence[PlanError] = (),
    ) -> None:
        self.file = file
        self.field = field
        self.line = line
        self.reason = message
        where = one_line(file or "<plan>", 120)
        if line is not None:
            where += f":{line}"
        if field:
            where += f": {one_line(field, 120)}"
        self.problems: tuple[PlanError, ...] = tuple(problems) or (self,)
        super().__init__(f"{where}: {one_line(message)}")

    @classmethod
    def of(cls, problems: Sequence[PlanError]) -> PlanError:
        """One error that stands for all of `problems` (at least one)."""
        first = problems[0]
        if len(problems) == 1:
            return first
        return cls(
            first.reason, file=first.file, field=first.field, line=first.line, problems=problems
        )

    def lines(self) -> list[str]:
        """Every problem, one line each."""
        return [Exception.__str__(p) for p in self.problems]

    def __str__(self) -> str:
        return "\n".join(self.lines())


class UsageError(InputError):
    """A command line, environment variable, config value or run id is wrong."""


class Interrupted(GuildrunError):
    """The run was stopped by a signal; its state is journaled and it can be resumed."""

    exit_code = 130
