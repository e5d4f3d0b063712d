"""The ownership check's inotify reader (`Watcher`, `inotify.Tree`): every change made
before a check is in it, on real files, from this process and from real child
processes; folders that come, move and go are followed; what it cannot see it says."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

from guildrun._workspaces.inotify import Tree
from guildrun._workspaces.shared import Watcher


def _tree(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.txt").write_text("a\n")
    (root / ".git").mkdir()
    (root / ".guildrun").mkdir()
    return root


def test_a_write_just_before_the_check_is_in_it(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    watcher = Watcher(root)
    try:
        assert watcher.take() == set()
        for i in range(200):  # no wait between the write and the check, each time
            (root / "src" / f"f{i}.txt").write_text("x")
            assert watcher.take() == {f"src/f{i}.txt"}
        # A child process that wrote and exited: seen by the first check after its exit.
        for i in range(5):
            rel = f"src/child{i}.txt"
            code = f"open({str(root / rel)!r}, 'w').write('y')"
            subprocess.run([sys.executable, "-c", code], check=True)
            assert watcher.take() == {rel}
        (root / "src" / "a.txt").chmod(0o600)  # a chmod is a change
        assert watcher.take() == {"src/a.txt"}
    finally:
        watcher.stop()


def test_state_folders_and_the_barrier_are_not_changes(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    watcher = Watcher(root)
    try:
        (root / ".git" / "config").write_text("[core]\n")
        (root / ".guildrun" / "journal.db").write_text("x")
        (root / ".guildrun" / "runs").mkdir()
        (root / ".guildrun" / "runs" / "log").write_text("x")
        assert watcher.take() == set()
        assert watcher.take() == set()  # the barrier's own write is never reported
    finally:
        watcher.stop()


def test_new_moved_and_removed_folders_are_followed(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    watcher = Watcher(root)
    try:
        deep = root / "new" / "deeper"
        deep.mkdir(parents=True)
        (deep / "made.txt").write_text("x")  # before the reader saw the folder
        assert "new" in (watcher.take() or set())  # the folder: expanded by the baseline
        (deep / "later.txt").write_text("x")  # the new folder is watched by now
        assert watcher.take() == {"new/deeper/later.txt"}

        (root / "new").rename(root / "renamed")
        assert watcher.take() == {"new", "renamed"}
        (root / "renamed" / "deeper" / "again.txt").write_text("x")
        assert watcher.take() == {"renamed/deeper/again.txt"}  # under its new name

        outside = tmp_path.parent / f"{tmp_path.name}-outside"
        (root / "renamed").rename(outside)
        assert watcher.take() == {"renamed"}
        (outside / "deeper" / "gone.txt").write_text("x")  # out of the tree: not ours
        assert watcher.take() == set()

        outside.rename(root / "back")  # moved in from outside: watched again
        assert watcher.take() == {"back"}
        (root / "back" / "deeper" / "in.txt").write_text("x")
        assert watcher.take() == {"back/deeper/in.txt"}
    finally:
        watcher.stop()


def test_an_overflowed_queue_says_so(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    watcher = Watcher(root)
    try:
        limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
        a, b = root / "src" / "a.txt", root / "src" / "b.txt"
        b.write_text("b\n")
        for _ in range(limit // 2 + 10):  # alternating, so the kernel merges none
            os.utime(a)
            os.utime(b)
        (root / "made").mkdir()  # its "created" event is among those lost
        assert watcher.take() is None  # events were lost: the caller rescans
        (root / "src" / "c.txt").write_text("c")
        (root / "made" / "d.txt").write_text("d")  # watched again after the loss
        assert watcher.take() == {"src/c.txt", "made/d.txt"}  # exact again
    finally:
        watcher.stop()


def test_no_thread_and_the_event_loop_drains_the_queue(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    before = threading.active_count()

    async def main() -> set[str] | None:
        watcher = Watcher(root)
        try:
            assert threading.active_count() == before
            (root / "src" / "x.txt").write_text("x")
            for _ in range(20):
                await asyncio.sleep(0.01)  # the loop reads the queue while tasks run
                if "src/x.txt" in watcher._tree.changed:
                    break
            assert "src/x.txt" in watcher._tree.changed
            return watcher.take()
        finally:
            watcher.stop()

    assert asyncio.run(main()) == {"src/x.txt"}


def test_a_folder_that_cannot_be_watched_makes_the_reader_blind(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    tree = Tree(str(root))
    try:
        assert not tree.blind
        tree._watch(os.fsencode(str(root / "src" / "a.txt")))  # a file: not a folder
        assert not tree.blind  # gone or not a folder: nothing to watch, nothing missed
        os.close(tree.fd)
        tree.fd = os.open(os.devnull, os.O_RDONLY)  # not an inotify instance: EINVAL
        tree._watch(os.fsencode(str(root / "src")))
        assert tree.blind
    finally:
        tree.close()


def test_a_root_reached_through_a_link_is_watched(tmp_path: Path) -> None:
    real = _tree(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    watcher = Watcher(link)
    try:
        (link / "src" / "b.txt").write_text("b")
        assert watcher.take() == {"src/b.txt"}
        # A link inside the tree is a change, never a way into another folder.
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        (real / "out").symlink_to(outside)
        assert watcher.take() == {"out"}
        (outside / "x.txt").write_text("x")
        assert watcher.take() == set()
    finally:
        watcher.stop()


def test_a_folder_made_and_renamed_before_the_read_is_watched(tmp_path: Path) -> None:
    """`mkdir tmp; mv tmp out` (a folder made whole, then put in place) is one step for
    a process and two events for the reader: by the time it reads "created tmp", tmp is
    gone, so only the rename can tell it to watch `out`, and what is in it (a folder
    made inside tmp in the same moment too). A later write there is still seen."""
    root = _tree(tmp_path)
    watcher = Watcher(root)
    try:
        watcher.take()
        script = "mkdir -p tmp/sub && echo 1 > tmp/f && mv tmp out"
        subprocess.run(["sh", "-c", script], cwd=root, check=True)
        assert {"tmp", "out"} <= (watcher.take() or set())
        subprocess.run(["sh", "-c", "echo 2 > out/g && echo 3 > out/sub/h"], cwd=root, check=True)
        assert watcher.take() == {"out/g", "out/sub/h"}
    finally:
        watcher.stop()


def test_a_folder_made_where_one_moved_out_is_watched(tmp_path: Path) -> None:
    """`mv dist /elsewhere && mkdir dist`: the watches the reader drops for the folder
    that left the tree are that folder's, not the new one's made at its name."""
    root = _tree(tmp_path / "root")
    (root / "src" / "d" / "sub").mkdir(parents=True)
    watcher = Watcher(root)
    try:
        watcher.take()
        away = tmp_path / "away"
        subprocess.run(["sh", "-c", f"mv src/d {away} && mkdir src/d"], cwd=root, check=True)
        assert watcher.take() == {"src/d"}
        subprocess.run(["sh", "-c", "echo 1 > src/d/f"], cwd=root, check=True)
        (away / "sub" / "g").write_text("not ours")  # the folder that left: not reported
        assert watcher.take() == {"src/d/f"}
    finally:
        watcher.stop()
