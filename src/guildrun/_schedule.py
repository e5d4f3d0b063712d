"""The scheduler: pure logic, no I/O, no real time.

Picture a guild hall. Each specialist has a row of desks (instances); each desk has
a pile of task cards dealt round-robin, in plan order, when a phase opens. A desk
works one card at a time, always the first card of its own pile whose prerequisites
are met; a desk whose pile has nothing ready takes the *last* ready card of the
busiest sibling desk (work stealing: the thief takes what the owner would reach
last). Two limits bound the hall: desks per specialist and desks in all.

The engine feeds it facts (`finish`) and asks for decisions (`dispatch`); both
return plain records that the engine journals before it acts on them. Tests drive
it with a fake clock and finish tasks in any order they like.

Rules kept here:
- dependencies: a task starts after every task it depends on is done; if one fails
  or is skipped, the task is skipped, with the first failure named as the cause;
- exclusion: tasks that share a file or a lock never overlap; who goes first is the
  plan's (dependency-respecting) order, and the second runs even if the first failed;
- phases: no task of a later phase starts before every task of earlier phases ended;
- limits: at most `limit(specialist)` instances of a specialist and `total` in all,
  and an instance runs one task at a time, so running tasks obey the same limits.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from ._plan import PHASES, CompiledPlan, TaskSpec, topological_order
from ._policies.limiter import Limiter


class State(StrEnum):
    WAITING = "waiting"
    READY = "ready"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({State.DONE, State.FAILED, State.SKIPPED})


# ------------------------------------------------------------------ decisions


@dataclass(frozen=True, slots=True)
class PhaseStarted:
    phase: str
    time: float


@dataclass(frozen=True, slots=True)
class PhaseEnded:
    phase: str
    time: float


@dataclass(frozen=True, slots=True)
class Spawned:
    instance: str
    specialist: str
    time: float


@dataclass(frozen=True, slots=True)
class Retired:
    instance: str
    specialist: str
    time: float


@dataclass(frozen=True, slots=True)
class Started:
    task: str
    instance: str
    stolen_from: str | None
    time: float

    @property
    def stolen(self) -> bool:
        return self.stolen_from is not None


@dataclass(frozen=True, slots=True)
class Queued:
    task: str
    instance: str | None  # None: parked until its specialist gets an instance
    time: float


@dataclass(frozen=True, slots=True)
class Skipped:
    task: str
    cause: str  # the task whose failure led here, or "" when the run was stopped
    reason: str
    time: float


Decision = PhaseStarted | PhaseEnded | Spawned | Retired | Queued | Started | Skipped


# ------------------------------------------------------------------ strategies


class Hall(Protocol):
    """What a strategy may ask of the scheduler when an instance is free."""

    def pop_front(self, inst: Instance) -> int | None: ...
    def pop_back(self, inst: Instance) -> int | None: ...
    def peek_front(self, inst: Instance) -> int | None: ...
    def siblings_by_load(self, inst: Instance) -> list[Instance]: ...
    def weight(self, task: int) -> float: ...
    def rank(self, task: int) -> float: ...


class Distribution:
    """How tasks reach instances: the deal at a phase's start, and the pick of a free
    instance. One subclass per strategy; swap them freely."""

    name = "base"
    steals = False
    scales = False
    ranks = False  # piles ordered by critical path (`Scheduler.rank`), not plan order
    reshares = False  # move a free slot to the specialist with the most work left per slot

    def assign(
        self, tasks: Sequence[int], instances: int, weight: Callable[[int], float]
    ) -> list[list[int]]:
        """Deal `tasks` (plan indices, in order) to `instances` piles, round-robin."""
        piles: list[list[int]] = [[] for _ in range(instances)]
        for k, t in enumerate(tasks):
            piles[k % instances].append(t)
        return piles

    def pick(self, hall: Hall, inst: Instance) -> tuple[int, Instance | None] | None:
        """The task a free instance runs next, and the sibling it was taken from."""
        i = hall.pop_front(inst)
        return None if i is None else (i, None)


class RoundRobin(Distribution):
    """The seed's static deal: 7 tasks on 3 instances give [1,4,7], [2,5], [3,6].

    No stealing and no new instances: kept to show what stealing buys.
    """

    name = "round-robin"


class WorkStealing(Distribution):
    """Round-robin deal, then idle instances steal from the back of the busiest sibling.

    Work-conserving: whenever a slot is free under both limits and a task is ready,
    one starts, spawning an instance if the specialist has room for one. The thief
    takes what the owner would have reached last, so the two rarely meet.
    """

    name = "work-stealing"
    steals = True
    scales = True

    def pick(self, hall: Hall, inst: Instance) -> tuple[int, Instance | None] | None:
        i = hall.pop_front(inst)
        if i is not None:
            return i, None
        for sib in hall.siblings_by_load(inst):
            i = hall.pop_back(sib)
            if i is not None:
                return i, sib
        return None


class LongestFirst(WorkStealing):
    """Critical path first, on piles of equal estimated work; slots move between
    specialists by the work they have left.

    A task's rank is its estimate plus the longest chain of estimates among the tasks of
    its phase that wait on it (`Scheduler.rank`): the list-scheduling rule that keeps a
    long task, or the head of a long chain, from starting late. Each specialist's tasks
    are dealt into piles of nearly equal estimated work (`balanced`), and a free instance
    takes the highest-ranked ready task of its own pile, else the highest-ranked one at
    the front of a sibling's. The slots are first shared once per phase (`fair_share`);
    then, whenever an instance is free while every slot is taken, its slot goes to the
    specialist that would otherwise finish last (`Scheduler._reshare`), since a
    whole-slot share fixed at the phase's start leaves one specialist running alone at
    its end. Without estimates every rank is 0: a round-robin deal in plan order.
    """

    name = "longest-first"
    ranks = True
    reshares = True

    def assign(
        self, tasks: Sequence[int], instances: int, weight: Callable[[int], float]
    ) -> list[list[int]]:
        return balanced(tasks, instances, weight)

    def pick(self, hall: Hall, inst: Instance) -> tuple[int, Instance | None] | None:
        own = hall.peek_front(inst)
        if own is not None:
            hall.pop_front(inst)
            return own, None
        best: tuple[float, int, Instance] | None = None
        for k, cand in enumerate(hall.siblings_by_load(inst)):
            i = hall.peek_front(cand)
            if i is not None and (best is None or hall.rank(i) > best[0]):
                best = (hall.rank(i), k, cand)
        if best is None:
            return None
        owner = best[2]
        i = hall.pop_front(owner)
        assert i is not None
        return i, (None if owner is inst else owner)


def balanced(
    tasks: Sequence[int], piles: int, weight: Callable[[int], float], *, effort: int = 200_000
) -> list[list[int]]:
    """Deal tasks into piles of nearly equal summed weight, heaviest first in each.

    LPT (each task, heaviest first, to the lightest pile), then moves and swaps between
    the heaviest and the lightest pile while they narrow the gap: LPT alone can end
    several percent above the best split, and with accurate estimates the piles are
    what each instance works through. `effort` bounds the pairs compared, so a huge
    phase keeps plain LPT. Ties keep plan order.
    """
    ordered = sorted(tasks, key=lambda t: -weight(t))  # stable: plan order breaks ties
    out: list[list[int]] = [[] for _ in range(piles)]
    load = [0.0] * piles
    heap = [(0.0, 0, j) for j in range(piles)]  # ties to the pile with fewer tasks
    for t in ordered:
        _, count, j = heapq.heappop(heap)
        out[j].append(t)
        load[j] += weight(t)
        heapq.heappush(heap, (load[j], count + 1, j))
    budget = effort
    while piles > 1 and budget > 0:
        hi = max(range(piles), key=lambda j: load[j])
        lo = min(range(piles), key=lambda j: load[j])
        gap = load[hi] - load[lo]
        if len(out[hi]) * (len(out[lo]) + 1) > budget:
            break  # a pass this big is not affordable any more: keep what we have
        best: tuple[float, int, int] | None = None  # (new gap, index in hi, index in lo or -1)
        for a, ta in enumerate(out[hi]):
            wa = weight(ta)
            for b, tb in [(-1, -1), *enumerate(out[lo])]:
                d = wa - (weight(tb) if b >= 0 else 0.0)
                budget -= 1
                if 0 < d < gap:
                    new_gap = abs(gap - 2 * d)
                    if best is None or new_gap < best[0]:
                        best = (new_gap, a, b)
        if best is None or best[0] >= gap - 1e-12:
            break
        _, a, b = best
        ta = out[hi].pop(a)
        out[lo].append(ta)
        load[hi] -= weight(ta)
        load[lo] += weight(ta)
        if b >= 0:
            tb = out[lo].pop(b)
            out[hi].append(tb)
            load[lo] -= weight(tb)
            load[hi] += weight(tb)
    order = {t: k for k, t in enumerate(ordered)}
    return [sorted(p, key=order.__getitem__) for p in out]


STRATEGY_NAMES = ("work-stealing", "round-robin", "longest-first")


def distribution(name: str) -> Distribution:
    for cls in (WorkStealing, RoundRobin, LongestFirst):
        if cls.name == name:
            return cls()
    raise ValueError(f"unknown strategy {name!r}")


def fair_share(
    demand: Mapping[str, int], total: int, work: Mapping[str, float] | None = None
) -> dict[str, int]:
    """Split `total` slots between specialists, in proportion to their work.

    No specialist gets more than it wants; each with work gets one slot first while
    slots last; the rest go one by one to the specialist with the most work per slot
    (the D'Hondt rule), ties to the earlier one. Without `work`, all count as equal.
    """
    if sum(demand.values()) <= total:
        return dict(demand)
    weight = {s: (work or {}).get(s, 1.0) or 1e-9 for s in demand}
    share = dict.fromkeys(demand, 0)
    left = total
    for s in sorted((s for s in demand if demand[s] > 0), key=lambda s: -weight[s]):
        if left == 0:
            break
        share[s] = 1
        left -= 1
    order = list(demand)
    while left > 0:
        wanting = [s for s in order if share[s] < demand[s]]
        if not wanting:
            break
        best = max(wanting, key=lambda s: (weight[s] / (share[s] + 1), -order.index(s)))
        share[best] += 1
        left -= 1
    return share


def _folder(files: Sequence[str]) -> str | None:
    return files[0].rsplit("/", 1)[0] if files and "/" in files[0] else None


def affine(
    tasks: Sequence[int], sizes: Sequence[int], key: Callable[[int], str | None]
) -> list[list[int]]:
    """Deal tasks into piles of the given sizes, keeping tasks of one key together.

    The sizes are round-robin's (they differ by at most one), so balance is kept; a
    group larger than the room left in any pile is split over the roomiest ones.
    Each pile keeps plan order.
    """
    groups: dict[object, list[int]] = {}
    for t in tasks:
        k = key(t)
        groups.setdefault(k if k is not None else ("task", t), []).append(t)
    room = list(sizes)
    piles: list[list[int]] = [[] for _ in sizes]
    for members in sorted(groups.values(), key=len, reverse=True):
        left = list(members)
        while left:
            j = max(range(len(room)), key=lambda j: (room[j] >= len(left), room[j], -j))
            take = left[: room[j]]
            piles[j].extend(take)
            room[j] -= len(take)
            left = left[len(take) :]
    return [sorted(p) for p in piles]


# ------------------------------------------------------------------ instances


@dataclass(eq=False)
class Instance:
    name: str
    specialist: str
    number: int
    running: int | None = None
    remaining: int = 0  # cards still in the pile (not started, not ended)
    next_position: int = 0
    front_position: int = 0  # retries go back on the pile before everything else
    # (key, position, task) and (-key, -position, task); the key is the position, or
    # minus the task's rank for a strategy that `ranks`.
    ready_front: list[tuple[float, int, int]] = field(default_factory=list)
    ready_back: list[tuple[float, int, int]] = field(default_factory=list)

    @property
    def idle(self) -> bool:
        return self.running is None


class Scheduler:
    """Decides which task starts where; see the module docstring for the rules."""

    def __init__(
        self,
        plan: CompiledPlan,
        *,
        limits: Mapping[str, int],
        total: int,
        strategy: Distribution | None = None,
        clock: Callable[[], float] = lambda: 0.0,
        done: Iterable[str] = (),
        final: Mapping[str, str] | None = None,
        estimates: Mapping[str, float] | None = None,
    ) -> None:
        self.plan = plan
        self.tasks: Sequence[TaskSpec] = plan.tasks
        self.limits = dict(limits)
        # Admission per specialist, checked at every start; `set_limit` changes it mid-run.
        self.limiters = {s: Limiter(max(1, limits[s])) for s in plan.specialists}
        self.total = total
        self.strategy = strategy or WorkStealing()
        self.clock = clock
        self._helps = {s: spec.can_help for s, spec in plan.specialists.items()}
        default_affinity = plan.settings.affinity
        self._affinity = {
            s: spec.affinity or default_affinity for s, spec in plan.specialists.items()
        }
        n = len(self.tasks)
        self.state = [State.WAITING] * n
        self.cause: dict[int, str] = {}
        self.instance_of: dict[int, str] = {}
        self.stolen_from: dict[int, str] = {}
        self._owner: list[Instance | None] = [None] * n
        self._position = [0] * n
        self._unmet = [len(t.depends_on) for t in self.tasks]
        self._children: list[list[int]] = [[] for _ in range(n)]
        by_id = plan.by_id
        for t in self.tasks:
            for d in t.depends_on:
                self._children[by_id[d].index].append(t.index)
        # Exclusion chains: per file or lock, the tasks that use it, in conflict order.
        order = topological_order(self.tasks, by_id)
        # Expected seconds (given in code, learned or from the plan; 0 when unknown), and
        # the rank: the longest chain of them from a task to the end of its phase.
        known = estimates or {}
        self._weight = [
            float(known[t.id]) if t.id in known else (t.estimate or 0.0) for t in self.tasks
        ]
        self._rank = list(self._weight)
        for i in reversed(order):
            rank = self.tasks[i].phase_rank
            tail = [self._rank[c] for c in self._children[i] if self.tasks[c].phase_rank == rank]
            if tail:
                self._rank[i] += max(tail)
        self._ranks = self.strategy.ranks
        self._key = [-r for r in self._rank]
        # Estimated work not started yet per specialist, in the open phase (`_reshare`).
        self._todo_work = dict.fromkeys(plan.specialists, 0.0)
        self._todo = [False] * n
        self._started_at = [0.0] * n
        self._chains: dict[str, list[int]] = {}
        # Built once: `TaskSpec.resources` makes a new tuple on every call.
        self._resources = [t.resources for t in self.tasks]
        for i in order:
            for r in self._resources[i]:
                self._chains.setdefault(r, []).append(i)
        self._head = dict.fromkeys(self._chains, 0)
        self._blocked = [0] * n
        for chain in self._chains.values():
            for i in chain[1:]:
                self._blocked[i] += 1
        self._phase_left = [0] * len(PHASES)
        for t in self.tasks:
            self._phase_left[t.phase_rank] += 1
        self.phase_rank = -1
        self.instances: dict[str, list[Instance]] = {s: [] for s in plan.specialists}
        self._by_name: dict[str, Instance] = {}
        self._orphans: dict[str, deque[int]] = {s: deque() for s in plan.specialists}
        self._numbers: dict[str, set[int]] = {s: set() for s in plan.specialists}
        self._ready_count = dict.fromkeys(plan.specialists, 0)
        self._remaining = dict.fromkeys(plan.specialists, 0)
        self.alive = 0
        self.running = 0
        self.running_by: dict[str, int] = dict.fromkeys(plan.specialists, 0)
        self._out: list[Decision] = []
        self._terminal_count = 0
        self._sleeping: set[int] = set()
        self._solo: list[int] = []
        self._alone: int | None = None
        # A resumed run: tasks already done (and failed or skipped ones kept as they were).
        kept = {tid: State(s) for tid, s in (final or {}).items()}
        for tid in done:
            kept[tid] = State.DONE
        for tid, st in kept.items():
            i = by_id[tid].index
            self.state[i] = st
            self._terminal_count += 1
            self._phase_left[self.tasks[i].phase_rank] -= 1
        for tid, st in kept.items():
            if st is State.DONE:
                for c in self._children[by_id[tid].index]:
                    self._unmet[c] -= 1
        if kept:
            # Each chain's head is its first task not ended; all others wait behind it.
            self._blocked = [0] * n
            for r, chain in self._chains.items():
                h = 0
                while h < len(chain) and self.state[chain[h]].terminal:
                    h += 1
                self._head[r] = h
                for j in chain[h + 1 :]:
                    self._blocked[j] += 1
        self._advance_phase()

    # -------------------------------------------------------------- queries

    @property
    def finished(self) -> bool:
        return self._terminal_count == len(self.tasks)

    @property
    def phase(self) -> str | None:
        return PHASES[self.phase_rank] if 0 <= self.phase_rank < len(PHASES) else None

    def limit(self, specialist: str) -> int:
        return self.limits[specialist]

    def hold(self, specialist: str, held: bool) -> None:
        """While held, no task of `specialist` starts (running ones go on); the caller
        lifts the hold with a timer, so it never stalls a run."""
        self.limiters[specialist].paused = held

    def set_limit(self, specialist: str, tokens: int) -> None:
        """Let at most `tokens` tasks of `specialist` run at once from the next start on
        (never above its configured limit, never below one). Running tasks go on."""
        self.limiters[specialist].total_tokens = min(tokens, self.limits[specialist])

    def plan_instances(self) -> dict[str, list[list[str]]]:
        """The initial deal of every phase, pile by pile, concatenated per instance."""
        out: dict[str, list[list[str]]] = {}
        for rank in range(len(PHASES)):
            for spec, piles in self._deal(rank, only_waiting=False).items():
                mine = out.setdefault(spec, [])
                for k, pile in enumerate(piles):
                    if k == len(mine):
                        mine.append([])
                    mine[k].extend(self.tasks[i].id for i in pile)
        return out

    def deal_by_phase(self) -> list[tuple[str, dict[str, list[list[str]]]]]:
        out = []
        for rank, name in enumerate(PHASES):
            deal = self._deal(rank, only_waiting=False)
            if deal:
                out.append(
                    (
                        name,
                        {s: [[self.tasks[i].id for i in p] for p in ps] for s, ps in deal.items()},
                    )
                )
        return out

    # -------------------------------------------------------------- driving

    def dispatch(self, limit: int | None = None) -> list[Decision]:
        """Start everything that can start now; return what was decided, in order.

        `limit` caps the running tasks for this call below `total` (the resource guard
        holds a run to one task at a time this way, without ever stalling it).
        """
        if self._alone is not None:
            return self._drain()  # a task that must run alone is running
        cap = self.total if limit is None else min(self.total, limit)
        while self.running < cap:
            progressed = self._reshare()
            for insts in self.instances.values():
                for inst in insts:
                    if inst.idle and self._try_start(inst):
                        progressed = True
                        if self.running >= cap:
                            break
                if self.running >= cap:
                    break
            if self.running < cap and self._scale_up():
                progressed = True
            if self.running < cap and self._help(cap):
                progressed = True
            if not progressed:
                break
        if self.running < cap:
            self._start_solo()
        return self._drain()

    def _start_solo(self) -> None:
        """Run a task that must run alone once the hall is idle: nothing running, nothing
        ready. That is the end of its phase, or earlier when the rest of the phase waits
        on it."""
        if not self._solo or self.running or any(self._ready_count.values()):
            return
        if self.limiters[self.tasks[self._solo[0]].specialist].paused:
            return
        i = self._solo.pop(0)
        spec = self.tasks[i].specialist
        # Nothing runs, so every instance is idle: reuse one of its specialist, or make
        # room for one within both limits (a retired instance's pile goes to its siblings).
        insts = self.instances[spec]
        if insts:
            inst = insts[0]
        else:
            for other in sorted(self._by_name.values(), key=lambda x: x.remaining):
                if self.alive < self.total:
                    break
                self._retire(other)
            orphans = list(self._orphans[spec])
            self._orphans[spec].clear()
            inst = self._spawn(spec, orphans)
        self.state[i] = State.READY
        self._ready_count[spec] += 1
        self._start(inst, i, None)
        self._alone = i

    def finish(
        self, task_id: str, ok: bool, *, retry: bool = False, solo: bool = False
    ) -> list[Decision]:
        """Record that a running task ended; returns the skips, retirements and phase changes.

        `retry`: it failed but will be tried again once `wake` is called; it goes back on
        its instance's pile, first, and keeps its place for the files it owns, while the
        instance is free for other work meanwhile. `solo`: run it again alone, with
        nothing else running, at the end of its phase (the fallback to sequential).
        """
        i = self.plan.by_id[task_id].index
        if self.state[i] is not State.RUNNING:
            raise ValueError(f"task {task_id!r} is {self.state[i].value}, not running")
        inst = self._by_name[self.instance_of[i]]
        inst.running = None
        self.running -= 1
        self.running_by[inst.specialist] -= 1
        self.limiters[inst.specialist].release_on_behalf_of(task_id)
        if self._alone == i:
            self._alone = None
        if retry or solo:
            self.state[i] = State.WAITING
            self._todo_add(i)
            if solo:
                self._solo.append(i)
            else:
                self._sleeping.add(i)
                self._requeue_front(i, inst)
            self._retire_idle()
            return self._drain()
        self._end(i, State.DONE if ok else State.FAILED)
        if ok:
            for c in self._children[i]:
                self._unmet[c] -= 1
                self._check_ready(c)
        else:
            self._skip_dependents(i, task_id)
        self._retire_idle()
        self._advance_phase()
        return self._drain()

    def _requeue_front(self, i: int, ran_on: Instance) -> None:
        """Put a task to be retried first on a pile of its own specialist (a helper's
        instance may have run it), or park it until that specialist has an instance."""
        own = self.tasks[i].specialist
        home = ran_on if ran_on.specialist == own and ran_on in self.instances[own] else None
        if home is None and self.instances[own]:
            home = self.instances[own][0]
        self._remaining[own] += 1
        if home is None:
            self._orphans[own].appendleft(i)
            self._out.append(Queued(self.tasks[i].id, None, self.clock()))
            return
        home.front_position -= 1
        self._position[i] = home.front_position
        self._owner[i] = home
        home.remaining += 1
        self._out.append(Queued(self.tasks[i].id, home.name, self.clock()))

    def wake(self, task_id: str) -> list[Decision]:
        """A retry's backoff is over: the task may be picked again."""
        i = self.plan.by_id[task_id].index
        self._sleeping.discard(i)
        self._check_ready(i)
        return self._drain()

    def revoke(self, task_id: str) -> list[Decision]:
        """A done task fails after all (a quality gate blamed its patch): its dependents
        that have not started are skipped; those that ran keep their result."""
        i = self.plan.by_id[task_id].index
        if self.state[i] is not State.DONE:
            raise ValueError(f"task {task_id!r} is {self.state[i].value}, not done")
        self.state[i] = State.FAILED
        self._skip_dependents(i, task_id)
        self._retire_idle()
        self._advance_phase()
        return self._drain()

    def abandon(self, reason: str, scope: str | None = None) -> list[Decision]:
        """Skip every task not started yet, of one scope or of the whole run.

        Their dependents follow them. Running tasks are the engine's to stop or finish.
        """
        for t in self.tasks:
            i = t.index
            if self.state[i] not in (State.WAITING, State.READY):
                continue
            if scope is not None and t.scope != scope:
                continue
            self._drop(i, "", reason)
        self._retire_idle()
        self._advance_phase()
        return self._drain()

    # -------------------------------------------------------------- internals

    def _drop(self, i: int, cause: str, reason: str) -> None:
        self._unqueue(i)
        self._sleeping.discard(i)
        if i in self._solo:
            self._solo.remove(i)
        self.cause[i] = cause
        self._end(i, State.SKIPPED)
        self._out.append(Skipped(self.tasks[i].id, cause, reason, self.clock()))
        self._skip_dependents(i, cause or self.tasks[i].id)

    def _todo_add(self, i: int) -> None:
        if not self._todo[i]:
            self._todo[i] = True
            self._todo_work[self.tasks[i].specialist] += self._weight[i]

    def _untodo(self, i: int) -> None:
        if self._todo[i]:
            self._todo[i] = False
            self._todo_work[self.tasks[i].specialist] -= self._weight[i]

    def _drain(self) -> list[Decision]:
        out, self._out = self._out, []
        return out

    def _end(self, i: int, state: State) -> None:
        self._untodo(i)
        self.state[i] = state
        self._terminal_count += 1
        self._phase_left[self.tasks[i].phase_rank] -= 1
        self._release(i)

    def _release(self, i: int) -> None:
        for r in self._resources[i]:
            chain = self._chains[r]
            h = self._head[r]
            if h >= len(chain) or chain[h] != i:
                continue
            while h < len(chain) and self.state[chain[h]].terminal:
                h += 1
            self._head[r] = h
            if h < len(chain):
                nxt = chain[h]
                self._blocked[nxt] -= 1
                self._check_ready(nxt)

    def _skip_dependents(self, i: int, cause: str) -> None:
        stack = list(self._children[i])
        reason = f"dependency {cause!r} failed"
        while stack:
            c = stack.pop()
            if self.state[c].terminal or self.state[c] is State.RUNNING:
                continue
            self._unqueue(c)
            self._sleeping.discard(c)
            if c in self._solo:
                self._solo.remove(c)
            self.cause[c] = cause
            self._end(c, State.SKIPPED)
            self._out.append(Skipped(self.tasks[c].id, cause, reason, self.clock()))
            stack.extend(self._children[c])

    def _unqueue(self, i: int) -> None:
        owner = self._owner[i]
        spec = self.tasks[i].specialist
        if self.state[i] is State.READY:
            self._ready_count[spec] -= 1
        if owner is not None:
            owner.remaining -= 1
            self._remaining[spec] -= 1
            self._owner[i] = None
        elif i in self._orphans[spec]:
            self._orphans[spec].remove(i)
            self._remaining[spec] -= 1

    def _check_ready(self, i: int) -> None:
        if (
            self.state[i] is State.WAITING
            and self._unmet[i] == 0
            and self._blocked[i] == 0
            and self.tasks[i].phase_rank == self.phase_rank
            and i not in self._sleeping
            and i not in self._solo
        ):
            self.state[i] = State.READY
            self._ready_count[self.tasks[i].specialist] += 1
            owner = self._owner[i]
            if owner is not None:
                self._push(owner, i)

    def _push(self, inst: Instance, i: int) -> None:
        pos = self._position[i]
        # Plan-order strategies order by position alone: a constant first field would
        # make every comparison of the heap look at two.
        key = self._key[i] if self._ranks else pos
        heapq.heappush(inst.ready_front, (key, pos, i))
        heapq.heappush(inst.ready_back, (-key, -pos, i))

    def _valid(self, inst: Instance, i: int) -> bool:
        return self.state[i] is State.READY and self._owner[i] is inst

    def _pop_front(self, inst: Instance) -> int | None:
        while inst.ready_front:
            _, _, i = heapq.heappop(inst.ready_front)
            if self._valid(inst, i):
                return i
        return None

    def _pop_back(self, inst: Instance) -> int | None:
        while inst.ready_back:
            _, _, i = heapq.heappop(inst.ready_back)
            if self._valid(inst, i):
                return i
        return None

    def _try_start(self, inst: Instance) -> bool:
        if self._ready_count[inst.specialist] == 0:
            return False
        if self.limiters[inst.specialist].available_tokens == 0:
            return False
        picked = self.strategy.pick(self, inst)
        if picked is None:
            return False
        self._start(inst, *picked)
        return True

    # The Hall protocol, for strategies.

    def pop_front(self, inst: Instance) -> int | None:
        return self._pop_front(inst)

    def pop_back(self, inst: Instance) -> int | None:
        return self._pop_back(inst)

    def peek_front(self, inst: Instance) -> int | None:
        while inst.ready_front:
            i = inst.ready_front[0][2]
            if self._valid(inst, i):
                return i
            heapq.heappop(inst.ready_front)
        return None

    def siblings_by_load(self, inst: Instance) -> list[Instance]:
        """The other instances of its specialist that hold tasks, busiest first."""
        return sorted(
            (s for s in self.instances[inst.specialist] if s is not inst and s.remaining > 0),
            key=lambda s: (-s.remaining, s.number),
        )

    def weight(self, task: int) -> float:
        """Expected seconds of a task; 0 when nothing is known."""
        return self._weight[task]

    def rank(self, task: int) -> float:
        """Its weight plus the heaviest chain of its phase's tasks that wait on it."""
        return self._rank[task]

    def _start(self, inst: Instance, i: int, victim: Instance | None) -> None:
        # The task's own specialist keeps its queue counts; the instance's specialist (a
        # helper, with can_help) is the one whose slot is busy.
        own = self.tasks[i].specialist
        owner = self._owner[i]
        if owner is not None:
            owner.remaining -= 1
            self._remaining[own] -= 1
        self._owner[i] = None
        self._ready_count[own] -= 1
        self._untodo(i)
        self._started_at[i] = self.clock()
        self.state[i] = State.RUNNING
        inst.running = i
        self.running += 1
        self.running_by[inst.specialist] += 1
        self.limiters[inst.specialist].take_on_behalf_of(self.tasks[i].id)
        self.instance_of[i] = inst.name
        if victim is not None:
            self.stolen_from[i] = victim.name
        self._out.append(
            Started(self.tasks[i].id, inst.name, victim.name if victim else None, self.clock())
        )

    def _spawn(self, spec: str, pile: Sequence[int] = ()) -> Instance:
        used = self._numbers[spec]
        number = next(k for k in range(1, len(used) + 2) if k not in used)
        used.add(number)
        inst = Instance(f"{spec}#{number}", spec, number)
        self._by_name[inst.name] = inst
        self.instances[spec].append(inst)
        self.instances[spec].sort(key=lambda x: x.number)
        self.alive += 1
        self._out.append(Spawned(inst.name, spec, self.clock()))
        self._give(inst, pile)
        return inst

    def _give(self, inst: Instance, pile: Iterable[int]) -> None:
        for i in pile:
            self._owner[i] = inst
            self._position[i] = inst.next_position
            inst.next_position += 1
            inst.remaining += 1
            if self.state[i] is State.READY:
                self._push(inst, i)

    def _retire(self, inst: Instance) -> None:
        assert inst.idle
        spec = inst.specialist
        leftover = (
            sorted(
                (i for i in range(len(self.tasks)) if self._owner[i] is inst),
                key=lambda i: self._position[i],
            )
            if inst.remaining
            else []
        )
        self.instances[spec].remove(inst)
        del self._by_name[inst.name]
        self._numbers[spec].discard(inst.number)
        self.alive -= 1
        self._out.append(Retired(inst.name, spec, self.clock()))
        for i in leftover:
            self._owner[i] = None
            inst.remaining -= 1
            self._remaining[spec] -= 1
        if leftover:
            self._adopt(spec, leftover)

    def _adopt(self, spec: str, tasks: Sequence[int]) -> None:
        """Deal tasks of a retired instance to its siblings, or park them for the next one."""
        siblings = self.instances[spec]
        if siblings:
            for k, i in enumerate(tasks):
                self._give(siblings[k % len(siblings)], [i])
                self._remaining[spec] += 1
        else:
            self._orphans[spec].extend(tasks)
            self._remaining[spec] += len(tasks)

    def _retire_idle(self) -> None:
        """Dynamic scaling down: an idle instance with nothing it could still do retires."""
        for spec, insts in self.instances.items():
            for inst in list(insts):
                if not inst.idle:
                    continue
                nothing_left = (
                    self._remaining[spec] == 0 if self.strategy.steals else inst.remaining == 0
                )
                if nothing_left and all(self._remaining[o] == 0 for o in self._helps[spec]):
                    self._retire(inst)

    def _help(self, cap: int) -> bool:
        """Cross-specialist stealing: an idle instance takes overflow work it may help with."""
        started = False
        for spec, others in self._helps.items():
            if not others:
                continue
            for inst in self.instances[spec]:
                if self.running >= cap:
                    return started
                if not inst.idle or self._ready_count[spec] > 0:
                    continue
                if self.limiters[spec].available_tokens == 0:
                    continue
                for other in others:
                    if self._ready_count[other] == 0:
                        continue
                    if self.limiters[other].paused:
                        continue  # the task runs its own agent: its provider said "wait"
                    if any(x.idle for x in self.instances[other]):
                        continue  # the owner can take it itself
                    victims = sorted(
                        (x for x in self.instances[other] if x.remaining > 0),
                        key=lambda x: (-x.remaining, x.number),
                    )
                    for victim in victims:
                        i = self._pop_back(victim)
                        if i is not None:
                            self._start(inst, i, victim)
                            started = True
                            break
                    if not inst.idle:
                        break
        return started

    def _work_left(self) -> dict[str, float]:
        """Estimated seconds each specialist still has in the open phase: its tasks not
        started, and what its running tasks are expected to need still."""
        left = dict(self._todo_work)
        now = self.clock()
        for insts in self.instances.values():
            for inst in insts:
                i = inst.running
                if i is not None:
                    spec = self.tasks[i].specialist
                    left[spec] += max(0.0, self._weight[i] - (now - self._started_at[i]))
        return left

    def _reshare(self) -> bool:
        """Move the slot of an idle instance to the specialist that would finish last.

        Only with every slot taken (else `_scale_up` adds an instance) and only for a
        strategy that `reshares`. With L(s) the estimated work a specialist has left and
        n(s) its instances, it finishes in about L(s)/n(s); the idle instance of `o` is
        retired and one of `s` spawned when L(o)/(n(o)-1) < L(s)/n(s): then the later of
        the two finishes sooner than before, and the move cannot be undone by the same
        rule until the work changes. `s` must have a ready task, no idle instance and room
        under its limit. Without estimates every L is 0 and nothing moves.
        """
        if not self.strategy.reshares or self.alive < self.total:
            return False
        idle = [x for insts in self.instances.values() for x in insts if x.idle]
        if not idle:
            return False
        left = self._work_left()
        moved = False
        for inst in idle:
            o = inst.specialist
            n_o = len(self.instances[o])
            if n_o < 2 and self._remaining[o] > 0:
                continue
            best: tuple[float, str] | None = None
            for s, insts in self.instances.items():
                if (
                    s == o
                    or left[s] <= 0.0
                    or self._ready_count[s] == 0
                    or len(insts) >= self.limits[s]
                    or self.limiters[s].available_tokens == 0
                    or any(x.idle for x in insts)
                ):
                    continue
                n_s = len(insts)
                # L(o)/(n_o-1) < L(s)/n_s, multiplied out (n_s may be 0).
                if left[o] * n_s < left[s] * (n_o - 1):
                    finish = left[s] / n_s if n_s else float("inf")
                    if best is None or finish > best[0]:
                        best = (finish, s)
            if best is None:
                continue
            self._retire(inst)
            s = best[1]
            orphans = list(self._orphans[s])
            self._orphans[s].clear()
            self._spawn(s, orphans)
            moved = True
        return moved

    def _scale_up(self) -> bool:
        """Give a specialist with ready work and no free instance another instance.

        Every strategy does this for a specialist that has no instance at all (its tasks
        were parked because the total limit was full); a scaling strategy also does it to
        stay work-conserving. When the hall is full, an idle instance with nothing ready
        elsewhere is retired to make room, its pile dealt to its siblings.
        """
        for spec, insts in self.instances.items():
            if self._ready_count[spec] == 0 or any(x.idle for x in insts):
                continue
            if insts and not self.strategy.scales:
                continue
            if len(insts) >= self.limits[spec] or self.limiters[spec].available_tokens == 0:
                continue
            if self.alive >= self.total and not self._preempt(spec):
                continue
            orphans = list(self._orphans[spec])
            self._orphans[spec].clear()
            inst = self._spawn(spec, orphans)
            if self._try_start(inst):
                return True
        return False

    def _preempt(self, needy: str) -> bool:
        """Retire an idle instance that has nothing ready, to free a slot for `needy`."""
        best: Instance | None = None
        for spec, insts in self.instances.items():
            if spec == needy or self._ready_count[spec] > 0:
                continue
            for inst in insts:
                if inst.idle and (
                    best is None or len(insts) > len(self.instances[best.specialist])
                ):
                    best = inst
        if best is None:
            return False
        self._retire(best)
        return True

    def _members(self, rank: int, *, only_waiting: bool) -> dict[str, list[int]]:
        by_spec: dict[str, list[int]] = {s: [] for s in self.plan.specialists}
        for t in self.tasks:
            if t.phase_rank == rank and not (only_waiting and self.state[t.index].terminal):
                by_spec[t.specialist].append(t.index)
        return {s: m for s, m in by_spec.items() if m}

    def _deal(
        self, rank: int, *, only_waiting: bool, members: dict[str, list[int]] | None = None
    ) -> dict[str, list[list[int]]]:
        """Piles per specialist: min(N, limit) instances each, shared fairly under total."""
        by_spec = members if members is not None else self._members(rank, only_waiting=only_waiting)
        demand = {s: min(len(m), self.limits[s]) for s, m in by_spec.items()}
        work = {s: sum(self.weight(i) or 1.0 for i in m) for s, m in by_spec.items()}
        share = fair_share(demand, self.total, work)
        out: dict[str, list[list[int]]] = {}
        for s, k in share.items():
            piles = self.strategy.assign(by_spec[s], k, self.weight) if k else []
            key = self._affinity_key(self._affinity[s])
            if key is not None and k > 1 and not isinstance(self.strategy, LongestFirst):
                piles = affine(by_spec[s], [len(p) for p in piles], key)
            out[s] = piles
        return out

    def _affinity_key(self, affinity: str) -> Callable[[int], str | None] | None:
        if affinity == "scope":
            return lambda i: self.tasks[i].scope
        if affinity == "folder":
            return lambda i: _folder(self.tasks[i].files)
        return None

    def _advance_phase(self) -> None:
        while self.phase_rank < len(PHASES):
            if self.phase_rank >= 0:
                if self._phase_left[self.phase_rank] > 0:
                    return
                if any(t.phase_rank == self.phase_rank for t in self.tasks):
                    self._out.append(PhaseEnded(PHASES[self.phase_rank], self.clock()))
            self.phase_rank += 1
            if self.phase_rank < len(PHASES) and self._phase_left[self.phase_rank] > 0:
                self._open_phase()

    def _open_phase(self) -> None:
        rank = self.phase_rank
        self._out.append(PhaseStarted(PHASES[rank], self.clock()))
        members = self._members(rank, only_waiting=True)
        for tasks in members.values():
            for i in tasks:
                self._todo_add(i)
        deal = self._deal(rank, only_waiting=True, members=members)
        for spec, piles in deal.items():
            for pile in piles:
                self._remaining[spec] += len(pile)
                inst = self._spawn(spec, pile)
                now = self.clock()
                self._out.extend(Queued(self.tasks[i].id, inst.name, now) for i in pile)
            if not piles:
                self._orphans[spec].extend(members[spec])
                self._remaining[spec] += len(members[spec])
                now = self.clock()
                self._out.extend(Queued(self.tasks[i].id, None, now) for i in members[spec])
        for t in self.tasks:
            if t.phase_rank == rank:
                self._check_ready(t.index)
