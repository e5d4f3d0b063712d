"""Running a real agent CLI the way the engine will: argv from the preset, stdout fed
line by line to its reader while it runs, a bounded timeout that ends the whole
process group.

The CLIs are installed by .ci/run (npm packages in a project-local prefix, aider in a
virtual environment of its own). A test that needs one fails when it is missing, unless
GUILDRUN_SKIP_REAL_CLIS=1 says this machine has none on purpose.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from guildrun._agents import PRESETS, AgentSpec, Signal, Verdict

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
    """One task's run of a real CLI, read live through the preset's reader."""
    preset = PRESETS[spec.agent]
    # The preset seeds the state folder from "the user's" config: the test's own HOME.
    for key in list(os.environ):
        if key.startswith(_SCRUBBED):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", env["HOME"])
    for key, value in env.items():
        if key.startswith(_SCRUBBED):  # the provider settings a user would have exported
            monkeypatch.setenv(key, value)
    invocation = preset.invocation(
        spec,
        prompt=prompt,
        files=files,
        workdir=workdir,
        state_dir=state_dir,
        resume_session=resume_session,
    )
    reader = preset.reader()
    signals: list[tuple[float, Signal]] = []
    lines: list[str] = []
    start = time.monotonic()
    process = subprocess.Popen(
        invocation.argv,
        cwd=workdir,
        env={**env, **invocation.env},
        stdin=subprocess.DEVNULL if invocation.stdin_devnull else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None and process.stderr is not None
    err_chunks: list[str] = []

    def follow_stderr() -> None:
        for line in process.stderr:  # type: ignore[union-attr]
            err_chunks.append(line)
            for sig in reader.feed_stderr(line):
                signals.append((time.monotonic() - start, sig))

    err_thread = threading.Thread(target=follow_stderr)
    err_thread.start()

    def follow() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(line)
            for sig in reader.feed(line):
                signals.append((time.monotonic() - start, sig))

    out_thread = threading.Thread(target=follow)
    out_thread.start()
    timed_out = False
    try:
        exit_code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(process.pid, signal.SIGKILL)
        exit_code = process.wait(timeout=30)
    out_thread.join(timeout=30)
    err_thread.join(timeout=30)
    process.stdout.close()
    process.stderr.close()
    stderr = "".join(err_chunks)
    verdict = reader.finish(exit_code, stderr[-2000:])
    return Run(
        verdict=verdict,
        signals=signals,
        lines=lines,
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
