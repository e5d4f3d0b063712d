"""Secrets never stored or shown: values of secret-looking variables are *** in the
journal, the logs, the results, the reports, `status` and `run --json`."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from guildrun._errors import UsageError
from guildrun._plan import Plan
from guildrun._secrets import MASK, Redactor, looks_secret, plan_for_journal, restore_plan_env

from .conftest import Runner, write_plan

ENV_SECRET = "sk-live-0123456789abcdef"  # noqa: S105  # MY_API_KEY in the engine's environment
PLAN_SECRET = "hunter2-correct-horse"  # noqa: S105  # DB_PASSWORD written in the plan's env:
LISTED_SECRET = "opaque-value-42"  # noqa: S105  # SERVICE_CRED, named by settings.secret_env

LEAK = r"""
import os, sys
values = [os.environ["MY_API_KEY"], os.environ["DB_PASSWORD"], os.environ["SERVICE_CRED"]]
for v in values:
    print("key:", v)
    print("err:", v, file=sys.stderr)
with open(os.environ["GUILDRUN_RESULT"], "w") as fh:
    fh.write("result " + " ".join(values))
if os.environ["GUILDRUN_TASK_ID"] == "bad":
    sys.exit(3)
"""


def _everything_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


@pytest.mark.slow
def test_secrets_are_redacted_everywhere(guildrun: Runner, project: Path) -> None:
    # The plan file lives outside the project: the baseline keeps a copy of the project's
    # own untracked files as they are (the user's files, not guildrun's records).
    plan = write_plan(
        project.parent,
        {
            "settings": {"secret_env": ["SERVICE_CRED"]},
            "specialists": {
                "py": {
                    "run": [sys.executable, "-c", LEAK],
                    "env": {"DB_PASSWORD": PLAN_SECRET, "SERVICE_CRED": LISTED_SECRET},
                }
            },
            "tasks": [
                {"id": "good", "specialist": "py"},
                {"id": "bad", "specialist": "py"},
                {
                    "id": "after",
                    "specialist": "py",
                    "depends_on": ["good"],
                    "prompt": "{result:good}",
                },
            ],
        },
    )
    env = {"MY_API_KEY": ENV_SECRET}
    run = guildrun("run", str(plan), "--json", cwd=project, env=env)
    assert run.returncode == 1, run.stderr
    status = guildrun("status", "--json", cwd=project, env=env)
    report = guildrun("report", "--json", cwd=project, env=env)
    html = guildrun("report", "--html", "r.html", cwd=project, env=env)
    assert html.returncode == 0, html.stderr
    shown = run.stdout + run.stderr + status.stdout + report.stdout
    stored = _everything_under(project / ".guildrun") + (project / "r.html").read_bytes()
    for secret in (ENV_SECRET, PLAN_SECRET, LISTED_SECRET):
        assert secret not in shown
        assert secret.encode() not in stored
    # What was printed is still there, with the secrets masked.
    logs = b"".join(p.read_bytes() for p in (project / ".guildrun").rglob("logs/*"))
    assert b"key: ***" in logs and b"err: ***" in logs
    db = sqlite3.connect(project / ".guildrun" / "journal.db")
    (result,) = db.execute("SELECT result FROM tasks WHERE id='good'").fetchone()
    assert result == "result *** *** ***"
    (plan_json,) = db.execute("SELECT plan_json FROM runs").fetchone()
    assert json.loads(plan_json)["specialists"]["py"]["env"]["DB_PASSWORD"] == MASK


def test_a_resume_takes_the_plan_secret_from_the_environment() -> None:
    model = Plan.model_validate(
        {
            "specialists": {"a": {"run": ["true"], "env": {"X_TOKEN": "abcd1234", "MODE": "v"}}},
            "tasks": [{"id": "t", "specialist": "a"}],
        }
    )
    stored = Plan.model_validate_json(plan_for_journal(model.model_dump_json()))
    assert stored.specialists["a"].env == {"X_TOKEN": MASK, "MODE": "v"}
    with pytest.raises(UsageError, match="X_TOKEN"):
        restore_plan_env(stored.specialists, {})
    restore_plan_env(stored.specialists, {"X_TOKEN": "abcd1234"})
    assert stored.specialists["a"].env["X_TOKEN"] == "abcd1234"  # noqa: S105


def test_names_that_look_secret() -> None:
    for name in ("OPENAI_API_KEY", "gh_token", "AWS_SECRET", "PGPASSWORD", "DB_PASSWORD_FILE"):
        assert looks_secret(name)
    for name in ("PATH", "HOME", "KEYBOARD", "TOKENIZER"):
        assert not looks_secret(name)
    assert looks_secret("SERVICE_CRED", ["service_*"])


def test_a_secret_cut_between_reads_is_still_masked() -> None:
    secret = "s3cr3t-value"  # noqa: S105
    text = f"a{secret}b{secret}{secret}c".encode()
    for cut in range(len(text) + 1):
        for cut2 in range(cut, len(text) + 1):
            stream = Redactor([secret, "xx"]).stream()
            out = stream.feed(text[:cut]) + stream.feed(text[cut:cut2])
            out += stream.feed(text[cut2:]) + stream.flush()
            assert out == b"a***b******c", (cut, cut2)


def test_the_journal_copy_is_masked_when_the_env_names_are_given_too() -> None:
    """The engine passes the specialists' env names, so a plan with no secret is kept
    without being parsed; one with a secret is masked exactly as before."""
    data = {
        "specialists": {"a": {"run": ["true"], "env": {"X_TOKEN": "abcd1234", "MODE": "v"}}},
        "tasks": [{"id": "t", "specialist": "a"}],
    }
    model = Plan.model_validate(data)
    names = [k for sp in model.specialists.values() for k in sp.env]
    stored = Plan.model_validate_json(plan_for_journal(model.model_dump_json(), (), names))
    assert stored.specialists["a"].env == {"X_TOKEN": MASK, "MODE": "v"}
    # A name only the settings call secret (`secret_env`) is masked too.
    plain = Plan.model_validate(
        {**data, "specialists": {"a": {"run": ["true"], "env": {"MODE": "v"}}}}
    )
    text = plain.model_dump_json()
    assert plan_for_journal(text, (), ["MODE"]) == text
    assert json.loads(plan_for_journal(text, ("MODE",), ["MODE"]))["specialists"]["a"]["env"] == {
        "MODE": MASK
    }
