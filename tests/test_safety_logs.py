"""A task's captured output has a cap: the head and the tail are kept, the log says how
much was cut, and neither the disk nor the engine's memory holds the rest."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import guildrun
from guildrun._logcap import CappedFile


def test_head_and_tail_are_kept_whatever_the_writes(tmp_path: Path) -> None:
    rng = random.Random(7)
    for limit in (2, 10, 64, 1000):
        for total in (0, 1, limit - 1, limit, limit + 1, 3 * limit + 7):
            stream = bytes(rng.randrange(256) for _ in range(total))
            log = CappedFile(tmp_path / "log", limit)
            at = 0
            while at < total:
                n = rng.randint(1, max(1, limit // 3 + 2))
                log.write(stream[at : at + n])
                at += n
            log.close()
            got = (tmp_path / "log").read_bytes()
            if total <= limit:
                assert got == stream
                continue
            head, ring = limit // 2, limit - limit // 2
            assert got.startswith(stream[:head])
            assert got.endswith(stream[-ring:])
            assert f"[guildrun: {total - limit} bytes cut".encode() in got
            assert len(got) < limit + 200


def test_a_task_printing_too_much_keeps_a_capped_log(project: Path) -> None:
    script = (
        "import sys\n"
        "sys.stdout.write('HEAD' + 'x' * 3_000_000 + 'TAIL')\n"
        "sys.stderr.write('e' * 10)\n"
    )
    plan = guildrun.Plan.model_validate(
        {
            "settings": {"max_log_bytes": 100_000},
            "specialists": {"py": {"run": [sys.executable, "-c", script]}},
            "tasks": [{"id": "loud", "specialist": "py"}],
        }
    )
    summary = guildrun.run(plan, root=project)
    assert summary.ok
    (out,) = project.glob(".guildrun/runs/*/logs/loud.out")
    (err,) = project.glob(".guildrun/runs/*/logs/loud.err")
    data = out.read_bytes()
    assert len(data) < 100_200
    assert data.startswith(b"HEADxxx") and data.endswith(b"xxxTAIL")
    assert b"[guildrun: 2900008 bytes cut from the middle of this log" in data
    assert err.read_bytes() == b"e" * 10


def test_an_agent_cli_log_is_masked_and_capped(tmp_path: Path) -> None:
    from guildrun._executors.local import _AgentLog
    from guildrun._secrets import Redactor

    log = _AgentLog(tmp_path / "a.out", Redactor(["tok-123456789"]).stream(), 1000)
    log.write(b'{"type": "text", "key": "tok-1234')
    log.write(b'56789"}\n')
    for _ in range(100):
        log.write(b"y" * 50 + b"\n")
    log.close()
    data = (tmp_path / "a.out").read_bytes()
    assert data.startswith(b'{"type": "text", "key": "***"}\n')
    assert b"tok-" not in data
    assert b"bytes cut from the middle of this log" in data and len(data) < 1200
