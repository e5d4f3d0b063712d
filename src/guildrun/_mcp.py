"""`guildrun mcp`: the Model Context Protocol server an orchestrating agent drives.

An orchestrator (Claude Code, say) decides what to parallelise; this server lets it
hand the work to guildrun instead of fanning it out blindly: it checks a plan, starts
it in the background under guildrun's limits, and answers status, wait, cancel,
resume and report questions, each as JSON text. The runs are ordinary runs of the
project's journal, so `guildrun status`, `report` and `resume` see them too.

The engine runs inside this server's event loop. One run at a time per project root:
a second `run` while one is going is refused, naming it. When the server stops (its
client went away, or SIGTERM), a run it started is stopped as Ctrl-C would stop it
(agents stopped, files rolled back, the run resumable), so no agent outlives it.

The `mcp` SDK is imported here only (``pip install 'guildrun[mcp]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from ._engine import Engine, ResumeState, run_prepared
from ._errors import GuildrunError, UsageError
from ._journal import Journal, journal_path, new_run_id
from ._metrics import summarize
from ._paths import find_root
from ._plan import parse_plan
from ._prepare import Prepared, prepare
from ._rerun import resume_hint, run_alive
from ._schedule import Scheduler, distribution

WAIT_MAX_S = 3600.0  # the longest one `wait` call blocks
POLL_S = 0.2  # how often `wait` looks at a run another process is running
RESULT_CHARS = 4000  # of each task's result, in `status`
INSTRUCTIONS = (
    "guildrun runs many agent tasks in parallel on this project, under limits, with file "
    "ownership, retries, a journal, resume and measurement. Write a plan (the schema: "
    "specialists with a `run` command, tasks with id, files, prompt, depends_on, phase), "
    "check it with `plan`, start it with `run`, follow it with `status` or `wait`, and read "
    "`report` at the end. `cancel` stops a run so that `resume` can continue it."
)


@dataclass
class _Active:
    run_id: str
    task: asyncio.Task[Any]
    made: asyncio.Event  # set once the engine exists (on the task's first step)
    engine: Engine | None = None

    async def stop(self) -> None:
        """Stop the run as Ctrl-C would, and wait until it has ended."""
        made = asyncio.ensure_future(self.made.wait())
        await asyncio.wait({made, self.task}, return_when=asyncio.FIRST_COMPLETED)
        made.cancel()
        if self.engine is not None:
            self.engine.stop()
        await asyncio.wait({self.task})


class Runs:
    """The runs this server started for one project root, and questions about any run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.active: _Active | None = None

    # ------------------------------------------------------------------ tools

    def plan(self, plan: dict[str, Any]) -> dict[str, Any]:
        prepared = self._prepare(plan)
        return plan_preview(prepared)

    async def run(self, plan: dict[str, Any]) -> dict[str, Any]:
        self._refuse_if_busy()
        prepared = self._prepare(plan)
        run_id = new_run_id()
        self._start(prepared, run_id, None)
        return {"run_id": run_id, "tasks": len(prepared.plan.tasks), "limits": prepared.limits}

    def status(self, run_id: str) -> dict[str, Any]:
        _check_id(run_id)
        if not journal_path(self.root).exists():
            return self._starting(run_id)
        journal = Journal(journal_path(self.root), readonly=True)
        try:
            try:
                row = journal.run(run_id)
            except UsageError:
                return self._starting(run_id)
            rid = str(row["id"])
            data = summarize(journal, rid).to_json(details=True)
            data["results"] = {
                t["id"]: _clip(t["result"]) for t in journal.tasks(rid) if t["result"] is not None
            }
        finally:
            journal.close()
        data["started_here"] = self.active is not None and self.active.run_id == rid
        return data

    async def wait(self, run_id: str, timeout_s: float) -> dict[str, Any]:
        _check_id(run_id)
        deadline = time.monotonic() + max(0.0, min(float(timeout_s), WAIT_MAX_S))
        active = self.active
        if active is not None and active.run_id.startswith(run_id):
            # asyncio.wait neither cancels the run at the timeout nor raises its error:
            # an engine fault leaves the run journaled "interrupted", and that is the answer.
            await asyncio.wait({active.task}, timeout=max(0.0, deadline - time.monotonic()))
            return self._outcome(active.run_id)
        data = self.status(run_id)
        while data.get("status") in ("running", "starting") and time.monotonic() < deadline:
            await asyncio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
            data = self.status(run_id)
        return self._outcome(data["run_id"]) if data.get("status") != "running" else data

    async def cancel(self, run_id: str) -> dict[str, Any]:
        _check_id(run_id)
        active = self.active
        if active is None or not active.run_id.startswith(run_id) or active.task.done():
            state = self.status(run_id)
            if state.get("status") == "running":
                raise UsageError(
                    f"run {state['run_id']} was not started by this server; stop it where it "
                    "runs (Ctrl-C there)"
                )
            raise UsageError(f"run {state['run_id']} is not running ({state.get('status')})")
        await active.stop()
        return self._outcome(active.run_id)

    async def resume(self, run_id: str) -> dict[str, Any]:
        from ._resume import prepare_resume

        _check_id(run_id)
        self._refuse_if_busy()
        resume_hint(self.root, run_id)
        # Stopping a dead engine's agents waits out their grace period: not on the loop.
        prepared, rid, state = await asyncio.to_thread(prepare_resume, self.root, run_id)
        self._start(prepared, rid, state)
        return {"run_id": rid, "resumed": True, "done_before": len(state.done)}

    def report(self, run_id: str) -> dict[str, Any]:
        from ._report import report_json

        _check_id(run_id)
        journal = Journal(journal_path(self.root), readonly=True)
        try:
            return report_json(journal, str(journal.run(run_id)["id"]))
        finally:
            journal.close()

    # ------------------------------------------------------------------ inside

    def _prepare(self, plan: dict[str, Any]) -> Prepared:
        if not isinstance(plan, dict):
            raise UsageError("plan: expected an object with 'specialists' and 'tasks'")
        # Errors are worded as for a plan file; lines refer to the plan as indented JSON.
        model = parse_plan(json.dumps(plan, indent=2), "plan", json_format=True, check=False)
        return prepare(model, root=self.root)

    def _refuse_if_busy(self) -> None:
        if self.active is not None and not self.active.task.done():
            raise UsageError(
                f"run {self.active.run_id} is still running in this project; wait for it, "
                "or cancel it, before starting another (one run per project at a time)"
            )
        if journal_path(self.root).exists():
            journal = Journal(journal_path(self.root), readonly=True)
            try:
                others = [r for r in journal.runs(limit=100) if run_alive(r)]
            finally:
                journal.close()
            if others:
                row = others[0]
                raise UsageError(
                    f"run {row['id']} is running in this project (pid {row['pid']}); "
                    "one run per project at a time"
                )

    def _start(self, prepared: Prepared, run_id: str, resume: ResumeState | None) -> None:
        # Without signal handlers: `cancel` (or the server's end) stops the engine.
        made = asyncio.Event()

        def keep(engine: Engine) -> None:
            assert self.active is not None
            self.active.engine = engine
            made.set()

        task = asyncio.get_running_loop().create_task(
            run_prepared(
                prepared, handle_signals=False, run_id=run_id, resume=resume, on_engine=keep
            )
        )
        self.active = _Active(run_id, task, made)

    def _starting(self, run_id: str) -> dict[str, Any]:
        active = self.active
        if active is not None and active.run_id.startswith(run_id):
            return {"run_id": active.run_id, "status": "starting", "started_here": True}
        raise UsageError(f"no run {run_id!r} in {journal_path(self.root)}")

    def _outcome(self, run_id: str) -> dict[str, Any]:
        """The `run --json` summary of an ended run, with the results; else its status."""
        data = self.status(run_id)
        if data.get("status") in ("running", "starting"):
            return data
        journal = Journal(journal_path(self.root), readonly=True)
        try:
            out = summarize(journal, data["run_id"]).to_json()
        finally:
            journal.close()
        out["results"] = data["results"]
        return out

    async def close(self) -> None:
        """Stop a run this server started, as Ctrl-C would; its agents do not outlive us."""
        active = self.active
        if active is not None and not active.task.done():
            await active.stop()


def plan_preview(prepared: Prepared) -> dict[str, Any]:
    """What `guildrun plan --json --simulate` says: the deal per instance and the wall time."""
    from ._simulate import estimates, predict

    plan = prepared.plan
    total = prepared.settings.total_parallel
    sched = Scheduler(
        plan,
        limits=prepared.limits,
        total=total,
        strategy=distribution(prepared.settings.strategy),
        estimates=prepared.expected(),
    )
    prompts = {t.id: t.prompt for t in prepared.source.tasks}
    durations, source = estimates(plan, journal_path(prepared.root), prompts)
    ranked = predict(plan, durations, limits=prepared.limits, total=total)
    best = min(ranked, key=lambda p: (p.wall, p.strategy != "work-stealing"))
    chosen = next((p for p in ranked if p.strategy == prepared.settings.strategy), best)
    return {
        "valid": True,
        "root": str(prepared.root),
        "tasks": len(plan.tasks),
        "settings": prepared.settings.model_dump(),
        "limits": prepared.limits,
        "notes": list(prepared.notes),
        "phases": [{"phase": name, "instances": deal} for name, deal in sched.deal_by_phase()],
        "simulation": {
            "estimates": source,
            "work_s": round(sum(durations.values()), 4),
            "wall_s": chosen.to_json()["wall_s"],
            "strategies": [p.to_json() for p in ranked],
            "best": best.strategy,
        },
    }


def _check_id(run_id: str) -> None:
    if not run_id.strip():
        raise UsageError("run_id: empty; 'run' returns it, 'guildrun runs' lists them")


def _clip(text: str) -> str:
    if len(text) <= RESULT_CHARS:
        return text
    return text[:RESULT_CHARS] + f"\n[... {len(text) - RESULT_CHARS} more characters]"


def build_server(runs: Runs) -> MCPServer[Any]:
    """The tools. Sync ones run in a worker thread (the SDK's way): they only read the
    journal; those that start or stop runs are async, on the loop the engine runs on."""
    server: MCPServer[Any] = MCPServer("guildrun", instructions=INSTRUCTIONS)

    def answer(data: dict[str, Any]) -> str:
        return json.dumps(data)

    @server.tool()
    def plan(plan: dict[str, Any]) -> str:
        """Check a plan (an object in the guildrun plan schema) without running it.

        Returns the tasks each instance would get, per phase, and the predicted wall time
        (from the tasks' estimates, or from past runs of the same work)."""
        with _as_tool_error():
            return answer(runs.plan(plan))

    @server.tool()
    async def run(plan: dict[str, Any]) -> str:
        """Start a plan in the background; returns {"run_id": ...} at once.

        One run per project at a time. Follow it with status or wait."""
        with _as_tool_error():
            return answer(await runs.run(plan))

    @server.tool()
    def status(run_id: str) -> str:
        """Where a run is: per-task states, attempts, causes, and the results so far."""
        with _as_tool_error():
            return answer(runs.status(run_id))

    @server.tool()
    async def wait(run_id: str, timeout_s: float = 60.0) -> str:
        """Wait until the run ends or timeout_s passes (at most an hour).

        Returns the run's summary (as `guildrun run --json`, with the results) when it
        ended, else its status ("status": "running")."""
        with _as_tool_error():
            return answer(await runs.wait(run_id, timeout_s))

    @server.tool()
    async def cancel(run_id: str) -> str:
        """Stop a run this server started: agents stopped, their files rolled back.

        The run ends "interrupted" and can be continued with resume."""
        with _as_tool_error():
            return answer(await runs.cancel(run_id))

    @server.tool()
    async def resume(run_id: str) -> str:
        """Continue an interrupted run in the background; done tasks are not run again."""
        with _as_tool_error():
            return answer(await runs.resume(run_id))

    @server.tool()
    def report(run_id: str) -> str:
        """The run's report data: timeline, utilization, phases, critical path, failures."""
        with _as_tool_error():
            return answer(runs.report(run_id))

    return server


@contextlib.contextmanager
def _as_tool_error() -> Iterator[None]:
    """guildrun's own errors reach the agent as the CLI words them; others are bugs."""
    try:
        yield
    except GuildrunError as exc:
        raise ToolError(str(exc)) from None


async def serve(root: str | Path | None) -> None:
    """Serve until the client goes away or a signal comes; a run started here stops too."""
    runs = Runs(find_root(root))
    server = build_server(runs)
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, signalled.set)
    serving = loop.create_task(server.run_stdio_async())
    waiting = loop.create_task(signalled.wait())
    await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
    await runs.close()
    if signalled.is_set():
        # The SDK reads stdin in a worker thread that no cancellation reaches, and the
        # interpreter would wait for it at exit; nothing of ours runs any more: leave.
        sys.stderr.flush()
        os._exit(0)
    waiting.cancel()
    serving.result()


def main(root: str | None) -> int:
    asyncio.run(serve(root))
    return 0
