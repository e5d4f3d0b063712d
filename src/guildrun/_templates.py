"""Placeholders in argv templates and prompts.

A template is parsed once into literal text and placeholders, and filled in one
pass: a value is never parsed again, so a prompt or a result that contains
``{prompt}`` or ``$(rm -rf ~)`` reaches the agent as those very characters.
``{{`` and ``}}`` stand for literal braces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

SIMPLE = frozenset(
    {
        "task_id",
        "prompt",
        "files",
        "reads",
        "instance",
        "attempt",
        "workdir",
        "specialist",
        "scope",
        "phase",
    }
)
REFS = frozenset({"result", "results"})


@dataclass(frozen=True, slots=True)
class Placeholder:
    name: str
    arg: str | None = None

    def __str__(self) -> str:
        return "{" + self.name + (f":{self.arg}" if self.arg is not None else "") + "}"


Part = str | Placeholder


class TemplateError(ValueError):
    pass


def parse(template: str) -> tuple[Part, ...]:
    """Split `template` into text and placeholders, or raise TemplateError saying where."""
    parts: list[Part] = []
    buf: list[str] = []
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c == "{":
            if template.startswith("{{", i):
                buf.append("{")
                i += 2
                continue
            end = template.find("}", i + 1)
            if end == -1:
                raise TemplateError(
                    f"unclosed '{{' at character {i + 1} (write '{{{{' for a brace)"
                )
            body = template[i + 1 : end]
            name, sep, arg = body.partition(":")
            if name in SIMPLE and not sep:
                ph = Placeholder(name)
            elif name in REFS and sep and arg:
                ph = Placeholder(name, arg)
            else:
                known = ", ".join("{" + s + "}" for s in sorted(SIMPLE))
                raise TemplateError(
                    f"unknown placeholder {{{body}}}; known: {known}, {{result:TASK_ID}}, "
                    "{results:PHASE} (write '{{' for a literal brace)"
                )
            if buf:
                parts.append("".join(buf))
                buf.clear()
            parts.append(ph)
            i = end + 1
        elif c == "}":
            if template.startswith("}}", i):
                buf.append("}")
                i += 2
                continue
            raise TemplateError(f"lone '}}' at character {i + 1} (write '}}}}' for a brace)")
        else:
            buf.append(c)
            i += 1
    if buf:
        parts.append("".join(buf))
    return tuple(parts)


def placeholders(parts: Sequence[Part]) -> list[Placeholder]:
    return [p for p in parts if isinstance(p, Placeholder)]


Lookup = Callable[[Placeholder], str]


def render(parts: Sequence[Part], lookup: Lookup) -> str:
    return "".join(p if isinstance(p, str) else lookup(p) for p in parts)


def render_argv(
    argv: Sequence[tuple[Part, ...]],
    lookup: Lookup,
    files: Sequence[str],
    reads: Sequence[str] = (),
) -> list[str]:
    """Fill an argv template; an element that is exactly ``{files}`` becomes one argument
    per file, and ``{reads}`` one per read-only input."""
    out: list[str] = []
    for parts in argv:
        if len(parts) == 1 and parts[0] == Placeholder("files"):
            out.extend(files)
        elif len(parts) == 1 and parts[0] == Placeholder("reads"):
            out.extend(reads)
        else:
            out.append(render(parts, lookup))
    return out


def simple_lookup(values: Mapping[str, str], refs: Lookup | None = None) -> Lookup:
    def lookup(ph: Placeholder) -> str:
        if ph.arg is None:
            return values[ph.name]
        if refs is None:
            raise KeyError(str(ph))
        return refs(ph)

    return lookup
