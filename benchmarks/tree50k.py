"""Ownership checks on a big tree: `python -m benchmarks.tree50k [FILES]`.

Builds a tree of FILES small files (default 50,000; not a git repository, the costly
case), then times what guildrun pays for it: the baseline taken once at the start of a
run (every file's size and time, and its content into the store), starting the inotify
watch, and one ownership check (the barrier a batch of ended tasks costs),
with and without a stray write to find. Separate from the harness: it writes ~200 MB.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from guildrun._workspaces.shared import Baseline, Store, Watcher


def main(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="guildrun-tree-") as tmp:
        root = Path(tmp)
        for i in range(n):
            folder = root / f"pkg{i // 500:03d}"
            folder.mkdir(exist_ok=True)
            (folder / f"mod{i:05d}.py").write_text(f"VALUE = {i}\n" * 20)
        t0 = time.perf_counter()
        baseline = Baseline.take(root, Store(root))
        t1 = time.perf_counter()
        watcher = Watcher(root)
        t2 = time.perf_counter()
        checks = 200
        for _ in range(checks):
            watcher.take()
        t3 = time.perf_counter()
        strays = 0.0
        for k in range(50):
            path = root / "pkg000" / f"mod{k:05d}.py"
            path.write_text("stray\n")
            s0 = time.perf_counter()
            changed = baseline.expand(watcher.take() or set())
            for rel in changed:
                if baseline.differs(rel):
                    baseline.restore(rel)
            strays += time.perf_counter() - s0
        watcher.stop()
        print(f"files: {n}")
        print(f"baseline at run start: {t1 - t0:.2f} s (once per run)")
        print(f"watch start:           {t2 - t1:.2f} s")
        print(f"check, nothing stray:  {(t3 - t2) / checks * 1e3:.2f} ms per batch")
        print(f"check, one stray:      {strays / 50 * 1e3:.2f} ms (found and undone)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
