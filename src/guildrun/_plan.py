"""The plan: what to run, by whom, owning what.

Two forms live here. `Plan` is what the user writes (YAML, JSON, or Python objects),
validated by pydantic so the JSON Schema and the checks cannot drift apart.
`CompiledPlan` is what the engine runs: every task routed to a specialist, every
path normalised and proven to stay inside the root, every reference resolved,
cycles refused. Errors carry the field path; the file loader turns it into a line.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator
from pydantic.json_schema import SkipJsonSchema

from . import _templates as tpl
from ._errors import PlanError
from ._paths import glob_to_regex, normalize_owned_path
from ._policies.retry import RetrySettings
from ._settings import Settings

PHASES: tuple[str, ...] = ("research", "planning", "implementation", "validation")
Phase = Literal["research", "planning", "implementation", "validation"]
FieldPath = tuple[str | int, ...]


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
            "would, but never run by one). Placeholders: {task_id} {prompt} {files} {instance} "
            "{attempt} {workdir} {specialist} {scope} {phase} {result:ID} {results:PHASE}."
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

    id: str = Field(min_length=1, description="Unique name of the task.")
    specialist: str | None = Field(
        default=None, description="Specialist to run it; optional when a files pattern routes it."
    )
    files: list[str] = Field(
        default_factory=list,
        description="Files it owns and may modify, relative to the project root.",
    )
    locks: list[str] = Field(
        default_factory=list, description="Other shared resources it needs alone (db, port)."
    )
    depends_on: list[str] = Field(default_factory=list, description="Ids that must finish first.")
    scope: str | None = Field(default=None, description="Component or area, e.g. auth.")
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

    @field_validator("id", "specialist", "scope", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _as_str(value)

    @field_validator("depends_on", "locks", "files", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        if isinstance(value, str | int):
            value = [value]
        if isinstance(value, list):
            return [_as_str(v) for v in value]
        return value


class Plan(BaseModel):
    """A whole plan. Build it in code, or load it with `load_plan`."""

    model_config = ConfigDict(extra="forbid", title="guildrun plan")

    settings: Settings = Field(default_factory=Settings)
    specialists: dict[str, Specialist] = Field(description="Agent types by name.")
    tasks: list[Task] = Field(description="The work, in plan order.")
    source: SkipJsonSchema[str | None] = Field(default=None, exclude=True)
    # Maps field paths to lines for errors found after parsing (those that need the root).
    _locator: Any = PrivateAttr(default=None)


def plan_schema() -> dict[str, Any]:
    schema = Plan.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


# ---------------------------------------------------------------------------- loading


# libyaml's parser when PyYAML has it (about 20x faster on a 10,000-task plan).
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc]
    """A safe loader that refuses duplicate keys instead of silently keeping the last."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Locator:
    """Maps a field path to the line it stands on, from the YAML node tree.

    The tree is built only when an error needs a line, so valid plans never pay for it.
    """

    def __init__(self, text: str) -> None:
        self.text = text

    def line(self, path: FieldPath) -> int | None:
        try:
            node: yaml.Node | None = yaml.compose(self.text, Loader=_BaseLoader)
        except yaml.YAMLError:
            return None
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


def load_plan(path: str | Path, root: str | Path | None = None, *, check: bool = True) -> Plan:
    """Read and validate a plan file; with `root`, also run every check `compile_plan` does."""
    p = Path(path)
    name = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError("no such file", file=name) from None
    except IsADirectoryError:
        raise PlanError("is a folder, not a plan file", file=name) from None
    except UnicodeDecodeError as exc:
        raise PlanError(f"not UTF-8 text ({exc.reason})", file=name) from None
    except OSError as exc:
        raise PlanError(f"cannot read: {exc.strerror}", file=name) from None
    plan = parse_plan(text, name, json_format=p.suffix.lower() == ".json", check=check)
    if root is not None:
        compile_plan(plan, Path(root))
    return plan


def parse_plan(
    text: str, name: str = "<plan>", *, json_format: bool = False, check: bool = True
) -> Plan:
    """Parse and validate; with `check`, also the checks that need no root (a caller
    that compiles the plan against its root next can skip them: it makes them all)."""
    data: Any
    if json_format:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"invalid JSON: {exc.msg}", file=name, line=exc.lineno) from None
    else:
        try:
            data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            raise PlanError(f"invalid YAML: {exc.problem or exc}", file=name, line=line) from None
        except yaml.YAMLError as exc:
            raise PlanError(f"invalid YAML: {exc}", file=name) from None
    if not isinstance(data, dict):
        raise PlanError(
            "expected a mapping with 'specialists' and 'tasks' at the top", file=name, line=1
        )
    locator = _Locator(text)
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc: FieldPath = tuple(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}"
        elif err["type"] == "missing":
            msg = f"required field {loc[-1]!r} is missing"
        raise PlanError(
            _with_task_id(data, loc, msg),
            file=name,
            field=format_path(loc),
            line=locator.line(loc),
        ) from None
    plan.source = name
    plan._locator = locator
    if check:
        try:
            _static_checks(plan)
        except PlanError as exc:
            raise _locate(exc, plan) from None
    return plan


def _with_task_id(data: Any, loc: FieldPath, msg: str) -> str:
    if len(loc) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int):
        tasks = data.get("tasks")
        if isinstance(tasks, list) and loc[1] < len(tasks) and isinstance(tasks[loc[1]], dict):
            tid = tasks[loc[1]].get("id")
            if tid is not None:
                return f"{msg} (task {str(tid)!r})"
    return msg


def _locate(exc: PlanError, plan: Plan) -> PlanError:
    path: FieldPath = getattr(exc, "path", ())
    locator = plan._locator
    line = locator.line(path) if locator is not None and path else None
    return PlanError(exc.reason, file=plan.source, field=format_path(path) or None, line=line)


def _fail(path: FieldPath, message: str) -> PlanError:
    err = PlanError(message, field=format_path(path))
    err.path = path  # type: ignore[attr-defined]
    return err


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


@dataclass(frozen=True)
class CompiledPlan:
    tasks: tuple[TaskSpec, ...]
    specialists: Mapping[str, SpecialistSpec]
    settings: Settings
    source: str | None
    by_id: Mapping[str, TaskSpec] = field(repr=False)

    def phases(self) -> list[str]:
        present = {t.phase for t in self.tasks}
        return [p for p in PHASES if p in present]


def _static_checks(plan: Plan) -> None:
    """Checks that need no project root: names, references, cycles, templates."""
    _compile_structure(plan)


def compile_plan(plan: Plan, root: Path, settings: Settings | None = None) -> CompiledPlan:
    """Check everything and produce the engine's form of the plan."""
    try:
        compiled = _compile_structure(plan, root)
    except PlanError as exc:
        raise _locate(exc, plan) from None
    if settings is not None:
        compiled = CompiledPlan(
            compiled.tasks, compiled.specialists, settings, compiled.source, compiled.by_id
        )
    return compiled


def _compile_specialists(plan: Plan) -> dict[str, SpecialistSpec]:
    out: dict[str, SpecialistSpec] = {}
    if not plan.specialists:
        raise _fail(("specialists",), "a plan needs at least one specialist")
    for name, spec in plan.specialists.items():
        base: FieldPath = ("specialists", name)
        ways = sum(x is not None for x in (spec.run, spec.python, spec.func))
        if ways != 1:
            raise _fail(base, f"specialist {name!r} needs exactly one of 'run' or 'python'")
        argv: tuple[tuple[tpl.Part, ...], ...] | None = None
        script: str | None = None
        if spec.run is not None:
            if spec.shell:
                if not isinstance(spec.run, str):
                    raise _fail(base + ("run",), "with shell: true, 'run' is one string")
                script = spec.run
            else:
                raw = _split(spec.run, base + ("run",))
                if not raw:
                    raise _fail(base + ("run",), "an empty command")
                parsed: list[tuple[tpl.Part, ...]] = []
                for i, arg in enumerate(raw):
                    where = base + ("run", i) if isinstance(spec.run, list) else base + ("run",)
                    try:
                        parts = tpl.parse(arg)
                    except tpl.TemplateError as exc:
                        raise _fail(where, str(exc)) from None
                    if tpl.Placeholder("files") in parts and len(parts) != 1:
                        raise _fail(where, "{files} must stand alone as one argument")
                    parsed.append(parts)
                argv = tuple(parsed)
        elif spec.shell:
            raise _fail(base + ("shell",), "shell: true needs a 'run' string")
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
        )
    for name, spec in plan.specialists.items():
        for j, other in enumerate(spec.can_help):
            if other not in plan.specialists or other == name:
                raise _fail(
                    ("specialists", name, "can_help", j),
                    f"specialist {name!r} cannot help {other!r}: "
                    + ("itself" if other == name else "no such specialist"),
                )
    return out


def _split(run: list[str] | str, where: FieldPath) -> list[str]:
    if isinstance(run, list):
        return list(run)
    import shlex

    try:
        return shlex.split(run)
    except ValueError as exc:
        raise _fail(where, f"cannot split the command: {exc}") from None


def _globs(plan: Plan) -> None:
    """Every glob of the plan compiles, or the error names its field."""
    places: list[tuple[FieldPath, list[str]]] = [(("settings", "ignore"), plan.settings.ignore)]
    for name, spec in plan.specialists.items():
        places += [(("specialists", name, "files"), spec.files)]
        places += [(("specialists", name, "writes"), spec.writes)]
    for i, task in enumerate(plan.tasks):
        places.append((("tasks", i, "writes"), task.writes))
    for where, patterns in places:
        for j, pattern in enumerate(patterns):
            try:
                glob_to_regex(pattern)
            except ValueError as exc:
                raise _fail((*where, j), str(exc)) from None


def _compile_structure(plan: Plan, root: Path | None = None) -> CompiledPlan:
    specialists = _compile_specialists(plan)
    _globs(plan)
    routes = [
        (name, [glob_to_regex(p) for p in spec.files]) for name, spec in plan.specialists.items()
    ]
    first_seen: dict[str, int] = {}
    for i, task in enumerate(plan.tasks):
        if task.id in first_seen:
            raise _fail(
                ("tasks", i, "id"),
                f"duplicate task id {task.id!r} (first at tasks[{first_seen[task.id]}])",
            )
        first_seen[task.id] = i

    specs: list[TaskSpec] = []
    folders: dict[str, Path] = {}
    for i, task in enumerate(plan.tasks):
        base: FieldPath = ("tasks", i)
        files: list[str] = []
        for j, f in enumerate(task.files):
            if root is not None:
                try:
                    f = normalize_owned_path(root, f, folders)
                except ValueError as exc:
                    raise _fail(base + ("files", j), f"task {task.id!r}: {exc}") from None
            else:
                f = f.replace("\\", "/")
            if f not in files:
                files.append(f)
        specialist = task.specialist
        if specialist is None:
            specialist = _route(files, routes)
            if specialist is None:
                raise _fail(
                    base,
                    f"task {task.id!r} names no specialist and no specialist's files "
                    "pattern matches all of its files",
                )
        elif specialist not in specialists:
            known = ", ".join(sorted(specialists))
            raise _fail(
                base + ("specialist",),
                f"task {task.id!r}: unknown specialist {specialist!r} (known: {known})",
            )
        for j, dep in enumerate(task.depends_on):
            if dep not in first_seen:
                raise _fail(
                    base + ("depends_on", j),
                    f"task {task.id!r} depends on {dep!r}, which is not a task of this plan",
                )
            if dep == task.id:
                raise _fail(base + ("depends_on", j), f"task {task.id!r} depends on itself")
            dep_phase = plan.tasks[first_seen[dep]].phase
            if PHASES.index(dep_phase) > PHASES.index(task.phase):
                raise _fail(
                    base + ("depends_on", j),
                    f"task {task.id!r} ({task.phase}) depends on {dep!r} of the later "
                    f"phase {dep_phase}",
                )
        try:
            prompt = tpl.parse(task.prompt)
        except tpl.TemplateError as exc:
            raise _fail(base + ("prompt",), f"task {task.id!r}: {exc}") from None
        if tpl.Placeholder("prompt") in prompt:
            raise _fail(base + ("prompt",), f"task {task.id!r}: a prompt cannot contain {{prompt}}")
        specs.append(
            TaskSpec(
                index=i,
                id=task.id,
                specialist=specialist,
                files=tuple(files),
                locks=tuple(dict.fromkeys(task.locks)),
                depends_on=tuple(dict.fromkeys(task.depends_on)),
                scope=task.scope,
                phase=task.phase,
                phase_rank=PHASES.index(task.phase),
                prompt=prompt,
                timeout=task.timeout,
                estimate=task.estimate,
            )
        )
    by_id = {t.id: t for t in specs}
    _check_cycles(specs, by_id)
    _check_refs(specs, by_id, specialists)
    return CompiledPlan(tuple(specs), specialists, plan.settings, plan.source, by_id)


def _route(files: Sequence[str], routes: list[tuple[str, list[Any]]]) -> str | None:
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


def _check_cycles(specs: Sequence[TaskSpec], by_id: Mapping[str, TaskSpec]) -> None:
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
    members = " -> ".join(repr(c) for c in [*cycle, cycle[0]])
    raise _fail(("tasks", first, "depends_on"), f"dependency cycle: {members}")


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
) -> None:
    """A task may only read results that exist when it starts."""
    for t in specs:
        refs = [p for p in tpl.placeholders(t.prompt) if p.arg is not None]
        argv = specialists[t.specialist].argv or ()
        refs += [p for parts in argv for p in tpl.placeholders(parts) if p.arg is not None]
        ancestors: set[str] | None = None
        for ph in refs:
            where: FieldPath = ("tasks", t.index, "prompt")
            if ph.name == "results":
                if ph.arg not in PHASES:
                    raise _fail(where, f"task {t.id!r}: {ph}: unknown phase {ph.arg!r}")
                if PHASES.index(ph.arg) >= t.phase_rank:
                    raise _fail(where, f"task {t.id!r} ({t.phase}): {ph} is not an earlier phase")
            else:
                ref = by_id.get(ph.arg or "")
                if ref is None:
                    raise _fail(where, f"task {t.id!r}: {ph} names no task of this plan")
                if ref.phase_rank < t.phase_rank:
                    continue
                if ancestors is None:
                    ancestors = _ancestors(t, by_id)
                if ref.id not in ancestors:
                    raise _fail(
                        where,
                        f"task {t.id!r}: {ph} is not a dependency (add it to depends_on) "
                        "nor a task of an earlier phase",
                    )
