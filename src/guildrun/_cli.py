"""The `guildrun` command: a thin layer over the Python API.

Every error the user can cause ends here as one line on stderr and exit code 2;
a traceback means a bug in guildrun.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import GuildrunError, UsageError
from ._journal import Journal, journal_path
from ._paths import find_root
from ._words import STRATEGIES

# Heavy modules (pydantic models, the engine, rich) load only in the commands that use
# them: `guildrun runs`, `status`, `--help` start in a fraction of the time.
if TYPE_CHECKING:
    from rich.console import Console

    from ._metrics import Summary
    from ._prepare import Prepared
    from ._reporter import Reporter


class _Consoles:
    """rich is imported only when something is printed for people (not for --json)."""

    @cached_property
    def out(self) -> Console:
        from ._console import make_console

        return make_console()

    @cached_property
    def err(self) -> Console:
        from ._console import make_console

        return make_console(stderr=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        raise UsageError(message)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


ROOT_HELP = "project root (default: git top level, else cwd)"
RUN_HELP = "run id, or a unique prefix of one (default: the latest run; see 'guildrun runs')"


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="guildrun", description="Run many agent tasks in parallel, safely.")
    p.add_argument("--version", action="version", version=f"guildrun {__version__}")
    sub = p.add_subparsers(
        dest="command", required=True, parser_class=_Parser, title="commands", metavar="COMMAND"
    )

    def plan_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("plan", help="plan file (YAML or JSON)")
        sp.add_argument("--root", help=ROOT_HELP)
        sp.add_argument(
            "--per-agent-type",
            type=_positive,
            metavar="N",
            help="most instances of each specialist at once (overrides the plan's settings)",
        )
        sp.add_argument(
            "--total-parallel",
            type=_positive,
            metavar="N",
            help="most tasks running at once over all specialists (overrides the plan)",
        )
        sp.add_argument(
            "--strategy",
            choices=STRATEGIES,
            help="how tasks are shared between instances (overrides the plan)",
        )
        sp.add_argument(
            "--auto", action="store_true", help="choose the limits from the size of the work"
        )

    def output_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="print the summary as one JSON object")
        sp.add_argument("--quiet", "-q", action="store_true", help="no progress, only the summary")
        sp.add_argument(
            "--events",
            metavar="FILE",
            help="stream one JSON object per event to FILE as it happens ('-': stdout, and "
            "the human output goes to stderr)",
        )

    def budget_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--max-cost-usd",
            type=float,
            metavar="USD",
            help="budget of the run: past it no new task starts (resume with a higher one)",
        )
        sp.add_argument(
            "--max-tokens", type=_positive, metavar="N", help="budget of the run in agent tokens"
        )

    r = sub.add_parser("run", help="run a plan")
    plan_args(r)
    output_args(r)
    r.add_argument("--fail-fast", action="store_true", help="stop everything at the first failure")
    budget_args(r)
    _worktree_args(r)
    _backend_args(r)

    rsm = sub.add_parser("resume", help="continue an interrupted run (default: the latest)")
    rsm.add_argument("run", nargs="?", help=RUN_HELP)
    rsm.add_argument("--root", help=ROOT_HELP)
    rsm.add_argument(
        "--retry-failed", action="store_true", help="run failed and skipped tasks again"
    )
    output_args(rsm)
    budget_args(rsm)
    _backend_args(rsm)

    rr = sub.add_parser(
        "rerun", help="a new run of a past run's plan: its failed tasks, or named ones"
    )
    rr.add_argument("run", help=RUN_HELP)
    rr.add_argument("--root", help=ROOT_HELP)
    rr.add_argument(
        "--failed", action="store_true", help="run its failed and skipped tasks (the default)"
    )
    rr.add_argument("--task", action="append", default=[], metavar="ID", help="run this task")
    output_args(rr)

    rb = sub.add_parser("rollback", help="undo finished work of a run, newest first")
    rb.add_argument("run", help="run id, or a unique prefix of one (see 'guildrun runs')")
    rb.add_argument("--root", help=ROOT_HELP)
    which = rb.add_mutually_exclusive_group()
    which.add_argument("--task", help="only this task")
    which.add_argument("--scope", help="only the tasks of this scope")

    pl = sub.add_parser("plan", help="dry run: phases, instances and the initial assignment")
    plan_args(pl)
    pl.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    pl.add_argument(
        "--simulate",
        action="store_true",
        help="predict wall time, utilization and speedup over one task at a time (simulated) "
        "of each strategy from task estimates",
    )

    v = sub.add_parser("validate", help="check a plan and exit")
    plan_args(v)

    rs = sub.add_parser("runs", help="list past runs")
    rs.add_argument("--root", help=ROOT_HELP)
    rs.add_argument("--json", action="store_true", help="print the runs as one JSON list")

    st = sub.add_parser("status", help="what a run did (default: the latest)")
    st.add_argument("run", nargs="?", help=RUN_HELP)
    st.add_argument("--root", help=ROOT_HELP)
    st.add_argument(
        "--json", action="store_true", help="print the run, its tasks and attempts as JSON"
    )

    rp = sub.add_parser("report", help="HTML report of a run (default: the latest), or --json")
    rp.add_argument("run", nargs="?", help=RUN_HELP)
    rp.add_argument("--root", help=ROOT_HELP)
    rp.add_argument(
        "--html", metavar="FILE", help="where to write it (default .guildrun/runs/RUN/report.html)"
    )
    rp.add_argument("--json", action="store_true", help="print the report data as JSON")

    sub.add_parser("schema", help="print the JSON Schema of plan files")

    mc = sub.add_parser("mcp", help="serve the project to an orchestrating agent over MCP (stdio)")
    mc.add_argument("--root", help="project root (default: git top level, else cwd)")

    su = sub.add_parser("setup", help="write guildrun.toml from what the project looks like")
    su.add_argument("--root", help="project root (default: git top level, else cwd)")
    su.add_argument("--claude", action="store_true", help="also a Claude Code /guildrun command")
    su.add_argument("--force", action="store_true", help="overwrite files that are there")
    su.add_argument("--dry-run", action="store_true", help="print what it would write")

    from . import _fanout

    fo = sub.add_parser("fanout", help="one task per file (or per N files), without a plan file")
    _fanout.add_arguments(fo)
    output_args(fo)
    fo.add_argument("--fail-fast", action="store_true", help="stop everything at the first failure")

    from ._worktree_cli import add_commands

    add_commands(sub)

    d = sub.add_parser("demo", help="run the demo on a sample repository")
    d.add_argument("--dir", help="where to build the sample repository (default: a temp folder)")
    d.add_argument(
        "--think",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how long each stand-in agent sleeps in place of a language model (default 1.0)",
    )
    d.add_argument(
        "--workspace",
        choices=("shared", "worktree"),
        default="shared",
        help="the agents share the sample repository, or each works in its own git worktree",
    )
    return p


def _worktree_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--workspace",
        choices=("shared", "worktree"),
        help="where tasks work: the project itself, or a git worktree per instance "
        "(overrides the plan)",
    )
    sp.add_argument(
        "--allow-dirty",
        action="store_true",
        help="worktree mode: start on uncommitted changes (the base is a snapshot of them)",
    )
    sp.add_argument(
        "--apply",
        action="store_true",
        help="worktree mode: bring the result into the current branch when the run succeeds",
    )


def _backend_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--backend",
        choices=("local", "ray"),
        help="where attempts run: this machine, or actors on a Ray cluster (guildrun[ray]; "
        "worktree mode)",
    )
    sp.add_argument(
        "--address",
        metavar="auto|HOST:PORT",
        help="the Ray cluster's head (default: RAY_ADDRESS, else a cluster on this machine)",
    )


def _backend(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.backend:
        out["backend"] = args.backend
    if args.address:
        if (args.backend or "ray") != "ray":
            raise UsageError("--address is for --backend ray")
        out["ray_address"] = args.address
        out.setdefault("backend", "ray")
    return out


def overview(parser: argparse.ArgumentParser) -> str:
    """What `guildrun` alone prints: each command with its one line, and where to go next."""
    lines = [
        "usage: guildrun COMMAND [ARGS]",
        "",
        parser.description or "",
        "",
        "commands:",
    ]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            choices = action._choices_actions
            width = max(len(c.dest) for c in choices)
            lines += [f"  {c.dest:<{width}}  {c.help}" for c in choices]
    lines += [
        "",
        "'guildrun COMMAND --help' describes a command and its arguments;",
        "'guildrun --version' prints the version.",
    ]
    return "\n".join(lines)


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "max_cost_usd", None) is not None:
        if args.max_cost_usd <= 0:
            raise UsageError("--max-cost-usd must be more than 0")
        out["max_cost_usd"] = args.max_cost_usd
    if getattr(args, "max_tokens", None) is not None:
        out["max_tokens"] = args.max_tokens
    return out


def _prepare(args: argparse.Namespace) -> Prepared:
    from ._prepare import prepare

    overrides: dict[str, Any] = {
        "per_agent_type": args.per_agent_type,
        "total_parallel": args.total_parallel,
        "strategy": args.strategy,
    }
    if getattr(args, "fail_fast", False):
        overrides["fail_fast"] = True
    overrides.update(_budget(args))
    if getattr(args, "workspace", None):
        overrides["workspace"] = args.workspace
    for flag in ("allow_dirty", "apply"):
        if getattr(args, flag, False):
            overrides[flag] = True
    if getattr(args, "backend", None) or getattr(args, "address", None):
        overrides.update(_backend(args))
    return prepare(args.plan, root=args.root, overrides=overrides, auto=args.auto)


def _crash_hook() -> int | None:
    """GUILDRUN_TEST_CRASH_AFTER_COMMIT=k: die right after the k-th journal commit (tests)."""
    raw = os.environ.get("GUILDRUN_TEST_CRASH_AFTER_COMMIT")
    return int(raw) if raw and raw.isdigit() else None


def _reporter(args: argparse.Namespace, con: _Consoles, stack: contextlib.ExitStack) -> Reporter:
    if args.quiet and not args.events:
        from ._reporter import Reporter as Silent

        return Silent()  # nothing is shown: the displays (and rich) need not load
    from ._display import EventStream, LiveReporter, PlainReporter, Tee

    parts: list[Reporter] = []
    if args.events == "-":
        parts.append(EventStream(sys.stdout))
    elif args.events:
        try:
            stream = stack.enter_context(Path(args.events).open("w", encoding="utf-8"))  # noqa: SIM115 - the stack closes it
        except OSError as exc:
            raise UsageError(f"--events {args.events}: {exc.strerror}") from None
        parts.append(EventStream(stream))
    if not args.quiet:
        show = con.err if (args.json or args.events == "-") else con.out
        parts.append(LiveReporter(show) if show.is_terminal else PlainReporter(show.file))
    return Tee(*parts) if len(parts) != 1 else parts[0]


def _own_files(args: argparse.Namespace, root: Path) -> list[str]:
    """guildrun's own outputs inside the project, which no task is to blame for."""
    if args.events and args.events != "-":
        path = Path(args.events).resolve()
        if path.is_relative_to(root):
            return [path.relative_to(root).as_posix()]
    return []


def _finish(summary: Summary, args: argparse.Namespace, con: _Consoles) -> int:
    if args.json:
        print(json.dumps(summary.to_json()))
        if summary.undone:  # the JSON lists them; a person watching stderr is told too
            from ._metrics import UNDONE_HINT

            sys.stderr.write(f"guildrun: {UNDONE_HINT}\n")
    else:
        from ._display import print_summary

        print_summary(summary, con.err if args.events == "-" else con.out)
    return summary.exit_code


def _cmd_run(args: argparse.Namespace, con: _Consoles) -> int:
    from ._engine import run_prepared, run_sync
    from ._statedir import ensure_state_dir

    prepared = _prepare(args)
    ensure_state_dir(prepared.root)
    if prepared.notes and not args.quiet:
        show = sys.stderr if (args.json or args.events == "-") else sys.stdout
        for note in prepared.notes:
            print(note, file=show)
    with contextlib.ExitStack() as stack:
        summary = run_sync(
            run_prepared(
                prepared,
                reporter=_reporter(args, con, stack),
                crash_after_commit=_crash_hook(),
                own_files=_own_files(args, prepared.root),
            )
        )
    return _finish(summary, args, con)


def _cmd_rerun(args: argparse.Namespace, con: _Consoles) -> int:
    from ._engine import run_sync
    from ._rerun import rerun_async

    with contextlib.ExitStack() as stack:
        summary = run_sync(
            rerun_async(
                args.run,
                root=args.root,
                failed=args.failed,
                tasks=args.task,
                reporter=_reporter(args, con, stack),
                own_files=_own_files(args, find_root(args.root)),
            )
        )
    return _finish(summary, args, con)


def _cmd_resume(args: argparse.Namespace, con: _Consoles) -> int:
    from ._engine import run_sync
    from ._rerun import resume_hint
    from ._resume import resume_async
    from ._statedir import ensure_state_dir

    root = find_root(args.root)
    if journal_path(root).exists():  # else resume says there is nothing to resume
        ensure_state_dir(root)

    resume_hint(args.root, args.run)

    with contextlib.ExitStack() as stack:
        summary = run_sync(
            resume_async(
                args.run,
                root=args.root,
                retry_failed=args.retry_failed,
                settings={**_budget(args), **_backend(args)},
                reporter=_reporter(args, con, stack),
                crash_after_commit=_crash_hook(),
                own_files=_own_files(args, root),
            )
        )
    return _finish(summary, args, con)


def _cmd_mcp(args: argparse.Namespace) -> int:
    try:
        from ._mcp import main as serve
    except ImportError as exc:
        missing = (exc.name or "mcp").split(".")[0]
        raise UsageError(
            f"guildrun mcp needs the MCP SDK ({missing} is missing): pip install 'guildrun[mcp]'"
        ) from None
    return serve(args.root)


def _cmd_fanout(args: argparse.Namespace, con: _Consoles) -> int:
    from ._fanout import plan_from_args, plan_yaml

    args.plan = plan_from_args(args)
    if args.dry_run:
        sys.stdout.write(plan_yaml(args.plan))
        return 0
    return _cmd_run(args, con)


def _cmd_rollback(args: argparse.Namespace, out: Console) -> int:
    from ._resume import rollback

    undone = rollback(args.run, root=args.root, task=args.task, scope=args.scope)
    if not undone:
        out.print("nothing to roll back")
    for tid in undone:
        out.print(f"rolled back {tid}", highlight=False)
    return 0


def _cmd_plan(args: argparse.Namespace, out: Console) -> int:
    from ._schedule import Scheduler, distribution

    prepared = _prepare(args)
    _print_warnings(prepared)
    plan = prepared.plan
    sched = Scheduler(
        plan,
        limits=prepared.limits,
        total=prepared.settings.total_parallel,
        strategy=distribution(prepared.settings.strategy),
        estimates=prepared.expected(),
    )
    phases = sched.deal_by_phase()
    simulation: dict[str, Any] | None = None
    if args.simulate:
        from ._simulate import estimates, predict

        prompts = {t.id: t.prompt for t in prepared.source.tasks}
        durations, source = estimates(plan, journal_path(prepared.root), prompts)
        ranked = predict(
            plan, durations, limits=prepared.limits, total=prepared.settings.total_parallel
        )
        simulation = {
            "estimates": source,
            "work_s": round(sum(durations.values()), 4),
            "strategies": [p.to_json() for p in ranked],
            "best": min(ranked, key=lambda p: (p.wall, p.strategy != "work-stealing")).strategy,
        }
    if args.json:
        data = {
            "root": str(prepared.root),
            "settings": prepared.settings.model_dump(),
            "limits": prepared.limits,
            "notes": list(prepared.notes),
            "phases": [{"phase": name, "instances": deal} for name, deal in phases],
            "instances": sched.plan_instances(),
        }
        if simulation is not None:
            data["simulation"] = simulation
        if prepared.estimates is not None and prepared.estimates.known:
            known = prepared.estimates
            data["estimates"] = {
                tid: {"seconds": round(sec, 4), "from": known.origin[tid]}
                for tid, sec in known.seconds.items()
            }
        print(json.dumps(data, indent=2))
        return 0
    for note in prepared.notes:
        out.print(note, highlight=False)
    s = prepared.settings
    out.print(
        f"{len(plan.tasks)} tasks, {len(plan.specialists)} specialists; "
        f"per_agent_type {s.per_agent_type}, total_parallel {s.total_parallel}, "
        f"strategy {s.strategy}",
        highlight=False,
    )
    for name, deal in phases:
        out.print(f"[bold]phase {name}[/]")
        for spec, piles in deal.items():
            for k, pile in enumerate(piles, 1):
                out.print(f"  {spec}#{k}: {', '.join(pile)}", highlight=False)
    if simulation is not None:
        out.print(
            f"[bold]simulation[/] (estimates: {simulation['estimates']}; "
            f"work {simulation['work_s']:.1f}s; speedup: simulated, over one task at a time)",
            highlight=False,
        )
        for p in simulation["strategies"]:
            out.print(
                f"  {p['strategy']:<14} wall {p['wall_s']:8.2f}s  speedup {p['speedup']:5.2f}x"
                f"  utilization {p['utilization']:.0%}",
                highlight=False,
            )
        out.print(f"  best: {simulation['best']}", highlight=False)
    return 0


def _print_warnings(prepared: Prepared) -> None:
    """Warnings of the plan check on stderr: they never stop anything."""
    from ._plan import plan_warnings

    for line in plan_warnings(prepared.source):
        sys.stderr.write(f"warning: {line}\n")


def _load_python_specialists(prepared: Prepared) -> None:
    from ._loader import specialist_function

    for spec in prepared.plan.specialists.values():
        if spec.python is not None:
            specialist_function(spec, prepared.plan.source)


def _cmd_validate(args: argparse.Namespace, out: Console) -> int:
    from ._plan import PHASES

    prepared = _prepare(args)
    _load_python_specialists(prepared)
    _print_warnings(prepared)
    phases = ", ".join(p for p in PHASES if p in prepared.plan.phases())
    out.print(
        f"{args.plan}: valid; {len(prepared.plan.tasks)} tasks in {phases or 'no phase'}",
        highlight=False,
    )
    return 0


def _seen_json(summary: Summary, note: str | None, **kw: Any) -> dict[str, Any]:
    """A summary's JSON with the status a reader should see, and why it differs."""
    data = summary.to_json(**kw)
    if note is not None:
        data["engine_gone"] = True
        data["resume"] = f"guildrun resume {summary.run_id}"
    return data


def _cmd_runs(args: argparse.Namespace, out: Console) -> int:
    from ._liveness import as_seen
    from ._metrics import summarize

    root = find_root(args.root)
    path = journal_path(root)
    if not path.exists():
        if args.json:
            print("[]")
        else:
            out.print(f"no runs yet in {root}", highlight=False)
        return 0
    journal = Journal(path, readonly=True)
    try:
        rows = [as_seen(summarize(journal, r["id"]), root) for r in journal.runs()]
    finally:
        journal.close()
    if args.json:
        print(json.dumps([_seen_json(s, note) for s, note in rows]))
        return 0
    if not rows:
        out.print(f"no runs yet in {root}", highlight=False)
    for s, note in rows:
        speedup = f"  speedup {s.speedup:.2f}x vs {s.speedup_vs}" if s.speedup is not None else ""
        undone = sum(len(u.paths) for u in s.undone)
        speedup += f"  undone {undone}" if undone else ""
        out.print(
            f"{s.run_id}  {note or s.status:<11} done {s.done} failed {s.failed} "
            f"skipped {s.skipped}  wall {s.wall_s:.2f}s  parallelism {s.parallelism:.2f}x"
            f"{speedup}",
            highlight=False,
        )
    return 0


def _cmd_status(args: argparse.Namespace, out: Console) -> int:
    from ._display import print_summary
    from ._liveness import as_seen
    from ._metrics import summarize

    root = find_root(args.root)
    journal = Journal(journal_path(root), readonly=True)
    try:
        run_id = journal.run(args.run)["id"]
        summary, note = as_seen(summarize(journal, run_id), root)
        attempts = journal.attempts(run_id)
    finally:
        journal.close()
    if args.json:
        data = _seen_json(summary, note, details=True)
        by_task: dict[str, list[dict[str, Any]]] = {}
        for a in attempts:
            by_task.setdefault(a["task_id"], []).append(
                {
                    "attempt": a["attempt"],
                    "instance": a["instance"],
                    "start": a["started"],
                    "end": a["ended"],
                    "status": a["status"],
                    "exit_code": a["exit_code"],
                    "error": a["error"],
                }
            )
        for t in data["tasks"]:
            t["attempt_list"] = by_task.get(t["id"], [])
        print(json.dumps(data))
        return 0
    print_summary(summary, out)
    if note is not None:
        out.print(f"[yellow]{note}[/]", highlight=False)
    return 0


def _cmd_demo(args: argparse.Namespace, out: Console) -> int:
    from ._demo import run_demo

    if args.think < 0:
        raise UsageError("--think: must not be negative")
    return run_demo(Path(args.dir) if args.dir else None, args.think, out, args.workspace)


def main(argv: Sequence[str] | None = None) -> int:
    con = _Consoles()
    if not (sys.argv[1:] if argv is None else argv):
        # No command is a request for the list of them, not a mistake: exit 0.
        print(overview(_parser()))
        return 0
    try:
        args = _parser().parse_args(argv)
        cmd = args.command
        if cmd == "run":
            return _cmd_run(args, con)
        if cmd == "resume":
            return _cmd_resume(args, con)
        if cmd == "rollback":
            return _cmd_rollback(args, con.out)
        if cmd == "plan":
            return _cmd_plan(args, con.out)
        if cmd == "validate":
            return _cmd_validate(args, con.out)
        if cmd == "runs":
            return _cmd_runs(args, con.out)
        if cmd == "status":
            return _cmd_status(args, con.out)
        if cmd == "report":
            from ._report import cmd_report

            return cmd_report(args.root, args.run, args.html, args.json)
        if cmd == "schema":
            from ._plan import plan_schema

            print(json.dumps(plan_schema(), indent=2))
            return 0
        if cmd == "demo":
            return _cmd_demo(args, con.out)
        if cmd == "setup":
            from ._setup import cmd_setup

            return cmd_setup(args.root, claude=args.claude, force=args.force, dry_run=args.dry_run)
        if cmd == "mcp":
            return _cmd_mcp(args)
        if cmd == "rerun":
            return _cmd_rerun(args, con)
        if cmd == "fanout":
            return _cmd_fanout(args, con)
        if cmd in ("apply", "resolve", "clean"):
            from ._worktree_cli import run_command

            return run_command(args, con.out)
        raise UsageError(f"unknown command {cmd!r}")
    except GuildrunError as exc:
        for line in str(exc).splitlines() or [""]:
            sys.stderr.write(f"guildrun: error: {line}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("guildrun: interrupted\n")
        return 130
