"""The remote half of the Ray backend: one specialist instance, living in a Ray actor.

A worker node cannot see the driver's tree, so the actor keeps a git clone of its own
in a temporary folder on its node. Before each task the driver sends the commits the
clone lacks (an incremental git bundle, carried by Ray's object store); the actor
checks out the commit the driver's mirror worktree is at, cleans the clone, and runs
the task there through a `LocalExecutor` (process group, pidfd, timeout and kill grace,
capped logs, the reaper's sweep, agent presets: the same code as on one machine). It
answers with the outcome, the logs, the result file and the task's patch
(`git diff --binary` against that commit), and the driver applies the patch to its
mirror, where the worktree workspace integrates it as it integrates any task's work.

This module imports no Ray: the driver wraps `Worker` with `ray.remote`, so it can be
tested as a plain object, and every node runs the same guildrun it has installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._clock import WallClock
from .._git import Git
from .._safeio import read_head
from .._secrets import run_redactor
from .base import Ending, InstanceSpec, Job, Outcome
from .local import RESULT_LIMIT, LocalExecutor

_MARK = "guildrun-ray-"  # the prefix of every actor's own folder (found again by tests)


@dataclass(frozen=True)
class Where:
    """Where an actor runs: named in errors when its node is lost."""

    node_id: str
    ip: str
    host: str
    pid: int
    folder: str

    def describe(self) -> str:
        return f"node {self.ip} ({self.node_id[:12]}, host {self.host})"


@dataclass
class Reply:
    """What one task left on the actor's node, sent back to the driver."""

    outcome: Outcome
    stdout: bytes = b""
    stderr: bytes = b""
    result: bytes | None = None  # the file the task wrote at $GUILDRUN_RESULT
    patch: bytes = b""  # `git diff --binary` of the clone against the commit it started on
    commit: str = ""  # the commit the clone was at (the driver's mirror HEAD)
    where: Where | None = None
    notes: list[str] = field(default_factory=list)
    clone_dropped: bool = False  # the clone is gone: the next task needs a full bundle


class Worker:
    """One instance's clone and its `LocalExecutor`. Methods are async so that a
    cancel (Ray cancels the asyncio task of an async actor) reaches the running task,
    whose process group the local executor then stops."""

    def __init__(
        self,
        run_id: str,
        spec: InstanceSpec,
        max_log_bytes: int = 50 << 20,
    ) -> None:
        self.run_id = run_id
        self.spec = spec
        self.folder = Path(tempfile.mkdtemp(prefix=f"{_MARK}{run_id}-"))
        self.clone = self.folder / "clone"
        self.files = self.folder / "files"  # logs and result of the task at hand
        self.files.mkdir()
        # The git folder named, never searched for: should a task remove it, git must
        # fail rather than find a repository above the clone.
        where = {"GIT_DIR": str(self.clone / ".git"), "GIT_WORK_TREE": str(self.clone)}
        self.git = Git(self.clone, extra_env=where)
        self.local = LocalExecutor()
        self.local.max_log_bytes = max_log_bytes
        # The driver masks the secrets it knows; a node's own (its agents' API keys, in
        # the environment tasks run with here) only this node knows: masked before the
        # logs and the result leave it.
        self.local.redactor = run_redactor([])
        self.local.start(WallClock())
        self.local.open_instance(spec)
        self._has_clone = False

    # ------------------------------------------------------------------ facts

    async def where(self) -> Where:
        node_id, ip = "", "127.0.0.1"
        with contextlib.suppress(Exception):
            import ray

            if not ray.is_initialized():  # a plain object, outside Ray: start nothing
                raise LookupError
            node_id = ray.get_runtime_context().get_node_id()
            ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        return Where(node_id, ip, socket.gethostname(), os.getpid(), str(self.folder))

    # ------------------------------------------------------------------ a task

    async def run(self, job: Job, bundle: bytes | None, commit: str, mirror: str) -> Reply:
        """Bring the clone to `commit` (with `bundle`'s objects), run `job` there with the
        driver's paths mapped to this node's, and return what it left."""
        notes: list[str] = []
        try:
            await asyncio.to_thread(self._checkout, bundle, commit)
            local = self._localize(job, mirror)
        except Exception as exc:  # the clone could not be made ready: the executor broke
            self._drop_clone()  # the next attempt starts from a new one (the driver knows)
            now = WallClock().now()
            msg = f"the actor could not prepare its clone: {type(exc).__name__}: {exc}"
            outcome = Outcome(Ending.ERROR, now, now, error=msg, lost=True)
            return Reply(outcome, where=await self.where(), clone_dropped=True)
        try:
            self._load_python(job)
        except Exception as exc:  # the user's module, imported from the clone
            now = WallClock().now()
            msg = f"cannot load the specialist: {type(exc).__name__}: {exc}"
            return Reply(Outcome(Ending.FAILED, now, now, error=msg), where=await self.where())
        outcome = await self.local.run(local)
        dropped = False
        try:
            patch = await asyncio.to_thread(self._patch, commit)
        except Exception as exc:  # the task broke its clone's git folder
            self._drop_clone()
            dropped, patch = True, b""
            if outcome.status is Ending.DONE:
                outcome.status = Ending.FAILED
                outcome.error = f"its changes cannot be read from the clone: {exc}"
        result = None
        with contextlib.suppress(OSError, Exception):
            result = read_head(local.context.result_path, RESULT_LIMIT)
        outcome.pgid = None  # a process group on another node means nothing to the driver
        return Reply(
            outcome,
            stdout=_read(local.stdout_path, self.local.max_log_bytes),
            stderr=_read(local.stderr_path, self.local.max_log_bytes),
            result=result,
            patch=patch,
            commit=commit,
            where=await self.where(),
            notes=notes,
            clone_dropped=dropped,
        )

    def _checkout(self, bundle: bytes | None, commit: str) -> None:
        if not self._has_clone:
            self.clone.mkdir()
            self.git.run("init", "-q")
            self._has_clone = True
        if bundle is not None:
            path = self.folder / "incoming.bundle"
            path.write_bytes(bundle)
            try:
                # Objects only, no transport (guildrun's git allows none): the driver
                # names the commit to check out.
                self.git.run("bundle", "unbundle", str(path))
            finally:
                path.unlink(missing_ok=True)
        self.git.run("reset", "-q", "--hard", commit)
        self.git.run("clean", "-q", "-ffdx")

    def _drop_clone(self) -> None:
        shutil.rmtree(self.clone, ignore_errors=True)
        self._has_clone = False

    def _patch(self, commit: str) -> bytes:
        """Everything the task changed, binary files, modes and deletions included."""
        self.git.run("add", "-A")
        return self.git.run("diff", "--cached", "--binary", "--no-renames", commit).stdout

    def _localize(self, job: Job, mirror: str) -> Job:
        """The job as this node sees it: the driver's mirror worktree is the clone, the
        project root too (the clone is the project here), logs and result local."""
        for old in self.files.iterdir():
            old.unlink()
        ctx = job.context
        clone = str(self.clone)
        result = self.files / "result"
        out, err = self.files / "stdout", self.files / "stderr"
        pairs = [
            (str(ctx.result_path), str(result)),
            (str(job.stdout_path), str(out)),
            (str(job.stderr_path), str(err)),
            (mirror, clone),
            (str(ctx.root), clone),
        ]

        def moved(text: str) -> str:
            for a, b in pairs:
                if a in text:
                    text = text.replace(a, b)
            return text

        context = dataclasses.replace(
            ctx,
            root=self.clone,
            workdir=self.clone,
            result_path=result,
            log_path=out,
            prompt=moved(ctx.prompt),
        )
        return dataclasses.replace(
            job,
            context=context,
            stdout_path=out,
            stderr_path=err,
            argv=None if job.argv is None else tuple(moved(a) for a in job.argv),
            env={k: moved(v) for k, v in job.env.items()},
        )

    def _load_python(self, job: Job) -> None:
        """A `python: module:function` specialist is imported from the clone."""
        name = job.context.specialist
        if job.argv is None and job.agent is None and name not in self.local.callables:
            from .._loader import load_specialist

            if job.python is None:
                raise RuntimeError(f"specialist {name!r}: no python: module:function to import")
            func: Callable[..., Any] = load_specialist(job.python, self.clone)
            self.local.callables[name] = func

    # ------------------------------------------------------------------ the end

    async def shutdown(self) -> None:
        """Stop whatever still runs (the local executor's sweep) and remove the clone."""
        self.local.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _read(path: Path, cap: int) -> bytes:
    """A log the local executor wrote (capped), read as a file a task may have swapped
    for a FIFO, a link or something huge: regular files only, never past the cap (plus
    room for the line saying what was cut)."""
    try:
        return read_head(path, cap + (64 << 10))
    except OSError:
        return b""


def kill_workers(pids: Sequence[int]) -> None:
    """On one node: SIGKILL these actors' worker processes (a stopped process ignores
    everything else, Ray's own kill included)."""
    import psutil

    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.name().startswith("ray::"):  # still the actor's worker, not a new pid
                proc.kill()


def sweep_run(run_id: str, grace: float, actors: Sequence[int] = ()) -> int:
    """On one node: kill the actors' worker processes given (actors that stopped
    answering), stop every process group that carries the run's id (a dead driver's
    tasks, an abandoned actor's), and remove the run's actor folders. Returns how many
    groups were stopped."""

    from .local import agent_groups, stop_groups

    kill_workers(actors)
    groups = agent_groups(run_id, set())
    stop_groups(groups, grace)
    for folder in Path(tempfile.gettempdir()).glob(f"{_MARK}{run_id}-*"):
        shutil.rmtree(folder, ignore_errors=True)
    return len(groups)
