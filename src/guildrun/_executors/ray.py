"""The Ray executor: specialist instances as Ray actors across a cluster (issue 15).

The engine, the journal and the integration stay on the driver; only attempts travel.
Each instance is one actor (`_ray_actor.Worker`) holding a git clone on its node, so
the engine's limits are cluster-wide by construction: an instance runs one task at a
time, and the scheduler hands a task only to a free instance.

Files: the run is in worktree mode. The driver keeps its per-instance worktrees as
*mirrors*: the workspace syncs a mirror to the integrated head before each attempt,
`run` ships the actor the commits its clone lacks (an incremental bundle), the actor
runs the task in its clone and returns the patch, and `run` applies it to the mirror
before returning. From there `WorktreeWorkspace.check` works unchanged: ownership, one
commit per task, three-way integration, conflicts, gates.

Failures: an actor or node lost mid-task ends the attempt as `Ending.ERROR` with
`lost=True`, naming the node; the actor is replaced (a new one, placed anywhere) and the
ending policy retries the task without counting it (`retry_lost`). A job's timeout is
enforced on the actor (its process group is killed) and here as a backstop.

Only this module and `_ray_actor` import Ray, and only when a Ray run starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import UsageError
from .._git import Git, GitError
from .._logcap import CappedFile
from ._ray_actor import Reply, Where, Worker, kill_workers, sweep_run
from .base import Ending, Executor, InstanceSpec, Job, Outcome

if TYPE_CHECKING:
    from .._prepare import Prepared

NAMESPACE = "guildrun"
INSTALL_HINT = "the Ray backend needs Ray: pip install 'guildrun[ray]'"
_BACKSTOP = 15.0  # seconds past timeout + kill grace before the driver gives up on an actor
_STOP_WAIT = 10.0  # seconds an actor is given to stop its task and remove its clone


def import_ray() -> Any:
    """Ray, or the one line that says how to install it (exit 2)."""
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def actor_prefix(run_id: str) -> str:
    return f"guildrun:{run_id}:"


@dataclass
class _Slot:
    """One instance: its actor (made at its first task), what its clone holds."""

    spec: InstanceSpec
    actor: Any = None
    name: str = ""
    where: Where | None = None
    has: str | None = None  # the last commit its clone received (it has all before it)
    generation: int = 0
    lost: list[str] = field(default_factory=list)


class RayExecutor(Executor):
    """Attempts as calls to named Ray actors, one actor per specialist instance.

    `address`: "auto" (a cluster started on this machine with `ray start`), or the
    head's HOST:PORT. An already connected Ray (`ray.init` by the caller) is used as it
    is and left connected.
    """

    worktrees_only = True

    def __init__(self, address: str | None = None, *, connect: bool = True) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or "auto"
        self._slots: dict[str, _Slot] = {}
        self._nonce = secrets.token_hex(3)  # actor names of this driver, never reused
        self._owns_connection = False
        self._leftover: list[str] = []
        self._run_id: str | None = None
        self._git: Git | None = None
        self.lost_nodes: list[str] = []  # nodes lost during the run, for the summary
        self._avoid: set[str] = set()  # ids of nodes that lost an actor
        self._abandoned: dict[str, list[int]] = {}  # node -> pids of actors that hung
        self.backstop = _BACKSTOP
        if connect:
            self.connect()

    # ------------------------------------------------------------------ connection

    def connect(self) -> None:
        """Join the cluster, or say in one line why not (no Ray, refused token, no
        cluster at the address)."""
        ray = import_ray()
        if ray.is_initialized():
            return
        from ._ray_cluster import check_reachable

        check_reachable(self.address)
        logging.getLogger("ray").setLevel(logging.ERROR)
        try:
            ray.init(
                address=self.address,
                namespace=NAMESPACE,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
        except ConnectionError as exc:
            from ._ray_cluster import refused

            raise refused(self.address, exc) from None
        self._owns_connection = True

    # ------------------------------------------------------------------ instances

    def open_instance(self, spec: InstanceSpec) -> None:
        # The actor is made at the instance's first task, when the run id is known.
        self._slots[spec.name] = _Slot(spec)

    def close_instance(self, name: str) -> None:
        slot = self._slots.pop(name, None)
        if slot is not None and slot.actor is not None:
            self._kill([slot.actor], wait=True)

    def _actor(self, slot: _Slot, run_id: str) -> Any:
        if slot.actor is not None:
            return slot.actor
        ray = import_ray()
        spec = slot.spec
        wanted = dict(spec.resources)
        options: dict[str, Any] = {
            "num_cpus": wanted.pop("num_cpus", 0),
            "max_restarts": 0,  # a lost actor is replaced here, its task retried by policy
            "max_task_retries": 0,
        }
        if "num_gpus" in wanted:
            options["num_gpus"] = wanted.pop("num_gpus")
        if "memory" in wanted:
            options["memory"] = wanted.pop("memory")
        if wanted:
            options["resources"] = wanted
        elsewhere = self._elsewhere(dict(spec.resources))
        if elsewhere is not None:
            options["scheduling_strategy"] = elsewhere
        slot.name = f"{actor_prefix(run_id)}{spec.name}:{self._nonce}.{slot.generation}"
        remote = ray.remote(Worker)
        slot.actor = remote.options(name=slot.name, namespace=NAMESPACE, **options).remote(
            run_id, spec, self.max_log_bytes
        )
        return slot.actor

    def _unplaceable(self, wanted: dict[str, float]) -> str:
        """What no live node offers of `wanted` (Ray would wait for such a node forever)."""
        if not wanted:
            return ""
        ray = import_ray()
        need = _ray_names(wanted)
        for node in ray.nodes():
            offered = node.get("Resources", {})
            if node.get("Alive") and all(offered.get(k, 0) >= v for k, v in need.items()):
                return ""
        return ", ".join(f"{k}: {v:g}" for k, v in wanted.items())

    def _elsewhere(self, wanted: dict[str, float]) -> Any:
        """After a loss, prefer a live node other than the lost ones: Ray takes some
        seconds to declare a node dead, and would place the new actor there meanwhile.
        Soft affinity, so it goes anywhere if that node is full."""
        if not self._avoid:
            return None
        ray = import_ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        wanted = {
            ("CPU" if k == "num_cpus" else "GPU" if k == "num_gpus" else k): v
            for k, v in wanted.items()
        }
        for node in ray.nodes():
            if not node.get("Alive") or node["NodeID"] in self._avoid:
                continue
            offered = node.get("Resources", {})
            if all(offered.get(k, 0) >= v for k, v in wanted.items()):
                return NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)
        return None

    # ------------------------------------------------------------------ an attempt

    async def run(self, job: Job) -> Outcome:
        ray = import_ray()
        ctx = job.context
        self._run_id = ctx.run_id
        slot = self._slots.get(ctx.instance)
        if slot is None:  # not opened (an engine that skips the hook): open it now
            slot = self._slots[ctx.instance] = _Slot(InstanceSpec(ctx.instance, ctx.specialist))
        started = self.clock.now()
        if slot.actor is None:
            missing = self._unplaceable(dict(slot.spec.resources))
            if missing:
                msg = f"no node of the Ray cluster offers {missing} (specialist's resources)"
                return Outcome(Ending.ERROR, started, self.clock.now(), error=msg)
        actor = self._actor(slot, ctx.run_id)
        try:
            if slot.where is None:
                slot.where = await asyncio.wrap_future(actor.where.remote().future())
            commit, bundle = self._bundle(slot, ctx.root, ctx.workdir)
        except ray.exceptions.RayActorError as exc:
            return self._lost(slot, exc, started, ctx.task_id)
        except GitError as exc:
            msg = f"cannot ship the mirror's commit to the actor: {exc}"
            return Outcome(Ending.ERROR, started, self.clock.now(), error=msg)
        ref = actor.run.remote(job, bundle, commit, str(ctx.workdir))
        done = asyncio.wrap_future(ref.future())
        backstop = None if job.timeout is None else job.timeout + job.kill_grace + self.backstop
        try:
            reply: Reply = await asyncio.wait_for(asyncio.shield(done), timeout=backstop)
        except TimeoutError:
            where = slot.where.describe() if slot.where else "its node"
            if slot.where is not None:
                self._abandoned.setdefault(slot.where.node_id, []).append(slot.where.pid)
                self._kill_worker(slot.where)
            done.add_done_callback(_ignore)  # its late end (the actor killed) is no news
            self._replace(slot)
            msg = f"timed out after {job.timeout:g}s (the actor on {where} did not answer)"
            return Outcome(Ending.TIMED_OUT, started, self.clock.now(), error=msg)
        except asyncio.CancelledError:
            # Ray cancels the actor's asyncio task: the local executor there stops the
            # task's process group before the call ends.
            with contextlib.suppress(Exception):
                ray.cancel(ref)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(done, timeout=job.kill_grace + _STOP_WAIT)
            raise
        except ray.exceptions.RayActorError as exc:
            return self._lost(slot, exc, started, ctx.task_id)
        except ray.exceptions.RayError as exc:
            msg = f"the Ray call failed: {type(exc).__name__}: {_first_line(exc)}"
            return Outcome(Ending.ERROR, started, self.clock.now(), error=msg)
        slot.has = None if reply.clone_dropped else reply.commit or slot.has
        return self._land(job, reply, started)

    def _bundle(self, slot: _Slot, root: Path, mirror: Path) -> tuple[str, bytes | None]:
        """The mirror's HEAD, and a bundle of what the actor's clone lacks of it (None
        when it has it all)."""
        git = self._git if self._git is not None and self._git.root == root else Git(root)
        self._git = git
        commit = git.text("rev-parse", "HEAD", cwd=mirror)
        if slot.has == commit:
            return commit, None
        if slot.has is not None:
            known = git.run(
                "merge-base", "--is-ancestor", commit, slot.has, cwd=mirror, check=False
            )
            if known.returncode == 0:
                return commit, None
        with tempfile.TemporaryDirectory(prefix="guildrun-bundle-") as tmp:
            path = Path(tmp) / "to-actor.bundle"
            args = ["bundle", "create", "-q", str(path), "HEAD"]
            if slot.has is not None:
                args.append(f"^{slot.has}")
            git.run(*args, cwd=mirror)
            return commit, path.read_bytes()

    def _land(self, job: Job, reply: Reply, started: float) -> Outcome:
        """Logs and result to the job's paths (without secrets), the patch into the
        mirror; then the outcome, stamped with the driver's clock."""
        outcome = reply.outcome
        outcome.started, outcome.ended = started, self.clock.now()
        self._write(job.stdout_path, reply.stdout)
        self._write(job.stderr_path, reply.stderr)
        if reply.result is not None:
            self._write(job.context.result_path, reply.result, always=True)
        if outcome.status is Ending.DONE and reply.patch:
            git = self._git or Git(job.context.root)
            try:
                mirror = job.context.workdir
                git.run("apply", "--binary", "-", cwd=mirror, stdin=reply.patch)
            except GitError as exc:
                outcome.status = Ending.ERROR
                outcome.error = f"the task's patch from {_where(reply)} did not apply: {exc}"
        outcome.result = self.redactor.maybe(outcome.result)
        outcome.error = self.redactor.maybe(outcome.error)
        return outcome

    def _write(self, path: Path, data: bytes, *, always: bool = False) -> None:
        if not data and not always:
            return  # as the local executor: no empty log files
        stream = self.redactor.stream()
        clean = stream.feed(data) + stream.flush()
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            out = CappedFile(path, self.max_log_bytes)
            try:
                out.write(clean)
            finally:
                out.close()

    def _lost(self, slot: _Slot, exc: BaseException, started: float, task: str) -> Outcome:
        where = slot.where.describe() if slot.where else "a node not yet known"
        note = f"lost {where}: {type(exc).__name__}"
        slot.lost.append(note)
        self.lost_nodes.append(f"Ray: lost {where} while {task} ran there; it ran again")
        if slot.where is not None and slot.where.node_id:
            self._avoid.add(slot.where.node_id)
        self._replace(slot)
        msg = f"{note}; its actor is replaced and the task runs again"
        return Outcome(Ending.ERROR, started, self.clock.now(), error=msg, lost=True)

    def _replace(self, slot: _Slot) -> None:
        """A new actor for the instance at its next task, placed anywhere."""
        if slot.actor is not None:
            self._kill([slot.actor], wait=False)
        slot.actor, slot.where, slot.has = None, None, None
        slot.generation += 1

    # ------------------------------------------------------------------ stopping

    def _kill(self, actors: Sequence[Any], *, wait: bool) -> None:
        """Ask each actor to stop its task and remove its clone, then kill it."""
        ray = import_ray()
        refs = []
        if wait:
            for actor in actors:
                with contextlib.suppress(Exception):
                    refs.append(actor.shutdown.remote())
            with contextlib.suppress(Exception):
                ray.wait(refs, num_returns=len(refs), timeout=_STOP_WAIT)
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)

    def _kill_worker(self, where: Where) -> None:
        """Kill an unanswering actor's process on its node, now (not waited for)."""
        ray = import_ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        with contextlib.suppress(Exception):
            ray.remote(kill_workers).options(
                num_cpus=0,
                max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(where.node_id, soft=False),
            ).remote([where.pid])

    def leftovers(self, run_id: str, groups: Sequence[int]) -> set[int]:
        """A dead driver's actors of this run (by name); `stop` kills them and sweeps
        every node for the run's processes. Process groups mean nothing across nodes,
        so none are returned."""
        ray = import_ray()
        prefix = actor_prefix(run_id)
        self._run_id = run_id
        self._leftover = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a.get("namespace") == NAMESPACE and str(a.get("name", "")).startswith(prefix)
        ]
        return set()

    def stop(self, groups: set[int], grace: float) -> None:
        ray = import_ray()
        actors = []
        for name in self._leftover:
            with contextlib.suppress(Exception):
                actors.append(ray.get_actor(name, namespace=NAMESPACE))
        self._kill(actors, wait=True)
        self._leftover = []
        if self._run_id is not None:
            self.sweep(self._run_id, grace)

    def sweep(self, run_id: str, grace: float) -> int:
        """Stop the run's processes on every live node (a dead driver's tasks)."""
        ray = import_ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = ray.remote(sweep_run)
        refs = [
            task.options(
                num_cpus=0,
                max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            ).remote(run_id, grace, self._abandoned.get(node["NodeID"], []))
            for node in ray.nodes()
            if node.get("Alive")
        ]
        # A node that just died may still be listed alive: its sweep never runs, and is
        # not waited for long.
        ready, late = ray.wait(refs, num_returns=len(refs), timeout=grace + 10)
        for ref in late:
            with contextlib.suppress(Exception):
                ray.cancel(ref)
        stopped = 0
        for ref in ready:
            with contextlib.suppress(Exception):
                stopped += int(ray.get(ref))
        return stopped

    def notes(self) -> list[str]:
        return list(self.lost_nodes)

    def close(self) -> None:
        ray = import_ray()
        if not ray.is_initialized():
            return
        actors = [s.actor for s in self._slots.values() if s.actor is not None]
        self._slots.clear()
        if actors:
            self._kill(actors, wait=True)
        if (self.lost_nodes or self._abandoned) and self._run_id is not None:
            # A lost or unanswering actor never removed its clone, nor stopped its task:
            # where its node still runs, the sweep does.
            with contextlib.suppress(Exception):
                self.sweep(self._run_id, 1.0)
        if self._owns_connection:
            self._owns_connection = False
            ray.shutdown()


def ray_executor(prepared: Prepared) -> RayExecutor:
    """The executor for `backend: ray`, once the plan is known to fit it."""
    for name, spec in prepared.plan.specialists.items():
        if spec.func is not None and spec.python is None:
            raise UsageError(
                f"specialists.{name}: a Python function given in code cannot run on Ray "
                "actors; name it as python: module:function (importable from the project)"
            )
    return RayExecutor(prepared.settings.ray_address)


def _ignore(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _ray_names(wanted: dict[str, float]) -> dict[str, float]:
    """Actor options' names as `ray.nodes()` reports them (memory in bytes either way)."""
    names = {"num_cpus": "CPU", "num_gpus": "GPU"}
    return {names.get(k, k): v for k, v in wanted.items()}


def _where(reply: Reply) -> str:
    return reply.where.describe() if reply.where else "its node"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""
