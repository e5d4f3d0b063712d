"""guildrun: run many AI-agent tasks in parallel, safely, and measure how much faster it was.

The public API is what this module exports; everything in an underscored module is
private and may change.

    import guildrun
    plan = guildrun.load_plan("plan.yaml")
    summary = guildrun.run(plan)              # or: await guildrun.run_async(plan)
    print(summary.parallelism, summary.utilization)
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._engine import run as run
    from ._engine import run_async as run_async
    from ._errors import GuildrunError as GuildrunError
    from ._errors import InputError as InputError
    from ._errors import Interrupted as Interrupted
    from ._errors import PlanError as PlanError
    from ._errors import UsageError as UsageError
    from ._executors.base import TaskContext as TaskContext
    from ._executors.ray import RayExecutor as RayExecutor
    from ._journal import Event as Event
    from ._metrics import Summary as Summary
    from ._plan import Plan as Plan
    from ._plan import Specialist as Specialist
    from ._plan import Task as Task
    from ._plan import load_plan as load_plan
    from ._plan import plan_schema as plan_schema
    from ._policies.retry import RetryPolicy as RetryPolicy
    from ._policies.retry import wait_exponential as wait_exponential
    from ._policies.retry import wait_random as wait_random
    from ._reporter import Reporter as Reporter
    from ._resume import resume_async as resume_async
    from ._resume import rollback as rollback
    from ._schedule import Distribution as Distribution
    from ._schedule import RoundRobin as RoundRobin
    from ._schedule import WorkStealing as WorkStealing
    from ._settings import Settings as Settings

# Loaded on first use (PEP 562): `import guildrun` and the command line stay fast, and
# the engine, pydantic and rich load only for what needs them.
_EXPORTS = {
    "Reporter": "._reporter",
    "run": "._engine",
    "run_async": "._engine",
    "GuildrunError": "._errors",
    "InputError": "._errors",
    "Interrupted": "._errors",
    "PlanError": "._errors",
    "UsageError": "._errors",
    "TaskContext": "._executors.base",
    "RayExecutor": "._executors.ray",  # imports Ray only when one is made
    "Event": "._journal",
    "Summary": "._metrics",
    "Plan": "._plan",
    "Specialist": "._plan",
    "Task": "._plan",
    "load_plan": "._plan",
    "plan_schema": "._plan",
    "RetryPolicy": "._policies.retry",
    "wait_exponential": "._policies.retry",
    "wait_random": "._policies.retry",
    "resume_async": "._resume",
    "rollback": "._resume",
    "Distribution": "._schedule",
    "RoundRobin": "._schedule",
    "WorkStealing": "._schedule",
    "Settings": "._settings",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'guildrun' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"


def resume(run_id: str | None = None, **kwargs: Any) -> "Summary":
    """Synchronous `resume_async`: continue an interrupted run."""
    from ._engine import run_sync
    from ._resume import resume_async

    return run_sync(resume_async(run_id, **kwargs))


__all__ = [
    "Distribution",
    "Event",
    "GuildrunError",
    "InputError",
    "Interrupted",
    "Plan",
    "PlanError",
    "RayExecutor",
    "Reporter",
    "RetryPolicy",
    "RoundRobin",
    "Settings",
    "Specialist",
    "Summary",
    "Task",
    "TaskContext",
    "UsageError",
    "WorkStealing",
    "__version__",
    "load_plan",
    "plan_schema",
    "resume",
    "resume_async",
    "rollback",
    "run",
    "run_async",
    "wait_exponential",
    "wait_random",
]
