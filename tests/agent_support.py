"""Running a real agent CLI the way the engine will: argv from the preset, stdout fed
line by line to its reader while it runs, a bounded timeout that ends the whole
process group.

The CLIs are installed by .ci/run (npm packages in a project-local prefix, aider in a
virtual environment of its own). A test that needs one fails when it is missing, unless
GUILDRUN_SKIP_REAL_CLIS=1 says this machine has none on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from guildrun._agents import PRESETS, AgentSpec, Invocation, Reader, Signal, Verdict
from guildrun._agents.follow import follow

CI_CACHE = Path.home() / ".cache" / "guildrun-ci"
CLI_DIRS = (CI_CACHE / "npm" / "node_modules" / ".bin", CI_CACHE / "aider-venv" / "bin")
# The user's own provider settings must not leak into a test (nor a test's into them).
_SCRUBBED = ("ANTHROPIC_", "CLAUDE_", "OPENAI_", "CODEX_", "GEMINI_", "GOOGLE_", "AIDER_")


def search_path() -> str:
    return os.pathsep.join([*(str(d) for d in CLI_DIRS), os.environ.get("PATH", "")])


def need_cli(name: str) -> str:
    """The CLI's path; fails the test when it is missing (skips only when told to)."""
    found = shutil.which(name, path=search_path())
    if found is None:
        if os.environ.get("GUILDRUN_SKIP_REAL_CLIS") == "1":
            pytest.skip(f"{name} is not installed and GUILDRUN_SKIP_REAL_CLIS=1")
        pytest.fail(
            f"{name} is not installed: .ci/run installs it (or set GUILDRUN_SKIP_REAL_CLIS=1)"
        )
    return found


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    env["HOME"] = str(home)
    env["PATH"] = search_path()
    return env


@dataclass
class Run:
    verdict: Verdict
    signals: list[tuple[float, Signal]]
    lines: list[str]
    stderr: str
    exit_code: int
    pid: int
    seconds: float
    timed_out: bool = False
    files: dict[str, str] = field(default_factory=dict)


def drive(
    spec: AgentSpec,
    *,
    prompt: str,
    workdir: Path,
    state_dir: Path,
    env: dict[str, str],
    files: tuple[str, ...] = (),
    resume_session: str | None = None,
    timeout: float = 60,
    monkeypatch: pytest.MonkeyPatch,
) -> Run:
    """One task's run of a real CLI, read live through the preset's reader (as the
    engine will: `follow` on asyncio pipes)."""
    preset = PRESETS[spec.agent]
    as_the_user(env, monkeypatch)
    invocation = preset.invocation(
        spec,
        prompt=prompt,
        files=files,
        workdir=workdir,
        state_dir=state_dir,
        resume_session=resume_session,
    )
    reader = preset.reader(spec)
    return asyncio.run(follow_run(invocation, reader, workdir, env, timeout))


def as_the_user(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The preset seeds its state folder from "the user's" config and environment: the
    test's own HOME and provider variables."""
    for key in list(os.environ):
        if key.startswith(_SCRUBBED):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", env["HOME"])
    for key, value in env.items():
        if key.startswith(_SCRUBBED):
            monkeypatch.setenv(key, value)


async def follow_run(
    invocation: Invocation, reader: Reader, workdir: Path, env: dict[str, str], limit_s: float
) -> Run:
    """What the engine's executor does: spawn in a new session, `follow` the pipes into
    the reader, end the whole group on timeout, ask the reader for the verdict."""
    signals: list[tuple[float, Signal]] = []
    out, err = io.BytesIO(), io.BytesIO()
    start = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *invocation.argv,
        cwd=workdir,
        env={**env, **invocation.env},
        stdin=asyncio.subprocess.DEVNULL if invocation.stdin_devnull else None,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    following = asyncio.ensure_future(
        follow(
            process,
            reader,
            lambda sig: signals.append((time.monotonic() - start, sig)),
            stdout_log=out,
            stderr_log=err,
        )
    )
    timed_out = False
    try:
        exit_code = await asyncio.wait_for(process.wait(), limit_s)
    except TimeoutError:
        timed_out = True
        os.killpg(process.pid, signal.SIGKILL)
        exit_code = await process.wait()
    try:
        tail = await asyncio.wait_for(asyncio.shield(following), 10)
    except TimeoutError:  # a child it left behind holds the pipes: end the group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        tail = await following
    stderr = err.getvalue().decode(errors="replace")
    return Run(
        verdict=reader.finish(exit_code, tail),
        signals=signals,
        lines=out.getvalue().decode(errors="replace").splitlines(keepends=True),
        stderr=stderr,
        exit_code=exit_code,
        pid=process.pid,
        seconds=time.monotonic() - start,
        timed_out=timed_out,
    )


def git_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def group_gone(pgid: int, within: float = 10) -> bool:
    """No process of the group is left (orphans killed with it are reaped by init soon)."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def record(run: Run, name: str) -> None:
    """With GUILDRUN_RECORD_AGENT_LINES=DIR, keep a real run's stdout for the fast tests."""
    folder = os.environ.get("GUILDRUN_RECORD_AGENT_LINES")
    if folder:
        target = Path(folder) / f"{name}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(run.lines))
        (Path(folder) / f"{name}.exit").write_text(f"{run.exit_code}\n")
        if run.stderr:
            (Path(folder) / f"{name}.stderr").write_text(run.stderr[-20_000:])
