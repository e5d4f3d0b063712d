"""The public face is exactly what guildrun/__init__.py exports, and nothing private leaks."""

from __future__ import annotations

import guildrun

EXPECTED = {
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
}


def test_public_api_is_what_it_should_be() -> None:
    assert set(guildrun.__all__) == EXPECTED
    for name in guildrun.__all__:
        assert hasattr(guildrun, name), name


def test_errors_carry_exit_codes() -> None:
    assert guildrun.PlanError("x").exit_code == 2
    assert guildrun.UsageError("x").exit_code == 2
    assert guildrun.Interrupted("x").exit_code == 130
    assert guildrun.GuildrunError("x").exit_code == 1
    assert issubclass(guildrun.PlanError, guildrun.InputError)
