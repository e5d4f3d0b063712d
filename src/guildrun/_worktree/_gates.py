"""Quality gates on the integrated tree, and finding the patch that broke one.

A gate is a command (tests, a type checker, a contract test) run in a checkout of an
integration commit. When it fails, the patches that entered since it was last green are
searched the way merge queues split a failing batch: the branch is linear, so "the first
k patches" is simply its k-th commit, and each round probes up to `slots` of them at once,
each in its own checkout, narrowing the range to the first failing one. That patch is taken
out (the branch rebuilt without it), the gate runs again on the rest, and the search goes
on while it still fails.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .._git import Git
from ._instances import add_worktree
from ._integrate import Integration, Integrator
from ._layout import Layout

OUTPUT_CAP = 64 * 1024  # bytes of a gate's output kept: the head and the tail


@dataclass(frozen=True)
class Gate:
    """`{name, run, after}` from the plan: `run` is an argv, `after` a phase or `scope:NAME`."""

    name: str
    run: tuple[str, ...]
    after: str = ""
    timeout: float = 600.0


@dataclass(frozen=True)
class GateResult:
    gate: str
    commit: str
    ok: bool
    returncode: int | None  # None: stopped at its timeout
    output: str


@dataclass(frozen=True)
class Culprit:
    """A patch that broke a gate, with the gate's output on the first commit holding it."""

    task: str
    commit: str
    output: str


@dataclass(frozen=True)
class Bisection:
    gate: str
    culprits: tuple[Culprit, ...]
    left_out: tuple[Integration, ...]  # later patches that no longer applied without them
    final: GateResult  # the gate on the branch as it is now
    probes: int

    @property
    def ok(self) -> bool:
        return self.final.ok


def run_gate(gate: Gate, where: Path, commit: str) -> GateResult:
    """Run the gate's command in `where`, in its own process group, stopped at its timeout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GUILDRUN_GATE"] = gate.name
    try:
        proc = subprocess.Popen(
            list(gate.run),
            cwd=where,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return GateResult(gate.name, commit, False, 127, f"cannot start {gate.run[0]}: {exc}")
    try:
        out, _ = proc.communicate(timeout=gate.timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code = None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # nothing the gate started outlives it
    return GateResult(gate.name, commit, code == 0, code, _cap(out))


def _cap(data: bytes) -> str:
    if len(data) > OUTPUT_CAP:
        half = OUTPUT_CAP // 2
        cut = len(data) - OUTPUT_CAP
        data = data[:half] + f"\n[... {cut} bytes cut ...]\n".encode() + data[-half:]
    return data.decode("utf-8", "replace")


class Gates:
    """Runs gates in checkouts of the integration branch and bisects failures."""

    def __init__(self, git: Git, layout: Layout, integrator: Integrator) -> None:
        self.git = git
        self.layout = layout
        self.integrator = integrator
        # `git worktree add` and `prune` of parallel probes must not interleave: a prune
        # could take the administrative folder of a checkout another thread is making.
        self._making = threading.Lock()

    def check(
        self, gate: Gate, commit: str | None = None, *, label: str | None = None
    ) -> GateResult:
        """The gate on `commit` (default: the branch head); green marks it passed there."""
        at = commit or self.integrator.head()
        where = self._checkout(label or f"gate-{gate.name}", at)
        result = run_gate(gate, where, at)
        if result.ok and commit is None:
            self.git.run("update-ref", self.layout.green_ref(gate.name), at)
        return result

    def check_all(self, gates: Sequence[Gate], slots: int) -> list[GateResult]:
        """Independent gates at once, up to `slots` together, each in its own checkout."""
        with ThreadPoolExecutor(max_workers=max(1, slots)) as pool:
            return list(pool.map(self.check, gates))

    def green(self, gate: str) -> str | None:
        got = self.git.run("rev-parse", "--verify", "-q", self.layout.green_ref(gate), check=False)
        return got.text if got.returncode == 0 else None

    def bisect(self, gate: Gate, slots: int = 2, failed: GateResult | None = None) -> Bisection:
        """Find and take out every patch since the last green that breaks the gate."""
        culprits: list[Culprit] = []
        left_out: list[Integration] = []
        probes = 0
        green = self.green(gate.name)
        since = green or self.integrator.base()
        known_good = green is not None
        if failed is None or failed.commit != self.integrator.head():
            failed = self.check(gate)
            probes += 1
        final = failed
        while not final.ok:
            history = self.integrator.history(since)
            if not history:
                break  # it fails with none of these patches: not theirs to answer for
            points = [since] + [commit for commit, _ in history]
            outputs: dict[int, GateResult] = {len(points) - 1: final}
            first_bad, n = _search(
                len(points) - 1,
                0 if known_good else -1,
                slots,
                functools.partial(self._probe_points, gate, points, slots),
                outputs,
            )
            probes += n
            if first_bad <= 0:
                break  # the gate fails at the start of the range: no patch broke it
            commit, task = history[first_bad - 1]
            culprits.append(Culprit(task, commit, outputs[first_bad].output))
            later = [t for _, t in history[first_bad:] if t]
            _, dropped = self.integrator.rebuild(points[first_bad - 1], later)
            left_out.extend(dropped)
            since, known_good = points[first_bad - 1], True
            final = self.check(gate)
            probes += 1
        return Bisection(gate.name, tuple(culprits), tuple(left_out), final, probes)

    def _probe_points(
        self, gate: Gate, points: list[str], slots: int, ks: list[int]
    ) -> list[GateResult]:
        return self._probe_many(gate, [points[k] for k in ks], slots)

    def _probe_many(self, gate: Gate, commits: list[str], slots: int) -> list[GateResult]:
        jobs = list(enumerate(commits))
        with ThreadPoolExecutor(max_workers=max(1, min(slots, len(jobs)))) as pool:
            return list(
                pool.map(lambda job: self.check(gate, job[1], label=f"probe-{job[0]}"), jobs)
            )

    def _checkout(self, label: str, commit: str) -> Path:
        where = self.layout.probe_dir(label)
        with self._making:
            gitdir = add_worktree(self.git, where, commit, None)
        env = {"GIT_DIR": str(gitdir), "GIT_WORK_TREE": str(where)}
        self.git.run("checkout", "-q", "-f", "--detach", commit, cwd=where, env=env)
        self.git.run("clean", "-q", "-ffd", cwd=where, env=env)
        return where


def _search(
    bad: int,
    good: int,
    slots: int,
    probe: Callable[[list[int]], list[GateResult]],
    outputs: dict[int, GateResult],
) -> tuple[int, int]:
    """The first failing index in (good, bad], probing up to `slots` points per round.

    `good` is an index known to pass (-1: none known, so index 0 is probed too); the
    gate is assumed to stay failing once a patch broke it. Returns (index, probes run).
    """
    runs = 0
    while bad - good > 1:
        width = bad - good - 1
        want = min(width, max(1, slots))
        points = sorted({good + (i * (width + 1)) // (want + 1) for i in range(1, want + 1)})
        points = [p for p in points if good < p < bad] or [good + 1]
        results = probe(points)
        runs += len(points)
        for p, r in zip(points, results, strict=True):
            outputs[p] = r
        failing = [p for p, r in zip(points, results, strict=True) if not r.ok]
        if failing:
            bad = failing[0]
        passing = [p for p, r in zip(points, results, strict=True) if r.ok and p < bad]
        if passing:
            good = max(passing)
    return bad, runs
