"""`guildrun mcp`, driven by the MCP SDK's own client over stdio, as an orchestrator would.

The server is the real command (`python -m guildrun mcp --root DIR`) in a subprocess;
the tasks are real processes editing real files of a git repository made here.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client


def test_other_commands_never_import_the_sdk() -> None:
    code = (
        "import sys; from guildrun._cli import main; main(['schema']); "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'mcp'], 'mcp imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_without_the_sdk_the_error_says_what_to_install(tmp_path: Path) -> None:
    code = "import sys; sys.modules['mcp'] = None; from guildrun._cli import main; sys.exit(main())"
    out = subprocess.run(
        [sys.executable, "-c", code, "mcp", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr == (
        "guildrun: error: guildrun mcp needs the MCP SDK (mcp is missing): "
        "pip install 'guildrun[mcp]'\n"
    )


# Writes "ID done" into its file once the file `go` exists; until then it sleeps.
STEP = (
    'if [ -e go ] || [ "$0" = quick ]; then echo "$0 done" >> "$1"; echo "result of $0"; '
    "else sleep 60; fi"
)


def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    for name in ("quick", "slow1", "slow2", "a", "b"):
        (root / "src" / f"{name}.txt").write_text("")
    return root


def plan_of(ids: list[str], **task: Any) -> dict[str, Any]:
    return {
        "specialists": {"worker": {"run": ["sh", "-c", STEP, "{task_id}", "{files}"]}},
        "tasks": [
            {"id": i, "files": [f"src/{i}.txt"], "specialist": "worker", **task} for i in ids
        ],
    }


async def call(session: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, args)
    text = result.content[0].text  # type: ignore[union-attr]
    assert not result.is_error, text
    data: dict[str, Any] = json.loads(text)
    return data


async def refused(session: ClientSession, tool: str, **args: Any) -> str:
    result = await session.call_tool(tool, args)
    assert result.is_error
    return str(result.content[0].text)  # type: ignore[union-attr]


def agents_of(run_id: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "environ"]):
        try:
            if (proc.info["environ"] or {}).get("GUILDRUN_RUN_ID") == run_id:
                found.append(proc.info["pid"])
        except psutil.Error:
            continue
    return found


@pytest.mark.slow  # the server's start (the SDK's imports) takes seconds
def test_an_orchestrator_drives_plan_run_status_wait_cancel_resume(tmp_path: Path) -> None:
    root = repo(tmp_path)
    errlog = (tmp_path / "server.err").open("w")
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "guildrun", "mcp", "--root", str(root)],
        env={"PYTHONPATH": os.pathsep.join(sys.path)},
    )

    async def scenario() -> None:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            names = {t.name for t in (await session.list_tools()).tools}
            assert names == {"plan", "run", "status", "wait", "cancel", "resume", "report"}

            # plan: the deal per instance and the simulated wall time, nothing run.
            preview = await call(
                session,
                "plan",
                plan={
                    **plan_of(["a", "b", "quick"], estimate=2.0),
                    "settings": {"per_agent_type": 2},
                },
            )
            assert preview["phases"] == [
                {"phase": "implementation", "instances": {"worker": [["a", "quick"], ["b"]]}}
            ]
            assert preview["simulation"]["wall_s"] == pytest.approx(4.0, abs=0.01)
            assert not (root / ".guildrun" / "journal.db").exists()
            bad = await refused(session, "plan", plan={"specialists": {}, "tasks": [{"id": 1}]})
            assert "plan" in bad and "specialists" in bad

            # run in the background, wait for it.
            (root / "go").touch()
            started = await call(session, "run", plan=plan_of(["a", "b"]))
            first = started["run_id"]
            summary = await call(session, "wait", run_id=first, timeout_s=30)
            assert (summary["status"], summary["done"], summary["failed"]) == ("done", 2, 0)
            assert summary["results"] == {"a": "result of a\n", "b": "result of b\n"}
            assert (root / "src/a.txt").read_text() == "a done\n"
            status = await call(session, "status", run_id=first)
            assert {t["id"]: t["state"] for t in status["tasks"]} == {"a": "done", "b": "done"}

            # cancel a run of sleeping agents: stopped, rolled back, resumable.
            (root / "go").unlink()
            second = (await call(session, "run", plan=plan_of(["quick", "slow1", "slow2"])))[
                "run_id"
            ]
            still = await call(session, "wait", run_id=second, timeout_s=1.0)
            assert still["status"] == "running"
            # One run per project at a time.
            assert f"run {second} is still running in this project" in await refused(
                session, "run", plan=plan_of(["a"])
            )
            for _ in range(300):  # both sleeping agents up, within 30 s
                if len(agents_of(second)) >= 2:
                    break
                await anyio.sleep(0.1)
            else:
                pytest.fail("the agents never started")
            stopped = await call(session, "cancel", run_id=second)
            assert stopped["status"] == "interrupted"
            assert stopped["done"] == 1  # quick
            assert agents_of(second) == []
            assert (root / "src/slow1.txt").read_text() == ""
            assert "is not running" in await refused(session, "cancel", run_id=second)

            # resume it: only the unfinished tasks run, in the same run.
            (root / "go").touch()
            resumed = await call(session, "resume", run_id=second)
            assert resumed == {"run_id": second, "resumed": True, "done_before": 1}
            final = await call(session, "wait", run_id=second, timeout_s=30)
            assert (final["status"], final["done"]) == ("done", 3)
            attempts = {
                t["id"]: t["attempts"]
                for t in (await call(session, "status", run_id=second))["tasks"]
            }
            assert attempts == {"quick": 1, "slow1": 2, "slow2": 2}
            assert (root / "src/quick.txt").read_text() == "quick done\n"
            assert (root / "src/slow2.txt").read_text() == "slow2 done\n"

            report = await call(session, "report", run_id=second)
            assert report["summary"]["run_id"] == second
            assert report["summary"]["done"] == 3 and "analysis" in report
            assert "no run 'nope'" in await refused(session, "status", run_id="nope")

    try:
        anyio.run(scenario)
    finally:
        errlog.close()
    err = (tmp_path / "server.err").read_text()
    assert "Traceback" not in err, err


@pytest.mark.slow
@pytest.mark.parametrize("how", ["client leaves", "SIGTERM"])
def test_a_run_stops_with_the_server(tmp_path: Path, how: str) -> None:
    """The client goes away mid-run, or the server gets SIGTERM: it stops its agents and
    journals the run interrupted, so nothing it started outlives it and `guildrun resume`
    can continue."""
    root = repo(tmp_path)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "guildrun", "mcp", "--root", str(root)],
        env={"PYTHONPATH": os.pathsep.join(sys.path)},
    )

    async def scenario() -> str:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            run_id = str((await call(session, "run", plan=plan_of(["slow1", "slow2"])))["run_id"])
            for _ in range(300):
                if len(agents_of(run_id)) >= 2:
                    break
                await anyio.sleep(0.1)
            else:
                pytest.fail("the agents never started")
            if how == "SIGTERM":
                (server,) = [p for p in psutil.Process().children() if _is_mcp_server(p)]
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)  # it exits (the SDK's transport reaps it)
        return run_id

    run_id = anyio.run(scenario)
    assert agents_of(run_id) == []
    db = sqlite3.connect(root / ".guildrun" / "journal.db")
    try:
        (status,) = db.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()
    finally:
        db.close()
    assert status == "interrupted"


def _is_mcp_server(proc: psutil.Process) -> bool:
    """Other children of this test process may be zombies (an in-process engine makes
    the process a subreaper): they have no command line to read."""
    try:
        return "mcp" in " ".join(proc.cmdline())
    except psutil.Error:
        return False
