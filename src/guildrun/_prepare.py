"""Everything that can be wrong, checked before anything runs: a `Prepared` plan.

A plan is loaded, its settings resolved by precedence, compiled against the project
root (paths proven inside it, references resolved), its limits fixed (or chosen from
the size of the work with --auto) and its strategy chosen (`auto` asks the simulator).
Strategy and retry objects given in code (`guildrun.run(plan, strategy=LongestFirst())`)
take the place of the settings' names here, so they reach the scheduler as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import UsageError
from ._journal import journal_path
from ._paths import find_root
from ._plan import CompiledPlan, Plan, Specialist, compile_plan, load_plan
from ._policies.retry import RetryPolicy
from ._schedule import Distribution, distribution
from ._settings import Settings, read_project_config, resolve_settings

if TYPE_CHECKING:
    from ._estimates import Estimates


@dataclass(frozen=True)
class Prepared:
    """A plan ready to run: compiled against its root with settings resolved."""

    plan: CompiledPlan
    source: Plan
    root: Path
    settings: Settings
    limits: dict[str, int]
    notes: tuple[str, ...] = ()
    strategy: Distribution | None = None  # an object given in code, else settings.strategy
    retry: RetryPolicy | None = None  # a policy given in code, for every task
    estimates: Estimates | None = None  # given or learned, for a strategy that ranks by them

    def distribution(self) -> Distribution:
        return self.strategy if self.strategy is not None else distribution(self.settings.strategy)

    def expected(self) -> dict[str, float] | None:
        """Seconds per task for the scheduler, when any task's are known."""
        return self.estimates.seconds if self.estimates and self.estimates.known else None


# `strategy: auto` simulates the strategies to choose one only up to this many tasks;
# above, where three simulations would cost seconds, it takes longest-first.
SIMULATE_AT_MOST = 2000


# The seed's complexity table: (class, most tasks, fewest agents, most agents).
SIZE_CLASSES = (
    ("simple", 5, 2, 3),
    ("medium", 20, 5, 10),
    ("large", 100, 10, 20),
)


def adaptive_limits(n_tasks: int, n_specialists: int, ceiling: int) -> tuple[int, int, str]:
    """Instance limits from the size of the work, as the seed's complexity table says."""
    for name, most, low, high in SIZE_CLASSES:
        if n_tasks <= most:
            total = min(ceiling, high, max(low, (n_tasks + 1) // 2), max(1, n_tasks))
            why = f"{name} work ({n_tasks} tasks, at most {most}): {low}-{high} agents"
            break
    else:
        total = ceiling
        why = f"enterprise work ({n_tasks} tasks, over 100): up to the limit of {ceiling}"
    per_type = min(total, max(3, -(-total // max(1, n_specialists))))
    return total, per_type, why


def check_gates(model: Plan, workspace: str) -> None:
    """Gates need the integrated tree of worktree mode, a scope that exists, a command."""
    where = model.source or "plan"
    names: set[str] = set()
    scopes = {t.scope for t in model.tasks if t.scope}
    for k, gate in enumerate(model.gates):
        field = f"{where}: gates[{k}]"
        if workspace != "worktree":
            raise UsageError(f"{field}: gates run on the integrated tree: set workspace: worktree")
        if gate.name in names:
            raise UsageError(f"{field}.name: {gate.name!r} is used by another gate")
        names.add(gate.name)
        scope = gate.after.removeprefix("scope:")
        if gate.after.startswith("scope:") and scope not in scopes:
            raise UsageError(f"{field}.after: no task has scope {scope!r}")
        try:
            gate.argv()
        except ValueError as exc:
            raise UsageError(f"{field}.run: {exc}") from None


def prepare(
    plan: Plan | str | Path,
    *,
    root: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    auto: bool = False,
    strategy: Distribution | None = None,
    retry: RetryPolicy | None = None,
) -> Prepared:
    """Load, check and resolve everything that can be wrong before anything runs."""
    project_root = find_root(root)
    model = plan if isinstance(plan, Plan) else load_plan(plan, check=False)
    model = with_subagents(model, project_root)
    project, project_source = read_project_config(project_root)
    settings = resolve_settings(
        plan=model.settings,
        project=project,
        project_source=project_source,
        env=env,
        overrides=overrides,
    )
    compiled = compile_plan(model, project_root, settings)
    check_gates(model, settings.workspace)
    notes: list[str] = []
    if auto:
        used = {t.specialist for t in compiled.tasks}
        total, per_type, why = adaptive_limits(
            len(compiled.tasks), len(used), settings.total_parallel
        )
        settings = settings.model_copy(update={"total_parallel": total, "per_agent_type": per_type})
        notes.append(f"--auto: {why}; total_parallel {total}, per_agent_type {per_type}")
    limits = {
        name: min(spec.instances or settings.per_agent_type, settings.total_parallel)
        for name, spec in compiled.specialists.items()
    }
    known: Estimates | None = None
    ranked = strategy.ranks if strategy is not None else settings.strategy in RANKED
    history = journal_path(project_root)
    if ranked and (history.exists() or any(t.estimate is not None for t in compiled.tasks)):
        from ._estimates import estimate

        prompts = {t.id: t.prompt for t in model.tasks}
        known = estimate(compiled, history, prompts)
    if strategy is None and settings.strategy == "auto":
        chosen, why = choose(compiled, known, limits, settings.total_parallel)
        settings = settings.model_copy(update={"strategy": chosen})
        if known is not None and known.known:  # a first run says nothing new
            notes.append(f"strategy auto: {chosen} ({why})")
    elif known is not None and known.known:
        notes.append(f"estimates: {known.describe()}")
    compiled = CompiledPlan(
        compiled.tasks, compiled.specialists, settings, compiled.source, compiled.by_id
    )
    return Prepared(
        compiled, model, project_root, settings, limits, tuple(notes), strategy, retry, known
    )


RANKED = ("auto", "longest-first")  # strategies that use estimates (given or learned)


def choose(
    plan: CompiledPlan, known: Estimates | None, limits: Mapping[str, int], total: int
) -> tuple[str, str]:
    """What `strategy: auto` runs, and why: work stealing while no task's length is
    known (a first run); with estimates given or learned, the best predicted wall time."""
    if known is None or not known.known:
        return "work-stealing", "no estimates given or learned yet: work stealing"
    source = "estimates: " + known.describe()
    if len(plan.tasks) > SIMULATE_AT_MOST:
        return "longest-first", f"{source}; over {SIMULATE_AT_MOST} tasks, not simulated"
    from ._simulate import predict

    ranked = predict(plan, known.seconds, limits=limits, total=total)
    best = min(ranked, key=lambda p: (p.wall, p.strategy != "longest-first")).strategy
    return best, f"best predicted wall time; {source}"


def with_subagents(model: Plan, root: Path) -> Plan:
    """Tasks may name a Claude Code subagent (`.claude/agents/NAME.md`) as their
    specialist without declaring it: it becomes an `agent: claude` specialist with the
    file's system prompt, tools and model. The plan journaled is the completed one, so a
    resume does not depend on the files still being there."""
    wanted = {t.specialist for t in model.tasks if t.specialist} - set(model.specialists)
    if not wanted or not (root / ".claude" / "agents").is_dir():
        return model
    from ._agents.subagents import discover

    found = {n: a for n, a in discover(root).items() if n in wanted}
    if not found:
        return model
    added = dict(model.specialists)
    for name, sub in found.items():
        spec = sub.spec
        added[name] = Specialist(
            agent="claude",
            model=spec.model,
            system_prompt=spec.system_prompt,
            tools=list(spec.tools),
        )
    return model.model_copy(update={"specialists": added})
