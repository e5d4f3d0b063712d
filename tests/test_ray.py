"""The Ray backend on a real 2-node Ray cluster on loopback (one per test worker).

Tasks run as real processes in actors' own clones; the driver's tree is a real git
repository made by the test. Every test here is slow: a cluster costs seconds to start.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from guildrun._engine import run_async
from guildrun._journal import journal_path

from .conftest import NODE_SECRET, Runner, write_plan
from .worktree_helpers import make_repo, sh_git, show

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _env(cluster: Any, **extra: str) -> dict[str, str]:
    return {**cluster.env, **extra}


def _events(root: Path, run_id: str) -> list[sqlite3.Row]:
    db = sqlite3.connect(journal_path(root))
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute("SELECT * FROM events WHERE run_id=? ORDER BY seq", (run_id,)))
    finally:
        db.close()


def _run_actors(run_id: str) -> list[str]:
    import ray

    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if str(a["name"]).startswith(f"guildrun:{run_id}:")
    ]


# ---------------------------------------------------------------- files, through the CLI


def test_ray_run_integrates_each_task_from_its_own_clone(
    ray_cluster: Any, tmp_path: Path, guildrun: Runner
) -> None:
    repo = make_repo(
        tmp_path,
        {"a.txt": "a\n", "b.bin": "old\n", "gone.txt": "bye\n", "tool.sh": "echo\n"},
    )
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in repo.iterdir() if p.is_file()}
    script = (
        'pwd > "where-$GUILDRUN_TASK_ID.txt"; '
        "case $GUILDRUN_TASK_ID in "
        "t1) echo more >> a.txt;; "
        "t2) printf '\\000\\001\\377' > b.bin;; "
        "t3) rm gone.txt; chmod +x tool.sh;; "
        "esac"
    )
    write_plan(
        repo,
        {
            "settings": {"per_agent_type": 2, "sample_interval": 0},
            "specialists": {"w": {"run": script, "shell": True}},
            "tasks": [
                {"id": "t1", "specialist": "w", "files": ["a.txt", "where-t1.txt"]},
                {"id": "t2", "specialist": "w", "files": ["b.bin", "where-t2.txt"]},
                {
                    "id": "t3",
                    "specialist": "w",
                    "files": ["gone.txt", "tool.sh", "where-t3.txt"],
                    "depends_on": ["t1"],
                },
            ],
        },
    )
    sh_git(repo, "add", "plan.yaml")
    sh_git(repo, "commit", "-q", "-m", "plan")
    got = guildrun(
        "run",
        "plan.yaml",
        "--backend",
        "ray",
        "--address",
        ray_cluster.address,
        "--json",
        cwd=repo,
        env=_env(ray_cluster),
    )
    assert got.returncode == 0, got.stderr
    summary = json.loads(got.stdout)
    assert summary["done"] == 3
    branch = f"guildrun/{summary['run_id']}"
    assert show(repo, branch, "a.txt") == "a\nmore"
    binary = subprocess.run(
        ["git", "show", f"{branch}:b.bin"], cwd=repo, capture_output=True, check=True
    ).stdout
    assert binary == b"\x00\x01\xff"
    assert "gone.txt" not in sh_git(repo, "ls-tree", "--name-only", branch)
    assert sh_git(repo, "ls-tree", branch, "tool.sh").startswith("100755")
    for task in ("t1", "t2", "t3"):
        where = show(repo, branch, f"where-{task}.txt")
        # Each ran in an actor's clone in its own temporary folder, never in the tree.
        assert "/guildrun-ray-" in where and where.endswith("/clone")
        assert not where.startswith(str(repo))
    # The driver's tree was not touched: the result is on the branch only.
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in repo.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k in before} == before
    assert not list(repo.glob("where-*"))
    assert _run_actors(summary["run_id"]) == []  # closed with the run


def test_a_wrong_auth_token_is_named_as_such(
    ray_cluster: Any, tmp_path: Path, guildrun: Runner
) -> None:
    repo = make_repo(tmp_path)
    write_plan(
        repo, {"specialists": {"w": {"run": ["true"]}}, "tasks": [{"id": "t", "specialist": "w"}]}
    )
    sh_git(repo, "add", "plan.yaml")
    sh_git(repo, "commit", "-q", "-m", "plan")
    args = ("run", "plan.yaml", "--backend", "ray", "--address", ray_cluster.address)
    home = tmp_path / "home"  # no ~/.ray/auth_token to fall back on
    home.mkdir()
    for token in ("0" * 32, ""):
        started = time.monotonic()
        env = _env(ray_cluster, RAY_AUTH_TOKEN=token, HOME=str(home))
        got = guildrun(*args, cwd=repo, env=env)
        assert got.returncode == 2, got.stderr
        lines = got.stderr.strip().splitlines()
        assert len(lines) == 1 and "refused guildrun's auth token" in lines[0], got.stderr
        assert "RAY_AUTH_TOKEN" in lines[0] and "Traceback" not in got.stderr
        assert time.monotonic() - started < 15  # not Ray's own 20 s wait for a bare error


def test_without_ray_installed_one_line_says_how_to_get_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    write_plan(
        repo, {"specialists": {"w": {"run": ["true"]}}, "tasks": [{"id": "t", "specialist": "w"}]}
    )
    code = (
        "import sys; sys.modules['ray'] = None\n"  # `import ray` now fails as if absent
        "from guildrun._cli import main\n"
        "sys.exit(main(['run', 'plan.yaml', '--backend', 'ray']))\n"
    )
    got = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60
    )
    assert got.returncode == 2
    assert got.stderr.strip() == (
        "guildrun: error: the Ray backend needs Ray: pip install 'guildrun[ray]'"
    )


def test_an_explicit_shared_tree_is_refused_with_ray(tmp_path: Path, guildrun: Runner) -> None:
    repo = make_repo(tmp_path)
    write_plan(
        repo,
        {
            "settings": {"workspace": "shared"},
            "specialists": {"w": {"run": ["true"]}},
            "tasks": [{"id": "t", "specialist": "w"}],
        },
    )
    got = guildrun("run", "plan.yaml", "--backend", "ray", cwd=repo)
    assert got.returncode == 2
    assert "needs workspace: worktree" in got.stderr and "Traceback" not in got.stderr
    # Through the API, an executor given in code is held to the same rule.
    from guildrun import RayExecutor, UsageError

    with pytest.raises(UsageError, match="needs workspace: worktree"):
        run_api_shared = run_async(
            repo / "plan.yaml", root=repo, handle_signals=False, executor=RayExecutor(connect=False)
        )
        asyncio.run(run_api_shared)


def test_resources_no_node_offers_fail_the_task_instead_of_waiting(
    ray_cluster: Any, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path)
    write_plan(
        repo,
        {
            "settings": {"backend": "ray", "sample_interval": 0},
            "specialists": {"w": {"run": ["true"], "resources": {"gpu_host": 1}}},
            "tasks": [{"id": "t", "specialist": "w"}],
        },
    )
    sh_git(repo, "add", "plan.yaml")
    sh_git(repo, "commit", "-q", "-m", "plan")
    summary = asyncio.run(run_async(repo / "plan.yaml", root=repo, handle_signals=False))
    assert summary.failed == 1
    ended = [e for e in _events(repo, summary.run_id) if e["kind"] == "task_finished"]
    error = json.loads(ended[0]["data"])["error"]
    assert error == "no node of the Ray cluster offers gpu_host: 1 (specialist's resources)"


def test_a_task_that_breaks_its_clone_fails_and_the_next_gets_a_new_clone(
    ray_cluster: Any, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    write_plan(
        repo,
        {
            "settings": {"backend": "ray", "per_agent_type": 1, "sample_interval": 0},
            "specialists": {"w": {"run": "$STEP", "shell": True}},
            "tasks": [
                {"id": "t1", "specialist": "w", "prompt": "x", "files": ["a.txt"]},
                {"id": "t2", "specialist": "w", "files": ["b.txt"]},  # after t1, same actor
            ],
        },
    )
    plan = (repo / "plan.yaml").read_text()
    # t1 removes the clone's git folder (and edits a.txt); t2 writes b.txt.
    steps = "case $GUILDRUN_TASK_ID in t1) echo x >> a.txt; rm -rf .git;; *) echo b > b.txt;; esac"
    (repo / "plan.yaml").write_text(plan.replace("$STEP", steps.replace("'", "''")))
    sh_git(repo, "add", "plan.yaml")
    sh_git(repo, "commit", "-q", "-m", "plan")
    summary = asyncio.run(run_async(repo / "plan.yaml", root=repo, handle_signals=False))
    assert summary.failed == 1 and summary.done == 1, summary.to_json()
    events = _events(repo, summary.run_id)
    ended = [json.loads(e["data"] or "{}") for e in events if e["task"] == "t1"]
    assert any("cannot be read from the clone" in str(d.get("error")) for d in ended)
    assert show(repo, f"guildrun/{summary.run_id}", "b.txt") == "b"  # a new clone served t2
    assert sh_git(repo, "status", "--porcelain") == ""  # the driver's tree, untouched


# ---------------------------------------------------------------- a lost node


def _raylet_of(pid: int, raylets: dict[int, Any]) -> Any:
    """The cluster node whose raylet is an ancestor of `pid`."""
    proc: psutil.Process | None = psutil.Process(pid)
    while proc is not None:
        if proc.pid in raylets:
            return raylets[proc.pid]
        proc = proc.parent()
    return None


def test_a_killed_nodes_task_runs_again_on_a_live_node(ray_cluster: Any, tmp_path: Path) -> None:
    # Two extra nodes that alone offer the `pool` resource: the task's actor lives on one.
    pool = [ray_cluster.add_node(1, {"pool": 1}) for _ in range(2)]
    ray_cluster.cluster.wait_for_nodes()
    marks = tmp_path / "marks"
    marks.mkdir()
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    script = (
        f'echo $$ > "{marks}/$GUILDRUN_ATTEMPT"; '
        'if [ "$GUILDRUN_ATTEMPT" = 1 ]; then sleep 60; fi; echo done >> a.txt'
    )
    write_plan(
        repo,
        {
            "settings": {"backend": "ray", "sample_interval": 0},
            "specialists": {"w": {"run": script, "shell": True, "resources": {"pool": 0.5}}},
            "tasks": [{"id": "t1", "specialist": "w", "files": ["a.txt"]}],
        },
    )
    sh_git(repo, "add", "plan.yaml")
    sh_git(repo, "commit", "-q", "-m", "plan")
    outcome: dict[str, Any] = {}

    def driver() -> None:
        outcome["summary"] = asyncio.run(
            run_async(repo / "plan.yaml", root=repo, handle_signals=False)
        )

    thread = threading.Thread(target=driver)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not (marks / "1").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = int((marks / "1").read_text())
        raylets = {n.all_processes["raylet"][0].process.pid: n for n in pool}
        doomed = _raylet_of(pid, raylets)
        assert doomed is not None, "the task did not run on a pool node"
        ray_cluster.remove_node(doomed)
        thread.join(120)
        assert not thread.is_alive()
    finally:
        thread.join(120)
        for node in pool:
            if node in ray_cluster.nodes:
                ray_cluster.remove_node(node)
        for node in pool:  # the next test meets a cluster that knows they are gone
            ray_cluster.wait_dead(node)
    summary = outcome["summary"]
    assert summary.done == 1
    assert show(repo, f"guildrun/{summary.run_id}", "a.txt") == "a\ndone"  # nothing lost
    retries = [e for e in _events(repo, summary.run_id) if e["kind"] == "task_retry"]
    assert len(retries) == 1, [r["data"] for r in retries]
    data = json.loads(retries[0]["data"])
    assert data["status"] == "error" and data["counted"] is False
    assert data["error"].startswith("lost node 127.0.0.1 (")  # the node is named
    (note,) = [n for n in summary.workspace if n.startswith("Ray: lost")]  # and summarized
    assert note.startswith("Ray: lost node 127.0.0.1 (") and "while t1 ran there" in note
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_an_actor_that_stops_answering_is_timed_out_by_the_driver(
    ray_cluster: Any, tmp_path: Path
) -> None:
    from guildrun import RayExecutor

    marks = tmp_path / "marks"
    marks.mkdir()
    repo = make_repo(tmp_path)
    write_plan(
        repo,
        {
            "settings": {"backend": "ray", "sample_interval": 0, "kill_grace": 0.5},
            "specialists": {
                "w": {"run": f'echo $$ > "{marks}/pid"; sleep 60', "shell": True, "timeout": 2}
            },
            "tasks": [{"id": "t1", "specialist": "w"}],
        },
    )
    sh_git(repo, "add", "plan.yaml")
    sh_git(repo, "commit", "-q", "-m", "plan")
    executor = RayExecutor()
    executor.backstop = 3.0
    stopped: list[psutil.Process] = []

    def freeze() -> None:  # the actor's process stops (as a hung machine would)
        deadline = time.monotonic() + 60
        while not (marks / "pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        task = psutil.Process(int((marks / "pid").read_text()))
        actor = task.parent()
        assert actor is not None
        actor.suspend()
        stopped.extend([actor, task])

    freezer = threading.Thread(target=freeze)
    freezer.start()
    try:
        summary = asyncio.run(
            run_async(repo / "plan.yaml", root=repo, handle_signals=False, executor=executor)
        )
    finally:
        freezer.join(60)
    (attempt,) = [e for e in _events(repo, summary.run_id) if e["kind"] == "task_finished"]
    data = json.loads(attempt["data"])
    assert data["status"] == "timeout"
    assert "did not answer" in data["error"]
    actor, task = stopped
    for proc in (actor, task):  # the actor and its task killed by the run's end
        assert _gone(proc), proc


def _gone(proc: psutil.Process, within: float = 30) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if proc.status() == "zombie":
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------- resume after a SIGKILL


def test_resume_after_the_driver_is_killed_finishes_and_stops_its_actors(
    ray_cluster: Any, tmp_path: Path, guildrun: Runner
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    repo = make_repo(tmp_path, {f"f{i}.txt": f"{i}\n" for i in range(1, 4)})
    # f1 ends at once; f2 and f3 hang in the first run (until it is killed).
    script = (
        f'touch "{marks}/$GUILDRUN_TASK_ID.$GUILDRUN_ATTEMPT"; '
        'if [ "$GUILDRUN_TASK_ID" != t1 ] && [ ! -e "'
        + str(marks)
        + '/resumed" ]; then sleep 120; fi; echo ok >> "$1"'
    )
    write_plan(
        repo,
        {
            "settings": {"per_agent_type": 3, "sample_interval": 0},
            "specialists": {"w": {"run": ["sh", "-c", script, "w", "{files}"]}},
            "tasks": [
                {"id": f"t{i}", "specialist": "w", "files": [f"f{i}.txt"]} for i in range(1, 4)
            ],
        },
    )
    sh_git(repo, "add", "plan.yaml")
    sh_git(repo, "commit", "-q", "-m", "plan")
    env = {**os.environ, **ray_cluster.env}
    first = subprocess.Popen(
        [sys.executable, "-m", "guildrun", "run", "plan.yaml", "--backend", "ray"]
        + ["--address", ray_cluster.address, "--quiet"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all((marks / f"t{i}.1").exists() for i in (2, 3)):
            time.sleep(0.1)
        time.sleep(1.0)  # t1 is done and integrated by now
        assert first.poll() is None
        hanging = _processes_of_run(marks)
        assert hanging  # the two sleeping tasks, on the cluster's nodes
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    (marks / "resumed").touch()
    got = guildrun(
        "resume",
        "--backend",
        "ray",
        "--address",
        ray_cluster.address,
        "--json",
        cwd=repo,
        env=_env(ray_cluster),
    )
    assert got.returncode == 0, got.stderr
    summary = json.loads(got.stdout)
    assert summary["done"] == 3
    branch = f"guildrun/{summary['run_id']}"
    for i in (1, 2, 3):
        assert show(repo, branch, f"f{i}.txt") == f"{i}\nok"
    assert _run_actors(summary["run_id"]) == []  # the dead driver's actors are gone
    assert not [p for p in hanging if p.is_running() and p.status() != "zombie"]


def _processes_of_run(marks: Path) -> list[psutil.Process]:
    """The tasks' shells still waiting, found by the folder in their command line."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(marks) in cmd and proc.pid != os.getpid():
            found.append(proc)
    return found


# ---------------------------------------------------------------- an agent preset


def test_an_agent_preset_runs_on_an_actor_and_its_edit_is_integrated(
    ray_cluster: Any, tmp_path: Path
) -> None:
    from guildrun.testing import ModelServer, Text, Usage, WriteFile

    from .agent_support import need_cli

    claude = need_cli("claude")
    home = tmp_path / "home"
    home.mkdir()
    repo = make_repo(tmp_path)
    with ModelServer() as server:
        server.script(
            WriteFile("src/m.py", "X = 1\n", usage=Usage(1000, 40)),
            Text("wrote m", usage=Usage(1100, 20)),
            match="write module m",
        )
        # The actor runs with its node's environment: what the agent needs travels
        # with the specialist (its `env`), as on a real cluster.
        env = {**server.env(), "HOME": str(home), "CLAUDE_CODE_MAX_RETRIES": "0"}
        write_plan(
            repo,
            {
                "settings": {"backend": "ray", "sample_interval": 0},
                "specialists": {
                    "coder": {"agent": "claude", "program": claude, "env": env, "timeout": 120}
                },
                "tasks": [
                    {
                        "id": "m",
                        "specialist": "coder",
                        "files": ["src/m.py"],
                        "prompt": "write module m",
                    }
                ],
            },
        )
        sh_git(repo, "add", "plan.yaml")
        sh_git(repo, "commit", "-q", "-m", "plan")
        summary = asyncio.run(run_async(repo / "plan.yaml", root=repo, handle_signals=False))
    assert summary.done == 1, summary.to_json()
    assert show(repo, f"guildrun/{summary.run_id}", "src/m.py") == "X = 1"
    assert not (repo / "src").exists()  # the CLI wrote in the actor's clone, not here
    assert summary.cost_usd and summary.cost_usd > 0  # the agent's own figure, carried back


# ---------------------------------------------------------------- a Python specialist


def test_a_python_specialist_is_imported_from_the_actors_clone(
    ray_cluster: Any, tmp_path: Path
) -> None:
    code = (
        "from pathlib import Path\n\n\n"
        "def work(ctx):\n"
        "    Path(ctx.workdir, 'out.txt').write_text(f'{ctx.task_id} in {ctx.workdir}')\n"
        "    return 'done ' + ctx.task_id\n"
    )
    repo = make_repo(tmp_path, {"remote_work.py": code})
    write_plan(
        repo,
        {
            "settings": {"backend": "ray", "sample_interval": 0},
            "specialists": {"py": {"python": "remote_work:work"}},
            "tasks": [{"id": "t1", "specialist": "py", "files": ["out.txt"]}],
        },
    )
    sh_git(repo, "add", "plan.yaml")
    sh_git(repo, "commit", "-q", "-m", "plan")
    summary = asyncio.run(run_async(repo / "plan.yaml", root=repo, handle_signals=False))
    assert summary.done == 1, summary.to_json()
    db = sqlite3.connect(journal_path(repo))
    try:
        (result,) = db.execute("SELECT result FROM tasks WHERE id='t1'").fetchone()
    finally:
        db.close()
    assert result == "done t1"  # the function's return value, carried back
    written = show(repo, f"guildrun/{summary.run_id}", "out.txt")
    assert written.startswith("t1 in /") and written.endswith("/clone")
    assert str(repo) not in written


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_stops_the_remote_task(ray_cluster: Any, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    repo = make_repo(tmp_path)
    script = f'sh -c "sleep 120" & echo $! > "{marks}/child"; echo $$ > "{marks}/pid"; wait'
    write_plan(
        repo,
        {
            "settings": {"sample_interval": 0, "kill_grace": 1},
            "specialists": {"w": {"run": script, "shell": True}},
            "tasks": [{"id": "t1", "specialist": "w"}],
        },
    )
    sh_git(repo, "add", "plan.yaml")
    sh_git(repo, "commit", "-q", "-m", "plan")
    driver = subprocess.Popen(
        [sys.executable, "-m", "guildrun", "run", "plan.yaml", "--backend", "ray"]
        + ["--address", ray_cluster.address, "--quiet"],
        cwd=repo,
        env={**os.environ, **ray_cluster.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (marks / "child").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        task = psutil.Process(int((marks / "pid").read_text()))
        child = psutil.Process(int((marks / "child").read_text()))
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, err
    for proc in (task, child):  # the task and what it started, on the actor's node
        assert not proc.is_running() or proc.status() == "zombie"


# ---------------------------------------------------------------- loopback only


def test_the_cluster_talks_on_loopback_only(ray_cluster: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    write_plan(
        repo,
        {
            "settings": {"backend": "ray", "sample_interval": 0},
            "specialists": {"w": {"run": ["true"]}},
            "tasks": [{"id": "t", "specialist": "w"}],
        },
    )
    sh_git(repo, "add", "plan.yaml")
    sh_git(repo, "commit", "-q", "-m", "plan")
    summary = asyncio.run(run_async(repo / "plan.yaml", root=repo, handle_signals=False))
    assert summary.done == 1
    processes = ray_cluster.processes()
    assert len(processes) >= 4  # GCS, raylets, workers: the listing sees the cluster
    assert ray_cluster.outward_sockets() == []


def test_a_secret_only_the_node_has_is_masked_in_what_the_task_printed(
    ray_cluster: Any, tmp_path: Path, guildrun: Runner
) -> None:
    name, value = NODE_SECRET
    assert name not in os.environ  # the driver below does not know it
    repo = make_repo(tmp_path, {"a.txt": "a\n"})
    write_plan(
        repo,
        {
            "settings": {"sample_interval": 0},
            "specialists": {
                "w": {"run": f'echo "out ${name}"; echo "err ${name}" >&2; exit 3', "shell": True}
            },
            "tasks": [{"id": "t1", "specialist": "w", "files": ["a.txt"]}],
        },
    )
    sh_git(repo, "add", "plan.yaml")
    sh_git(repo, "commit", "-q", "-m", "plan")
    got = guildrun(
        "run",
        "plan.yaml",
        "--backend",
        "ray",
        "--address",
        ray_cluster.address,
        "--json",
        cwd=repo,
        env=_env(ray_cluster),
    )
    assert got.returncode == 1, got.stderr
    logs = repo / ".guildrun" / "runs" / json.loads(got.stdout)["run_id"] / "logs"
    printed = (logs / "t1.out").read_text() + (logs / "t1.err").read_text()
    assert "out ***" in printed and "err ***" in printed  # the task ran where it is set
    shown = [got.stdout, got.stderr, printed, journal_path(repo).read_bytes().decode("latin-1")]
    assert not [text for text in shown if value in text]
