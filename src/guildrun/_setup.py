"""`guildrun setup`: a first guildrun.toml from what the project looks like.

It reads the tree (git's view of it when there is one), counts languages by file
extension, finds the top-level components and the test layout, and reads the Claude
Code subagents in ``.claude/agents/*.md``; then it suggests one specialist per kind of
work, each with the file patterns that route tasks to it, and the seed's limits.
With ``--claude`` it also writes a Claude Code slash command that has Claude plan
work for guildrun and run it. It never overwrites a file without ``--force``;
``--dry-run`` prints what it would write.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from ._errors import UsageError
from ._fanout import project_files
from ._paths import find_root

LANGUAGES = {
    ".py": "Python",
    ".ts": "TypeScript",
    ".tsx": "TypeScript",
    ".js": "JavaScript",
    ".jsx": "JavaScript",
    ".mjs": "JavaScript",
    ".go": "Go",
    ".rs": "Rust",
    ".java": "Java",
    ".kt": "Kotlin",
    ".rb": "Ruby",
    ".php": "PHP",
    ".cs": "CSharp",
    ".c": "C",
    ".h": "C",
    ".cc": "CPlusPlus",
    ".cpp": "CPlusPlus",
    ".hpp": "CPlusPlus",
    ".swift": "Swift",
    ".sh": "Shell",
}
# Names of files that hold tests, per the usual conventions of each language.
TEST_FILES = (
    "test_*.py",
    "*_test.py",
    "*_test.go",
    "*.test.ts",
    "*.test.tsx",
    "*.test.js",
    "*.spec.ts",
    "*.spec.js",
    "*_spec.rb",
    "*Test.java",
)
TEST_DIRS = ("tests", "test", "__tests__", "spec")
DOC_DIRS = ("docs", "doc")
# Folders that group components rather than being one.
CONTAINERS = ("src", "lib", "packages", "apps", "services", "crates", "cmd", "internal")
CLAUDE = ["claude", "-p", "{prompt}", "--permission-mode", "acceptEdits"]
SETTINGS = {"per_agent_type": 3, "total_parallel": 20}  # the seed's defaults


@dataclass
class Agent:
    """A Claude Code subagent, from the front matter of .claude/agents/NAME.md."""

    name: str
    description: str = ""
    tools: list[str] = field(default_factory=list)
    model: str | None = None
    path: str = ""


@dataclass
class Survey:
    """What `setup` found in the project."""

    languages: Counter[str]
    components: list[str]
    test_dirs: list[str]
    test_patterns: list[str]
    docs: list[str]
    agents: list[Agent]
    notes: list[str]


def survey(root: Path) -> Survey:
    files = project_files(root)
    languages: Counter[str] = Counter()
    for f in files:
        lang = LANGUAGES.get(PurePosixPath(f).suffix.lower())
        if lang is not None:
            languages[lang] += 1
    test_dirs = sorted(
        {p for f in files for p in _parents(f) if PurePosixPath(p).name in TEST_DIRS}, key=len
    )
    test_dirs = [d for d in test_dirs if not any(d.startswith(t + "/") for t in test_dirs)]
    names = {PurePosixPath(f).name for f in files}
    test_patterns = [p for p in TEST_FILES if any(PurePosixPath(n).match(p) for n in names)]
    docs = [d for d in DOC_DIRS if any(f.startswith(d + "/") for f in files)]
    notes: list[str] = []
    agents = read_agents(root, notes)
    return Survey(
        languages,
        _components(files, set(test_dirs) | set(docs)),
        test_dirs,
        test_patterns,
        docs,
        agents,
        notes,
    )


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _components(files: list[str], skip: set[str]) -> list[str]:
    """Top-level folders with code (one level down inside src/, packages/ ...)."""
    found: set[str] = set()
    for f in files:
        if PurePosixPath(f).suffix.lower() not in LANGUAGES:
            continue
        parts = f.split("/")
        if len(parts) < 2 or parts[0].startswith(".") or parts[0] in skip:
            continue
        if parts[0] in CONTAINERS and len(parts) > 2:
            found.add(f"{parts[0]}/{parts[1]}")
        else:
            found.add(parts[0])
    return sorted(c for c in found if not any(c == s or c.startswith(s + "/") for s in skip))


def read_agents(root: Path, notes: list[str]) -> list[Agent]:
    """Subagents from .claude/agents/*.md; a file that cannot be read is noted, not fatal."""
    folder = root / ".claude" / "agents"
    agents: list[Agent] = []
    if not folder.is_dir():
        return agents
    for path in sorted(folder.glob("*.md")):
        rel = path.relative_to(root).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            notes.append(f"{rel}: skipped: cannot read it ({exc})")
            continue
        match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.DOTALL)
        if match is None:
            notes.append(f"{rel}: skipped: no YAML front matter between '---' lines")
            continue
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 2}" if mark is not None else ""
            notes.append(f"{rel}{line}: skipped: invalid front matter")
            continue
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            notes.append(f"{rel}: skipped: its front matter has no 'name'")
            continue
        tools = meta.get("tools") or []
        if isinstance(tools, str):
            tools = [t.strip() for t in tools.split(",") if t.strip()]
        model = meta.get("model")
        agents.append(
            Agent(
                name=meta["name"],
                description=str(meta.get("description") or "").strip(),
                tools=[str(t) for t in tools] if isinstance(tools, list) else [],
                model=str(model) if model else None,
                path=rel,
            )
        )
    return agents


# ------------------------------------------------------------------ writing


def specialists(s: Survey) -> dict[str, dict[str, Any]]:
    """Suggested specialists in routing order: tests, docs, one per language, subagents."""
    out: dict[str, dict[str, Any]] = {}
    test_globs = [f"{d}/**" for d in s.test_dirs] + [f"**/{p}" for p in s.test_patterns]
    if test_globs:
        out["tests"] = {
            "why": "test files (" + ", ".join(s.test_dirs + s.test_patterns) + ")",
            "run": _claude("the test specialist (you write and fix tests)"),
            "files": test_globs,
        }
    if s.docs:
        out["docs"] = {
            "why": "documentation (" + ", ".join(f"{d}/" for d in s.docs) + ")",
            "run": _claude("the documentation specialist"),
            "files": [f"{d}/**" for d in s.docs] + ["*.md"],
        }
    for lang, count in _by_count(s.languages):
        exts = sorted(e for e, name in LANGUAGES.items() if name == lang)
        out[_name(lang)] = {
            "why": f"{lang} code ({_files(count)})",
            "run": _claude(f"the {lang} specialist"),
            "files": [f"**/*{e}" for e in exts],
        }
    for agent in s.agents:
        name = _name(agent.name)
        if name in out:
            name = f"agent-{name}"
        facts = [agent.description] if agent.description else []
        if agent.tools:
            facts.append("tools: " + ", ".join(agent.tools))
        if agent.model:
            facts.append(f"model: {agent.model}")
        out[name] = {
            "why": f"Claude Code subagent {agent.path}"
            + (": " + "; ".join(facts) if facts else ""),
            # The subagent keeps its own tools, model and system prompt; the task asks for it.
            "run": [
                "claude",
                "-p",
                f"Use the {_literal(agent.name)} subagent for this task. {{prompt}}",
                "--permission-mode",
                "acceptEdits",
            ],
            "files": [],
        }
    return out


def _claude(role: str) -> list[str]:
    return [
        *CLAUDE,
        "--append-system-prompt",
        f"You are {role} of this project, one of several agents working on it in "
        "parallel. Change only the files your task names.",
    ]


def _by_count(counts: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _literal(text: str) -> str:
    """Text that a template shows as written (a name with braces is not a placeholder)."""
    return text.replace("{", "{{").replace("}", "}}")


def _one_line(text: str, most: int = 300) -> str:
    """For a TOML comment: a line break in a subagent's description must not end it."""
    flat = " ".join(text.split())
    return flat if len(flat) <= most else flat[: most - 3] + "..."


def _name(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-") or "agent"


def config_text(s: Survey) -> str:
    lines = ["# guildrun.toml: written by `guildrun setup` from what it found here."]
    langs = ", ".join(f"{k} ({_files(n)})" for k, n in _by_count(s.languages)) or "none"
    lines.append(f"#   languages: {langs}")
    lines.append(f"#   components: {', '.join(s.components) or 'none'}")
    tests = ", ".join([f"{d}/" for d in s.test_dirs] + s.test_patterns) or "none found"
    lines.append(f"#   tests: {tests}")
    agents = _one_line(", ".join(a.name for a in s.agents)) or "none"
    lines.append(f"#   Claude Code subagents (.claude/agents): {agents}")
    lines += [
        "# Edit freely. A task naming no specialist goes to the first whose `files` patterns",
        "# match all of its files; `guildrun plan PLAN` shows the deal before anything runs.",
        "",
        "[settings]",
        f"per_agent_type = {SETTINGS['per_agent_type']}   # instances of one specialist at most",
        f"total_parallel = {SETTINGS['total_parallel']}  # agents at once, in all",
    ]
    for name, spec in specialists(s).items():
        key = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)
        lines += ["", f"# {_one_line(spec['why'])}", f"[specialists.{key}]"]
        lines.append(f"run = {_toml_list(spec['run'])}")
        lines.append(f"files = {_toml_list(spec['files'])}")
    return "\n".join(lines) + "\n"


def _toml_list(items: list[str]) -> str:
    # A JSON string is a valid TOML basic string (same escapes), so json.dumps quotes them.
    return "[" + ", ".join(json.dumps(i, ensure_ascii=False) for i in items) + "]"


SLASH_COMMAND = """\
---
description: Plan work for parallel agents and run it with guildrun
argument-hint: what to do, e.g. "add type hints to every module in src/"
allowed-tools: Read, Glob, Grep, Write, Bash(guildrun:*), mcp__guildrun__plan, \
mcp__guildrun__run, mcp__guildrun__status, mcp__guildrun__wait, mcp__guildrun__cancel, \
mcp__guildrun__resume, mcp__guildrun__report
---

Carry out this request with guildrun, which runs many agent tasks on this project in
parallel, under limits, each task owning its files:

$ARGUMENTS

1. Read `guildrun.toml`: its specialists (and the files each routes) and limits. Look at
   the files the request touches (Glob, Grep, Read) until you can split it into tasks.
2. Write a guildrun plan as YAML in `.guildrun/plans/` (`guildrun schema` prints the JSON
   Schema). One task per independent piece of work:
   - `id`, `specialist` (or `files` that a specialist's patterns route), `prompt`: a
     self-contained instruction, since each task's agent sees nothing else;
   - `files`: the files it may change. Two tasks never own the same file unless one
     `depends_on` the other; a task that must read another's output depends on it and
     may use `{result:ID}` in its prompt;
   - `phase` where the work has stages: research, planning, implementation, validation
     (each phase ends before the next begins; `{results:PHASE}` reads an earlier one).
   For the same change over many files, `guildrun fanout SPECIALIST --files GLOB --prompt
   "... {file} ..." --dry-run` writes such a plan for you.
3. Check it: the `plan` tool of the guildrun MCP server (or `guildrun plan FILE
   --simulate`). Fix what it reports; it shows which instance gets which task and the
   predicted wall time.
4. Run it: the `run` tool, then `wait` (timeout_s 60 to 300, repeated) and `status` to
   follow progress. Without the MCP server: `guildrun run FILE --events -`, which prints
   one JSON object per event while it runs and the summary at the end.
5. If tasks failed: read each failure's cause and log tail, fix the plan or the prompts,
   and run only those again with `guildrun rerun RUN --failed`. `cancel` stops a run;
   `resume` continues it.
6. Report to the user: tasks done, failed and skipped (with causes), wall time, speedup
   and utilization from the summary, what changed (`git diff --stat`), and the report
   (`guildrun report RUN`).
"""


def cmd_setup(root_arg: str | None, *, claude: bool, force: bool, dry_run: bool) -> int:
    root = find_root(root_arg)
    s = survey(root)
    files = {root / "guildrun.toml": config_text(s)}
    if claude:
        files[root / ".claude" / "commands" / "guildrun.md"] = SLASH_COMMAND
    for note in s.notes:
        print(f"note: {note}")
    if dry_run:
        for path, text in files.items():
            print(f"--- would write {path}")
            print(text, end="")
        return 0
    existing = [p for p in files if p.exists() or p.is_symlink()]
    if existing and not force:
        shown = ", ".join(str(p) for p in existing)
        raise UsageError(f"{shown}: already there; keep it, or overwrite with --force")
    inside = root.resolve()
    for path in files:
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise UsageError(f"{path}: not a regular file; refusing to write through it")
        folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())
        if not folder.resolve().is_relative_to(inside):
            raise UsageError(f"{path}: its folder leads out of the project; refusing")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    names = ", ".join(specialists(s)) or "none"
    print(f"specialists: {names}; per_agent_type 3, total_parallel 20")
    if claude:
        print(
            "in Claude Code: /guildrun WHAT TO DO (add the MCP server with: "
            f"claude mcp add guildrun -- guildrun mcp --root {root})"
        )
    return 0
