"""The engine: the scheduler's decisions, carried out with real runners and journaled.

The loop is small on purpose: ask the scheduler, journal what it decided in one
transaction, then (and only then) report it and start the attempts; wait for an
attempt to end; journal that; repeat. All policy lives in the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _templates as tpl
from ._errors import PlanError
from ._journal import Event, Journal, journal_path, new_run_id
from ._metrics import Summary, summarize
from ._paths import STATE_DIR, find_root
from ._plan import CompiledPlan, Plan, SpecialistSpec, compile_plan, load_plan
from ._runners import CommandRunner, Job, Outcome, PythonRunner, Runner, TaskContext, load_callable
from ._schedule import (
    Decision,
    PhaseEnded,
    PhaseStarted,
    Retired,
    Scheduler,
    Skipped,
    Spawned,
    Started,
    distribution,
)
from ._settings import Settings, read_project_config, resolve_settings

PGID_FLUSH_S = 0.2


class Reporter:
    """Receives events after they are committed. Subclass and override what you need."""

    def run_started(self, run_id: str, plan: CompiledPlan, limits: Mapping[str, int]) -> None:
        pass

    def events(self, events: Iterable[Event]) -> None:
        pass

    def run_ended(self, summary: Summary) -> None:
        pass


@dataclass(frozen=True)
class Prepared:
    """A plan ready to run: compiled against its root with settings resolved."""

    plan: CompiledPlan
    source: Plan
    root: Path
    settings: Settings
    limits: dict[str, int]


def prepare(
    plan: Plan | str | Path,
    *,
    root: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Prepared:
    """Load, check and resolve everything that can be wrong before anything runs."""
    project_root = find_root(root)
    model = plan if isinstance(plan, Plan) else load_plan(plan)
    project, project_source = read_project_config(project_root)
    settings = resolve_settings(
        plan=model.settings,
        project=project,
        project_source=project_source,
        env=env,
        overrides=overrides,
    )
    compiled = compile_plan(model, project_root, settings)
    limits = {
        name: min(spec.instances or settings.per_agent_type, settings.total_parallel)
        for name, spec in compiled.specialists.items()
    }
    return Prepared(compiled, model, project_root, settings, limits)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(task_id: str) -> str:
    """A file name for a task id; ids that needed changing get a hash so they stay unique."""
    clean = _UNSAFE.sub("_", task_id)[:80]
    if clean == task_id and not clean.startswith("."):
        return clean
    return f"{clean}-{hashlib.sha1(task_id.encode()).hexdigest()[:8]}"  # noqa: S324


class Engine:
    def __init__(
        self,
        prepared: Prepared,
        journal: Journal,
        *,
        reporter: Reporter | None = None,
        run_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.p = prepared
        self.plan = prepared.plan
        self.journal = journal
        self.reporter = reporter or Reporter()
        self.run_id = run_id or new_run_id()
        self.clock = clock
        self.scheduler = Scheduler(
            self.plan,
            limits=prepared.limits,
            total=prepared.settings.total_parallel,
            strategy=distribution(prepared.settings.strategy),
            clock=clock,
        )
        self.run_dir = prepared.root / STATE_DIR / "runs" / self.run_id
        self.log_dir = self.run_dir / "logs"
        self.result_dir = self.run_dir / "results"
        self.results: dict[str, str] = {}
        self.attempt_no: dict[str, int] = {}
        self.runners = {name: self._runner(spec) for name, spec in self.plan.specialists.items()}
        self._base_env = dict(os.environ)
        # Encoded once per specialist: Popen would otherwise encode ~100 variables per task.
        self._env = {
            name: {
                os.fsencode(k): os.fsencode(v) for k, v in {**self._base_env, **spec.env}.items()
            }
            for name, spec in self.plan.specialists.items()
        }
        self._pgids: list[tuple[str, int, int]] = []
        self._done: asyncio.Queue[tuple[str, int, Outcome]] = asyncio.Queue()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()

    def _runner(self, spec: SpecialistSpec) -> Runner:
        if spec.argv is not None or spec.shell_script is not None:
            return CommandRunner()
        func = spec.func
        if func is None:
            assert spec.python is not None
            try:
                func = load_callable(spec.python)
            except Exception as exc:
                raise PlanError(
                    f"cannot load {spec.python!r}: {type(exc).__name__}: {exc}",
                    file=self.plan.source,
                    field=f"specialists.{spec.name}.python",
                ) from None
        return PythonRunner(func)

    # ------------------------------------------------------------ the loop

    async def execute(self) -> Summary:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.result_dir.mkdir(parents=True, exist_ok=True)
        now = self.clock()
        with self.journal.transaction() as committed:
            self.journal.create_run(
                self.run_id,
                root=self.p.root,
                plan_source=self.plan.source,
                plan_json=self.p.source.model_dump_json(),
                settings_json=self.p.settings.model_dump_json(),
                limits=self.p.limits,
                tasks=[
                    (t.id, t.index, t.specialist, t.phase, t.scope, list(t.files))
                    for t in self.plan.tasks
                ],
                now=now,
            )
            self.journal.event(self.run_id, Event("run_started", now))
            jobs = self._apply(self.scheduler.dispatch())
        self.reporter.run_started(self.run_id, self.plan, self.p.limits)
        self.reporter.events(committed)
        self._launch(jobs)
        status = "done"
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            while not self.scheduler.finished:
                get = asyncio.ensure_future(self._done.get())
                await asyncio.wait({get, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    status = "interrupted"
                    break
                # Group commit: every attempt that has ended by now goes into one transaction.
                ended = [get.result()]
                while not self._done.empty():
                    ended.append(self._done.get_nowait())
                with self.journal.transaction() as committed:
                    self._write_pgids()
                    decisions: list[Decision] = []
                    for task_id, attempt, outcome in ended:
                        self._running.pop(task_id, None)
                        self._record(task_id, attempt, outcome)
                        decisions += self.scheduler.finish(task_id, outcome.ok)
                    decisions += self.scheduler.dispatch()
                    jobs = self._apply(decisions)
                self.reporter.events(committed)
                self._launch(jobs)
        finally:
            stop_wait.cancel()
            if self._running:
                status = "interrupted"
                await self._cancel_running()
        if status == "done" and any(s.value in ("failed", "skipped") for s in self.scheduler.state):
            status = "failed"
        end = self.clock()
        with self.journal.transaction() as committed:
            self.journal.event(self.run_id, Event("run_ended", end, data={"status": status}))
            self.journal.end_run(self.run_id, status, end)
        self.reporter.events(committed)
        summary = summarize(self.journal, self.run_id)
        self.reporter.run_ended(summary)
        return summary

    def stop(self) -> None:
        self._stop.set()

    async def _cancel_running(self) -> None:
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        now = self.clock()
        with self.journal.transaction() as committed:
            for task_id in list(self._running):
                attempt = self.attempt_no[task_id]
                self.journal.attempt_ended(
                    self.run_id,
                    task_id,
                    attempt,
                    status="cancelled",
                    started=now,
                    ended=now,
                    exit_code=None,
                    error="interrupted",
                )
                self.journal.task_ended(
                    self.run_id, task_id, "interrupted", now, cause="interrupted"
                )
                self.journal.event(self.run_id, Event("task_interrupted", now, task=task_id))
        self._running.clear()
        self.reporter.events(committed)

    def _record(self, task_id: str, attempt: int, o: Outcome) -> None:
        self.journal.attempt_ended(
            self.run_id,
            task_id,
            attempt,
            status=o.status,
            started=o.started,
            ended=o.ended,
            exit_code=o.exit_code,
            error=o.error,
        )
        state = "done" if o.ok else "failed"
        if o.ok and o.result is not None:
            self.results[task_id] = o.result
        self.journal.task_ended(
            self.run_id, task_id, state, o.ended, result=o.result, cause=None if o.ok else o.error
        )
        data: dict[str, Any] = {"status": o.status, "duration": round(o.ended - o.started, 6)}
        if o.exit_code is not None:
            data["exit_code"] = o.exit_code
        if o.error:
            data["error"] = o.error
        self.journal.event(
            self.run_id,
            Event("task_finished", o.ended, task=task_id, instance=None, data=data),
        )

    def _apply(self, decisions: list[Decision]) -> list[Job]:
        """Journal the scheduler's decisions; return the attempts to launch after commit."""
        jobs: list[Job] = []
        rid = self.run_id
        for d in decisions:
            if isinstance(d, Started):
                job = self._job(d)
                jobs.append(job)
                self.journal.task_started(
                    rid,
                    d.task,
                    job.context.attempt,
                    d.instance,
                    d.stolen_from,
                    d.time,
                    str(job.stdout_path),
                    str(job.stderr_path),
                )
                data = {"stolen_from": d.stolen_from} if d.stolen_from else None
                self.journal.event(rid, Event("task_started", d.time, d.task, d.instance, data))
            elif isinstance(d, Skipped):
                self.journal.task_ended(
                    rid, d.task, "skipped", d.time, cause=f"dependency {d.cause!r} failed"
                )
                self.journal.event(
                    rid, Event("task_skipped", d.time, d.task, data={"cause": d.cause})
                )
            elif isinstance(d, Spawned):
                self.journal.instance_spawned(rid, d.instance, d.specialist, d.time)
                self.journal.event(rid, Event("instance_spawned", d.time, instance=d.instance))
            elif isinstance(d, Retired):
                self.journal.instance_retired(rid, d.instance, d.time)
                self.journal.event(rid, Event("instance_retired", d.time, instance=d.instance))
            elif isinstance(d, PhaseStarted):
                self.journal.event(rid, Event("phase_started", d.time, data={"phase": d.phase}))
            elif isinstance(d, PhaseEnded):
                path = self._write_phase_results(d.phase)
                self.journal.event(
                    rid, Event("phase_ended", d.time, data={"phase": d.phase, "results": str(path)})
                )
        return jobs

    def _launch(self, jobs: list[Job]) -> None:
        for job in jobs:
            ctx = job.context
            self._running[ctx.task_id] = asyncio.create_task(self._attempt(job))

    async def _attempt(self, job: Job) -> None:
        ctx = job.context
        runner = self.runners[ctx.specialist]
        try:
            outcome = await runner.run(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a runner bug must not hang the run: fail the attempt
            outcome = Outcome(
                "error", self.clock(), self.clock(), error=f"{type(exc).__name__}: {exc}"
            )
        self._done.put_nowait((ctx.task_id, ctx.attempt, outcome))

    # ------------------------------------------------------------ jobs

    def _job(self, d: Started) -> Job:
        spec = self.plan.by_id[d.task]
        attempt = self.attempt_no.get(d.task, 0) + 1
        self.attempt_no[d.task] = attempt
        name = safe_name(spec.id)
        stem = f"{name}.{attempt}" if attempt > 1 else name
        stdout_path = self.log_dir / f"{stem}.out"
        stderr_path = self.log_dir / f"{stem}.err"
        specialist = self.plan.specialists[spec.specialist]
        values = {
            "task_id": spec.id,
            "instance": d.instance,
            "attempt": str(attempt),
            "workdir": str(self.p.root),
            "specialist": spec.specialist,
            "scope": spec.scope or "",
            "phase": spec.phase,
        }
        lookup = tpl.simple_lookup({**values, "files": " ".join(spec.files)}, self._ref)
        prompt = tpl.render(spec.prompt, lookup)
        ctx = TaskContext(
            run_id=self.run_id,
            task_id=spec.id,
            specialist=spec.specialist,
            phase=spec.phase,
            scope=spec.scope,
            prompt=prompt,
            files=spec.files,
            instance=d.instance,
            attempt=attempt,
            root=self.p.root,
            workdir=self.p.root,
            result_path=self.result_dir / f"{stem}.result",
            log_path=stdout_path,
        )
        argv: list[str] | None = None
        if specialist.argv is not None:
            full = tpl.simple_lookup({**values, "prompt": prompt}, self._ref)
            argv = tpl.render_argv(specialist.argv, full, spec.files)
        elif specialist.shell_script is not None:
            argv = ["/bin/sh", "-c", specialist.shell_script, "guildrun", *spec.files]
        env: dict[bytes, bytes] = {}
        if argv is not None:
            env = self._env[spec.specialist].copy()
            for k, v in ctx.env().items():
                env[k.encode()] = os.fsencode(v)
        timeout = spec.timeout or specialist.timeout or self.p.settings.timeout

        def on_spawn(pgid: int, task: str = spec.id, n: int = attempt) -> None:
            self._pgids.append((task, n, pgid))
            if len(self._pgids) == 1:
                asyncio.get_running_loop().call_later(PGID_FLUSH_S, self._flush_pgids)

        return Job(
            context=ctx,
            timeout=timeout,
            kill_grace=self.p.settings.kill_grace,
            stdout_path=stdout_path,
            stderr_path=stderr_path,
            argv=argv,
            env=env,
            on_spawn=on_spawn,
        )

    def _write_pgids(self) -> None:
        for task, attempt, pgid in self._pgids:
            self.journal.attempt_pgid(self.run_id, task, attempt, pgid)
        self._pgids.clear()

    def _flush_pgids(self) -> None:
        """Journal the process groups of agents started lately, one commit for the batch.

        A resumed run finds agents a killed engine left behind through these. They ride
        along with the next commit when one comes sooner, so short tasks cost no commit.
        """
        if self._pgids:
            with self.journal.transaction():
                self._write_pgids()

    def _ref(self, ph: tpl.Placeholder) -> str:
        if ph.name == "result":
            return self.results.get(ph.arg or "", "")
        return self._phase_text(ph.arg or "")

    def _phase_text(self, phase: str) -> str:
        blocks = []
        for t in self.plan.tasks:
            if t.phase == phase and t.id in self.results:
                blocks.append(f"## {t.id}\n\n{self.results[t.id].rstrip()}\n")
        return "\n".join(blocks)

    def _write_phase_results(self, phase: str) -> Path:
        path = self.run_dir / f"results-{phase}.md"
        body = self._phase_text(phase)
        path.write_text(
            f"# Results of the {phase} phase ({self.run_id})\n\n{body}", encoding="utf-8"
        )
        return path


async def run_async(
    plan: Plan | str | Path,
    *,
    root: str | Path | None = None,
    per_agent_type: int | None = None,
    total_parallel: int | None = None,
    strategy: str | None = None,
    reporter: Reporter | None = None,
    env: Mapping[str, str] | None = None,
    handle_signals: bool = True,
) -> Summary:
    """Run a plan and return its summary. Task failures are in the summary, not raised."""
    prepared = prepare(
        plan,
        root=root,
        overrides={
            "per_agent_type": per_agent_type,
            "total_parallel": total_parallel,
            "strategy": strategy,
        },
        env=env,
    )
    return await run_prepared(prepared, reporter=reporter, handle_signals=handle_signals)


async def run_prepared(
    prepared: Prepared, *, reporter: Reporter | None = None, handle_signals: bool = True
) -> Summary:
    """Run an already prepared plan; Ctrl-C and SIGTERM stop it cleanly (exit code 130)."""
    journal = Journal(journal_path(prepared.root))
    try:
        engine = Engine(prepared, journal, reporter=reporter)
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, engine.stop)
                    installed.append(sig)
        try:
            return await engine.execute()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
    finally:
        journal.close()


def run(plan: Plan | str | Path, **kwargs: Any) -> Summary:
    """Synchronous `run_async`."""
    return asyncio.run(run_async(plan, **kwargs))
