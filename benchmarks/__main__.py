"""`python -m benchmarks [--quick] [--write] [--only NAME ...]`: run, print, document."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from . import (
    callables,
    phases,
    ratelimit,
    ray,
    scale,
    schedule,
    seed_table,
    trivial,
    utilization,
    worktree,
)
from ._common import Mode, Section
from ._report import print_report, write_doc

SCENARIOS: dict[str, Callable[[Mode], Section]] = {
    "seed-table": seed_table.run,
    "schedule": schedule.run,
    "trivial": trivial.run,
    "callables": callables.run,
    "utilization": utilization.run,
    "phases": phases.run,
    "scale": scale.run,
    "worktree": worktree.run,
    "ratelimit": ratelimit.run,
    "ray": ray.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, for CI")
    p.add_argument("--write", action="store_true", help="rewrite docs/benchmarks.md")
    p.add_argument("--only", action="append", choices=list(SCENARIOS), metavar="NAME")
    args = p.parse_args(argv)
    mode = Mode(quick=args.quick)
    chosen = args.only or list(SCENARIOS)
    sections: list[Section] = []
    start = time.perf_counter()
    for name in chosen:
        print(f"running {name} ({mode.name})...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        section = SCENARIOS[name](mode)
        section.seconds = time.perf_counter() - began
        sections.append(section)
    elapsed = time.perf_counter() - start
    print_report(sections, mode.name, elapsed)
    if args.write:
        path = write_doc(sections, mode.name, list(sys.argv[1:] if argv is None else argv), elapsed)
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
