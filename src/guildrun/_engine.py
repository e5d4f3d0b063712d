"""The engine: the scheduler's decisions, carried out through the seams, and journaled.

The loop is short on purpose. Ask the scheduler; journal what it decided in one
transaction; only then report it and hand the attempts to the `Executor`. When
attempts end, ask the `Workspace` whose changes were whose, ask the ending policy what
each ending means, journal all of it in one transaction, and ask the scheduler again.
The engine knows no scheduling rule (the scheduler), no ownership rule (the
workspace), no retry rule (the policies), and no process (the executor).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import random
import signal
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from ._agents.base import RateLimited, Signal
from ._clock import Clock, WallClock
from ._errors import UsageError
from ._executors.base import Ending, Executor, Job, Outcome
from ._glob import Glob
from ._jobs import Jobs
from ._journal import Event, EventKind, Journal, journal_path, new_run_id
from ._loader import specialist_function
from ._metrics import Summary, summarize
from ._monitor import Monitor
from ._paths import STATE_DIR, glob_to_regex
from ._plan import Plan
from ._policies.endings import Accept, Ended, Fail, Policy, Retry, RunAlone, decide, default_policy
from ._policies.retry import RetryPolicy, merge_retry
from ._prepare import Prepared, prepare
from ._reporter import Reporter
from ._runlock import run_lock
from ._schedule import (
    Decision,
    Distribution,
    PhaseEnded,
    PhaseStarted,
    Queued,
    Retired,
    Scheduler,
    Skipped,
    Spawned,
    Started,
)
from ._secrets import plan_for_journal, run_redactor
from ._workspaces.base import Check, Workspace
from ._workspaces.ownership import Ownership
from ._workspaces.shared import SharedTree

if TYPE_CHECKING:
    from ._worktree import Bisection, Gate, GateResult

PGID_FLUSH_S = 0.2
HOLD_S = 0.05  # the longest the records of in-process callables wait for a commit
JOURNAL_NAME = f"{STATE_DIR}/journal.db"
DEFAULT_RATE_LIMIT_WAIT = 5.0  # seconds, when a provider says "later" without saying when
MAX_RATE_LIMIT_WAIT = 600.0  # the longest one hold lasts, whatever the provider says
_T = TypeVar("_T")


@runtime_checkable
class _GateRunner(Protocol):
    """A workspace with an integrated tree to run gates on (worktree mode)."""

    def run_gates(self, gates: Sequence[Gate], slots: int) -> list[GateResult]: ...

    def bisect(self, gate: Gate, slots: int, failed: GateResult) -> Bisection: ...


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
    """Per-task rules, resolved once from settings, specialist and task."""

    retry: RetryPolicy
    writes: tuple[Glob, ...]
    on_violation: str


def _task_rules(p: Prepared) -> dict[str, _Rules]:
    src = p.source
    out: dict[str, _Rules] = {}
    # Most tasks say nothing of their own: share one _Rules per specialist for them.
    shared: dict[str, _Rules] = {}
    for spec in p.plan.tasks:
        task = src.tasks[spec.index]
        sp = src.specialists[spec.specialist]
        plain = task.retry is None and not task.writes and task.on_violation is None
        if plain and spec.specialist in shared:
            out[spec.id] = shared[spec.specialist]
            continue
        retry = p.retry or merge_retry(p.settings.retry, sp.retry, task.retry)
        rules = _Rules(
            retry=retry,
            writes=tuple(glob_to_regex(g) for g in (*sp.writes, *task.writes)),
            on_violation=task.on_violation or sp.on_violation or p.settings.on_violation,
        )
        if plain:
            shared[spec.specialist] = rules
        out[spec.id] = rules
    return out


def _by_suspects(stray: Mapping[str, list[str]]) -> list[tuple[list[str], list[str]]]:
    """Undone paths grouped by the tasks that may have changed them: one event each."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for path in sorted(stray):
        groups.setdefault(tuple(stray[path]), []).append(path)
    return [(paths, list(who)) for who, paths in groups.items()]


Message = tuple[str, str, int, Outcome | None]  # ("end" | "wake", task, attempt, outcome)


class Engine:
    """One run: the scheduler's decisions carried out, checked and journaled."""

    def __init__(
        self,
        prepared: Prepared,
        journal: Journal,
        executor: Executor,
        *,
        workspace: Workspace | None = None,
        reporter: Reporter | None = None,
        run_id: str | None = None,
        resume: ResumeState | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        monitor: Monitor | None = None,
        policy: Policy | None = None,
        own_files: Iterable[str] = (),
    ) -> None:
        self.p = prepared
        self.plan = prepared.plan
        self.settings = s = prepared.settings
        self.journal = journal
        self.executor = executor
        self.reporter = reporter or Reporter()
        self.run_id = run_id or new_run_id()
        self.resume = resume
        self.clock = clock or WallClock()
        self.rng = rng or random.Random()
        self.monitor = monitor
        self.policy = policy or default_policy(isolation=s.isolation, fail_fast=s.fail_fast)
        self.run_dir = prepared.root / STATE_DIR / "runs" / self.run_id
        self.jobs = Jobs(prepared, self.run_id, self.run_dir, resume.results if resume else {})
        self.attempt_no: dict[str, int] = dict(resume.attempts) if resume else {}
        self.free_attempts: dict[str, int] = {}
        self.rules = _task_rules(prepared)
        self.ownership = Ownership(
            self.plan, {t: r.writes for t, r in self.rules.items()}, s.ignore, own_files
        )
        if workspace is None and s.workspace == "worktree":
            workspace = _worktree_workspace(self)
        self.workspace = workspace or SharedTree(prepared.root, self.ownership, check=s.ownership)
        self.conflicts: dict[str, int] = {}  # task -> its attempts whose patch did not merge
        self._gates_run: set[str] = set()
        self._gate_failed = False  # a gate still fails with every culprit taken out
        self.extra_files: dict[str, list[str]] = {}
        self.timings = _Timings()
        self.scheduler: Scheduler  # made when the run starts
        self._pgids: list[tuple[str, int, int]] = []
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._halt = False
        self._held: str | None = None  # why the resource guard holds back new starts
        # Agents: sessions to continue, rate limits per provider, spend against the budget.
        self._providers = {
            name: spec.agent.provider_key
            for name, spec in self.plan.specialists.items()
            if spec.agent is not None
        }
        self._instance_session: dict[str, str] = {}  # instance -> its last session
        self._continue: dict[str, tuple[str, str]] = {}  # rate-limited task -> its session
        self._scope_members: dict[str, list[int]] | None = None  # for scope gates
        self._held_until: dict[str, float] = {}  # provider -> end of its wait (loop time)
        self._limited: set[tuple[str, int]] = set()  # attempts already counted as limited
        self._timers: list[asyncio.TimerHandle] = []  # cancelled when the run ends
        self.rate_limited = 0
        self.spent_usd = 0.0
        self.spent_tokens = 0
        self._budget_stop = False
        # Group commits across steps (`_may_hold`): specialists that run in this process.
        self._in_process = {
            name
            for name, spec in self.plan.specialists.items()
            if spec.argv is None and spec.shell_script is None and spec.agent is None
        }
        self._durable = False
        self._hold_timer: asyncio.TimerHandle | None = None
        # Secrets never stored or shown: logs and outcomes (executor), records (journal).
        self.redactor = run_redactor(
            (sp.env for sp in self.plan.specialists.values()), s.secret_env
        )
        journal.redactor = executor.redactor = self.redactor
        executor.max_log_bytes = s.max_log_bytes

    @property
    def results(self) -> dict[str, str]:
        return self.jobs.results

    # ------------------------------------------------------------ the loop

    async def execute(self) -> Summary:
        self.jobs.log_dir.mkdir(parents=True, exist_ok=True)
        self.jobs.result_dir.mkdir(parents=True, exist_ok=True)
        self.executor.start(self.clock, self._spawned, self._heard)
        if self.resume is not None:
            self.spent_usd, self.spent_tokens, _ = self.journal.spend(self.run_id)
            for a in self.journal.attempts(self.run_id):  # tries that did not count stay so
                if a["status"] == Ending.RATE_LIMITED:
                    self.free_attempts[a["task_id"]] = self.free_attempts.get(a["task_id"], 0) + 1
        try:
            return await self._execute()
        except Exception as exc:
            # A bug in guildrun must not leave agents running or the run looking alive:
            # stop them, roll their files back, and leave the run resumable.
            with contextlib.suppress(Exception):
                await self._cancel_running(f"engine error: {type(exc).__name__}")
            with contextlib.suppress(Exception), self.journal.transaction():
                self.journal.end_run(self.run_id, "interrupted", self.clock.now())
            raise
        finally:
            for timer in self._timers:
                timer.cancel()  # a backoff or a hold must not fire into a closed journal
            if self._hold_timer is not None:
                self._hold_timer.cancel()
            self.workspace.close()
            self.executor.close()

    async def _execute(self) -> Summary:
        with self.timings("ownership"):
            notes = self.workspace.open()  # first: a refusal (a dirty tree) leaves no run
        opening = self._open_run()
        if notes:
            kind = EventKind(self.workspace.notes_kind)
            key = "error" if kind is EventKind.WATCHER_UNAVAILABLE else "note"
            with self.journal.transaction() as noted:
                for note in notes:
                    self.journal.event(self.run_id, Event(kind, self.clock.now(), data={key: note}))
            opening += noted
        # Made only now, so that its first decisions are stamped inside the run.
        self.scheduler = Scheduler(
            self.plan,
            limits=self.p.limits,
            total=self.settings.total_parallel,
            strategy=self.p.distribution(),
            clock=self.clock.now,
            done=self.resume.done if self.resume else (),
            final=self.resume.final if self.resume else None,
            estimates=self.p.expected(),
        )
        if self.monitor is not None and (
            self.settings.max_cpu is not None or self.settings.min_free_memory_mb is not None
        ):
            # The guard decides from the first start on, not from the first sample.
            first = self.monitor.take(self.clock.now(), {}, settle=0.1)
            self._held = self.monitor.over(first)
        with self.journal.transaction() as committed:
            if self._held:
                self.journal.event(
                    self.run_id,
                    Event(EventKind.GUARD_HOLD, self.clock.now(), data={"reason": self._held}),
                )
            if self._over_budget():
                self._stop_for_budget()
                jobs = []
            else:
                jobs = self._apply(self.scheduler.dispatch(limit=1 if self._held else None))
        self.reporter.run_started(self.run_id, self.plan, self.p.limits)
        self.reporter.events(opening + committed)
        self._launch(jobs)
        _settle()  # the scheduler's state and the first decisions live as long as the run
        status = await self._loop()
        if status == "done" and any(s.value in ("failed", "skipped") for s in self.scheduler.state):
            status = "failed"
        if status == "done" and self._gate_failed:
            status = "failed"
        with self.timings("workspace"):
            notes = self.workspace.finish(status) + self.executor.notes()
        end = self.clock.now()
        with self.journal.transaction() as committed:
            for note in notes:
                self.journal.event(
                    self.run_id, Event(EventKind.WORKSPACE, end, data={"note": note})
                )
            self.journal.write_timings(self.run_id, self.timings.export())
            self.journal.event(
                self.run_id, Event(EventKind.RUN_ENDED, end, data={"status": status})
            )
            self.journal.end_run(self.run_id, status, end)
        self.reporter.events(committed)
        summary = summarize(self.journal, self.run_id)
        self.reporter.run_ended(summary)
        return summary

    def _open_run(self) -> list[Event]:
        now = self.clock.now()
        with self.journal.transaction() as opening:
            if self.resume is None:
                self.journal.create_run(
                    self.run_id,
                    root=self.p.root,
                    plan_source=self.plan.source,
                    plan_json=plan_for_journal(
                        self.p.source.model_dump_json(),
                        self.settings.secret_env,
                        [k for sp in self.p.source.specialists.values() for k in sp.env],
                    ),
                    settings_json=self.settings.model_dump_json(),
                    limits=self.p.limits,
                    tasks=[
                        (t.id, t.index, t.specialist, t.phase, t.scope, list(t.files))
                        for t in self.plan.tasks
                    ],
                    now=now,
                )
                self.journal.event(self.run_id, Event(EventKind.RUN_STARTED, now))
            else:
                self.journal.set_status(self.run_id, "running")
                self.journal.event(
                    self.run_id,
                    Event(EventKind.RUN_RESUMED, now, data={"done": len(self.resume.done)}),
                )
        return opening

    async def _loop(self) -> str:
        """Until every task has ended: wait for messages, handle each batch at once."""
        status = "done"
        sampler = None
        if self.monitor is not None and self.settings.sample_interval > 0:
            sampler = asyncio.ensure_future(self._sample_loop())
        try:
            while not self.scheduler.finished:
                if self._budget_stop and not self._running:
                    status = "budget"  # resumable: `guildrun resume --max-cost-usd MORE`
                    break
                # `stop` wakes this wait with a message of its own: one await per step,
                # where waiting on the inbox and the stop event made a task and a waiter.
                first = await self._inbox.get()
                # Group commit: every message that has arrived by now goes into one transaction.
                messages = [first]
                while not self._inbox.empty():
                    messages.append(self._inbox.get_nowait())
                if self._stop.is_set():
                    # An attempt that ended before the stop is judged as ever (its work
                    # kept, not undone as interrupted); nothing new starts (`_step`).
                    ends = [m for m in messages if m[0] == "end"]
                    if ends:
                        self._step(ends)
                    status = "interrupted"
                    break
                self._step(messages)
                if self._halt:
                    break
        finally:
            if sampler is not None:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
            if self._running:
                if not self._halt:
                    status = "interrupted"
                await self._cancel_running("interrupted" if not self._halt else "stopped")
        return status

    def _step(self, messages: list[Message]) -> None:
        ended = [(tid, n, o) for kind, tid, n, o in messages if kind == "end" and o is not None]
        woken = [tid for kind, tid, _, _ in messages if kind == "wake"]
        for tid, _, _ in ended:
            self._running.pop(tid, None)
        check = Check()
        if ended:
            with self.timings("ownership"):
                check = self.workspace.check(
                    [tid for tid, _, _ in ended],
                    set(self._running),
                    {tid for tid, _, o in ended if o.status is Ending.DONE},
                )
                self._journal_guard(check, [tid for tid, _, _ in ended])
        with self.timings("journal"), self.journal.transaction() as committed:
            self._write_pgids()
            self._journal_stray(check.stray)
            decisions: list[Decision] = []
            for tid, attempt, outcome in ended:
                if tid in check.unsafe and outcome.ok:  # a FIFO, a device, a link out
                    outcome.status, outcome.error = Ending.FAILED, check.unsafe[tid]
                decisions += self._conclude(
                    tid,
                    attempt,
                    outcome,
                    check.violations.get(tid),
                    check.touched.get(tid, []),
                    check.conflicts.get(tid),
                )
            decisions += self._gates(decisions)
            if not self._budget_stop and self._over_budget():
                self._stop_for_budget()
            with self.timings("dispatch"):
                stopping = self._stop.is_set()
                for tid in woken:
                    if tid and not self._halt and not stopping:
                        decisions += self.scheduler.wake(tid)
                # The guard holds the run to one task at a time: it never stalls it.
                if not self._halt and not self._budget_stop and not stopping:
                    decisions += self.scheduler.dispatch(limit=1 if self._held else None)
            jobs = self._apply(decisions)
            if self._may_hold(ended, check):
                self.journal.hold()
        self.reporter.events(committed)
        if self.journal.holding and self._hold_timer is None:
            self._hold_timer = asyncio.get_running_loop().call_later(HOLD_S, self._commit_held)
        self._launch(jobs)

    def _may_hold(self, ended: list[tuple[str, int, Outcome]], check: Check) -> bool:
        """Whether this step's commit may wait for a later step's (group commit across
        steps, for runs of very short in-process tasks).

        A start is committed before its attempt launches so that, after a crash, resume
        can stop what ran and put its files back. An in-process callable that owns no
        file needs neither: it dies with the engine, and there is no snapshot to put
        back. So when every attempt this step ended and launched is such a callable, in
        the shared tree, its records may wait (at most HOLD_S); a crash before they are
        committed leaves the journal as it was at the last commit, and resume runs those
        tasks again, as it runs any task whose end was not committed.
        """
        if self._durable or self._halt or self._budget_stop:
            return False
        if check.stray or check.violations or check.unsafe or check.conflicts:
            return False
        if not isinstance(self.workspace, SharedTree):
            return False
        return all(self.plan.by_id[tid].specialist in self._in_process for tid, _, _ in ended)

    def _commit_held(self) -> None:
        self._hold_timer = None
        if self.journal.holding:
            with self.timings("journal"), self.journal.transaction() as committed:
                pass
            self.reporter.events(committed)

    def _journal_guard(self, check: Check, ended: list[str]) -> None:
        """A task wrote the journal (guildrun's, not a task's): blamed like any unowned
        change. What it wrote cannot be taken back (docs/security.md); a damaged journal is
        named so."""
        if not self.journal.written_by_another():
            return
        what = JOURNAL_NAME if self.journal.intact() else f"{JOURNAL_NAME} (damaged)"
        if len(ended) == 1 and not self._running:
            check.violations.setdefault(ended[0], []).append(what)
        else:
            check.stray[what] = sorted({*ended, *self._running})

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put_nowait(("wake", "", 0, None))  # the loop sees it now

    def set_limit(self, specialist: str, tokens: int) -> None:
        """At most `tokens` tasks of `specialist` at once, from the next start on."""
        self.scheduler.set_limit(specialist, tokens)

    async def _sample_loop(self) -> None:
        """Sample now, then every interval; the guard decides on each sample."""
        assert self.monitor is not None
        sample_of = getattr(self.executor, "sample", None)
        while True:
            sample = await asyncio.to_thread(sample_of, self.clock.now()) if sample_of else None
            if sample is not None:
                with self.timings("sampling"), self.journal.transaction() as committed:
                    self.journal.sample(self.run_id, sample)
                    why = self.monitor.over(sample)
                    if why and not self._held:
                        self.journal.event(
                            self.run_id,
                            Event(EventKind.GUARD_HOLD, sample.time, data={"reason": why}),
                        )
                    elif self._held and not why:
                        self.journal.event(self.run_id, Event(EventKind.GUARD_RELEASE, sample.time))
                        self._inbox.put_nowait(("wake", "", 0, None))
                    self._held = why
                self.reporter.events(committed)
            await asyncio.sleep(self.settings.sample_interval)

    async def _cancel_running(self, why: str) -> None:
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stopped = list(self._running)
        now = self.clock.now()
        with self.journal.transaction() as committed:
            self._write_pgids()
            for task_id in stopped:
                attempt = self.attempt_no[task_id]
                with self.timings("rollback"):
                    self.workspace.undo(task_id)
                self.journal.attempt_ended(
                    self.run_id,
                    task_id,
                    attempt,
                    status=Ending.INTERRUPTED,
                    started=now,
                    ended=now,
                    exit_code=None,
                    error=why,
                )
                self.journal.task_ended(self.run_id, task_id, "interrupted", now, cause=why)
                self.journal.event(
                    self.run_id, Event(EventKind.TASK_INTERRUPTED, now, task=task_id)
                )
        self._running.clear()
        self.reporter.events(committed)
        # Unowned changes still waiting for their suspects are judged now: nothing runs.
        try:
            with self.timings("ownership"):
                stray = self.workspace.check(stopped, set()).stray
        except Exception:  # judging must not keep a stopping run from ending
            stray = {}
        if stray:
            with self.journal.transaction() as committed:
                self._journal_stray(stray)
            self.reporter.events(committed)

    def _journal_stray(self, stray: Mapping[str, list[str]]) -> None:
        """Undone changes nobody can be blamed for, one event per group of suspects
        (inside the caller's transaction)."""
        for paths, suspects in _by_suspects(stray):
            self.journal.event(
                self.run_id,
                Event(
                    EventKind.STRAY_CHANGES_UNDONE,
                    self.clock.now(),
                    data={"paths": paths, "running": suspects},
                ),
            )

    # ------------------------------------------------------------ outcomes

    def _conclude(
        self,
        tid: str,
        attempt: int,
        o: Outcome,
        violation: list[str] | None,
        touched: list[str],
        conflict: str | None = None,
    ) -> list[Decision]:
        """Journal one ended attempt, ask the policy what it means, and carry that out."""
        rid = self.run_id
        rules = self.rules[tid]
        spec = self.plan.by_id[tid]
        widened = tid in self.ownership.widened
        if violation:
            shown = ", ".join(violation[:10]) + (" ..." if len(violation) > 10 else "")
            o.status, o.error = Ending.VIOLATION, f"ownership violation: wrote {shown}"
        elif conflict and o.status is Ending.DONE:
            o.status, o.error = Ending.CONFLICT, conflict
        if o.error:
            o.error = _printable(o.error)
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
        if o.cost_usd is not None or o.tokens is not None or o.session_id is not None:
            self._spent(tid, attempt, o)
        if self.monitor is not None and tid in self.monitor.usage:
            use = self.monitor.usage.pop(tid)
            self.journal.attempt_usage(rid, tid, attempt, use.cpu_s, use.peak_rss)
        data: dict[str, Any] = {
            "status": o.status.value,
            "attempt": attempt,
            "duration": round(o.ended - o.started, 6),
        }
        if o.exit_code is not None:
            data["exit_code"] = o.exit_code
        if o.error:
            data["error"] = o.error
        facts = Ended(
            tid,
            attempt,
            o,
            rules.retry,
            rules.on_violation,
            widened,
            spec.scope,
            self.free_attempts.get(tid, 0),
            self.conflicts.get(tid, 0),
        )
        verdict = decide(self.policy, facts, self.rng)
        if o.status is Ending.CONFLICT:
            self.conflicts[tid] = self.conflicts.get(tid, 0) + 1
        if isinstance(verdict, Accept):
            self.results[tid] = o.result or ""
            if spec.specialist in self._providers:
                self._recover_limit(spec.specialist)
            owned = list(spec.files)
            if widened:
                extra = sorted(
                    p for p in set(touched) - set(spec.files) if not self.ownership.declared(tid, p)
                )
                if extra:
                    self.extra_files[tid] = extra
                    data["extra_files"] = extra
                owned += extra
            after = self.workspace.accept(tid, spec.files, {*touched, *owned[len(spec.files) :]})
            if after is not None:
                self.journal.snapshot_after(rid, tid, attempt, after)
            self.journal.completed(rid, tid, attempt, o.ended)
            self.journal.task_ended(rid, tid, "done", o.ended, result=o.result)
            self.journal.event(rid, Event(EventKind.TASK_FINISHED, o.ended, task=tid, data=data))
            return self.scheduler.finish(tid, True)
        # Every failed attempt leaves the files as they were before it, except one cut
        # short by a rate limit where the workspace can keep it: its retry continues the
        # agent's session on the work it did, so nothing of it is thrown away.
        continuing = (
            isinstance(verdict, Retry)
            and not verdict.counts
            and o.session_id is not None
            and self.workspace.keep(tid)
        )
        if continuing:
            instance = self.scheduler.instance_of.get(spec.index)
            if instance is not None and o.session_id is not None:
                self._continue[tid] = (instance, o.session_id)
        else:
            self._continue.pop(tid, None)
            with self.timings("rollback"):
                self.workspace.undo(tid, extra=touched)
        if isinstance(verdict, RunAlone):
            self.ownership.widened.add(tid)
            self.journal.task_ended(rid, tid, "waiting", o.ended, cause=o.error)
            data["then"] = "run alone at the end of the phase"
            self.journal.event(rid, Event(EventKind.TASK_SEQUENTIAL, o.ended, task=tid, data=data))
            return self.scheduler.finish(tid, False, solo=True)
        if isinstance(verdict, Retry):
            if not verdict.counts:
                self.free_attempts[tid] = self.free_attempts.get(tid, 0) + 1
                data["counted"] = False
            data["retry_in"] = round(verdict.delay, 3)
            if verdict.throttle is not None:
                self._throttle(spec.specialist, verdict.throttle, tid)
            self.journal.task_ended(rid, tid, "retrying", o.ended, cause=o.error)
            self.journal.event(rid, Event(EventKind.TASK_RETRY, o.ended, task=tid, data=data))
            delay = verdict.delay if math.isfinite(verdict.delay) else DEFAULT_RATE_LIMIT_WAIT
            self._timers.append(asyncio.get_running_loop().call_later(delay, self._wake, tid))
            return self.scheduler.finish(tid, False, retry=True)
        assert isinstance(verdict, Fail)
        self.journal.task_ended(rid, tid, "failed", o.ended, cause=o.error)
        self.journal.event(rid, Event(EventKind.TASK_FINISHED, o.ended, task=tid, data=data))
        decisions = self.scheduler.finish(tid, False)
        if verdict.stop == "all":
            self._halt = True
            decisions += self.scheduler.abandon(f"stopped: task {tid!r} failed (fail-fast)")
        elif verdict.stop == "scope":
            decisions += self.scheduler.abandon(
                f"scope {spec.scope!r} stopped: task {tid!r} failed", scope=spec.scope
            )
        return decisions

    # ------------------------------------------------------------ quality gates

    def _gates(self, decisions: list[Decision]) -> list[Decision]:
        """Run the gates due now (their phase ended, or every task of their scope did) on
        the integrated tree; a failing gate is bisected, and each patch that broke it is
        taken out and its task failed. The run goes on. Synchronous, like the rest of the
        step: nothing may integrate while the branch is being bisected."""
        gates = self.p.source.gates
        if not gates or not isinstance(self.workspace, _GateRunner):
            return []
        ended = {d.phase for d in decisions if isinstance(d, PhaseEnded)}
        due = [
            g
            for g in gates
            if g.name not in self._gates_run
            and (g.after in ended or self._scope_over(g.after.removeprefix("scope:"), g.after))
        ]
        if not due:
            return []
        from ._worktree import Gate

        specs = [Gate(g.name, g.argv(), g.after, g.timeout) for g in due]
        slots = max(1, min(4, self.settings.total_parallel - len(self._running)))
        rid, out = self.run_id, []
        with self.timings("gates"):
            results = self.workspace.run_gates(specs, slots)
        for spec, result in zip(specs, results, strict=True):
            self._gates_run.add(spec.name)
            note = f"gate {spec.name} ({spec.after}) passed on {result.commit[:12]}"
            if not result.ok:
                with self.timings("gates"):
                    found = self.workspace.bisect(spec, slots, result)
                for c in found.culprits:
                    out += self._revoke(c.task, f"broke gate {spec.name}: {_tail(c.output)}")
                for lo in found.left_out:
                    out += self._revoke(
                        lo.task,
                        f"left out after gate {spec.name}: its patch needs a culprit's "
                        f"(kept in {lo.patch_file})",
                    )
                blamed = ", ".join(c.task for c in found.culprits) or "no patch"
                after = "passes now" if found.ok else "still fails"
                note = (
                    f"gate {spec.name} ({spec.after}) failed; bisected in {found.probes} probes "
                    f"to {blamed}; taken out, it {after}"
                )
                self._gate_failed = self._gate_failed or not found.ok
            self.journal.event(rid, Event(EventKind.GATE, self.clock.now(), data={"note": note}))
        return out

    def _scope_over(self, scope: str, after: str) -> bool:
        if not after.startswith("scope:"):
            return False
        if self._scope_members is None:  # once per run, not per step
            self._scope_members = {}
            for t in self.plan.tasks:
                if t.scope is not None:
                    self._scope_members.setdefault(t.scope, []).append(t.index)
        members = self._scope_members.get(scope, [])
        return bool(members) and all(self.scheduler.state[i].terminal for i in members)

    def _revoke(self, tid: str, cause: str) -> list[Decision]:
        """A done task whose patch a gate took out: failed, its dependents skipped."""
        if self.scheduler.state[self.plan.by_id[tid].index].value != "done":
            return []
        now = self.clock.now()
        self.results.pop(tid, None)
        self.journal.task_ended(self.run_id, tid, "failed", now, cause=cause)
        data = {"status": "failed", "error": cause}
        self.journal.event(self.run_id, Event(EventKind.TASK_FINISHED, now, task=tid, data=data))
        return self.scheduler.revoke(tid)

    def _wake(self, tid: str) -> None:
        self._inbox.put_nowait(("wake", tid, 0, None))

    # ------------------------------------------------------------ decisions

    def _apply(self, decisions: list[Decision]) -> list[Job]:
        """Journal the scheduler's decisions; return the attempts to launch after commit."""
        jobs: list[Job] = []
        rid = self.run_id
        self._durable = False  # set when a start must be committed before it launches
        for d in decisions:
            if isinstance(d, Started):
                attempt = self.attempt_no.get(d.task, 0) + 1
                self.attempt_no[d.task] = attempt
                job = self.jobs.make(
                    d.task,
                    d.instance,
                    attempt,
                    self.workspace.workdir(d.instance),
                    self._session_for(d.task, d.instance),
                )
                jobs.append(job)
                self.journal.task_started(
                    rid,
                    d.task,
                    attempt,
                    d.instance,
                    d.stolen_from,
                    d.time,
                    *self.jobs.log_files(d.task, attempt),
                )
                files = self.plan.by_id[d.task].files
                if files or not isinstance(self.workspace, SharedTree):
                    with self.timings("snapshot"):
                        manifest = self.workspace.before(d.task, files, d.instance)
                else:  # nothing to snapshot in the shared tree: not timed as one
                    manifest = self.workspace.before(d.task, files, d.instance)
                if manifest is not None:
                    self.journal.snapshot_before(rid, d.task, attempt, manifest)
                if manifest is not None or job.argv is not None or job.agent is not None:
                    self._durable = True
                data: dict[str, Any] = {"attempt": attempt}
                if d.stolen_from:
                    data["stolen_from"] = d.stolen_from
                if d.task in self.ownership.widened:
                    data["alone"] = True
                if job.resume_session is not None:
                    data["resumes_session"] = job.resume_session  # keep_context, reported
                self.journal.event(
                    rid, Event(EventKind.TASK_STARTED, d.time, d.task, d.instance, data)
                )
            elif isinstance(d, Queued):
                self.journal.event(rid, Event(EventKind.TASK_QUEUED, d.time, d.task, d.instance))
            elif isinstance(d, Skipped):
                if self._continue.pop(d.task, None) is not None:
                    # It waited out a rate limit on kept work, and will not run again.
                    with self.timings("rollback"):
                        self.workspace.undo(d.task)
                self.journal.task_ended(rid, d.task, "skipped", d.time, cause=d.reason)
                self.journal.event(
                    rid, Event(EventKind.TASK_SKIPPED, d.time, d.task, data={"cause": d.reason})
                )
            elif isinstance(d, Spawned):
                self.executor.open_instance(self.jobs.instance(d.instance, d.specialist))
                self.journal.instance_spawned(rid, d.instance, d.specialist, d.time)
                self.journal.event(
                    rid, Event(EventKind.INSTANCE_SPAWNED, d.time, instance=d.instance)
                )
            elif isinstance(d, Retired):
                self.executor.close_instance(d.instance)
                self.journal.instance_retired(rid, d.instance, d.time)
                self.journal.event(
                    rid, Event(EventKind.INSTANCE_RETIRED, d.time, instance=d.instance)
                )
            elif isinstance(d, PhaseStarted):
                self.journal.event(
                    rid, Event(EventKind.PHASE_STARTED, d.time, data={"phase": d.phase})
                )
            elif isinstance(d, PhaseEnded):
                path = self.jobs.write_phase_results(d.phase)
                self.journal.event(
                    rid,
                    Event(
                        EventKind.PHASE_ENDED, d.time, data={"phase": d.phase, "results": str(path)}
                    ),
                )
        return jobs

    def _launch(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._running[job.context.task_id] = asyncio.create_task(self._attempt(job))

    async def _attempt(self, job: Job) -> None:
        ctx = job.context
        try:
            outcome = await self.executor.run(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an executor bug must not hang the run: fail the attempt
            now = self.clock.now()
            outcome = Outcome(Ending.ERROR, now, now, error=f"{type(exc).__name__}: {exc}")
        self._inbox.put_nowait(("end", ctx.task_id, ctx.attempt, outcome))

    # ------------------------------------------------------------ agents

    def _session_for(self, task: str, instance: str) -> str | None:
        """The agent session a task continues: its own, after a rate limit cut it short on
        work the workspace kept; else, with `keep_context`, the session the instance's
        previous (done) task left, so the next task builds on what the agent already read.
        Sessions live in an instance's private state, so only on that instance."""
        spec = self.plan.specialists[self.plan.by_id[task].specialist]
        if spec.agent is None:
            return None
        own = self._continue.pop(task, None)
        if own is not None and own[0] == instance:
            return own[1]  # after a rate limit, on the work it kept
        if not spec.keep_context or instance.rpartition("#")[0] != spec.name:
            return None  # a helper's instance runs another agent: none of its sessions
        return self._instance_session.get(instance)

    def _spent(self, tid: str, attempt: int, o: Outcome) -> None:
        self.journal.attempt_spend(
            self.run_id,
            tid,
            attempt,
            cost_usd=o.cost_usd,
            tokens=o.tokens,
            estimated=o.cost_estimated,
            session_id=o.session_id,
        )
        self.spent_usd += o.cost_usd or 0.0
        self.spent_tokens += o.tokens or 0
        # A session is continued only after work that was kept: a failed or rate-limited
        # attempt's files are rolled back, and an agent resuming it would believe edits
        # that are no longer there.
        if o.session_id is not None and o.status is Ending.DONE:
            task = self.plan.by_id[tid]
            instance = self.scheduler.instance_of.get(task.index)
            if instance is not None and instance.rpartition("#")[0] == task.specialist:
                self._instance_session[instance] = o.session_id

    def _heard(self, task: str, sig: Signal) -> None:
        """An agent reported something while it runs: a rate limit throttles its provider
        now, not when the agent gives up."""
        if isinstance(sig, RateLimited):
            with self.journal.transaction() as committed:
                self._throttle(self.plan.by_id[task].specialist, sig.retry_after_s, task)
            self.reporter.events(committed)

    def _throttle(self, specialist: str, delay: float | None, task: str) -> None:
        """A rate limit belongs to the provider's account: none of its agents start until
        the delay (with jitter) has passed, and its concurrency halves (AIMD; it climbs
        back by one with each success)."""
        provider = self._providers.get(specialist)
        if provider is None:
            return
        attempt = (task, self.attempt_no.get(task, 0))
        if attempt in self._limited:
            return  # the live signal already throttled for this attempt's ending
        self._limited.add(attempt)
        self.rate_limited += 1
        # A provider's figure is bounded: NaN, infinite or a day's quota must not hold a
        # run forever (the task's own retries carry on past it).
        if delay is None or not math.isfinite(delay) or delay < 0:
            delay = DEFAULT_RATE_LIMIT_WAIT
        wait = min(delay, MAX_RATE_LIMIT_WAIT) * (1 + self.rng.uniform(0, 0.25))
        loop = asyncio.get_running_loop()
        now = self.clock.now()
        until = loop.time() + wait  # the loop's clock: a wall clock step cannot strand it
        fresh = self._held_until.get(provider, 0.0) <= loop.time()  # not already waiting
        names = [s for s, p in self._providers.items() if p == provider]
        limits: dict[str, int] = {}
        for name in names:
            limiter = self.scheduler.limiters[name]
            if fresh:
                self.scheduler.set_limit(name, limiter.total_tokens // 2)
            self.scheduler.hold(name, True)
            limits[name] = limiter.total_tokens
        if until > self._held_until.get(provider, 0.0):
            self._held_until[provider] = until
            self._timers.append(loop.call_later(wait, self._release, provider, until))
        self.journal.event(
            self.run_id,
            Event(
                EventKind.RATE_LIMITED,
                now,
                task=task,
                data={"provider": provider, "wait": round(wait, 3), "limits": limits},
            ),
        )

    def _release(self, provider: str, until: float) -> None:
        if self._held_until.get(provider) != until:
            return  # a later rate limit extended the wait
        for name, p in self._providers.items():
            if p == provider:
                self.scheduler.hold(name, False)
        with self.journal.transaction() as committed:
            self.journal.event(
                self.run_id,
                Event(EventKind.THROTTLE_RELEASED, self.clock.now(), data={"provider": provider}),
            )
        self.reporter.events(committed)
        self._inbox.put_nowait(("wake", "", 0, None))

    def _recover_limit(self, specialist: str) -> None:
        limiter = self.scheduler.limiters[specialist]
        if limiter.total_tokens < self.scheduler.limits[specialist]:
            self.scheduler.set_limit(specialist, limiter.total_tokens + 1)

    def _over_budget(self) -> bool:
        s = self.settings
        return (s.max_cost_usd is not None and self.spent_usd >= s.max_cost_usd) or (
            s.max_tokens is not None and self.spent_tokens >= s.max_tokens
        )

    def _stop_for_budget(self) -> None:
        """No new task starts; running ones finish; the run stays resumable."""
        self._budget_stop = True
        self.journal.event(
            self.run_id,
            Event(
                EventKind.BUDGET_EXHAUSTED,
                self.clock.now(),
                data={
                    "spent_usd": round(self.spent_usd, 6),
                    "max_cost_usd": self.settings.max_cost_usd,
                    "tokens": self.spent_tokens,
                    "max_tokens": self.settings.max_tokens,
                },
            ),
        )

    # ------------------------------------------------------------ process groups

    def _spawned(self, task: str, attempt: int, pgid: int) -> None:
        self._pgids.append((task, attempt, pgid))
        if len(self._pgids) == 1:
            asyncio.get_running_loop().call_later(PGID_FLUSH_S, self._flush_pgids)

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


async def run_async(
    plan: Plan | str | Path,
    *,
    root: str | Path | None = None,
    per_agent_type: int | None = None,
    total_parallel: int | None = None,
    strategy: str | Distribution | None = None,
    retry: RetryPolicy | None = None,
    reporter: Reporter | None = None,
    env: Mapping[str, str] | None = None,
    handle_signals: bool = True,
    executor: Executor | None = None,
    clock: Clock | None = None,
) -> Summary:
    """Run a plan and return its summary. Task failures are in the summary, not raised.

    `strategy` is a name or a `Distribution` object; `retry` a `RetryPolicy` for every
    task (in place of the plan's `retry:` settings).
    """
    with _settled_heap():
        prepared = prepare(
            plan,
            root=root,
            overrides={
                "per_agent_type": per_agent_type,
                "total_parallel": total_parallel,
                "strategy": strategy if isinstance(strategy, str) else None,
            },
            env=env,
            strategy=strategy if isinstance(strategy, Distribution) else None,
            retry=retry,
        )
        return await run_prepared(
            prepared,
            reporter=reporter,
            handle_signals=handle_signals,
            executor=executor,
            clock=clock,
        )


async def run_prepared(
    prepared: Prepared,
    *,
    reporter: Reporter | None = None,
    handle_signals: bool = True,
    run_id: str | None = None,
    resume: ResumeState | None = None,
    crash_after_commit: int | None = None,
    own_files: Iterable[str] = (),
    executor: Executor | None = None,
    clock: Clock | None = None,
    journal: Journal | None = None,
    on_engine: Callable[[Engine], None] | None = None,
) -> Summary:
    """Run an already prepared plan; Ctrl-C and SIGTERM stop it cleanly (exit code 130).

    `executor` defaults to the local one (processes and callables on this machine);
    `clock` to the wall clock (tests pass a `VirtualClock` with a fake executor).
    `on_engine` receives the engine before it starts, for callers that stop it
    themselves (`engine.stop()`), such as the MCP server. A second engine in the same
    project root is refused (see `_runlock`).
    """
    run_id = run_id or new_run_id()
    with _settled_heap(), run_lock(prepared.root, run_id):
        own = journal is None
        if journal is None:
            journal = Journal(journal_path(prepared.root), crash_after_commit=crash_after_commit)
        try:
            monitor = None
            if prepared.settings.sample_interval > 0:
                monitor = Monitor(prepared.settings.max_cpu, prepared.settings.min_free_memory_mb)
            if executor is None and prepared.settings.backend == "ray":
                from ._executors.ray import ray_executor

                executor = ray_executor(prepared)
            if executor is None:
                executor = local_executor(prepared, monitor)
            if executor.worktrees_only and prepared.settings.workspace != "worktree":
                raise UsageError(
                    f"{type(executor).__name__} runs tasks where the project is not: it "
                    "needs workspace: worktree (or backend: ray) in the settings"
                )
            engine = Engine(
                prepared,
                journal,
                executor,
                reporter=reporter,
                run_id=run_id,
                resume=resume,
                clock=clock,
                monitor=monitor,
                own_files=own_files,
            )
            if on_engine is not None:
                on_engine(engine)
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
            if own:
                journal.close()


_settled = 0  # runs (in this process) inside `_settled_heap`
_host_froze = False  # the process had frozen objects of its own: gc is left alone


@contextlib.contextmanager
def _settled_heap() -> Iterator[None]:
    """While a run lasts, what it made at its start (the plan, compiled, the scheduler's
    state) is kept out of the garbage collector's full passes (`gc.freeze`): they walk
    every object that ever survived, and with 10,000 tasks each took 60-230 ms, three or
    four times a run. Objects made later are collected as ever; the frozen ones go back
    to the collector when the last run of the process ends. A program that froze its
    own heap (a pre-fork server) is left as it is: `gc.unfreeze` would give back its
    objects too."""
    global _settled, _host_froze
    if _settled == 0:
        _host_froze = gc.get_freeze_count() > 0
    _settled += 1
    _settle()
    try:
        yield
    finally:
        _settled -= 1
        if _settled == 0 and not _host_froze:
            gc.unfreeze()


def _settle() -> None:
    if _settled and not _host_froze:
        gc.freeze()


def run(plan: Plan | str | Path, **kwargs: Any) -> Summary:
    """Synchronous `run_async`."""
    return run_sync(run_async(plan, **kwargs))


def run_sync(main: Coroutine[Any, Any, _T]) -> _T:
    """`asyncio.run`, with the result kept off the main task: when asyncio puts the
    SIGINT handler back it formats that task's repr (Python 3.11), and with it a whole
    `Summary`, every task's line included (40 ms for 10,000 tasks)."""
    out: list[_T] = []

    async def boxed() -> None:
        out.append(await main)

    asyncio.run(boxed())
    return out[0]


def _printable(text: str) -> str:
    """A message naming paths as they came from the file system: a name that is not
    UTF-8 (its bytes kept as surrogates) is shown with those bytes escaped, since
    neither SQLite nor a UTF-8 terminal can take a lone surrogate."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _tail(output: str, lines: int = 20) -> str:
    return "\n".join(output.rstrip().splitlines()[-lines:])


def _worktree_workspace(engine: Engine) -> Workspace:
    """Worktree mode (settings.workspace): on resume, the done tasks missing from the
    integration branch are integrated again before anything starts."""
    from ._workspaces.worktree import WorktreeWorkspace

    done = None
    if engine.resume is not None:
        done = [t.id for t in engine.plan.tasks if t.id in engine.resume.done]
    s = engine.settings
    return WorktreeWorkspace(
        engine.p.root,
        engine.run_id,
        engine.ownership,
        allow_dirty=s.allow_dirty,
        apply=s.apply,
        done=done,
        check=s.ownership,
    )


def local_executor(prepared: Prepared, monitor: Monitor | None = None) -> Executor:
    """The default executor, with the plan's Python specialists loaded once."""
    from ._executors.local import LocalExecutor

    callables = {
        name: spec.func or specialist_function(spec, prepared.plan.source)
        for name, spec in prepared.plan.specialists.items()
        if spec.argv is None and spec.shell_script is None and spec.agent is None
    }
    return LocalExecutor(callables, monitor=monitor)
