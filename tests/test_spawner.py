"""The process spawner starts commands as Popen did, and never outlives the engine.

Every test runs real processes: the spawner itself, the commands it starts, and for the
engine's death a real `guildrun run` killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import guildrun
from guildrun import _reaper, _spawner
from guildrun._executors import local

pytestmark = pytest.mark.skipif(not _spawner.usable(), reason="the spawner needs Linux")


def _env(**extra: str) -> dict[bytes, bytes]:
    return {b"PATH": os.environb[b"PATH"], **{k.encode(): v.encode() for k, v in extra.items()}}


def _read(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


async def _run(
    spawner: _spawner.Spawner, argv: list[str], cwd: Path, env: dict[bytes, bytes], **extra: str
) -> tuple[int, int, bytes, bytes]:
    """Start one command; (pid, exit code, stdout, stderr)."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        started = spawner.start(
            argv[0],
            argv,
            env,
            {k.encode(): v.encode() for k, v in extra.items()},
            str(cwd),
            out_w,
            err_w,
        )
    finally:
        os.close(out_w)
        os.close(err_w)
    try:
        pid = await started
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    code = await asyncio.wait_for(spawner.exit_of(pid), timeout=30)
    spawner.release(pid)
    return pid, code, _read(out_r), _read(err_r)


def test_commands_get_their_cwd_env_fds_session_and_exit_code(tmp_path: Path) -> None:
    script = (
        'pwd; echo "$BASE $EXTRA"; echo to-stderr >&2; '
        # stdin is /dev/null; its own session and group; no descriptor above 2 inherited
        "cat; ps -o sid= -o pgid= -p $$; ls /proc/$$/fd; exit 7"
    )

    async def main() -> None:
        spawner = _spawner.Spawner(asyncio.get_running_loop())
        try:
            env = _env(BASE="from-base")
            pid, code, out, err = await _run(
                spawner, ["/bin/sh", "-c", script], tmp_path, env, EXTRA="from-job"
            )
            assert code == 7
            lines = out.decode().split("\n")
            assert lines[0] == str(tmp_path)
            assert lines[1] == "from-base from-job"
            assert lines[2].split() == [str(pid), str(pid)]
            assert sorted(lines[3:-1], key=int) == ["0", "1", "2"]
            assert err == b"to-stderr\n"
            # The same base environment is sent once and reused; a signal is a negative code.
            _, code, _, _ = await _run(spawner, ["/bin/sh", "-c", "kill -TERM $$"], tmp_path, env)
            assert code == -signal.SIGTERM
        finally:
            spawner.close()
        assert spawner.proc.returncode == 0  # it ended on its own when its socket closed

    asyncio.run(main())


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None


def test_a_command_is_reaped_only_once_released(tmp_path: Path) -> None:
    """Until the engine releases it, an ended command stays a zombie: its pid, group and
    session id cannot be reused while the engine still kills and sweeps by them."""

    async def main() -> None:
        spawner = _spawner.Spawner(asyncio.get_running_loop())
        try:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            started = spawner.start("/bin/true", ["true"], _env(), {}, str(tmp_path), out_w, out_w)
            os.close(out_w)
            os.close(out_r)
            pid = await started
            assert await asyncio.wait_for(spawner.exit_of(pid), timeout=30) == 0
            await asyncio.sleep(0.2)
            assert _state(pid) == "Z"
            spawner.release(pid)
            for _ in range(500):
                if _state(pid) is None:
                    break
                await asyncio.sleep(0.01)
            assert _state(pid) is None
        finally:
            spawner.close()

    asyncio.run(main())


def test_a_command_that_cannot_start_is_an_oserror_and_nothing_runs(tmp_path: Path) -> None:
    async def main() -> None:
        spawner = _spawner.Spawner(asyncio.get_running_loop())
        try:
            with pytest.raises(OSError) as missing:
                await _run(spawner, [str(tmp_path / "nope")], tmp_path, _env())
            assert missing.value.errno == 2
            with pytest.raises(OSError) as nodir:
                await _run(spawner, ["/bin/true"], tmp_path / "gone", _env())
            assert nodir.value.errno == 2
            # It still works after refusing.
            assert (await _run(spawner, ["/bin/true"], tmp_path, _env()))[1] == 0
        finally:
            spawner.close()

    asyncio.run(main())


def test_if_the_spawner_dies_its_commands_are_still_waited_for(tmp_path: Path) -> None:
    """Killed mid-run, its commands become ours (we are a subreaper): exit codes still come."""

    async def main() -> None:
        spawner = _spawner.Spawner(asyncio.get_running_loop())
        try:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            started = spawner.start(
                "/bin/sh",
                ["sh", "-c", "sleep 0.5; exit 3"],
                _env(),
                {},
                str(tmp_path),
                out_w,
                out_w,
            )
            os.close(out_w)
            pid = await started
            os.kill(spawner.pid, signal.SIGKILL)
            code = await asyncio.wait_for(spawner.exit_of(pid), timeout=30)
            spawner.release(pid)
            assert _read(out_r) == b""
            assert code == 3
            assert not spawner.alive
            with pytest.raises(_spawner.Unavailable):
                spawner.start("/bin/true", ["true"], _env(), {}, str(tmp_path), 0, 1)
        finally:
            spawner.close()

    assert _reaper.become_subreaper()
    try:
        asyncio.run(main())
    finally:
        _reaper.release_subreaper()
    mine = {c.pid for c in psutil.Process().children()}
    assert not [p for p in mine if psutil.Process(p).status() == psutil.STATUS_ZOMBIE]


def _plan(tasks: dict[str, str], timeout: float | None = None) -> guildrun.Plan:
    spec: dict[str, object] = {"run": ["sh", "-c", "{prompt}"]}
    if timeout is not None:
        spec["timeout"] = timeout
    return guildrun.Plan.model_validate(
        {
            "specialists": {"sh": spec},
            "tasks": [
                {"id": k, "specialist": "sh", "prompt": v, "files": [f"{k}.txt"]}
                for k, v in tasks.items()
            ],
        }
    )


def test_the_engine_starts_commands_through_the_spawner(project: Path) -> None:
    plan = _plan({"who": "tr '\\0' ' ' < /proc/$PPID/cmdline > who.txt"})
    summary = guildrun.run(plan, root=project)
    assert summary.ok, summary
    assert "import _spawnd" in (project / "who.txt").read_text()


@pytest.mark.slow
def test_a_timeout_kills_the_whole_group(project: Path, tmp_path: Path) -> None:
    script = f"sleep 300 & echo $! > {tmp_path}/child.pid; sleep 300"
    summary = guildrun.run(_plan({"slow": script}, timeout=1), root=project)
    child = int((tmp_path / "child.pid").read_text())
    assert [(t.state, t.cause) for t in summary.tasks] == [("failed", "timed out after 1s")]
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"


def test_without_the_spawner_commands_still_run_and_it_is_said_once(
    project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    broken = tmp_path / "broken_spawnd.py"
    broken.write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(_spawner, "PROGRAM", broken)
    monkeypatch.setattr(local, "_said", False)
    plan = _plan({f"t{i}": f"echo $PPID > t{i}.txt; exit {i % 2}" for i in range(4)})
    summary = guildrun.run(plan, root=project)
    assert {t.id: t.state for t in summary.tasks} == {
        "t0": "done",
        "t1": "failed",
        "t2": "done",
        "t3": "failed",
    }
    assert (project / "t0.txt").read_text().strip() == str(os.getpid())  # by the engine
    err = capfd.readouterr().err
    assert err.count("process spawner is unavailable") == 1, err


def _spawner_of(engine: int) -> int | None:
    try:
        kids = psutil.Process(engine).children()
    except psutil.NoSuchProcess:
        return None
    for kid in kids:
        try:
            if any("import _spawnd" in part for part in kid.cmdline()):
                return kid.pid
        except psutil.Error:
            continue
    return None


@pytest.mark.slow
def test_the_spawner_dies_with_the_engine(project: Path) -> None:
    plan = project / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "specialists": {"s": {"run": ["sleep", "30"]}},
                "tasks": [{"id": f"t{i}", "specialist": "s"} for i in range(2)],
            }
        )
    )
    engine = subprocess.Popen(
        [sys.executable, "-m", "guildrun", "run", str(plan), "-q", "--root", str(project)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sleepers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 30
        spawner = None
        while time.monotonic() < deadline and (spawner is None or len(sleepers) < 2):
            spawner = spawner or _spawner_of(engine.pid)
            if spawner is not None:
                with contextlib.suppress(psutil.Error):
                    sleepers = psutil.Process(spawner).children()
            time.sleep(0.05)
        assert spawner is not None and len(sleepers) == 2, "the run did not start"
        engine.send_signal(signal.SIGKILL)
        engine.wait()
        deadline = time.monotonic() + 10
        while psutil.pid_exists(spawner) and time.monotonic() < deadline:
            if psutil.Process(spawner).status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.05)
        assert not psutil.pid_exists(spawner) or psutil.Process(spawner).status() == "zombie"
        # Its commands are left as a dead engine's always were: running, for a resume
        # to find by their run id.
        assert all(p.is_running() for p in sleepers)
        assert all("GUILDRUN_RUN_ID" in p.environ() for p in sleepers)
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
        for p in sleepers:
            with contextlib.suppress(psutil.Error):
                p.kill()


def test_agent_clis_start_through_the_spawner_too(project: Path, tmp_path: Path) -> None:
    """An agent is kept unreaped until its group is killed and swept, as a command is."""
    fake = tmp_path / "fake-aider"
    seen = tmp_path / "parent.txt"
    fake.write_text(f"#!/bin/sh\ntr '\\0' ' ' < /proc/$PPID/cmdline > {seen}\necho done\n")
    fake.chmod(0o755)
    plan = guildrun.Plan.model_validate(
        {
            "specialists": {"a": {"agent": "aider", "program": str(fake)}},
            "tasks": [{"id": "t", "specialist": "a", "prompt": "hi", "files": ["x.txt"]}],
        }
    )
    summary = guildrun.run(plan, root=project)
    assert [t.attempts for t in summary.tasks] == [1]
    assert "import _spawnd" in seen.read_text()


def _dying_spawner(tmp_path: Path, wait_for: Path | None = None) -> Path:
    """A real spawner that dies right after it started a command, before saying its pid:
    the one moment where the engine cannot know whether the command runs. With
    `wait_for`, it dies once that file exists (the command got that far), or in 10 s."""
    program = tmp_path / "dying_spawnd.py"
    program.write_text(
        "import os, sys, time\n"
        f"sys.path.append({str(_spawner.PROGRAM.parent)!r})\n"
        "import _spawnd\n"
        "_send = _spawnd._Spawner.send\n"
        "def send(self, msg):\n"
        "    if msg[0] == 'pid':\n"
        f"        wait_for, end = {str(wait_for or '')!r}, time.monotonic() + 10\n"
        "        while wait_for and not os.path.exists(wait_for) and time.monotonic() < end:\n"
        "            time.sleep(0.01)\n"
        "        os._exit(9)\n"
        "    _send(self, msg)\n"
        "_spawnd._Spawner.send = send\n"
        "main = _spawnd.main\n"
    )
    return program


@pytest.mark.slow
def test_a_command_the_dying_spawner_may_have_started_does_not_outlive_its_task(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lost mid-start, the task's attempt ends: whatever it started must end with it,
    not keep running (beside the next task, or its own retry) until the run ends."""
    pidfile = tmp_path / "a.pid"
    monkeypatch.setattr(_spawner, "PROGRAM", _dying_spawner(tmp_path, pidfile))
    monkeypatch.setattr(local, "_said", False)
    plan = guildrun.Plan.model_validate(
        {
            "specialists": {"sh": {"run": ["sh", "-c", "{prompt}"]}},
            "tasks": [
                {
                    "id": "a",
                    "specialist": "sh",
                    # Its retry (by Popen) ends at once; the lost start would sleep on.
                    "prompt": f"[ -e {pidfile} ] && exit 0; echo $$ > {pidfile}; sleep 20",
                },
                {
                    "id": "b",
                    "specialist": "sh",
                    "files": ["b.txt"],
                    "prompt": f"sleep 1; kill -0 $(cat {pidfile}) && echo alive > b.txt"
                    " || echo gone > b.txt",
                },
            ],
        }
    )
    started = time.monotonic()
    guildrun.run(plan, root=project, total_parallel=1)  # a, then b
    assert pidfile.exists(), "the dying spawner did not start the command"
    assert (project / "b.txt").read_text().strip() == "gone"
    assert time.monotonic() - started < 15


def test_a_start_lost_with_the_spawner_is_retried_not_failed(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spawner's death is not the task's fault: its attempt runs again (by Popen)."""
    monkeypatch.setattr(_spawner, "PROGRAM", _dying_spawner(tmp_path))
    monkeypatch.setattr(local, "_said", False)
    plan = _plan({"a": "echo $$ >> a.txt"})
    summary = guildrun.run(plan, root=project)
    assert [(t.id, t.state) for t in summary.tasks] == [("a", "done")], summary
    assert (project / "a.txt").read_text().strip()  # by the retry (the lost start's
    # own line, if it ran before it was swept, may or may not have been undone)
