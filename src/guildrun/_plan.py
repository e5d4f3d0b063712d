"""The plan: what to run, by whom, owning what.

Two forms live here. `Plan` is what the user writes (YAML, JSON, or Python objects),
validated by pydantic so the JSON Schema and the checks cannot drift apart.
`CompiledPlan` is what the engine runs: every task routed to a specialist, every
path normalised and proven to stay inside the root, every reference resolved,
cycles refused. Errors carry the field path; the file loader turns it into a line.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import heapq
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PrivateAttr,
    ValidationError,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from . import _templates as tpl
from ._agents.base import AgentSpec
from ._errors import PlanError
from ._glob import Glob
from ._limits import MAX_ARG_STRLEN, MAX_NAME, arg_max, env_problem, too_long, total_cost
from ._lint import inline_code, missing_program
from ._paths import glob_to_regex, normalize_owned_path
from ._policies.retry import RetrySettings
from ._settings import Settings

if TYPE_CHECKING:
    import yaml

PHASES: tuple[str, ...] = ("research", "planning", "implementation", "validation")
Phase = Literal["research", "planning", "implementation", "validation"]
FieldPath = tuple[str | int, ...]
MAX_PROBLEMS = 20  # errors named at once; more are counted
SHOWN_CYCLE = 5  # members of a dependency cycle named in its error
MAX_PLAN_BYTES = 128 * 2**20


def _as_str(value: Any) -> Any:
    # YAML reads `id: 1` as an int; ids are names, so accept numbers and keep their spelling.
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(value)
    return value


class Specialist(BaseModel):
    """One agent type: how to run a single task of it."""

    model_config = ConfigDict(extra="forbid")

    run: list[str] | str | None = Field(
        default=None,
        description=(
            "Command for one task: a list of arguments (or one string split like a shell "
            "would, but never run by one). Placeholders: {task_id} {prompt} {files} {reads} "
            "{instance} {attempt} {workdir} {specialist} {scope} {phase} {result:ID} "
            "{results:PHASE}."
        ),
    )
    python: str | None = Field(
        default=None,
        description="'module:function' called with the task's context; may be async.",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
    )
    shell: bool = Field(
        default=False,
        description=(
            "Run `run` (a string) with /bin/sh. Placeholders are not expanded there: the shell "
            'reads the task\'s facts from $GUILDRUN_* variables and its files from "$@".'
        ),
    )
    instances: int | None = Field(
        default=None, ge=1, description="Instances of this specialist (replaces per_agent_type)."
    )
    files: list[str] = Field(
        default_factory=list,
        description="Glob patterns (** crosses folders) that route tasks naming no specialist.",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    timeout: float | None = Field(default=None, gt=0, description="Default task timeout (s).")
    retry: RetrySettings | None = Field(default=None, description="Overrides settings.retry.")
    writes: list[str] = Field(
        default_factory=list, description="Globs its tasks may also write (an index, a lock file)."
    )
    reads: list[str] = Field(
        default_factory=list,
        description="Paths or globs each of its tasks reads but may not change ({reads}).",
    )
    on_violation: Literal["fail", "sequential"] | None = Field(
        default=None, description="Overrides settings.on_violation."
    )
    affinity: Literal["none", "scope", "folder"] | None = Field(
        default=None, description="Overrides settings.affinity."
    )
    can_help: list[str] = Field(
        default_factory=list,
        description="Specialists whose overflow work an idle instance of this one may take.",
    )
    agent: Literal["claude", "codex", "gemini", "aider"] | None = Field(
        default=None,
        description=(
            "A coding agent CLI run non-interactively for each task, its own verdict, cost "
            "and rate limits read as it runs (instead of 'run' or 'python')."
        ),
    )
    program: str | None = Field(
        default=None, description="The agent's executable (default: on PATH)."
    )
    model: str | None = Field(default=None, description="The agent's model.")
    system_prompt: str | None = Field(default=None, description="Appended to the agent's own.")
    tools: list[str] = Field(default_factory=list, description="Tools the agent may use.")
    permission_mode: str | None = Field(
        default=None, description="The agent's permission mode (claude default: acceptEdits)."
    )
    max_turns: int | None = Field(default=None, ge=1, description="Most agent turns a task.")
    flags: list[str] = Field(default_factory=list, description="Extra arguments for the agent.")
    provider: str | None = Field(
        default=None, description="Whose rate limits it shares (default: the agent kind)."
    )
    keep_context: bool = Field(
        default=False, description="An instance continues its previous session for its next task."
    )
    max_cost_usd: float | None = Field(
        default=None, gt=0, description="Most USD one task may spend (passed to the agent)."
    )
    resources: dict[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description=(
            "Ray backend: what one instance needs from a node, e.g. {num_cpus: 1} or a custom "
            "resource {agent_host: 1} (default: no CPU reserved, placed anywhere)."
        ),
    )
    func: SkipJsonSchema[Callable[..., Any] | None] = Field(default=None, exclude=True)

    @field_validator("env", mode="before")
    @classmethod
    def _env_values(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _as_str(v) for k, v in value.items()}
        return value


class Task(BaseModel):
    """One piece of agent work."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=MAX_NAME, description="Unique name of the task.")
    specialist: str | None = Field(
        default=None,
        max_length=MAX_NAME,
        description="Specialist to run it; optional when a files pattern routes it.",
    )
    files: list[str] = Field(
        default_factory=list,
        description="Files it owns and may modify, relative to the project root.",
    )
    locks: list[str] = Field(
        default_factory=list, description="Other shared resources it needs alone (db, port)."
    )
    depends_on: list[str] = Field(default_factory=list, description="Ids that must finish first.")
    scope: str | None = Field(
        default=None, max_length=MAX_NAME, description="Component or area, e.g. auth."
    )
    phase: Phase = Field(default="implementation", description="Integration boundary.")
    prompt: str = Field(default="", description="What the agent is asked to do.")
    timeout: float | None = Field(default=None, gt=0, description="Seconds before it is stopped.")
    estimate: float | None = Field(
        default=None, ge=0, description="Expected seconds, for longest-first and simulation."
    )
    retry: RetrySettings | None = Field(default=None, description="Overrides the specialist's.")
    writes: list[str] = Field(default_factory=list, description="Globs it may also write.")
    on_violation: Literal["fail", "sequential"] | None = Field(
        default=None, description="Overrides the specialist's."
    )
    reads: list[str] = Field(
        default_factory=list,
        description=(
            "Paths or globs it reads but may not change: {reads} and $GUILDRUN_READS. They "
            "never make tasks wait for each other (use depends_on) and never block rollback."
        ),
    )

    @field_validator("id", "specialist", "scope", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _as_str(value)

    @field_validator("depends_on", "locks", "files", "reads", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        if isinstance(value, str | int):
            value = [value]
        if isinstance(value, list):
            return [_as_str(v) for v in value]
        return value


class GateSpec(BaseModel):
    """A quality gate: a command run on the integrated tree (worktree mode) at the end of
    a phase or a scope; a failure is bisected to the patch that broke it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME, description="Unique name of the gate.")
    run: list[str] | str = Field(
        description="Command: a list of arguments (or one string split like a shell would, "
        "but never run by one); no placeholders. It runs in a checkout of the integrated tree."
    )
    after: str = Field(
        description="When it runs: at the end of a phase (its name) or of a scope (scope:NAME)."
    )
    timeout: float = Field(default=600.0, gt=0, description="Seconds before it is stopped.")

    @field_validator("after")
    @classmethod
    def _after(cls, value: str) -> str:
        if value not in PHASES and not (value.startswith("scope:") and len(value) > 6):
            raise ValueError(f"expected one of {', '.join(PHASES)}, or scope:NAME")
        return value

    def argv(self) -> tuple[str, ...]:
        import shlex

        out = tuple(shlex.split(self.run) if isinstance(self.run, str) else self.run)
        if not out:
            raise ValueError("empty command")
        return out


class Plan(BaseModel):
    """A whole plan. Build it in code, or load it with `load_plan`."""

    model_config = ConfigDict(extra="forbid", title="guildrun plan")

    settings: Settings = Field(default_factory=Settings)
    specialists: dict[str, Specialist] = Field(description="Agent types by name.")
    tasks: list[Task] = Field(description="The work, in plan order.")
    gates: list[GateSpec] = Field(
        default_factory=list,
        description="Quality gates on the integrated tree (workspace: worktree).",
    )
    source: SkipJsonSchema[str | None] = Field(default=None, exclude=True)
    # Maps field paths to lines for errors found after parsing (those that need the root).
    _locator: Any = PrivateAttr(default=None)
    # Warnings of the last compile_plan (see plan_warnings).
    _warnings: tuple[str, ...] = PrivateAttr(default=())


def plan_schema() -> dict[str, Any]:
    schema = Plan.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


# ---------------------------------------------------------------------------- loading


@functools.cache
def _loaders() -> tuple[Any, Any]:
    """(the plain safe loader, one that refuses duplicate keys instead of silently
    keeping the last), made on first use: a JSON plan never imports PyYAML."""
    import yaml

    # libyaml's parser when PyYAML has it (about 20x faster on a 10,000-task plan).
    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class _Loader(base):  # type: ignore[misc]
        pass

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
    return base, _Loader


def _construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> Any:
    import yaml

    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str | int | float | bool | None):
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "a key must be a plain value, not a list or mapping",
                key_node.start_mark,
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


class _Locator:
    """Maps a field path to the line it stands on, from the YAML node tree.

    The tree is built only when an error needs a line, so valid plans never pay for it,
    and once, however many errors need one.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._root: yaml.Node | None = None
        self._built = False

    def _tree(self) -> yaml.Node | None:
        import yaml

        if not self._built:
            self._built = True
            try:
                self._root = yaml.compose(self.text, Loader=_loaders()[0])
            except (yaml.YAMLError, RecursionError, ValueError):
                self._root = None
        return self._root

    def line(self, path: FieldPath) -> int | None:
        import yaml

        node = self._tree()
        if node is None:
            return None
        best = node.start_mark.line + 1
        for step in path:
            nxt: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == str(step):
                        nxt = v
                        best = k.start_mark.line + 1
                        break
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(step, int)
                and 0 <= step < len(node.value)
            ):
                nxt = node.value[step]
            if nxt is None:
                return best
            node = nxt
            best = node.start_mark.line + 1
        return best


def format_path(path: FieldPath) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def _short(value: object, limit: int = 60) -> str:
    """repr() of a value from the plan, cut to `limit` characters (ids can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def load_plan(path: str | Path, root: str | Path | None = None, *, check: bool = True) -> Plan:
    """Read and validate a plan file; with `root`, also run every check `compile_plan` does."""
    p = Path(path)
    name = str(path)
    try:
        if not p.is_file() and p.exists():
            raise PlanError(
                "is a folder, not a plan file" if p.is_dir() else "is not a regular file",
                file=name,
            )
        with p.open("rb") as fh:
            raw = fh.read(MAX_PLAN_BYTES + 1)
    except FileNotFoundError:
        raise PlanError("no such file", file=name) from None
    except IsADirectoryError:
        raise PlanError("is a folder, not a plan file", file=name) from None
    except OSError as exc:
        raise PlanError(f"cannot read: {exc.strerror or exc}", file=name) from None
    except ValueError as exc:  # an embedded NUL in the name
        raise PlanError(f"cannot read: {exc}", file=name) from None
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanError(f"larger than {MAX_PLAN_BYTES // 2**20} MB", file=name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(f"not UTF-8 text ({exc.reason})", file=name) from None
    plan = parse_plan(text, name, json_format=p.suffix.lower() == ".json", check=check)
    if root is not None:
        compile_plan(plan, Path(root))
    return plan


def _read_data(text: str, name: str, json_format: bool) -> Any:
    if json_format:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"invalid JSON: {exc.msg}", file=name, line=exc.lineno) from None
        except RecursionError:
            raise PlanError("invalid JSON: nested too deeply", file=name) from None
        except ValueError as exc:  # a number of more than 4,300 digits
            raise PlanError(f"invalid JSON: {_number_error(exc)}", file=name) from None
    import yaml

    try:
        return yaml.load(text, Loader=_loaders()[1])  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise PlanError(f"invalid YAML: {exc.problem or exc}", file=name, line=line) from None
    except yaml.reader.ReaderError as exc:
        raise PlanError(
            f"invalid YAML: character {exc.character!r} at position {exc.position} is not allowed",
            file=name,
            line=text.count("\n", 0, exc.position) + 1,
        ) from None
    except yaml.YAMLError as exc:
        raise PlanError(f"invalid YAML: {exc}", file=name) from None
    except RecursionError:
        raise PlanError("invalid YAML: nested too deeply", file=name) from None
    except ValueError as exc:  # a number of more than 4,300 digits
        raise PlanError(f"invalid YAML: {_number_error(exc)}", file=name) from None


def _number_error(exc: ValueError) -> str:
    text = str(exc)
    if "digits" in text:
        return f"a number with too many digits (at most {sys.get_int_max_str_digits()})"
    return text


def parse_plan(
    text: str, name: str = "<plan>", *, json_format: bool = False, check: bool = True
) -> Plan:
    """Parse and validate; with `check`, also the checks that need no root (a caller
    that compiles the plan against its root next can skip them: it makes them all).

    Every problem found is reported at once (up to MAX_PROBLEMS), each on its own line.
    """
    data = _read_data(text, name, json_format)
    if not isinstance(data, dict):
        raise PlanError(
            "expected a mapping with 'specialists' and 'tasks' at the top", file=name, line=1
        )
    locator = _Locator(text)
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        raise _schema_errors(exc, data, name, locator) from None
    except RecursionError:
        raise PlanError("nested too deeply", file=name) from None
    plan.source = name
    plan._locator = locator
    if check:
        report = _Report()
        _compile_structure(plan, None, report)
        report.raise_errors(plan)
    return plan


def _schema_errors(
    exc: ValidationError, data: dict[str, Any], name: str, locator: Any
) -> PlanError:
    """One PlanError for every schema error, and for the plan's other errors where the
    schema errors can be set aside (a wrong field of a task is dropped, the rest checked)."""
    found: list[tuple[FieldPath, str]] = []
    seen: set[FieldPath] = set()
    unions: set[FieldPath] = set()  # union fields already reported through one member
    errors = exc.errors()
    for err in errors[: 4 * MAX_PROBLEMS]:
        # A value that fits no member of a union (`run: list or string`) fails once per
        # member; the members' names are not fields of the plan: name the field once,
        # through the first member's error (`run[0]` of a list says which element).
        raw: FieldPath = tuple(err["loc"])
        keep_last = err["type"] == "extra_forbidden"
        loc: FieldPath = raw[:1] + tuple(
            s
            for k, s in enumerate(raw[1:], 1)
            if not _union_member(s) or (keep_last and k == len(raw) - 1)
        )
        member = next((k for k, s in enumerate(raw) if k and _union_member(s)), None)
        if member is not None and not keep_last:
            union = raw[:member]
            if union in unions:
                continue
            unions.add(union)
        if loc in seen:
            continue
        seen.add(loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown field {_short(loc[-1])}" + _did_you_mean(str(loc[-1]), _fields_at(loc))
        elif err["type"] == "missing":
            msg = f"required field {loc[-1]!r} is missing"
        found.append((loc, _with_task_id(data, loc, msg)))
    problems = [
        PlanError(msg, file=name, field=format_path(loc), line=locator.line(loc))
        for loc, msg in found
    ]

    pruned = _prune(data, [loc for loc, _ in found])
    if pruned is not None and len(found) < MAX_PROBLEMS:
        with contextlib.suppress(ValidationError, RecursionError):
            plan = Plan.model_validate(data)
            plan.source = name
            plan._locator = locator
            report = _Report()
            _compile_structure(plan, None, report)
            for err_ in report.errors:
                path: FieldPath = getattr(err_, "path", ())
                if not any(path[: len(p)] == p or path == p[:-1] for p in pruned):
                    problems.append(_locate(err_, plan))
    return _combine(problems, max(0, len(errors) - 4 * MAX_PROBLEMS))


def _union_member(step: str | int) -> bool:
    return isinstance(step, str) and (
        "[" in step or step in ("str", "int", "float", "bool", "none", "function-after")
    )


def _prune(data: dict[str, Any], locs: list[FieldPath]) -> list[FieldPath] | None:
    """Drop the fields the schema refused, so the rest of the plan can still be checked.

    Returns the fields dropped (errors under them, or of their object as a whole, would
    be noise), or None when a refused value cannot be dropped without changing what the
    plan means.
    """
    touched: list[FieldPath] = []
    for loc in locs:
        if (
            len(loc) < 2
            or loc[0] not in ("tasks", "settings", "specialists")
            or (loc[0] in ("tasks", "specialists") and len(loc) < 3)
        ):
            return None
        owner: FieldPath = tuple(loc[:2]) if loc[0] != "settings" else ("settings",)
        key = loc[2] if loc[0] != "settings" else loc[1]
        if loc[0] == "tasks" and key in ("id", "specialist", "depends_on"):
            return None  # others refer to these
        container: Any = data.get(str(owner[0]))
        if len(owner) == 2 and loc[0] == "tasks":
            items, at = container, owner[1]
            ok = isinstance(items, list) and isinstance(at, int) and 0 <= at < len(items)
            container = items[at] if ok else None
        elif len(owner) == 2:
            container = container.get(owner[1]) if isinstance(container, dict) else None
        if not isinstance(container, dict) or key not in container:
            return None
        del container[key]
        touched.append((*owner, key))
    return touched


def _fields_at(loc: FieldPath) -> list[str]:
    """The field names allowed where `loc` stands, for a did-you-mean."""
    model: type[BaseModel] = Plan
    depth = len(loc) - 1
    if depth >= 1 and loc[0] == "settings":
        model = Settings
        if depth >= 2 and loc[1] == "retry":
            model = RetrySettings
    elif depth >= 2 and loc[0] == "specialists":
        model = Specialist
        if depth >= 3 and loc[2] == "retry":
            model = RetrySettings
    elif depth >= 2 and loc[0] == "tasks":
        model = Task
        if depth >= 3 and loc[2] == "retry":
            model = RetrySettings
    return [n for n in model.model_fields if n not in ("func", "source")]


def _did_you_mean(word: str, candidates: Sequence[str], report: _Report | None = None) -> str:
    if len(word) > MAX_NAME or len(candidates) > 5_000 or (report is not None and report.full):
        return ""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _with_task_id(data: Any, loc: FieldPath, msg: str) -> str:
    if len(loc) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int):
        tasks = data.get("tasks")
        if isinstance(tasks, list) and loc[1] < len(tasks) and isinstance(tasks[loc[1]], dict):
            tid = tasks[loc[1]].get("id")
            if tid is not None:
                return f"{msg} (task {_short(str(tid))})"
    return msg


def _locate(exc: PlanError, plan: Plan) -> PlanError:
    path: FieldPath = getattr(exc, "path", ())
    locator = plan._locator
    line = locator.line(path) if locator is not None and path else None
    return PlanError(exc.reason, file=plan.source, field=format_path(path) or None, line=line)


def _combine(problems: list[PlanError], unlisted: int = 0) -> PlanError:
    """The first MAX_PROBLEMS problems by line, and a count of the rest."""
    problems = sorted(problems, key=lambda p: p.line if p.line is not None else 1 << 62)
    rest = unlisted + max(0, len(problems) - MAX_PROBLEMS)
    if rest:
        file = problems[0].file
        problems = problems[:MAX_PROBLEMS]
        problems.append(PlanError(f"... and {rest} more problems", file=file))
    return PlanError.of(problems)


def _fail(path: FieldPath, message: str) -> PlanError:
    err = PlanError(message, field=format_path(path))
    err.path = path  # type: ignore[attr-defined]
    return err


class _Report:
    """Errors and warnings of one check, so a plan's every mistake is named at once."""

    def __init__(self) -> None:
        self.errors: list[PlanError] = []
        self.warnings: list[PlanError] = []
        self.broken_routes = False  # a files pattern is refused: routing errors are noise

    def error(self, path: FieldPath, message: str) -> None:
        self.errors.append(_fail(path, message))

    def warn(self, path: FieldPath, message: str) -> None:
        self.warnings.append(_fail(path, message))

    @property
    def full(self) -> bool:
        """Enough errors to report: stop spending time on suggestions."""
        return len(self.errors) >= MAX_PROBLEMS

    def raise_errors(self, plan: Plan) -> None:
        if not self.errors:
            return
        shown = [_locate(e, plan) for e in self.errors[: 5 * MAX_PROBLEMS]]
        raise _combine(shown, len(self.errors) - len(shown))

    def warning_lines(self, plan: Plan) -> list[str]:
        located = sorted(
            (_locate(w, plan) for w in self.warnings),
            key=lambda p: p.line if p.line is not None else 1 << 62,
        )
        return [str(w) for w in located]


# ---------------------------------------------------------------------------- compiling


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task as the engine runs it: routed, normalised, with its phase as a rank."""

    index: int
    id: str
    specialist: str
    files: tuple[str, ...]
    locks: tuple[str, ...]
    depends_on: tuple[str, ...]
    scope: str | None
    phase: str
    phase_rank: int
    prompt: tuple[tpl.Part, ...]
    timeout: float | None
    estimate: float | None = None
    reads: tuple[str, ...] = ()  # read-only inputs: not resources, never snapshotted

    @property
    def resources(self) -> tuple[str, ...]:
        return tuple(f"file:{f}" for f in self.files) + tuple(f"lock:{lk}" for lk in self.locks)


@dataclass(frozen=True, slots=True)
class SpecialistSpec:
    name: str
    argv: tuple[tuple[tpl.Part, ...], ...] | None
    shell_script: str | None
    python: str | None
    func: Callable[..., Any] | None
    env: Mapping[str, str]
    instances: int | None
    timeout: float | None
    affinity: str | None = None
    can_help: tuple[str, ...] = ()
    # Where a `python: module:function` is looked up first (see _loader).
    root: Path | None = None
    agent: AgentSpec | None = None
    keep_context: bool = False
    resources: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CompiledPlan:
    tasks: tuple[TaskSpec, ...]
    specialists: Mapping[str, SpecialistSpec]
    settings: Settings
    source: str | None
    by_id: Mapping[str, TaskSpec] = field(repr=False)
    warnings: tuple[str, ...] = ()

    def phases(self) -> list[str]:
        present = {t.phase for t in self.tasks}
        return [p for p in PHASES if p in present]


def plan_warnings(plan: Plan) -> list[str]:
    """The warnings the last `compile_plan` of `plan` found, one line each."""
    return list(plan._warnings)


def compile_plan(plan: Plan, root: Path, settings: Settings | None = None) -> CompiledPlan:
    """Check everything and produce the engine's form of the plan."""
    report = _Report()
    compiled = _compile_structure(plan, root, report)
    report.raise_errors(plan)
    warnings = tuple(report.warning_lines(plan))
    plan._warnings = warnings
    return CompiledPlan(
        compiled.tasks,
        compiled.specialists,
        settings if settings is not None else compiled.settings,
        compiled.source,
        compiled.by_id,
        warnings,
    )


def _agent_spec(name: str, spec: Specialist, base: FieldPath, report: _Report) -> AgentSpec | None:
    """The agent a specialist names, checked: its program must be there to run."""
    if spec.agent is None:
        return None
    from ._agents import PRESETS

    agent = AgentSpec(
        agent=spec.agent,
        program=spec.program,
        model=spec.model,
        system_prompt=spec.system_prompt,
        tools=tuple(spec.tools),
        permission_mode=spec.permission_mode,
        max_turns=spec.max_turns,
        flags=tuple(spec.flags),
        provider=spec.provider,
        max_cost_usd=spec.max_cost_usd,
    )
    problem = PRESETS[spec.agent].check(agent, spec.env.get("PATH") or os.environ.get("PATH"))
    if problem is not None:
        field = "program" if spec.program else "agent"
        report.error(base + (field,), problem.replace("specialists.NAME", f"specialists.{name}"))
    return agent


def _compile_specialists(
    plan: Plan, report: _Report, root: Path | None
) -> dict[str, SpecialistSpec]:
    out: dict[str, SpecialistSpec] = {}
    if not plan.specialists:
        report.error(("specialists",), "a plan needs at least one specialist")
    for name, spec in plan.specialists.items():
        base: FieldPath = ("specialists", name)
        if len(name) > MAX_NAME or not name or "\x00" in name:
            report.error(base, f"a specialist name is 1 to {MAX_NAME} characters, no NUL")
            continue
        ways = sum(x is not None for x in (spec.run, spec.python, spec.func, spec.agent))
        if ways != 1:
            report.error(
                base, f"specialist {name!r} needs exactly one of 'run', 'python' or 'agent'"
            )
        agent = _agent_spec(name, spec, base, report)
        argv: tuple[tuple[tpl.Part, ...], ...] | None = None
        script: str | None = None
        if spec.run is not None:
            if spec.shell:
                if not isinstance(spec.run, str):
                    report.error(base + ("run",), "with shell: true, 'run' is one string")
                elif "\x00" in spec.run:
                    report.error(base + ("run",), "a command cannot contain a NUL byte")
                else:
                    script = spec.run
            else:
                argv = _compile_argv(spec.run, base, report)
        elif spec.shell:
            report.error(base + ("shell",), "shell: true needs a 'run' string")
        problem = env_problem(spec.env)
        if problem is not None:
            report.error(base + ("env",), problem)
        out[name] = SpecialistSpec(
            name=name,
            argv=argv,
            shell_script=script,
            python=spec.python,
            func=spec.func,
            env=dict(spec.env),
            instances=spec.instances,
            timeout=spec.timeout,
            affinity=spec.affinity,
            can_help=tuple(dict.fromkeys(spec.can_help)),
            root=root,
            agent=agent,
            keep_context=spec.keep_context,
            resources=dict(spec.resources),
        )
    for name, spec in plan.specialists.items():
        for j, other in enumerate(spec.can_help):
            if other not in plan.specialists or other == name:
                report.error(
                    ("specialists", name, "can_help", j),
                    f"specialist {name!r} cannot help {_short(other)}: "
                    + (
                        "itself"
                        if other == name
                        else "no such specialist" + _did_you_mean(other, list(plan.specialists))
                    ),
                )
    return out


def _compile_argv(
    run: list[str] | str, base: FieldPath, report: _Report
) -> tuple[tuple[tpl.Part, ...], ...] | None:
    raw = _split(run, base + ("run",), report)
    if raw is None:
        return None
    if not raw:
        report.error(base + ("run",), "an empty command")
        return None
    parsed: list[tuple[tpl.Part, ...]] = []
    for i, arg in enumerate(raw):
        where = base + ("run", i) if isinstance(run, list) else base + ("run",)
        if "\x00" in arg:
            report.error(where, "an argument cannot contain a NUL byte")
            return None
        if too_long(arg):
            report.error(
                where, f"an argument longer than the system allows ({MAX_ARG_STRLEN} bytes)"
            )
            return None
        try:
            parts = tpl.parse(arg)
        except tpl.TemplateError as exc:
            report.error(where, str(exc))
            return None
        for alone in ("files", "reads"):
            if tpl.Placeholder(alone) in parts and len(parts) != 1:
                report.error(where, f"{{{alone}}} must stand alone as one argument")
                return None
        parsed.append(parts)
    return tuple(parsed)


def _split(run: list[str] | str, where: FieldPath, report: _Report) -> list[str] | None:
    if isinstance(run, list):
        return list(run)
    import shlex

    try:
        return shlex.split(run)
    except ValueError as exc:
        report.error(where, f"cannot split the command: {exc}")
        return None


def _globs(plan: Plan, report: _Report) -> dict[str, list[Glob]]:
    """Every glob of the plan compiles, or the error names its field. Returns the routes."""
    routes: dict[str, list[Glob]] = {}
    places: list[tuple[FieldPath, list[str]]] = [(("settings", "ignore"), plan.settings.ignore)]
    for name, spec in plan.specialists.items():
        places += [(("specialists", name, "files"), spec.files)]
        places += [(("specialists", name, "writes"), spec.writes)]
    for i, task in enumerate(plan.tasks):
        places.append((("tasks", i, "writes"), task.writes))
    for where, patterns in places:
        compiled: list[Glob] = []
        for j, pattern in enumerate(patterns):
            try:
                compiled.append(glob_to_regex(pattern))
            except ValueError as exc:
                report.error((*where, j), str(exc))
                if where[0] == "specialists" and where[2] == "files":
                    report.broken_routes = True
        if where[0] == "specialists" and where[2] == "files":
            routes[str(where[1])] = compiled
    return routes


def _compile_structure(plan: Plan, root: Path | None, report: _Report) -> CompiledPlan:
    specialists = _compile_specialists(plan, report, root)
    routes = [(name, pats) for name, pats in _globs(plan, report).items() if name in specialists]
    first_seen: dict[str, int] = {}
    for i, task in enumerate(plan.tasks):
        if task.id in first_seen:
            report.error(
                ("tasks", i, "id"),
                f"duplicate task id {_short(task.id)} (first at tasks[{first_seen[task.id]}])",
            )
        else:
            first_seen[task.id] = i
    names = list(specialists)
    ids: list[str] | None = None

    specs: list[TaskSpec] = []
    folders: dict[str, Path] = {}
    inputs = _Reads(root, report, folders)
    for i, task in enumerate(plan.tasks):
        base: FieldPath = ("tasks", i)
        tid = _short(task.id)
        if first_seen[task.id] != i:  # a duplicate, refused above: its details are noise
            rank = PHASES.index(task.phase)
            specs.append(TaskSpec(i, task.id, "", (), (), (), None, task.phase, rank, (), None))
            continue
        if "\x00" in task.id or (task.scope is not None and "\x00" in task.scope):
            report.error(base + ("id",), f"task {tid}: an id or scope cannot contain a NUL byte")
        seen: set[str] = set()
        files: list[str] = []
        for j, f in enumerate(task.files):
            if root is not None:
                try:
                    f = normalize_owned_path(root, f, folders)
                except ValueError as exc:
                    report.error(base + ("files", j), f"task {tid}: {exc}")
                    continue
            else:
                f = f.replace("\\", "/")
            if f not in seen:
                seen.add(f)
                files.append(f)
        specialist = task.specialist
        if specialist is None:
            specialist = _route(files, routes)
            if specialist is None and not report.broken_routes:
                report.error(
                    base,
                    f"task {tid} names no specialist and no specialist's files "
                    "pattern matches all of its files",
                )
        elif specialist not in specialists:
            known = ", ".join(sorted(specialists)[:10])
            report.error(
                base + ("specialist",),
                f"task {tid}: unknown specialist {_short(specialist)}"
                + (_did_you_mean(specialist, names, report) or f" (known: {known})"),
            )
            specialist = None
        deps: list[str] = []
        for j, dep in enumerate(task.depends_on):
            if dep not in first_seen:
                if ids is None:
                    ids = list(first_seen)
                report.error(
                    base + ("depends_on", j),
                    f"task {tid} depends on {_short(dep)}, which is not a task of this plan"
                    + _did_you_mean(dep, ids, report),
                )
                continue
            if dep == task.id:
                report.error(base + ("depends_on", j), f"task {tid} depends on itself")
                continue
            dep_phase = plan.tasks[first_seen[dep]].phase
            if PHASES.index(dep_phase) > PHASES.index(task.phase):
                report.error(
                    base + ("depends_on", j),
                    f"task {tid} ({task.phase}) depends on {_short(dep)} of the later "
                    f"phase {dep_phase}",
                )
                continue
            deps.append(dep)
        prompt: tuple[tpl.Part, ...] = ()
        try:
            prompt = tpl.parse(task.prompt)
        except tpl.TemplateError as exc:
            report.error(base + ("prompt",), f"task {tid}: {exc}")
        if tpl.Placeholder("prompt") in prompt:
            report.error(base + ("prompt",), f"task {tid}: a prompt cannot contain {{prompt}}")
        reads = inputs.of(task, i, files, specialist, plan.specialists.get(specialist or ""))
        if specialist is not None:
            _check_exec(task, i, files, specialists[specialist], report, reads)
        specs.append(
            TaskSpec(
                index=i,
                id=task.id,
                specialist=specialist or "",
                files=tuple(files),
                locks=tuple(dict.fromkeys(task.locks)),
                depends_on=tuple(dict.fromkeys(deps)),
                scope=task.scope,
                phase=task.phase,
                phase_rank=PHASES.index(task.phase),
                prompt=prompt,
                timeout=task.timeout,
                estimate=task.estimate,
                reads=reads,
            )
        )
    by_id = {t.id: t for t in specs if first_seen[t.id] == t.index}
    _check_cycles(specs, by_id, report)
    _check_refs(specs, by_id, specialists, report)
    if root is not None and not report.errors:
        _lint(plan, specs, specialists, routes, report)
    return CompiledPlan(tuple(specs), specialists, plan.settings, plan.source, by_id)


class _Reads:
    """A task's read-only inputs: its specialist's `reads` and its own, paths checked like
    owned files, globs expanded against the project's files (listed once, when a glob
    first needs them). A file the task owns is not also an input."""

    def __init__(self, root: Path | None, report: _Report, folders: dict[str, Path]) -> None:
        self.root = root
        self.report = report
        self.folders = folders
        self._tree: list[str] | None = None
        self._done: dict[str, tuple[str, ...] | None] = {}  # pattern -> paths (None: refused)

    def of(
        self,
        task: Task,
        index: int,
        files: Sequence[str],
        name: str | None,
        specialist: Specialist | None,
    ) -> tuple[str, ...]:
        places: list[tuple[FieldPath, str]] = []
        if name is not None and specialist is not None:
            places += [
                (("specialists", name, "reads", j), r) for j, r in enumerate(specialist.reads)
            ]
        places += [(("tasks", index, "reads", j), r) for j, r in enumerate(task.reads)]
        owned = set(files)
        out: dict[str, None] = {}
        for where, pattern in places:
            for path in self._expand(where, pattern, task) or ():
                if path not in owned:
                    out[path] = None
        return tuple(out)

    def _expand(self, where: FieldPath, pattern: str, task: Task) -> tuple[str, ...] | None:
        if pattern in self._done:
            return self._done[pattern]
        paths: tuple[str, ...] | None = None
        tid = _short(task.id)
        if self.root is None:
            paths = (pattern.replace("\\", "/"),)
        elif not any(c in pattern for c in "*?["):
            try:
                paths = (normalize_owned_path(self.root, pattern, self.folders),)
            except ValueError as exc:
                self.report.error(where, f"task {tid}: {exc}")
        else:
            paths = self._glob(where, pattern, tid)
        self._done[pattern] = paths
        return paths

    def _glob(self, where: FieldPath, pattern: str, tid: str) -> tuple[str, ...] | None:
        assert self.root is not None
        clean = pattern.replace("\\", "/").removeprefix("./")
        if clean.startswith(("/", "../")) or clean == ".." or "/../" in clean:
            self.report.error(where, f"task {tid}: glob {_short(pattern)} leaves the project root")
            return None
        try:
            glob = glob_to_regex(clean)
        except ValueError as exc:
            self.report.error(where, str(exc))
            return None
        if self._tree is None:
            from ._fanout import project_files  # git's list of the project (ignores honoured)

            self._tree = sorted(project_files(self.root))
        found = tuple(f for f in self._tree if glob.match(f) and self._inside(f))
        if not found:
            self.report.warn(where, f"reads pattern {_short(pattern)} matches no file")
        return found

    def _inside(self, path: str) -> bool:
        """A listed file reached through a link out of the root is no input of the project."""
        assert self.root is not None
        try:
            normalize_owned_path(self.root, path, self.folders)
        except ValueError:
            return False
        return True


def _check_exec(
    task: Task,
    index: int,
    files: list[str],
    spec: SpecialistSpec,
    report: _Report,
    reads: Sequence[str] = (),
) -> None:
    """A command task whose arguments or environment the kernel would refuse never starts."""
    if spec.argv is None and spec.shell_script is None:
        return
    base: FieldPath = ("tasks", index)
    if "\x00" in task.prompt:
        report.error(
            base + ("prompt",), f"task {_short(task.id)}: a prompt cannot contain a NUL byte"
        )
        return
    if too_long("GUILDRUN_PROMPT=" + task.prompt):
        report.error(
            base + ("prompt",),
            f"task {_short(task.id)}: a prompt of {len(task.prompt.encode())} bytes cannot be "
            f"passed to a command (at most {MAX_ARG_STRLEN} bytes, in $GUILDRUN_PROMPT); "
            "pass a file name and let the agent read it",
        )
        return
    joined = "GUILDRUN_FILES=" + "\n".join(files)
    if too_long(joined):
        report.error(
            base + ("files",),
            f"task {_short(task.id)}: its {len(files)} files make $GUILDRUN_FILES longer than "
            f"one environment string may be ({MAX_ARG_STRLEN} bytes); split the task",
        )
        return
    read_env = "GUILDRUN_READS=" + "\n".join(reads)
    if too_long(read_env):
        report.error(
            base + ("reads",),
            f"task {_short(task.id)}: its {len(reads)} read-only inputs make $GUILDRUN_READS "
            f"longer than one environment string may be ({MAX_ARG_STRLEN} bytes); split the task",
        )
        return
    strings = [
        joined,
        read_env,
        "GUILDRUN_PROMPT=" + task.prompt,
        *(f"{k}={v}" for k, v in spec.env.items()),
    ]
    if spec.argv is not None:
        known = {"task_id": task.id, "prompt": task.prompt, "scope": task.scope or ""}
        for parts in spec.argv:
            if parts == (tpl.Placeholder("files"),):
                strings += files
            elif parts == (tpl.Placeholder("reads"),):
                strings += reads
            else:
                text = "".join(p if isinstance(p, str) else known.get(p.name, "") for p in parts)
                if too_long(text):
                    report.error(
                        base + ("prompt",),
                        f"task {_short(task.id)}: an argument of its command would be longer "
                        f"than the system allows ({MAX_ARG_STRLEN} bytes)",
                    )
                    return
                strings.append(text)
    else:
        strings += [spec.shell_script or "", *files]
    total = total_cost(strings)
    if total > arg_max():
        report.error(
            base,
            f"task {_short(task.id)}: its command and environment would take {total} bytes, "
            f"more than the system allows ({arg_max()}); split the task or shorten its prompt",
        )


def _lint(
    plan: Plan,
    specs: Sequence[TaskSpec],
    specialists: Mapping[str, SpecialistSpec],
    routes: list[tuple[str, list[Glob]]],
    report: _Report,
) -> None:
    """Warnings: things that are allowed but are likely mistakes."""
    used = {t.specialist for t in specs}
    all_files = [f for t in specs for f in t.files]
    for name, spec in specialists.items():
        base: FieldPath = ("specialists", name)
        if spec.argv is not None:
            hit = inline_code(spec.argv)
            if hit is not None:
                k, program, ph = hit
                report.warn(
                    base + ("run", k),
                    f"{ph} is pasted into code that {program} runs: a prompt, result or file "
                    'name becomes code; use shell: true and read "$GUILDRUN_PROMPT" '
                    "(and $GUILDRUN_* variables) instead",
                )
            missing = missing_program(spec.argv, {**os.environ, **spec.env})
            if missing is not None:
                report.warn(base + ("run",), f"program {missing!r} is not found on PATH")
        if name not in used and not spec.can_help:
            report.warn(base, f"specialist {name!r} has no tasks")
    budget = 2_000_000  # pattern x path matches spent looking for patterns that route nothing
    for name, pats in routes:
        for j, pattern in enumerate(pats):
            budget -= len(all_files)
            if budget < 0:
                return
            if not any(pattern.match(f) for f in all_files):
                report.warn(
                    ("specialists", name, "files", j),
                    f"pattern {pattern.pattern!r} matches no file of any task",
                )


def _route(files: Sequence[str], routes: list[tuple[str, list[Glob]]]) -> str | None:
    if not files:
        return None
    for name, patterns in routes:
        if patterns and all(any(p.match(f) for p in patterns) for f in files):
            return name
    return None


def topological_order(specs: Sequence[TaskSpec], by_id: Mapping[str, TaskSpec]) -> list[int]:
    """Plan indices in an order that respects phases and depends_on, then plan position.

    This order also decides who goes first between tasks that share a file or a lock,
    so that neither a dependency nor an earlier phase waits behind a later task.
    """
    indeg = [len(t.depends_on) for t in specs]
    children: list[list[int]] = [[] for _ in specs]
    for t in specs:
        for d in t.depends_on:
            children[by_id[d].index].append(t.index)
    heap = [(t.phase_rank, t.index) for t in specs if indeg[t.index] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        _, i = heapq.heappop(heap)
        order.append(i)
        for c in children[i]:
            indeg[c] -= 1
            if indeg[c] == 0:
                heapq.heappush(heap, (specs[c].phase_rank, c))
    return order


def _check_cycles(
    specs: Sequence[TaskSpec], by_id: Mapping[str, TaskSpec], report: _Report
) -> None:
    order = topological_order(specs, by_id)
    if len(order) == len(specs):
        return
    left = set(range(len(specs))) - set(order)
    # Walk dependencies from a leftover task until a task repeats: that loop is a cycle.
    start = min(left)
    path: list[int] = []
    seen: dict[int, int] = {}
    cur = start
    while cur not in seen:
        seen[cur] = len(path)
        path.append(cur)
        cur = next(by_id[d].index for d in specs[cur].depends_on if by_id[d].index in left)
    cycle = [specs[i].id for i in path[seen[cur] :]]
    first = min(by_id[c].index for c in cycle)
    if len(cycle) <= SHOWN_CYCLE:
        members = " -> ".join(_short(c) for c in [*cycle, cycle[0]])
    else:
        members = " -> ".join(_short(c) for c in cycle[:SHOWN_CYCLE])
        members += f" -> ... ({len(cycle)} tasks in the cycle)"
    report.error(("tasks", first, "depends_on"), f"dependency cycle: {members}")


def _ancestors(spec: TaskSpec, by_id: Mapping[str, TaskSpec]) -> set[str]:
    seen: set[str] = set()
    stack = list(spec.depends_on)
    while stack:
        d = stack.pop()
        if d not in seen:
            seen.add(d)
            stack.extend(by_id[d].depends_on)
    return seen


def _check_refs(
    specs: Sequence[TaskSpec],
    by_id: Mapping[str, TaskSpec],
    specialists: Mapping[str, SpecialistSpec],
    report: _Report,
) -> None:
    """A task may only read results that exist when it starts."""
    ids: list[str] = []
    for t in specs:
        refs = [p for p in tpl.placeholders(t.prompt) if p.arg is not None]
        spec = specialists.get(t.specialist)
        argv = spec.argv if spec is not None and spec.argv is not None else ()
        refs += [p for parts in argv for p in tpl.placeholders(parts) if p.arg is not None]
        ancestors: set[str] | None = None
        tid = _short(t.id)
        for ph in refs:
            where: FieldPath = ("tasks", t.index, "prompt")
            if ph.name == "results":
                if ph.arg not in PHASES:
                    report.error(where, f"task {tid}: {ph}: unknown phase {_short(ph.arg)}")
                elif PHASES.index(ph.arg) >= t.phase_rank:
                    report.error(where, f"task {tid} ({t.phase}): {ph} is not an earlier phase")
                continue
            ref = by_id.get(ph.arg or "")
            if ref is None:
                report.error(
                    where,
                    f"task {tid}: {ph} names no task of this plan"
                    + _did_you_mean(ph.arg or "", ids or (ids := list(by_id)), report),
                )
                continue
            if ref.phase_rank < t.phase_rank:
                continue
            if ancestors is None:
                ancestors = _ancestors(t, by_id)
            if ref.id not in ancestors:
                report.error(
                    where,
                    f"task {tid}: {ph} is not a dependency (add it to depends_on) "
                    "nor a task of an earlier phase",
                )
