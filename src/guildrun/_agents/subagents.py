"""Claude Code subagent files as specialists: `.claude/agents/*.md`.

A subagent file is YAML front matter (`name`, `description`, optional `tools` as a
comma-separated string or a list, optional `model`) between `---` lines, and a body
that is its system prompt. Users already write these for Claude Code; reading them lets a
plan say `specialist: code-reviewer` without restating the prompt. Subagent files are
often written by language models, so every field is checked and an error names the file,
the field and the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .._errors import PlanError
from .base import AgentSpec

# `inherit` (the caller's model) means: no --model flag at all.
_INHERIT = "inherit"
_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Subagent:
    name: str
    description: str
    spec: AgentSpec
    path: Path


def discover(root: Path) -> dict[str, Subagent]:
    """Every subagent file under `root/.claude/agents`, by name (sorted by file name)."""
    folder = root / ".claude" / "agents"
    found: dict[str, Subagent] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.md")):
        agent = load(path)
        if agent.name in found:
            raise PlanError(
                f"subagent {agent.name!r} is also defined in {found[agent.name].path.name}",
                file=str(path),
                field="name",
                line=2,
            )
        found[agent.name] = agent
    return found


def load(path: Path) -> Subagent:
    """One subagent file, checked."""
    where = str(path)
    if not path.is_file() or path.stat().st_size > _MAX_BYTES:
        raise PlanError("not a readable subagent file (at most 1 MiB)", file=where)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PlanError(f"cannot read it: {error}", file=where) from error
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise PlanError(
            "a subagent file starts with '---' and YAML front matter", file=where, line=1
        )
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise PlanError("the front matter has no closing '---'", file=where, line=1) from None
    try:
        meta = yaml.safe_load("\n".join(lines[1:end])) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 1
        problem = getattr(error, "problem", None) or "cannot be parsed"
        raise PlanError(
            f"front matter is not valid YAML: {problem}", file=where, line=line
        ) from error
    if not isinstance(meta, dict):
        raise PlanError("front matter must be a mapping of fields", file=where, line=2)

    def line_of(field: str) -> int:
        for i in range(1, end):
            if lines[i].lstrip().startswith(f"{field}:"):
                return i + 1
        return 1

    def string(field: str, required: bool) -> str | None:
        value = meta.get(field)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise PlanError(
                "must be a non-empty string", file=where, field=field, line=line_of(field)
            )
        return value.strip()

    name = string("name", True)
    description = string("description", True)
    assert name is not None and description is not None
    if not all(c.isalnum() or c in "-_" for c in name):
        raise PlanError(
            "use letters, digits, '-' and '_' only", file=where, field="name", line=line_of("name")
        )
    model = string("model", False)
    tools = _tools(meta.get("tools"), where, line_of("tools"))
    prompt = "\n".join(lines[end + 1 :]).strip()
    spec = AgentSpec(
        agent="claude",
        model=None if model == _INHERIT else model,
        system_prompt=prompt or None,
        tools=tools,
    )
    return Subagent(name=name, description=description, spec=spec, path=path)


def _tools(value: Any, where: str, line: int) -> tuple[str, ...]:
    if value is None:
        return ()
    items: list[Any]
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, list):
        items = value
    else:
        raise PlanError(
            "a comma-separated string or a list of tool names", file=where, field="tools", line=line
        )
    tools: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise PlanError("every tool is a non-empty name", file=where, field="tools", line=line)
        tools.append(item.strip())
    return tuple(tools)
