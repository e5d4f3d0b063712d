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
import random
import re
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _templates as tpl
from ._errors import PlanError
from ._journal import Event, Journal, journal_path, new_run_id
from ._metrics import Summary, summarize
from ._monitor import Monitor
from ._paths import STATE_DIR, find_root, glob_to_regex
from ._plan import CompiledPlan, Plan, SpecialistSpec, compile_plan, load_plan
from ._retry import RetryPolicy, merge_retry
from ._runners import CommandRunner, Job, Outcome, PythonRunner, Runner, TaskContext, load_callable
from ._schedule import (
    Decision,
    PhaseEnded,
    PhaseStarted,
    Queued,
    Retired,
    Scheduler,
    Skipped,
    Spawned,
    Started,
    distribution,
)
from ._settings import Settings, read_project_config, resolve_settings
from ._workspace import Baseline, Manifest, Stat, Store, Watcher, walk

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
    notes: tuple[str, ...] = ()


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


def prepare(
    plan: Plan | str | Path,
    *,
    root: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    auto: bool = False,
) -> Prepared:
    """Load, check and resolve everything that can be wrong before anything runs."""
    project_root = find_root(root)
    model = plan if isinstance(plan, Plan) else load_plan(plan, check=False)
    project, project_source = read_project_config(project_root)
    settings = resolve_settings(
        plan=model.settings,
        project=project,
        project_source=project_source,
        env=env,
        overrides=overrides,
    )
    compiled = compile_plan(model, project_root, settings)
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
    if settings.strategy == "auto":
        from ._simulate import estimates, predict

        durations, source = estimates(compiled, journal_path(project_root))
        has_estimates = not source.startswith("none")
        chosen = "work-stealing"
        if has_estimates:
            ranked = predict(compiled, durations, limits=limits, total=settings.total_parallel)
            chosen = min(ranked, key=lambda p: (p.wall, p.strategy != "work-stealing")).strategy
        settings = settings.model_copy(update={"strategy": chosen})
        notes.append(
            f"strategy auto: {chosen} "
            + (
                "(best predicted wall time; estimates: " + source + ")"
                if has_estimates
                else "(no estimates: work stealing)"
            )
        )
    compiled = CompiledPlan(
        compiled.tasks, compiled.specialists, settings, compiled.source, compiled.by_id
    )
    return Prepared(compiled, model, project_root, settings, limits, tuple(notes))


def specialist_callable(spec: SpecialistSpec, source: str | None) -> Callable[..., Any]:
    """Import a `python: module:function` specialist; failing that is bad input (exit 2)."""
    assert spec.python is not None
    try:
        return load_callable(spec.python)
    except Exception as exc:  # any import-time error of the user's module
        raise PlanError(
            f"cannot load {spec.python!r}: {type(exc).__name__}: {exc}",
            file=source,
            field=f"specialists.{spec.name}.python",
        ) from None


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(task_id: str) -> str:
    """A file name for a task id; ids that needed changing get a hash so they stay unique."""
    clean = _UNSAFE.sub("_", task_id)[:80]
    if clean == task_id and not clean.startswith("."):
        return clean
    return f"{clean}-{hashlib.sha1(task_id.encode()).hexdigest()[:8]}"  # noqa: S324


@dataclass
class ResumeState:
    """What a resumed run takes over from the journal."""

    done: set[str]
    final: dict[str, str]  # failed or skipped tasks kept as they were: id -> state
    attempts: dict[str, int]
    results: dict[str, str]


class _Timings:
    """Engine steps, timed: their sum is the coordination overhead of a run.

    Steps nest (a snapshot inside a journal transaction); each is charged only its own
    time, so the sum counts every second once.
    """

    def __init__(self) -> None:
        self.steps: dict[str, list[float]] = {}
        self._stack: list[list[float]] = []  # [start, time spent in nested steps]

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        frame = [time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            spent = time.perf_counter() - frame[0]
            self.add(step, spent - frame[1])
            if self._stack:
                self._stack[-1][1] += spent

    def add(self, step: str, seconds: float) -> None:
        cell = self.steps.setdefault(step, [0.0, 0])
        cell[0] += seconds
        cell[1] += 1

    def export(self) -> dict[str, tuple[float, int]]:
        return {k: (v[0], int(v[1])) for k, v in self.steps.items()}


@dataclass(frozen=True)
class _Rules:
    """Per-task policies, resolved once from settings, specialist and task."""

    retry: RetryPolicy
    writes: tuple[re.Pattern[str], ...]
    on_violation: str


class Engine:
    """One run: the scheduler's decisions carried out, checked and journaled."""

    def __init__(
        self,
        prepared: Prepared,
        journal: Journal,
        *,
        reporter: Reporter | None = None,
        run_id: str | None = None,
        resume: ResumeState | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        own_files: Iterable[str] = (),
    ) -> None:
        self.p = prepared
        self.plan = prepared.plan
        self.settings = prepared.settings
        self.journal = journal
        self.reporter = reporter or Reporter()
        self.run_id = run_id or new_run_id()
        self.resume = resume
        self.clock = clock
        self.rng = rng or random.Random()
        self.run_dir = prepared.root / STATE_DIR / "runs" / self.run_id
        self.log_dir = self.run_dir / "logs"
        self.result_dir = self.run_dir / "results"
        self.results: dict[str, str] = dict(resume.results) if resume else {}
        self.attempt_no: dict[str, int] = dict(resume.attempts) if resume else {}
        self.runners = {name: self._runner(spec) for name, spec in self.plan.specialists.items()}
        self.rules = self._rules()
        self.store = Store(prepared.root)
        self.before: dict[str, Manifest] = {}
        self.widened: set[str] = set()
        self.extra_files: dict[str, list[str]] = {}
        self.timings = _Timings()
        self.watcher: Watcher | None = None
        self.scheduler: Scheduler  # made when the run starts
        self.baseline: Baseline | None = None
        self._ignore = tuple(glob_to_regex(g) for g in self.settings.ignore)
        self._own_files = frozenset(own_files)  # guildrun's own outputs in the tree (--events)
        self._ran_since_check: set[str] = set()
        self._carry: set[str] = set()
        self._base_env = dict(os.environ)
        # Encoded once per specialist: Popen would otherwise encode ~100 variables per task.
        self._env = {
            name: {
                os.fsencode(k): os.fsencode(v) for k, v in {**self._base_env, **spec.env}.items()
            }
            for name, spec in self.plan.specialists.items()
        }
        self._pgids: list[tuple[str, int, int]] = []
        self._inbox: asyncio.Queue[tuple[str, str, int, Outcome | None]] = asyncio.Queue()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._halt = False
        self._pgid_of: dict[str, int] = {}
        self._held: str | None = None  # why the resource guard holds back new starts
        self.monitor: Monitor | None = None
        if self.settings.sample_interval > 0:
            self.monitor = Monitor(self.settings.max_cpu, self.settings.min_free_memory_mb)

    def _runner(self, spec: SpecialistSpec) -> Runner:
        if spec.argv is not None or spec.shell_script is not None:
            return CommandRunner()
        return PythonRunner(spec.func or specialist_callable(spec, self.plan.source))

    def _rules(self) -> dict[str, _Rules]:
        src = self.p.source
        out: dict[str, _Rules] = {}
        # Most tasks say nothing of their own: share one _Rules per specialist for them.
        shared: dict[str, _Rules] = {}
        for spec in self.plan.tasks:
            task = src.tasks[spec.index]
            sp = src.specialists[spec.specialist]
            plain = task.retry is None and not task.writes and task.on_violation is None
            if plain and spec.specialist in shared:
                out[spec.id] = shared[spec.specialist]
                continue
            rules = _Rules(
                retry=merge_retry(self.settings.retry, sp.retry, task.retry),
                writes=tuple(glob_to_regex(g) for g in (*sp.writes, *task.writes)),
                on_violation=task.on_violation or sp.on_violation or self.settings.on_violation,
            )
            if plain:
                shared[spec.specialist] = rules
            out[spec.id] = rules
        return out

    # ------------------------------------------------------------ the loop

    async def execute(self) -> Summary:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.result_dir.mkdir(parents=True, exist_ok=True)
        try:
            return await self._execute()
        except Exception as exc:
            # A bug in guildrun must not leave agents running or the run looking alive:
            # stop them, roll their files back, and leave the run resumable.
            with contextlib.suppress(Exception):
                await self._cancel_running(f"engine error: {type(exc).__name__}")
            with contextlib.suppress(Exception), self.journal.transaction():
                self.journal.end_run(self.run_id, "interrupted", self.clock())
            raise
        finally:
            if self.watcher is not None:
                self.watcher.stop()
            if self.baseline is not None:
                self.baseline.pack.close()

    async def _execute(self) -> Summary:
        now = self.clock()
        with self.journal.transaction() as opening:
            if self.resume is None:
                self.journal.create_run(
                    self.run_id,
                    root=self.p.root,
                    plan_source=self.plan.source,
                    plan_json=self.p.source.model_dump_json(),
                    settings_json=self.settings.model_dump_json(),
                    limits=self.p.limits,
                    tasks=[
                        (t.id, t.index, t.specialist, t.phase, t.scope, list(t.files))
                        for t in self.plan.tasks
                    ],
                    now=now,
                )
                self.journal.event(self.run_id, Event("run_started", now))
            else:
                self.journal.set_status(self.run_id, "running")
                self.journal.event(
                    self.run_id, Event("run_resumed", now, data={"done": len(self.resume.done)})
                )
        if self.settings.ownership:
            with self.timings("ownership"):
                self.baseline = Baseline.take(self.p.root, self.store)
                try:
                    self.watcher = Watcher(self.p.root)
                except OSError as exc:
                    # Out of inotify watches (a huge tree): compare the tree at each check.
                    with self.journal.transaction() as note:
                        self.journal.event(
                            self.run_id,
                            Event("watcher_unavailable", self.clock(), data={"error": str(exc)}),
                        )
                    opening += note
        # Made only now, so that its first decisions are stamped inside the run.
        self.scheduler = Scheduler(
            self.plan,
            limits=self.p.limits,
            total=self.settings.total_parallel,
            strategy=distribution(self.settings.strategy),
            clock=self.clock,
            done=self.resume.done if self.resume else (),
            final=self.resume.final if self.resume else None,
        )
        if self.monitor is not None and (
            self.settings.max_cpu is not None or self.settings.min_free_memory_mb is not None
        ):
            # The guard decides from the first start on, not from the first sample.
            first = self.monitor.take(self.clock(), {}, settle=0.1)
            self._held = self.monitor.over(first)
        with self.journal.transaction() as committed:
            if self._held:
                self.journal.event(
                    self.run_id, Event("guard_hold", self.clock(), data={"reason": self._held})
                )
            jobs = self._apply(self.scheduler.dispatch(limit=1 if self._held else None))
        self.reporter.run_started(self.run_id, self.plan, self.p.limits)
        self.reporter.events(opening + committed)
        self._launch(jobs)
        status = "done"
        stop_wait = asyncio.ensure_future(self._stop.wait())
        sampler = asyncio.ensure_future(self._sample_loop()) if self.monitor else None
        try:
            while not self.scheduler.finished:
                get = asyncio.ensure_future(self._inbox.get())
                await asyncio.wait({get, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    status = "interrupted"
                    break
                # Group commit: every message that has arrived by now goes into one transaction.
                messages = [get.result()]
                while not self._inbox.empty():
                    messages.append(self._inbox.get_nowait())
                self._step(messages)
                if self._halt:
                    break
        finally:
            stop_wait.cancel()
            if sampler is not None:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
            if self._running:
                if not self._halt:
                    status = "interrupted"
                await self._cancel_running("interrupted" if not self._halt else "stopped")
        if status == "done" and any(s.value in ("failed", "skipped") for s in self.scheduler.state):
            status = "failed"
        end = self.clock()
        with self.journal.transaction() as committed:
            self.journal.write_timings(self.run_id, self.timings.export())
            self.journal.event(self.run_id, Event("run_ended", end, data={"status": status}))
            self.journal.end_run(self.run_id, status, end)
        self.reporter.events(committed)
        summary = summarize(self.journal, self.run_id)
        self.reporter.run_ended(summary)
        return summary

    def _step(self, messages: list[tuple[str, str, int, Outcome | None]]) -> None:
        ended = [(tid, n, o) for kind, tid, n, o in messages if kind == "end" and o is not None]
        woken = [tid for kind, tid, _, _ in messages if kind == "wake"]
        for tid, _, _ in ended:
            self._running.pop(tid, None)
        verdicts: dict[str, list[str]] = {}
        touched: dict[str, list[str]] = {}
        if ended and self.baseline is not None:
            with self.timings("ownership"):
                verdicts, touched = self._check_files([tid for tid, _, _ in ended])
        with self.timings("journal"), self.journal.transaction() as committed:
            self._write_pgids()
            decisions: list[Decision] = []
            for tid, attempt, outcome in ended:
                decisions += self._conclude(
                    tid, attempt, outcome, verdicts.get(tid), touched.get(tid, [])
                )
            with self.timings("dispatch"):
                for tid in woken:
                    if tid and not self._halt:
                        decisions += self.scheduler.wake(tid)
                # The guard holds the run to one task at a time: it never stalls it.
                if not self._halt:
                    decisions += self.scheduler.dispatch(limit=1 if self._held else None)
            jobs = self._apply(decisions)
        self.reporter.events(committed)
        self._launch(jobs)

    def stop(self) -> None:
        self._stop.set()

    async def _sample_loop(self) -> None:
        """Sample now, then every interval; the guard decides on each sample."""
        assert self.monitor is not None
        while True:
            groups = dict(self._pgid_of)
            sample = await asyncio.to_thread(self.monitor.take, self.clock(), groups)
            with self.timings("sampling"), self.journal.transaction() as committed:
                self.journal.sample(self.run_id, sample)
                why = self.monitor.over(sample)
                if why and not self._held:
                    self.journal.event(
                        self.run_id, Event("guard_hold", sample.time, data={"reason": why})
                    )
                elif self._held and not why:
                    self.journal.event(self.run_id, Event("guard_release", sample.time))
                    self._inbox.put_nowait(("wake", "", 0, None))
                self._held = why
            self.reporter.events(committed)
            await asyncio.sleep(self.settings.sample_interval)

    async def _cancel_running(self, why: str) -> None:
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        now = self.clock()
        with self.journal.transaction() as committed:
            self._write_pgids()
            for task_id in list(self._running):
                attempt = self.attempt_no[task_id]
                self._restore_before(task_id)
                self.journal.attempt_ended(
                    self.run_id,
                    task_id,
                    attempt,
                    status="cancelled",
                    started=now,
                    ended=now,
                    exit_code=None,
                    error=why,
                )
                self.journal.task_ended(self.run_id, task_id, "interrupted", now, cause=why)
                self.journal.event(self.run_id, Event("task_interrupted", now, task=task_id))
        self._running.clear()
        self.reporter.events(committed)

    # ------------------------------------------------------------ outcomes

    def _conclude(
        self,
        tid: str,
        attempt: int,
        o: Outcome,
        violation: list[str] | None,
        touched: list[str],
    ) -> list[Decision]:
        """Journal one ended attempt and decide: done, retry, run alone later, or failed."""
        rid = self.run_id
        rules = self.rules[tid]
        spec = self.plan.by_id[tid]
        if violation:
            shown = ", ".join(violation[:10]) + (" ..." if len(violation) > 10 else "")
            o.status, o.error = "violation", f"ownership violation: wrote {shown}"
        self.journal.attempt_ended(
            rid,
            tid,
            attempt,
            status=o.status,
            started=o.started,
            ended=o.ended,
            exit_code=o.exit_code,
            error=o.error,
        )
        self._pgid_of.pop(tid, None)
        if self.monitor is not None and tid in self.monitor.usage:
            use = self.monitor.usage.pop(tid)
            self.journal.attempt_usage(rid, tid, attempt, use.cpu_s, use.peak_rss)
        data: dict[str, Any] = {
            "status": o.status,
            "attempt": attempt,
            "duration": round(o.ended - o.started, 6),
        }
        if o.exit_code is not None:
            data["exit_code"] = o.exit_code
        if o.error:
            data["error"] = o.error
        if o.ok:
            self.results[tid] = o.result or ""
            owned = list(spec.files)
            if tid in self.widened:
                extra = sorted(
                    p for p in set(touched) - set(spec.files) if not self._declared(tid, p)
                )
                if extra:
                    self.extra_files[tid] = extra
                    data["extra_files"] = extra
                owned += extra
            if spec.files:
                self.journal.snapshot_after(rid, tid, attempt, self.store.capture(spec.files))
            if self.baseline is not None:
                for path in {*owned, *touched}:
                    self.baseline.accept(path)
            self.journal.completed(rid, tid, attempt, o.ended)
            self.journal.task_ended(rid, tid, "done", o.ended, result=o.result)
            self.journal.event(rid, Event("task_finished", o.ended, task=tid, data=data))
            return self.scheduler.finish(tid, True)
        # Every failed attempt leaves the files as they were before it.
        self._restore_before(tid, extra=touched if tid in self.widened else ())
        if violation and rules.on_violation == "sequential" and tid not in self.widened:
            self.widened.add(tid)
            self.journal.task_ended(rid, tid, "waiting", o.ended, cause=o.error)
            data["then"] = "run alone at the end of the phase"
            self.journal.event(rid, Event("task_sequential", o.ended, task=tid, data=data))
            return self.scheduler.finish(tid, False, solo=True)
        if not violation and rules.retry.should_retry(attempt, o.status, o.exit_code):
            delay = rules.retry.delay(attempt, self.rng)
            data["retry_in"] = round(delay, 3)
            self.journal.task_ended(rid, tid, "retrying", o.ended, cause=o.error)
            self.journal.event(rid, Event("task_retry", o.ended, task=tid, data=data))
            asyncio.get_running_loop().call_later(delay, self._wake, tid)
            return self.scheduler.finish(tid, False, retry=True)
        self.journal.task_ended(rid, tid, "failed", o.ended, cause=o.error)
        self.journal.event(rid, Event("task_finished", o.ended, task=tid, data=data))
        decisions = self.scheduler.finish(tid, False)
        if self.settings.fail_fast:
            self._halt = True
            decisions += self.scheduler.abandon(f"stopped: task {tid!r} failed (fail-fast)")
        elif self.settings.isolation == "scope" and spec.scope is not None:
            decisions += self.scheduler.abandon(
                f"scope {spec.scope!r} stopped: task {tid!r} failed", scope=spec.scope
            )
        return decisions

    def _wake(self, tid: str) -> None:
        self._inbox.put_nowait(("wake", tid, 0, None))

    def _restore_before(self, tid: str, extra: Iterable[str] = ()) -> None:
        """Partial rollback: the task's files go back to what they were before its attempt."""
        manifest = self.before.get(tid)
        if manifest:
            with self.timings("rollback"):
                self.store.restore(manifest)
        if self.baseline is not None:
            for path in extra:
                if path not in (manifest or {}) and self.baseline.differs(path):
                    self.baseline.restore(path)

    # ------------------------------------------------------------ ownership

    def _declared(self, tid: str, path: str) -> bool:
        """Owned by the plan's own words (files, writes, ignore), not by a widening."""
        if path in self.plan.by_id[tid].files:
            return True
        return any(p.match(path) for p in (*self.rules[tid].writes, *self._ignore))

    def _allowed(self, tid: str, path: str) -> bool:
        """May `tid` change `path`? (Ignored paths never get this far: see _check_files.)"""
        if tid in self.widened:
            return True
        if path in self.plan.by_id[tid].files:
            return True
        return any(p.match(path) for p in self.rules[tid].writes)

    def _check_files(self, ended: list[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Find writes outside what the tasks own; undo them, and blame when we can.

        Returns (violations by task, paths each ended task touched that it may touch).
        """
        assert self.baseline is not None
        changed = self.watcher.take() if self.watcher is not None else None
        if changed is None:  # the watcher fell behind: compare the whole tree instead
            changed = self._rescan()
        changed |= self._carry
        changed = self.baseline.expand(changed)
        self._carry = set()
        still = set(self._running)
        suspects = self._ran_since_check | set(ended)
        touched: dict[str, list[str]] = {t: [] for t in ended}
        stray: list[str] = []
        for path in sorted(changed):
            if path in self._own_files or any(p.match(path) for p in self._ignore):
                continue
            if any(self._allowed(t, path) for t in still):
                self._carry.add(path)  # judged when its owner ends
                continue
            owners = [t for t in ended if self._allowed(t, path)]
            if owners:
                for t in owners:
                    touched[t].append(path)
                continue
            if self.baseline.differs(path):
                stray.append(path)
        self._ran_since_check = set(still)
        verdicts: dict[str, list[str]] = {}
        if stray:
            for path in stray:
                self.baseline.restore(path)
            if len(suspects) == 1:
                verdicts[next(iter(suspects))] = stray
            else:
                now = self.clock()
                with self.journal.transaction() as committed:
                    self.journal.event(
                        self.run_id,
                        Event(
                            "stray_changes_undone",
                            now,
                            data={"paths": stray, "running": sorted(suspects)},
                        ),
                    )
                self.reporter.events(committed)
        return verdicts, touched

    def _rescan(self) -> set[str]:
        assert self.baseline is not None
        seen = {}
        for rel, st in walk(self.p.root):
            seen[rel] = Stat.of(st, self.p.root / rel)
        index = self.baseline.index
        changed = {p for p, s in seen.items() if index.get(p) != s}
        changed |= set(index) - set(seen)
        return changed

    # ------------------------------------------------------------ decisions

    def _apply(self, decisions: list[Decision]) -> list[Job]:
        """Journal the scheduler's decisions; return the attempts to launch after commit."""
        jobs: list[Job] = []
        rid = self.run_id
        for d in decisions:
            if isinstance(d, Started):
                job = self._job(d)
                jobs.append(job)
                attempt = job.context.attempt
                self.journal.task_started(
                    rid,
                    d.task,
                    attempt,
                    d.instance,
                    d.stolen_from,
                    d.time,
                    str(job.stdout_path),
                    str(job.stderr_path),
                )
                files = self.plan.by_id[d.task].files
                if files:
                    with self.timings("snapshot"):
                        manifest = self.store.capture(files)
                    self.before[d.task] = manifest
                    self.journal.snapshot_before(rid, d.task, attempt, manifest)
                else:
                    self.before.pop(d.task, None)
                if d.task in self.widened:
                    self._ran_since_check.add(d.task)
                data: dict[str, Any] = {"attempt": attempt}
                if d.stolen_from:
                    data["stolen_from"] = d.stolen_from
                if d.task in self.widened:
                    data["alone"] = True
                self.journal.event(rid, Event("task_started", d.time, d.task, d.instance, data))
            elif isinstance(d, Queued):
                self.journal.event(rid, Event("task_queued", d.time, d.task, d.instance))
            elif isinstance(d, Skipped):
                self.journal.task_ended(rid, d.task, "skipped", d.time, cause=d.reason)
                self.journal.event(
                    rid, Event("task_skipped", d.time, d.task, data={"cause": d.reason})
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
            self._running[job.context.task_id] = asyncio.create_task(self._attempt(job))
            self._ran_since_check.add(job.context.task_id)

    async def _attempt(self, job: Job) -> None:
        ctx = job.context
        runner = self.runners[ctx.specialist]
        try:
            outcome = await runner.run(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a runner bug must not hang the run: fail the attempt
            now = self.clock()
            outcome = Outcome("error", now, now, error=f"{type(exc).__name__}: {exc}")
        self._inbox.put_nowait(("end", ctx.task_id, ctx.attempt, outcome))

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
            self._pgid_of[task] = pgid
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
    prepared: Prepared,
    *,
    reporter: Reporter | None = None,
    handle_signals: bool = True,
    run_id: str | None = None,
    resume: ResumeState | None = None,
    crash_after_commit: int | None = None,
    own_files: Iterable[str] = (),
) -> Summary:
    """Run an already prepared plan; Ctrl-C and SIGTERM stop it cleanly (exit code 130)."""
    journal = Journal(journal_path(prepared.root), crash_after_commit=crash_after_commit)
    try:
        engine = Engine(
            prepared,
            journal,
            reporter=reporter,
            run_id=run_id,
            resume=resume,
            own_files=own_files,
        )
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
