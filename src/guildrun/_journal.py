"""The run journal: SQLite in WAL mode under .guildrun/.

Everything a later reader needs (status, reports, resume after a crash) is here,
and a state change is committed before anyone is told about it. The engine writes
through one connection; readers (`guildrun status`, `runs`) open their own.

WAL with synchronous=NORMAL keeps a commit cheap (no fsync per commit) while staying
consistent after a crash of the process: the database never holds half a
transaction, and at worst the last commits before a power loss are lost, which a
resume treats as work not yet done.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import UsageError
from ._secrets import NONE as NO_SECRETS
from ._secrets import Redactor

if TYPE_CHECKING:
    from ._monitor import Sample

# sqlite3 binds exact ints, floats and strs directly; for any other value, None
# included, it first looks for an adapter, and a miss costs two failed attribute
# lookups (~2,600 instructions; an in-process task binds about seven NULLs). A hit on
# this one is a dict lookup and a C call (~450), and binds the same NULL. Registered
# only if nobody else adapted None. The engine's enums are passed as `str(...)`, for
# the same reason.
if (type(None), sqlite3.PrepareProtocol) not in sqlite3.adapters:
    _NOTHING: dict[object, None] = {}
    sqlite3.register_adapter(type(None), _NOTHING.get)

SCHEMA_VERSION = 4
# Columns added after a table first shipped: older journals get them on open.
_ADDED_COLUMNS = (
    ("attempts", "cpu_s", "REAL"),
    ("attempts", "peak_rss", "INTEGER"),
    ("attempts", "cost_usd", "REAL"),  # what an agent reported (or was estimated) to spend
    ("attempts", "tokens", "INTEGER"),
    ("attempts", "cost_estimated", "INTEGER"),
    ("attempts", "session_id", "TEXT"),
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    ended REAL,
    status TEXT NOT NULL,            -- running, done, failed, interrupted
    root TEXT NOT NULL,
    plan_source TEXT,
    plan_json TEXT NOT NULL,         -- the plan as given, for resume and reports
    settings_json TEXT NOT NULL,     -- the resolved settings
    limits_json TEXT NOT NULL,       -- instances allowed per specialist
    pid INTEGER,
    host TEXT
);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL REFERENCES runs(id),
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,            -- plan order
    specialist TEXT NOT NULL,
    phase TEXT NOT NULL,
    scope TEXT,
    files_json TEXT NOT NULL,
    state TEXT NOT NULL,             -- waiting, running, done, failed, skipped
    instance TEXT,
    stolen_from TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL,
    ended REAL,
    result TEXT,
    cause TEXT,                      -- why it failed, or which failure skipped it
    PRIMARY KEY (run_id, id)
);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    instance TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    status TEXT NOT NULL,            -- running, ok, failed, timeout, error, cancelled
    exit_code INTEGER,
    error TEXT,
    pgid INTEGER,
    stdout_path TEXT,
    stderr_path TEXT,
    cpu_s REAL,                      -- CPU time of its process tree, as sampled
    peak_rss INTEGER,                -- peak resident memory of its process tree, bytes
    PRIMARY KEY (run_id, task_id, attempt)
);
CREATE TABLE IF NOT EXISTS instances (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    specialist TEXT NOT NULL,
    spawned REAL NOT NULL,
    retired REAL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    task TEXT,
    instance TEXT,
    data TEXT
);
CREATE TABLE IF NOT EXISTS samples (   -- the machine and the agents, sampled during a run
    run_id TEXT NOT NULL,
    time REAL NOT NULL,
    cpu REAL,                        -- machine CPU busy, percent of all cores
    mem_used REAL,                   -- bytes
    mem_available REAL,              -- bytes
    running INTEGER,                 -- attempts running
    agents_cpu REAL,                 -- CPU of all agents' process trees, percent of one core
    agents_rss REAL                  -- resident memory of all agents' process trees, bytes
);
CREATE TABLE IF NOT EXISTS timings (   -- engine steps, timed: the coordination overhead
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,              -- dispatch, journal, launch, reap, ownership, ...
    seconds REAL NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS snapshots (  -- owned files before (and after) each attempt
    run_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    path TEXT NOT NULL,
    before TEXT,                     -- blob in .guildrun/objects; NULL: the file did not exist
    after TEXT,                      -- set when the attempt succeeded
    PRIMARY KEY (run_id, task_id, attempt, path)
);
CREATE TABLE IF NOT EXISTS completions (  -- order in which tasks finished, for rollback
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    time REAL NOT NULL,
    rolled_back REAL
);
CREATE INDEX IF NOT EXISTS events_by_run ON events(run_id, seq);
CREATE INDEX IF NOT EXISTS samples_by_run ON samples(run_id, time);
CREATE INDEX IF NOT EXISTS instances_by_run ON instances(run_id, name);
"""


class EventKind(StrEnum):
    """Every kind of event a run journals: a closed set, so a reader can handle each."""

    RUN_STARTED = "run_started"
    RUN_RESUMED = "run_resumed"
    RUN_ENDED = "run_ended"
    TASK_QUEUED = "task_queued"
    TASK_STARTED = "task_started"
    TASK_FINISHED = "task_finished"
    TASK_RETRY = "task_retry"
    TASK_SEQUENTIAL = "task_sequential"
    TASK_SKIPPED = "task_skipped"
    TASK_INTERRUPTED = "task_interrupted"
    INSTANCE_SPAWNED = "instance_spawned"
    INSTANCE_RETIRED = "instance_retired"
    PHASE_STARTED = "phase_started"
    PHASE_ENDED = "phase_ended"
    GUARD_HOLD = "guard_hold"
    GUARD_RELEASE = "guard_release"
    WATCHER_UNAVAILABLE = "watcher_unavailable"
    STRAY_CHANGES_UNDONE = "stray_changes_undone"
    RATE_LIMITED = "rate_limited"
    THROTTLE_RELEASED = "throttle_released"
    BUDGET_EXHAUSTED = "budget_exhausted"
    WORKSPACE = "workspace"  # worktree mode: the base, the result, how to apply it
    GATE = "gate"  # a quality gate ran on the integrated tree


@dataclass(frozen=True)
class Event:
    """One thing that happened, as journaled and then reported."""

    kind: EventKind
    time: float
    task: str | None = None
    instance: str | None = None
    data: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if type(self.kind) is not EventKind:  # the engine's own are; a lookup costs 1 µs
            object.__setattr__(self, "kind", EventKind(self.kind))  # unknown kinds refused

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.kind.value, "time": self.time}
        if self.task is not None:
            out["task"] = self.task
        if self.instance is not None:
            out["instance"] = self.instance
        if self.data:
            out.update(self.data)
        return out


def _data_encoder() -> Callable[[dict[str, Any]], str]:
    """`json.dumps` with its defaults, the same text, its C encoder built once.

    `dumps` builds a new C encoder per call: about half of the ~20,000 instructions it
    takes for a small event's data, and an in-process task journals two such events.
    Without the C encoder (another Python), plain `dumps`. No circular check: the data
    are the engine's own small dicts.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return json.dumps
    encode = make(
        None,  # markers: no circular check
        json.JSONEncoder().default,  # unknown types: TypeError, as from dumps
        json.encoder.encode_basestring_ascii,  # ensure_ascii=True
        None,  # indent
        ": ",
        ", ",
        False,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan
    )

    def dumps(data: dict[str, Any]) -> str:
        return "".join(encode(data, 0))

    return dumps


_dumps = _data_encoder()


def journal_path(root: Path) -> Path:
    return root / ".guildrun" / "journal.db"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


class Journal:
    def __init__(
        self, path: Path, *, readonly: bool = False, crash_after_commit: int | None = None
    ) -> None:
        self.path = path
        # Test hook for power-loss tests: die right after the k-th commit of this process.
        self._crash_after = crash_after_commit
        self._commits = 0
        if readonly:
            if not path.exists():
                raise UsageError(f"no runs yet: {path} does not exist")
            self.db = sqlite3.connect(read_only_uri(path), uri=True, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=10000")
            if self.db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                # Every statement is CREATE ... IF NOT EXISTS: older journals gain new tables.
                self.db.executescript(_SCHEMA)
                for table, column, kind in _ADDED_COLUMNS:
                    have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
                    if column not in have:
                        self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.db.row_factory = sqlite3.Row
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UsageError(f"{path}: journal schema {version} is not {SCHEMA_VERSION}")
        self._pending: list[Event] = []
        self._rows: list[tuple[object, ...]] = []
        self.redactor: Redactor = NO_SECRETS  # the run's secrets, never written here
        self._data_version: int | None = None
        self.written_by_another()  # from here on, another writer is noticed
        # Inside a transaction, per-task row writes wait here and go in with executemany,
        # statement by statement in the order first seen. Rows of one statement never
        # depend on each other; where one task gets two statements in one transaction
        # (ended as "waiting", then started again alone), the first is also seen first.
        self._batch: dict[str, list[tuple[object, ...]]] | None = None
        self._hold = False
        self._held: list[Event] | None = None  # events of held blocks, not yet committed

    def close(self) -> None:
        self.db.close()

    def commit_hook(self) -> None:
        """After every commit: the power-loss tests end the process here, at commit k."""
        if self._crash_after is not None and self._commits >= self._crash_after:
            os._exit(137)

    @contextmanager
    def transaction(self) -> Iterator[list[Event]]:
        """Group writes into one commit; yields the events that commit made durable.

        Inside the block, `hold()` keeps the transaction open after it: its writes go in
        with the next commit (of a block that does not hold), and that block's list
        then holds its events too, first. A block that fails is undone alone (a
        savepoint), the held writes before it stay.
        """
        nested = self._held is not None
        self.db.execute("SAVEPOINT step" if nested else "BEGIN IMMEDIATE")
        events: list[Event] = []
        self._pending = events
        self._rows = []
        self._batch = {}
        self._hold = False
        try:
            yield events
            self._flush()
            if self._rows:
                self.db.executemany(
                    "INSERT INTO events(run_id, time, kind, task, instance, data)"
                    " VALUES (?,?,?,?,?,?)",
                    self._rows,
                )
        except BaseException:
            if nested:
                self.db.execute("ROLLBACK TO step")
                self.db.execute("RELEASE step")
            else:
                self.db.execute("ROLLBACK")
            raise
        else:
            if nested:
                self.db.execute("RELEASE step")
            if self._hold:
                self._held = [*(self._held or []), *events]
                events.clear()  # not durable yet: nobody is told
            else:
                self.db.execute("COMMIT")
                events[:0] = self._held or []
                self._held = None
                self._commits += 1
                self.commit_hook()
        finally:
            self._pending = []
            self._batch = None

    def hold(self) -> None:
        """Keep the current transaction open past its block (see `transaction`)."""
        self._hold = True

    @property
    def holding(self) -> bool:
        """Whether writes wait in an open transaction for a later commit."""
        return self._held is not None

    # ---------------------------------------------------------------- writes

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        if self._batch is None:
            self.db.execute(sql, params)
        else:
            self._batch.setdefault(sql, []).append(params)

    def _flush(self) -> None:
        if self._batch:
            for sql, rows in self._batch.items():
                self.db.executemany(sql, rows)
            self._batch.clear()

    def event(self, run_id: str, ev: Event) -> None:
        """Journal an event; rows are written together when the transaction commits."""
        if ev.data and self.redactor:
            ev = replace(ev, data=self.redactor.data(ev.data))
        self._rows.append(
            (
                run_id,
                ev.time,
                str(ev.kind),  # the plain text: an enum costs sqlite3 an adapter lookup
                ev.task,
                ev.instance,
                _dumps(ev.data) if ev.data else None,
            )
        )
        self._pending.append(ev)

    def create_run(
        self,
        run_id: str,
        *,
        root: Path,
        plan_source: str | None,
        plan_json: str,
        settings_json: str,
        limits: dict[str, int],
        tasks: Sequence[tuple[str, int, str, str, str | None, list[str]]],
        now: float,
    ) -> None:
        self.db.execute(
            "INSERT INTO runs(id, created, status, root, plan_source, plan_json, settings_json,"
            " limits_json, pid, host) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                run_id,
                now,
                "running",
                str(root),
                plan_source,
                plan_json,
                settings_json,
                json.dumps(limits),
                os.getpid(),
                socket.gethostname(),
            ),
        )
        self.db.executemany(
            "INSERT INTO tasks(run_id, id, seq, specialist, phase, scope, files_json, state)"
            " VALUES (?,?,?,?,?,?,?,'waiting')",
            [
                (run_id, tid, seq, sp, ph, sc, json.dumps(files) if files else "[]")
                for tid, seq, sp, ph, sc, files in tasks
            ],
        )

    def task_started(
        self,
        run_id: str,
        task: str,
        attempt: int,
        instance: str,
        stolen_from: str | None,
        now: float,
        stdout_path: str,
        stderr_path: str,
    ) -> None:
        self._write(
            "UPDATE tasks SET state='running', instance=?, stolen_from=?, attempts=?,"
            " started=COALESCE(started, ?) WHERE run_id=? AND id=?",
            (instance, stolen_from, attempt, now, run_id, task),
        )
        self._write(
            "INSERT INTO attempts(run_id, task_id, attempt, instance, started, status,"
            " stdout_path, stderr_path) VALUES (?,?,?,?,?,'running',?,?)",
            (run_id, task, attempt, instance, now, stdout_path, stderr_path),
        )

    def attempt_pgid(self, run_id: str, task: str, attempt: int, pgid: int) -> None:
        self._write(
            "UPDATE attempts SET pgid=? WHERE run_id=? AND task_id=? AND attempt=?",
            (pgid, run_id, task, attempt),
        )

    def attempt_ended(
        self,
        run_id: str,
        task: str,
        attempt: int,
        *,
        status: str,
        started: float,
        ended: float,
        exit_code: int | None,
        error: str | None,
    ) -> None:
        self._write(
            "UPDATE attempts SET status=?, started=?, ended=?, exit_code=?, error=?"
            " WHERE run_id=? AND task_id=? AND attempt=?",
            (
                str(status),  # an `Ending` as plain text (see the adapter above)
                started,
                ended,
                exit_code,
                self.redactor.maybe(error),
                run_id,
                task,
                attempt,
            ),
        )

    def attempt_spend(
        self,
        run_id: str,
        task: str,
        attempt: int,
        *,
        cost_usd: float | None,
        tokens: int | None,
        estimated: bool,
        session_id: str | None,
    ) -> None:
        self._write(
            "UPDATE attempts SET cost_usd=?, tokens=?, cost_estimated=?, session_id=?"
            " WHERE run_id=? AND task_id=? AND attempt=?",
            (cost_usd, tokens, int(estimated), session_id, run_id, task, attempt),
        )

    def spend(self, run_id: str) -> tuple[float, int, bool]:
        """USD and tokens the run's attempts spent so far, and whether any USD is estimated."""
        try:
            row = self.db.execute(
                "SELECT COALESCE(SUM(cost_usd), 0), COALESCE(SUM(tokens), 0),"
                " COALESCE(MAX(cost_estimated), 0) FROM attempts WHERE run_id=?",
                (run_id,),
            ).fetchone()
        except sqlite3.OperationalError:  # a journal older than agent spend, read only
            return 0.0, 0, False
        return float(row[0]), int(row[1]), bool(row[2])

    def count_events(self, run_id: str, kind: str) -> int:
        row = self.db.execute(
            "SELECT COUNT(*) FROM events WHERE run_id=? AND kind=?", (run_id, kind)
        ).fetchone()
        return int(row[0])

    def task_ended(
        self,
        run_id: str,
        task: str,
        state: str,
        now: float,
        *,
        result: str | None = None,
        cause: str | None = None,
    ) -> None:
        self._write(
            "UPDATE tasks SET state=?, ended=?, result=?, cause=? WHERE run_id=? AND id=?",
            (state, now, self.redactor.maybe(result), self.redactor.maybe(cause), run_id, task),
        )

    def instance_spawned(self, run_id: str, name: str, specialist: str, now: float) -> None:
        self.db.execute(
            "INSERT INTO instances(run_id, name, specialist, spawned) VALUES (?,?,?,?)",
            (run_id, name, specialist, now),
        )

    def instance_retired(self, run_id: str, name: str, now: float) -> None:
        self.db.execute(
            "UPDATE instances SET retired=? WHERE seq = (SELECT MAX(seq) FROM instances"
            " WHERE run_id=? AND name=? AND retired IS NULL)",
            (now, run_id, name),
        )

    def snapshot_before(
        self, run_id: str, task: str, attempt: int, manifest: dict[str, str | None]
    ) -> None:
        # Batched with the step's other rows: one executemany per commit, not one per task.
        for path, blob in manifest.items():
            self._write(
                "INSERT OR REPLACE INTO snapshots(run_id, task_id, attempt, path, before)"
                " VALUES (?,?,?,?,?)",
                (run_id, task, attempt, path, blob),
            )

    def snapshot_after(
        self, run_id: str, task: str, attempt: int, manifest: dict[str, str | None]
    ) -> None:
        # Batched too: an attempt's `before` rows went in at an earlier commit (the step
        # that started it), so they are there to update.
        for path, blob in manifest.items():
            self._write(
                "UPDATE snapshots SET after=? WHERE run_id=? AND task_id=? AND attempt=?"
                " AND path=?",
                (blob, run_id, task, attempt, path),
            )

    def snapshot(self, run_id: str, task: str, attempt: int) -> list[sqlite3.Row]:
        return list(
            self.db.execute(
                "SELECT * FROM snapshots WHERE run_id=? AND task_id=? AND attempt=? ORDER BY path",
                (run_id, task, attempt),
            )
        )

    def completed(self, run_id: str, task: str, attempt: int, now: float) -> None:
        self._write(
            "INSERT INTO completions(run_id, task_id, attempt, time) VALUES (?,?,?,?)",
            (run_id, task, attempt, now),
        )

    def completions(self, run_id: str) -> list[sqlite3.Row]:
        return list(
            self.db.execute("SELECT * FROM completions WHERE run_id=? ORDER BY seq", (run_id,))
        )

    def mark_rolled_back(self, seq: int, now: float) -> None:
        self.db.execute("UPDATE completions SET rolled_back=? WHERE seq=?", (now, seq))

    def write_timings(self, run_id: str, timings: dict[str, tuple[float, int]]) -> None:
        self.db.executemany(
            "INSERT INTO timings(run_id, step, seconds, count) VALUES (?,?,?,?)"
            " ON CONFLICT(run_id, step) DO UPDATE SET seconds=seconds+excluded.seconds,"
            " count=count+excluded.count",
            [(run_id, step, sec, n) for step, (sec, n) in timings.items()],
        )

    def written_by_another(self) -> bool:
        """Whether another connection committed to the journal since the last call.

        One engine per root holds the journal (the run lock); readers never commit. So
        a change here during a run is a task writing guildrun's records: SQLite's
        `data_version` moves for commits of other connections only, never for ours.
        """
        version = int(self.db.execute("PRAGMA data_version").fetchone()[0])
        seen, self._data_version = self._data_version, version
        return seen is not None and version != seen

    def intact(self) -> bool:
        """SQLite's own quick check of the file's structure."""
        try:
            rows = self.db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError:
            return False
        return [tuple(r) for r in rows] == [("ok",)]

    def set_status(self, run_id: str, status: str) -> None:
        self.db.execute(
            "UPDATE runs SET status=?, ended=NULL, pid=? WHERE id=?", (status, os.getpid(), run_id)
        )

    def attempt_usage(
        self, run_id: str, task: str, attempt: int, cpu_s: float, peak_rss: int
    ) -> None:
        self._write(
            "UPDATE attempts SET cpu_s=?, peak_rss=? WHERE run_id=? AND task_id=? AND attempt=?",
            (cpu_s, peak_rss, run_id, task, attempt),
        )

    def sample(self, run_id: str, s: Sample) -> None:
        self.db.execute(
            "INSERT INTO samples(run_id, time, cpu, mem_used, mem_available, running,"
            " agents_cpu, agents_rss) VALUES (?,?,?,?,?,?,?,?)",
            (
                run_id,
                s.time,
                s.cpu,
                s.mem_used,
                s.mem_available,
                s.running,
                s.agents_cpu,
                s.agents_rss,
            ),
        )

    def end_run(self, run_id: str, status: str, now: float) -> None:
        self.db.execute(
            "UPDATE instances SET retired=? WHERE run_id=? AND retired IS NULL", (now, run_id)
        )
        self.db.execute("UPDATE runs SET status=?, ended=? WHERE id=?", (status, now, run_id))

    # ---------------------------------------------------------------- reads

    def runs(self, limit: int = 50) -> list[sqlite3.Row]:
        return list(
            self.db.execute("SELECT * FROM runs ORDER BY created DESC, id DESC LIMIT ?", (limit,))
        )

    def run(self, run_id: str | None = None) -> sqlite3.Row:
        if run_id is None:
            row = self.db.execute(
                "SELECT * FROM runs ORDER BY created DESC, id DESC LIMIT 1"
            ).fetchone()
            if row is None:
                raise UsageError(f"no runs yet in {self.path}")
            return row  # type: ignore[no-any-return]
        row = self.db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            rows = self.db.execute(
                "SELECT * FROM runs WHERE id LIKE ? ORDER BY created DESC", (run_id + "%",)
            ).fetchall()
            if len(rows) == 1:
                return rows[0]  # type: ignore[no-any-return]
            raise UsageError(f"no run {run_id!r} in {self.path} (see 'guildrun runs')")
        return row  # type: ignore[no-any-return]

    def tasks(self, run_id: str) -> list[sqlite3.Row]:
        return list(self.db.execute("SELECT * FROM tasks WHERE run_id=? ORDER BY seq", (run_id,)))

    def attempts(self, run_id: str) -> list[sqlite3.Row]:
        return list(
            self.db.execute(
                "SELECT * FROM attempts WHERE run_id=? ORDER BY started, task_id, attempt",
                (run_id,),
            )
        )

    def attempt_spans(
        self, run_id: str
    ) -> list[tuple[str, int, str, float, float | None, str | None, str | None]]:
        """(task, attempt, instance, started, ended, stdout, stderr) of every attempt, as
        plain tuples in the order they were made: a summary of 10,000 tasks reads them
        in a few ms, where `attempts` (sorted, every column, named rows) takes 40."""
        cur = self.db.execute(
            "SELECT task_id, attempt, instance, started, ended, stdout_path, stderr_path"
            " FROM attempts WHERE run_id=?",
            (run_id,),
        )
        cur.row_factory = None
        return cur.fetchall()

    def task_lines(
        self, run_id: str
    ) -> list[tuple[str, str, str, str, str | None, str | None, int, float, float, str]]:
        """(id, state, specialist, phase, instance, stolen_from, attempts, started,
        ended, cause) of every task in plan order, as plain tuples (see `attempt_spans`)."""
        cur = self.db.execute(
            "SELECT id, state, specialist, phase, instance, stolen_from, attempts, started,"
            " ended, cause FROM tasks WHERE run_id=? ORDER BY seq",
            (run_id,),
        )
        cur.row_factory = None
        return cur.fetchall()

    def instances(self, run_id: str) -> list[sqlite3.Row]:
        return list(
            self.db.execute("SELECT * FROM instances WHERE run_id=? ORDER BY seq", (run_id,))
        )

    def timings(self, run_id: str) -> dict[str, float]:
        """Seconds per engine step (none for journals written before timings existed)."""
        sql = "SELECT step, seconds FROM timings WHERE run_id=? ORDER BY step"
        return {r["step"]: float(r["seconds"]) for r in self._select(sql, run_id)}

    def samples(self, run_id: str) -> list[sqlite3.Row]:
        sql = (
            "SELECT time, cpu, running, agents_cpu, mem_used FROM samples"
            " WHERE run_id=? ORDER BY time"
        )
        return self._select(sql, run_id)

    def _select(self, sql: str, run_id: str) -> list[sqlite3.Row]:
        """Rows of a table that journals written before it existed do not have: then none."""
        try:
            return list(self.db.execute(sql, (run_id,)))
        except sqlite3.OperationalError:
            return []

    def events(self, run_id: str) -> list[sqlite3.Row]:
        return list(self.db.execute("SELECT * FROM events WHERE run_id=? ORDER BY seq", (run_id,)))

    def events_of(self, run_id: str, *kinds: EventKind, having: str | None = None) -> list[Event]:
        """The run's events of these kinds, in order, as `Event`s (data decoded).

        With `having`, only events whose data may hold that key: SQLite skips the rest
        (a run has an event per task; decoding them all to find a rare key costs more
        than the run's own bookkeeping). The caller still checks the key it decoded.
        """
        marks = ",".join("?" * len(kinds))
        where, params = f"run_id=? AND kind IN ({marks})", [run_id, *kinds]
        if having is not None:
            where += " AND instr(data, ?) > 0"
            params.append(json.dumps(having))
        rows = self.db.execute(
            f"SELECT time, kind, task, instance, data FROM events"  # noqa: S608 - only marks
            f" WHERE {where} ORDER BY seq",
            params,
        )
        return [
            Event(r["kind"], r["time"], r["task"], r["instance"], json.loads(r["data"] or "{}"))
            for r in rows
        ]

    def snapshots(self, run_id: str) -> list[sqlite3.Row]:
        """Every snapshot row of a run, for rollback's view of who changed what."""
        return list(
            self.db.execute(
                "SELECT * FROM snapshots WHERE run_id=? ORDER BY task_id, attempt, path", (run_id,)
            )
        )


def read_only_uri(path: Path) -> str:
    """The `file:` URI SQLite opens `path` read-only by: the path percent-encoded, since a
    '#', '?' or '%' in it (a folder's name) would end or change the path read."""
    return f"{path.absolute().as_uri()}?mode=ro"


@dataclass(frozen=True, slots=True)
class PastAttempt:
    """A successful attempt of a past run: what estimates are learned from."""

    task: str
    specialist: str
    files: list[str]
    prompt: str  # as the plan gave it ("" when it gave none or is unreadable)
    seconds: float


def durations_by_work(path: Path, recent: int = 30, most: int = 100_000) -> list[PastAttempt]:
    """Every successful attempt of the latest `recent` runs that have one, newest run
    first, stopping after the run that brings it to `most`. Empty when there is no
    readable journal."""
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(read_only_uri(path), uri=True)
    except sqlite3.Error:
        return []
    out: list[PastAttempt] = []
    try:
        runs = db.execute(
            "SELECT r.id, r.plan_json FROM runs r WHERE EXISTS (SELECT 1 FROM attempts a"
            " WHERE a.run_id = r.id AND a.status = 'ok' AND a.ended IS NOT NULL)"
            " ORDER BY r.created DESC LIMIT ?",
            (recent,),
        ).fetchall()
        for run_id, plan_json in runs:
            if len(out) >= most:
                break
            prompts = _prompts(plan_json)
            rows = db.execute(
                "SELECT t.id, t.specialist, t.files_json, a.ended - a.started FROM attempts a"
                " JOIN tasks t ON t.run_id = a.run_id AND t.id = a.task_id"
                " WHERE a.run_id = ? AND a.status = 'ok' AND a.ended IS NOT NULL",
                (run_id,),
            )
            for tid, spec, files, d in rows:
                owned = json.loads(files)
                # A task can write the journal, a clock can jump back: a length that
                # cannot be, or files that are not names, teach nothing.
                if not isinstance(d, float | int) or not 0 <= d < math.inf:
                    continue
                if not isinstance(owned, list) or not all(isinstance(f, str) for f in owned):
                    continue
                out.append(PastAttempt(tid, spec, owned, prompts.get(tid, ""), float(d)))
    except (sqlite3.Error, ValueError):
        return []
    finally:
        db.close()
    return out


def _prompts(plan_json: str) -> dict[str, str]:
    try:
        tasks = json.loads(plan_json).get("tasks") or []
        return {
            str(t["id"]): str(t.get("prompt") or "")
            for t in tasks
            if isinstance(t, dict) and "id" in t
        }
    except (ValueError, AttributeError):
        return {}
