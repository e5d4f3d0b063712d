"""`guildrun fanout`: the same change over many files, without writing a plan.

GNU parallel's ``cmd ::: files`` habit, under guildrun's limits, ownership, journal
and summary. The command line is turned into an ordinary `Plan` (one task per file,
or per group of N files, each owning its files), so ``--dry-run`` can print that very
plan as YAML for the user to save, edit and run with ``guildrun run``.

``{file}`` (or parallel's ``{}``) in the command stands for the task's file; in the
prompt, ``{file}``. A command that names neither gets the files appended, as parallel
does. Everything else is the plan's template language, so a file name is inserted as
one argument, never parsed again, and never seen by a shell.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _templates as tpl
from ._errors import UsageError
from ._paths import STATE_DIR, find_root, glob_to_regex
from ._words import STRATEGIES

if TYPE_CHECKING:  # loaded by the functions that build plans, not by `--help`
    from ._plan import Plan, Specialist

_FILE = "file"
_RESERVED = (".git", STATE_DIR)
_INSTALLED = ("node_modules", "__pycache__", "site-packages", "venv")


def add_arguments(sp: argparse.ArgumentParser) -> None:
    """The fanout flags (the output flags and --fail-fast come from `_cli`, as for `run`)."""
    sp.add_argument(
        "target",
        nargs="*",
        metavar="SPECIALIST | -- COMMAND",
        help="a specialist of guildrun.toml, or after '--' a command to run per file",
    )
    sp.add_argument(
        "--run",
        metavar="COMMAND",
        help="the command as one string, split like a shell would (but never run by one)",
    )
    sp.add_argument(
        "--files",
        action="append",
        required=True,
        metavar="GLOB",
        help="files to fan out over, relative to the root (** crosses folders); repeatable",
    )
    sp.add_argument("--prompt", default="", help="what each task is asked; {file} is its file")
    size = sp.add_mutually_exclusive_group()
    size.add_argument("--per-file", action="store_true", help="one task per file (the default)")
    size.add_argument("--group", type=_positive, metavar="N", help="one task per N files")
    sp.add_argument("--dry-run", action="store_true", help="print the plan as YAML; run nothing")
    sp.add_argument("--root", help="project root (default: git top level, else cwd)")
    sp.add_argument("--per-agent-type", type=_positive, metavar="N", help="most instances at once")
    sp.add_argument(
        "--total-parallel", type=_positive, metavar="N", help="most tasks running at once"
    )
    sp.add_argument("--strategy", choices=STRATEGIES, help="how tasks are shared between instances")
    sp.add_argument(
        "--auto", action="store_true", help="choose the limits from the size of the work"
    )


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def plan_from_args(args: argparse.Namespace) -> Plan:

    root = find_root(args.root)
    command: list[str] | None = None
    specialist: str | None = None
    if args.run is not None:
        if args.target:
            raise UsageError("give either --run COMMAND or a specialist / '-- COMMAND', not both")
        try:
            command = shlex.split(args.run)
        except ValueError as exc:
            raise UsageError(f"--run: cannot split the command: {exc}") from None
    elif len(args.target) == 1 and not _is_command(args.target[0], root):
        specialist = args.target[0]
    elif args.target:
        command = list(args.target)
    else:
        raise UsageError("name a specialist, or give the command after '--' (or --run COMMAND)")
    settings = {
        k: getattr(args, k)
        for k in ("per_agent_type", "total_parallel", "strategy")
        if getattr(args, k) is not None
    }
    return build_plan(
        root,
        specialist=specialist,
        command=command,
        patterns=args.files,
        prompt=args.prompt,
        group=args.group,
        settings=settings,
    )


def _is_command(word: str, root: Path) -> bool:
    from ._project import project_specialists

    """One word names a specialist of the project, else a program on PATH (or a path)."""
    known, _ = project_specialists(root)
    if word in known:
        return False
    if "/" in word or shutil.which(word) is not None:
        return True
    names = ", ".join(sorted(known)) or "none; see 'guildrun setup'"
    raise UsageError(
        f"no specialist {word!r} in the project config (known: {names}) and no program "
        f"{word!r} on PATH; to run a command write: guildrun fanout --files GLOB -- {word} ..."
    )


def build_plan(
    root: Path,
    *,
    specialist: str | None,
    command: list[str] | None,
    patterns: list[str],
    prompt: str,
    group: int | None,
    settings: dict[str, Any] | None = None,
) -> Plan:
    from ._plan import Plan, Task
    from ._project import project_specialists
    from ._settings import Settings

    """The plan a fanout runs: one task per file (or per `group` files), owning them."""
    files = match_files(root, patterns)
    prompt_t = _swap(prompt, "{files}", "--prompt", marks=("{file}",))
    _parse(prompt_t, "--prompt")
    if command is not None:
        if not command:
            raise UsageError("an empty command")
        name, spec = _command_specialist(command, per_file=group is None)
        for f in files:
            if f.startswith("-"):
                raise UsageError(f"--files: {f!r} would be read as an option by the command")
    else:
        assert specialist is not None
        known, _ = project_specialists(root)
        name = specialist
        spec = known[specialist].model_copy(update={"can_help": []})
    size = group or 1
    piles = [files[i : i + size] for i in range(0, len(files), size)]
    width = len(str(len(piles)))
    tasks = [
        Task(
            id=pile[0] if group is None else f"group-{k:0{width}d}",
            specialist=name,
            files=pile,
            **({"prompt": prompt_t} if prompt_t else {}),
        )
        for k, pile in enumerate(piles, 1)
    ]
    extra: dict[str, Any] = {"settings": Settings(**settings)} if settings else {}
    plan = Plan(specialists={name: spec}, tasks=tasks, **extra)
    plan.source = "guildrun fanout"
    return plan


def _command_specialist(command: list[str], *, per_file: bool) -> tuple[str, Specialist]:
    from ._plan import Specialist

    argv: list[str] = []
    for i, arg in enumerate(command):
        where = f"command argument {i + 1} ({arg!r})"
        if arg in ("{file}", "{}"):
            argv.append("{files}")
            continue
        swapped = _swap(arg, "{task_id}", where, marks=("{file}", "{}"))
        if swapped != arg and not per_file:
            raise UsageError(f"{where}: with --group, {{file}} must stand alone (it is N files)")
        _parse(swapped, where)
        argv.append(swapped)
    if not any(
        ph.name in ("files", "task_id") for a in argv for ph in tpl.placeholders(tpl.parse(a))
    ):
        argv.append("{files}")
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", Path(command[0]).name) or "command"
    return name, Specialist(run=argv)


def _swap(text: str, repl: str, where: str, *, marks: tuple[str, ...]) -> str:
    """Replace the file marks by `repl` in a template, leaving '{{' and '}}' alone."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith(("{{", "}}"), i):
            out.append(text[i : i + 2])
            i += 2
            continue
        mark = next((m for m in marks if text.startswith(m, i)), None)
        if mark is not None:
            out.append(repl)
            i += len(mark)
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _parse(template: str, where: str) -> None:
    try:
        parts = tpl.parse(template)
    except tpl.TemplateError as exc:
        raise UsageError(f"{where}: {exc}") from None
    refs = [p for p in tpl.placeholders(parts) if p.arg is not None]
    if refs:
        raise UsageError(
            f"{where}: {refs[0]} has no meaning in a fanout (its tasks are independent)"
        )


def match_files(root: Path, patterns: list[str]) -> list[str]:
    """Files of the project matching any glob, in path order; git's ignores are honoured."""
    regexes = []
    for pattern in patterns:
        clean = pattern.replace("\\", "/")
        if clean.startswith(("/", "../")) or clean == ".." or "/../" in clean:
            raise UsageError(f"--files {pattern!r}: globs are relative to the project root")
        try:
            regexes.append(glob_to_regex(clean.removeprefix("./")))
        except ValueError as exc:
            raise UsageError(f"--files: {exc}") from None
    found = [f for f in project_files(root) if any(r.match(f) for r in regexes)]
    if not found:
        shown = " ".join(repr(p) for p in patterns)
        raise UsageError(f"--files {shown}: no file matches under {root}")
    return sorted(found)


def project_files(root: Path) -> list[str]:
    try:
        out = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        out = None
    if out is not None and out.returncode == 0:
        names = [os.fsdecode(n) for n in out.stdout.split(b"\0") if n]
        # Deleted but still tracked files are listed too; only what is there can be owned.
        return [n for n in names if n.split("/", 1)[0] not in _RESERVED and (root / n).is_file()]
    # No git to say what belongs to the project: leave out hidden folders (.git, .venv)
    # and installed packages, which no fan-out means to edit.
    files: list[str] = []
    for here, dirs, names in os.walk(root):
        rel = Path(here).relative_to(root)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _INSTALLED]
        files += [(rel / n).as_posix() for n in names]
    return files


def plan_yaml(plan: Plan) -> str:
    import yaml

    """The plan as YAML that `guildrun run` reads back into the very same plan."""
    data = plan.model_dump(mode="json", exclude_unset=True)
    head = "# made by guildrun fanout; save, edit, and run it with: guildrun run FILE\n"
    return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
