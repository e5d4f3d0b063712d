"""Scenario 9: a rate-limit storm longer than the agent CLI's own patience.

The real Claude Code CLI (`CLAUDE_CODE_MAX_RETRIES=0`: it gives up at the first 429)
runs N tasks at once against the scripted model server on 127.0.0.1, which answers
every request with 429 (retry-after 2 s) for the first seconds. Two ways through it,
in one run:

- guildrun's `agent: claude` preset: the first rate limit holds the whole provider for
  its retry-after, halves its concurrency and climbs back one success at a time; a
  rate-limited attempt is retried without counting, continuing its session.
- blind relaunching: the same CLI as a plain `run:` command whose failure is retried at
  once (what a loop of `claude -p` does), every agent on its own.

Counted: requests the server refused during the storm, and whether every task ended
done. No money is spent: the "model" is the script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from guildrun.testing import ModelServer, Text, Usage, WriteFile

from ._common import Mode, Section, Target, project

CLI_BIN = Path.home() / ".cache" / "guildrun-ci" / "npm" / "node_modules" / ".bin"


def _claude(env_path: str) -> str | None:
    return shutil.which("claude", path=env_path)


def _one(root: Path, n: int, storm_s: float, throttled: bool, path: str) -> tuple[int, int, float]:
    with ModelServer() as server:
        for i in range(n):
            server.script(
                WriteFile(f"m{i}.py", f"X = {i}\n", usage=Usage(500, 20)),
                Text("ok", usage=Usage(600, 10)),
                match=f"module m{i}",
            )
        home = root / "home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
        env.update(
            HOME=str(home),
            PATH=path,
            ANTHROPIC_BASE_URL=server.url,
            ANTHROPIC_API_KEY="sk-test-not-a-key",
            CLAUDE_CODE_MAX_RETRIES="0",
        )
        if throttled:
            spec: dict[str, Any] = {"agent": "claude", "timeout": 120}
            retry: dict[str, Any] = {"attempts": 1}
        else:
            spec = {
                "run": [
                    "claude",
                    "-p",
                    "{prompt}",
                    "--output-format",
                    "json",
                    "--permission-mode",
                    "acceptEdits",
                ],
                "timeout": 120,
            }
            retry = {"attempts": 100, "base": 0.05, "factor": 1, "jitter": 0}
        plan = {
            "settings": {"per_agent_type": n, "sample_interval": 0, "retry": retry},
            "specialists": {"coder": spec},
            "tasks": [
                {
                    "id": f"m{i}",
                    "specialist": "coder",
                    "prompt": f"write module m{i}",
                    "files": [f"m{i}.py"],
                }
                for i in range(n)
            ],
        }
        work = root / ("throttled" if throttled else "blind")
        work.mkdir()
        (work / "plan.yaml").write_text(yaml.safe_dump(plan))
        server.storm(storm_s, status=429, retry_after_s=2.0)
        began = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "guildrun", "run", "plan.yaml", "--root", str(work), "--json"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        wall = time.monotonic() - began
        refused = sum(1 for r in server.requests if r.status == 429)
    if not proc.stdout.strip().startswith("{"):
        raise RuntimeError(f"the run did not start: {proc.stderr.strip()[:500]}")
    done = json.loads(proc.stdout)["done"]
    return refused, done, wall


def run(mode: Mode) -> Section:
    n = 3 if mode.quick else 8
    storm = 4.0 if mode.quick else 45.0
    path = os.pathsep.join([str(CLI_BIN), os.environ.get("PATH", "")])
    section = Section(
        key="ratelimit",
        title="9. A rate-limit storm: throttled agents against blind relaunching",
        command="python -m benchmarks --only ratelimit",
        about=(__doc__ or "").split("\n\n")[1].replace("\n", " "),
        columns=["how", "tasks", "storm", "requests refused (429)", "tasks done", "wall"],
        rows=[],
    )
    if _claude(path) is None:
        section.notes.append("claude is not installed (.ci/run installs it): not measured")
        section.targets.append(Target("fewer requests in a storm", "far fewer", "-", None))
        return section
    results: dict[bool, tuple[int, int, float]] = {}
    with project() as root:
        for throttled in (True, False):
            results[throttled] = _one(root, n, storm, throttled, path)
            refused, done, wall = results[throttled]
            section.rows.append(
                [
                    "guildrun agent: claude" if throttled else "blind relaunch",
                    str(n),
                    f"{storm:g} s",
                    str(refused),
                    f"{done}/{n}",
                    f"{wall:.1f} s",
                ]
            )
    ours, blind = results[True][0], results[False][0]
    section.targets.append(
        Target(
            "requests during a storm, throttled vs blind",
            "far fewer, every task done",
            f"{ours} vs {blind} ({blind / max(ours, 1):.1f}x fewer)",
            None if mode.quick else ours * 3 <= blind and results[True][1] == n,
            "quick mode: too short a storm to compare" if mode.quick else "",
        )
    )
    return section
