"""The shared tree: every task works in the project itself (the first `Workspace`).

A task's effect is a unit that can be captured, checked and undone, from three pieces:
- `Store`: content-addressed blobs under .guildrun/objects, deduplicated. A manifest
  maps paths to blob hashes (None: the file did not exist), so "the files before this
  task" is a small dict and restoring it is exact, in a folder that is not a git
  repository too.
- `Baseline`: where the content of any file at run start can be found again (git's
  HEAD for tracked, unmodified files of a repository; the store for everything else),
  so a stray write to a file nobody owns can be undone.
- `Watcher`: which paths changed since the last check, learnt from inotify (read on
  the engine's thread, `inotify.Tree`) instead of rescanning the tree after every task.
  A barrier file makes a check see every event that happened before it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import os
import select
import shutil
import sqlite3
import stat as stat_mod
import tempfile
import threading
import time
from collections.abc import Collection, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._errors import GuildrunError
from .._git import Git, GitError
from .._paths import STATE_DIR
from .._safeio import NotARegularFile, TooLarge, read_regular
from .base import Check, Manifest, Workspace
from .inotify import Tree
from .ownership import Ownership
from .protected import Protected

_SKIP = (".git", STATE_DIR)
FOLDER = "folder"  # a manifest's value for a folder that exists


class Tampered(GuildrunError, OSError):
    """A snapshot blob no longer has the content its name (its hash) says."""


class Store:
    """Blobs by sha256; writing the same content twice costs a stat."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / STATE_DIR / "objects"
        self._root_real: Path | None = None
        self.tampered: list[str] = []  # paths not restored: their snapshot was changed

    def _blob(self, digest: str) -> Path:
        return self.dir / digest[:2] / digest[2:]

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        blob = self._blob(digest)
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            tmp = blob.with_name(f"{blob.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(blob)
        return digest

    def get(self, digest: str) -> bytes:
        """A blob, checked against its name: a snapshot a task rewrote under .guildrun
        is never restored (`Tampered`), so it cannot smuggle content into another
        task's file through a shared blob."""
        data = read_regular(self._blob(digest))
        if hashlib.sha256(data).hexdigest() != digest:
            raise Tampered(f"{STATE_DIR}/objects/{digest[:2]}/{digest[2:]} was changed")
        return data

    def read(self, rel: str, folders: dict[str, Path | None] | None = None) -> bytes | None:
        """A file's content (None: absent, or a folder), read safely: a link is followed
        only to a regular file inside the root; a FIFO, a device or a socket is never
        opened for long, and nothing larger than MAX_FILE is read (`NotARegularFile`,
        `TooLarge`). `folders` caches where each folder really is, for one capture."""
        path = self.root / rel
        try:
            st = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat_mod.S_ISDIR(st.st_mode):
            return None
        root = self._real_root()
        if stat_mod.S_ISLNK(st.st_mode):
            real = Path(os.path.realpath(path))
        else:  # only the folders on the way can lead elsewhere: resolve each once
            parent, _, name = rel.rpartition("/")
            cache = folders if folders is not None else {}
            if parent not in cache:
                where = Path(os.path.realpath(self.root / parent))
                cache[parent] = where if where.is_relative_to(root) else None
            there = cache[parent]
            real = there / name if there is not None else Path(os.path.realpath(path))
        if not real.is_relative_to(root):
            raise NotARegularFile(f"{rel} leads out of the project root (to {real})")
        try:
            return read_regular(real)
        except (FileNotFoundError, NotADirectoryError):
            return None  # a dangling link: nothing there

    def _real_root(self) -> Path:
        if self._root_real is None:
            self._root_real = Path(os.path.realpath(self.root))
        return self._root_real

    def problem(self, rel: str) -> str | None:
        """Why guildrun will not read this path as a file (None: it can)."""
        try:
            self.read(rel)
        except (NotARegularFile, TooLarge) as exc:
            return str(exc).replace(str(self.root) + os.sep, "")
        except OSError:
            return None
        return None

    def capture(self, paths: Iterable[str]) -> Manifest:
        """The current content of `paths` (relative to the root) as a manifest. A path
        that cannot be read safely is left out: it is never restored from here.

        The folders on the way are in it too (`"out/": FOLDER`, or None where there was
        none), so a rollback removes the folders the attempt made and only those: an
        empty folder that was there before stays.
        """
        out: Manifest = {}
        folders: set[str] = set()
        real: dict[str, Path | None] = {}
        for rel in paths:
            parts = rel.split("/")[:-1]
            folders.update("/".join(parts[: i + 1]) + "/" for i in range(len(parts)))
            try:
                data = self.read(rel, real)
            except OSError:
                continue
            out[rel] = None if data is None else self.put_bytes(data)
        for folder in sorted(folders):
            out[folder] = self.digest_of(folder)
        return out

    def digest_of(self, rel: str) -> str | None:
        path = self.root / rel
        if rel.endswith("/"):  # a folder entry of a manifest
            return FOLDER if path.is_dir() and not path.is_symlink() else None
        if path.is_symlink():  # never equal to a blob: a link where a file was is a change
            return f"symlink:{path.readlink()}"
        if not real_folders(self.root, rel):
            return "linked-folder"  # reached through a link: not the file it was
        try:
            data = self.read(rel)
        except OSError as exc:
            return f"unreadable:{exc}"  # a FIFO or a device where a file was: a change
        return None if data is None else hashlib.sha256(data).hexdigest()

    def restore(self, manifest: Mapping[str, str | None]) -> list[str]:
        """Make the files (and folders) what the manifest says; returns what changed."""
        changed: list[str] = []
        folders = sorted((k for k in manifest if k.endswith("/")), key=lambda k: -k.count("/"))
        for rel, digest in manifest.items():
            if rel.endswith("/") or self.digest_of(rel) == digest:
                continue
            # Folders are the manifest's to prune (below); without folder entries (an
            # older journal) a deleted file's emptied folders go, as they always did.
            try:
                data = None if digest is None else self.get(digest)
            except Tampered:
                self.tampered.append(rel)  # left as it is: nothing trustworthy to put back
                continue
            write_file(self.root, rel, data, prune=not folders)
            changed.append(rel)
        for folder in folders:  # deepest first
            now = self.digest_of(folder)
            if now == manifest[folder]:
                continue
            path = self.root / folder
            if manifest[folder] is None:
                with contextlib.suppress(OSError):
                    path.rmdir()  # made by the attempt; kept if something else is in it
            else:
                _clear_way(self.root, folder.rstrip("/"))
                path.mkdir(parents=True, exist_ok=True)
            changed.append(folder)
        return changed


def write_file(
    root: Path,
    rel: str,
    data: bytes | None,
    *,
    link: str | None = None,
    prune: bool = True,
    keep: Container[str] = (),
    mode: int = 0o644,
) -> None:
    """Write (or with None, delete) one file atomically, pruning folders it leaves empty
    (with `prune`; never a folder in `keep`: one that was there before).

    Never writes through a link: a folder on the way that an agent replaced with a link
    leaving the root is removed and made again, and whatever stands at the path itself
    (a folder, a link) is cleared first. With `link`, the path becomes that symlink.
    """
    path = _clear_way(root, rel)
    if data is None and link is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        parent = path.parent
        while prune and parent != root:
            if os.path.relpath(parent, root).replace(os.sep, "/") in keep:
                break
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh, unpredictable name made with O_EXCL: an agent cannot plant a link there.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".guildrun", dir=path.parent)
    tmp = Path(name)
    try:
        if link is not None:
            os.close(fd)
            tmp.unlink()
            tmp.symlink_to(link)
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data or b"")
            tmp.chmod(mode)
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def real_folders(root: Path, rel: str) -> bool:
    """Whether every folder from the root down to `rel` is a real folder, not a link."""
    parent = rel.rpartition("/")[0]
    if not parent:
        return True
    folder = Path(os.path.realpath(root)) / parent
    return Path(os.path.realpath(folder)) == folder


def _clear_way(root: Path, rel: str) -> Path:
    root = root.resolve()
    here = root
    parts = rel.split("/")
    for name in parts[:-1]:
        here = here / name
        escapes = here.is_symlink() and not here.resolve().is_relative_to(root)
        if escapes or (here.exists() and not here.is_dir()):
            here.unlink()
    path = root / rel
    if not path.parent.resolve().is_relative_to(root):
        raise OSError(f"refusing to write {rel}: its folder leaves the project root")
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    return path


def walk(root: Path, folders: set[str] | None = None) -> Iterator[tuple[str, os.stat_result]]:
    """Every regular file below root except .git and .guildrun, with its stat (and each
    folder on the way into `folders`)."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if folder == root and entry.name in _SKIP:
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                    if folders is not None:
                        folders.add(os.path.relpath(entry.path, root).replace(os.sep, "/"))
                elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                    rel = os.path.relpath(entry.path, root).replace(os.sep, "/")
                    yield rel, entry.stat(follow_symlinks=False)
            except OSError:
                continue


@dataclass(frozen=True)
class Stat:
    size: int
    mtime_ns: int
    link: str | None = None  # the target, for a symlink
    mode: int = 0  # permission bits: a chmod is a change too
    ino: int = 0  # to find the other names of a file a task hard-linked

    @classmethod
    def of(cls, st: os.stat_result, path: str | Path | None = None) -> Stat:
        mode = stat_mod.S_IMODE(st.st_mode)
        if path is not None and stat_mod.S_ISLNK(st.st_mode):
            return cls(st.st_size, st.st_mtime_ns, str(Path(path).readlink()), 0, st.st_ino)
        return cls(st.st_size, st.st_mtime_ns, None, mode, st.st_ino)


class Baseline:
    """The content every file had when the run started (or when guildrun last accepted it)."""

    def __init__(self, root: Path, store: Store) -> None:
        self.root = root
        self.store = store
        self.index: dict[str, Stat] = {}
        self.content: dict[str, str] = {}  # path -> blob, for files not recoverable from git
        self.git_blobs: dict[str, str] = {}  # path -> git blob id at HEAD, for clean files
        self._keys: list[str] | None = None
        self.folders: set[str] = set()  # folders at run start: a stray undo never prunes them
        self.pack = Pack(root / STATE_DIR / "baseline.db")

    @classmethod
    def take(cls, root: Path, store: Store) -> Baseline:
        self = cls(root, store)
        self.pack.clear()
        tracked, dirty = _git_state(root)
        to_copy: list[str] = []
        for rel, st in walk(root, self.folders):
            self.index[rel] = Stat.of(st, root / rel)
            if self.index[rel].link is not None:
                continue
            if rel in tracked and rel not in dirty:
                self.git_blobs[rel] = tracked[rel]
            else:
                to_copy.append(rel)
        self.content.update(self.pack.put_files(root, to_copy))
        return self

    def current(self, rel: str) -> Stat | None:
        """The file as it stands, or None. A file reached through a folder that became a
        link is not there: a folder swapped for a link must not look unchanged."""
        path = self.root / rel
        try:
            st = path.lstat()
        except OSError:
            return None
        if stat_mod.S_ISDIR(st.st_mode) or not real_folders(self.root, rel):
            return None
        return Stat.of(st, path)

    def differs(self, rel: str) -> bool:
        """Cheap first: size and mtime; a hash only when those changed but content may not."""
        now = self.current(rel)
        before = self.index.get(rel)
        if now is None or before is None:
            return (now is None) != (before is None)
        if now == before:
            return False
        if now.link is not None or before.link is not None:
            return now.link != before.link
        if now.mode != before.mode:
            return True
        old = self.content.get(rel) or self._git_digest(rel)
        return old != self.store.digest_of(rel)

    def expand(self, paths: Iterable[str]) -> set[str]:
        """Paths, and for each that is or was a folder, the files in it then and now.

        inotify names only the folder when one is moved or renamed, not what it held.
        """
        out = set(paths)
        keys: list[str] | None = None
        for p in list(out):
            if p in self.index:
                continue  # a file we know: not a folder then; if one now, walk it below
            folder = self.root / p
            if folder.is_dir() and not folder.is_symlink():
                out.update(rel for rel, _ in walk_under(self.root, p))
            if keys is None:
                keys = self._sorted_keys()
            prefix = p + "/"
            k = bisect.bisect_left(keys, prefix)
            while k < len(keys) and keys[k].startswith(prefix):
                out.add(keys[k])
                k += 1
        return out

    def _sorted_keys(self) -> list[str]:
        """The index's paths in order, for prefix search; rebuilt only after it changed."""
        if self._keys is None:
            self._keys = sorted(self.index)
        return self._keys

    def original(self, rel: str) -> bytes | None:
        if rel not in self.index or self.index[rel].link is not None:
            return None
        if rel in self.content:
            return self.pack.get(self.content[rel])
        return Git(self.root).run("cat-file", "blob", self.git_blobs[rel]).stdout

    def _git_digest(self, rel: str) -> str | None:
        data = self.original(rel)
        return None if data is None else hashlib.sha256(data).hexdigest()

    def restore(self, rel: str) -> None:
        before = self.index.get(rel)
        if before is not None and before.link is not None:
            write_file(self.root, rel, None, link=before.link, keep=self.folders)
        else:
            mode = before.mode if before is not None else 0o644
            try:
                data = self.original(rel)
            except Tampered:
                return  # its copy was rewritten: nothing trustworthy to put back
            write_file(self.root, rel, data, keep=self.folders, mode=mode)
        self.accept(rel)

    def accept(self, rel: str) -> None:
        """The file's current content is now the one to return to (a task owned it)."""
        if (rel in self.index) != (self.current(rel) is not None):
            self._keys = None  # a path comes or goes: the sorted paths are stale
        now = self.current(rel)
        if now is None:
            self.index.pop(rel, None)
            self.content.pop(rel, None)
            self.git_blobs.pop(rel, None)
            return
        self.index[rel] = now
        self.git_blobs.pop(rel, None)
        if now.link is None:
            self.content.update(self.pack.put_files(self.root, [rel]))
        else:
            self.content.pop(rel, None)


class Pack:
    """Blobs in one SQLite file: the baseline copies every untracked file of the tree at
    the start of a run, and one insert each is far cheaper than one new file each (on a
    journaled disk, making a file costs more than reading a small one)."""

    CHUNK = 64 * 2**20  # bytes held in memory before a commit

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        """Made on first use: a tree with nothing to copy needs none, and making a
        SQLite file in WAL mode costs 10-25 ms on a busy disk."""
        if self._db is None:
            self._db = self._open()
        return self._db

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")  # a cache, made anew by every run
        db.execute("CREATE TABLE IF NOT EXISTS blobs (digest TEXT PRIMARY KEY, data BLOB)")
        return db

    def put_files(self, root: Path, rels: Iterable[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        rows: list[tuple[str, bytes]] = []
        held = 0
        for rel in rels:
            try:
                data = read_regular(root / rel)
            except OSError:
                continue
            digest = hashlib.sha256(data).hexdigest()
            out[rel] = digest
            rows.append((digest, data))
            held += len(data)
            if held >= self.CHUNK:
                self._insert(rows)
                rows, held = [], 0
        self._insert(rows)
        return out

    def _insert(self, rows: list[tuple[str, bytes]]) -> None:
        if rows:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?)", rows)
            self.db.execute("COMMIT")

    def get(self, digest: str) -> bytes:
        row = self.db.execute("SELECT data FROM blobs WHERE digest=?", (digest,)).fetchone()
        if row is None:
            raise KeyError(f"no blob {digest} in {self.db}")
        data = bytes(row[0])
        if hashlib.sha256(data).hexdigest() != digest:  # a task rewrote the cache
            raise Tampered(f"{self.path.name}: the copy of a file was changed")
        return data

    def clear(self) -> None:
        """Start empty: a pack left damaged by a power loss is never read again."""
        self.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").unlink()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def walk_under(root: Path, rel_folder: str) -> Iterator[tuple[str, os.stat_result]]:
    prefix = rel_folder.rstrip("/") + "/"
    for rel, st in walk(root / rel_folder):
        yield prefix + rel, st


def _git_state(root: Path) -> tuple[dict[str, str], set[str]]:
    """Tracked files with their blob ids, and the files that differ from HEAD."""
    if not (root / ".git").exists():
        return {}, set()
    # Through _git: a repository-configured fsmonitor, filter or hook never runs.
    git = Git(root)
    try:
        ls = git.run("ls-files", "-s", "-z")
        st = git.run("status", "--porcelain", "-z", "--untracked-files=all")
    except (OSError, GitError):
        return {}, set()
    tracked: dict[str, str] = {}
    for rec in ls.stdout.split(b"\0"):
        if not rec:
            continue
        meta, _, path = rec.partition(b"\t")
        tracked[os.fsdecode(path)] = meta.split()[1].decode()
    dirty = {os.fsdecode(r[3:]) for r in st.stdout.split(b"\0") if len(r) > 3}
    return tracked, dirty


class Watcher:
    """Paths changed under the root since the last `take()`, from inotify.

    The reader (`inotify.Tree`) runs on the engine's thread: its queue is drained by the
    event loop as events come (so it never overflows while tasks run) and at each check.
    A check first makes a barrier file and reads the queue until the barrier's event is
    in: inotify queues an event inside the system call that made the change, in order,
    so every change made before the check is in the set it returns. A folder moved away
    is reported as the folder alone; `Baseline.expand` turns it into its files.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        barrier_dir = root / STATE_DIR / "barrier"
        barrier_dir.mkdir(parents=True, exist_ok=True)
        mark = f"{STATE_DIR}/barrier/mark"
        skip = tuple(f"{s}/" for s in _SKIP)
        self._marked = False

        def keep(rel: str) -> bool:
            if rel == mark:
                self._marked = True
                return False
            return not (rel in _SKIP or rel.startswith(skip))

        # One instance, so one queue: its events come in the order they happened, and
        # the barrier (inside .guildrun) comes after every change made before it, moves
        # included. .git and .guildrun are not watched, but for the barrier's folder.
        self._tree = Tree(str(root), skip=_SKIP, also=[f"{STATE_DIR}/barrier"], on_path=keep)
        # The barrier is a one-byte write to a file kept open: one system call, one
        # event ("modified"), where making and removing a file took two path lookups.
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            self._mark = os.open(root / mark, flags, 0o600)
        except BaseException:
            self._tree.close()
            raise
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._tree.fd, self._tree.read)

    def take(self, timeout: float = 5.0) -> set[str] | None:
        """Changed paths since the last call; None if some may have gone unseen (the
        queue overflowed, a folder could not be watched, or the barrier was not seen in
        time): the caller then compares the whole tree."""
        tree = self._tree
        self._marked = False
        os.pwrite(self._mark, b"\0", 0)
        tree.read()  # the barrier's event is queued already: this sees it
        deadline = time.monotonic() + timeout
        while not self._marked and not tree.lost:  # lost: the barrier may be too
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([tree.fd], [], [], min(left, 0.05))
            tree.read()
        out, tree.changed = tree.changed, set()
        if tree.lost or tree.blind:
            if tree.lost:  # folders made meanwhile may have gone unwatched: watch them
                tree.lost = False
                tree.rewatch()
            return None
        return out

    def stop(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._tree.fd)
        self._tree.close()
        os.close(self._mark)


class SharedTree(Workspace):
    """Tasks share the project's tree; ownership is checked by inotify and a baseline.

    With several tasks running, a write outside every running task's files cannot be
    pinned on one of them: it is undone and reported with the tasks that were running
    (`Check.stray`). When only one task ran since the last check, it is to blame.
    """

    def __init__(self, root: Path, ownership: Ownership, *, check: bool = True) -> None:
        self.root = root
        self.rules = ownership
        self.checking = check
        self.store = Store(root)
        self.baseline: Baseline | None = None
        self.watcher: Watcher | None = None
        self._before: dict[str, Manifest] = {}
        self._ran_since_check: set[str] = set()
        self._carry: set[str] = set()
        self._pending: dict[str, set[str]] = {}  # unowned change -> who may have made it
        self._kept: set[str] = set()  # tasks whose rate-limited attempt's files stay
        self.protected: list[Protected] = []  # .git's config, hooks and info: nobody's

    def open(self) -> list[str]:
        if not self.checking:
            return []
        self.baseline = Baseline.take(self.root, self.store)
        git = Protected.git(self.root)
        self.protected = [git] if git is not None else []
        try:
            self.watcher = Watcher(self.root)
        except OSError as exc:
            # Out of inotify watches (a huge tree): compare the tree at each check.
            return [f"watcher unavailable: {exc}"]
        return []

    def workdir(self, instance: str) -> Path:
        return self.root

    def keep(self, task: str) -> bool:
        self._kept.add(task)  # the next attempt's "before" is still the first one's
        return True

    def before(self, task: str, files: Sequence[str], instance: str) -> Manifest | None:
        self._ran_since_check.add(task)
        if task in self._kept:
            self._kept.discard(task)
            return self._before.get(task)
        if not files:
            self._before.pop(task, None)
            return None
        manifest = self.store.capture(files)
        self._before[task] = manifest
        return manifest

    def check(
        self, ended: Sequence[str], running: Collection[str], succeeded: Collection[str] = ()
    ) -> Check:
        """Judge what changed since the last check.

        A change nobody may make is not judged while a task that could have made it is
        still running: tools write temporary files and rename them over their own files
        (`sed -i`, editors, formatters), and undoing such a file mid-write breaks the
        tool. It is judged once every suspect has ended; by then a temporary file is
        usually gone, and what is left is undone, and blamed when one task alone could
        have made it.
        """
        out = Check(touched={t: [] for t in ended})
        if self.baseline is None:
            return out
        changed = self.watcher.take() if self.watcher is not None else None
        if changed is None:  # the watcher fell behind: compare the whole tree instead
            changed = self._rescan()
        changed |= self._carry
        changed = self.baseline.expand(changed)
        self._carry = set()
        suspects = self._ran_since_check | set(ended)
        rules = self.rules
        for path in sorted(changed):
            if rules.ignored(path) or self._not_a_change(path):
                continue
            if any(rules.allowed(t, path) for t in running):
                self._carry.add(path)  # judged when its owner ends
                continue
            owners = [t for t in ended if rules.allowed(t, path)]
            if owners:
                for t in owners:
                    out.touched[t].append(path)
                    # A hard link to another file: writing it wrote that file too.
                    for other in self._other_names(path):
                        if not rules.allowed(t, other):
                            self._pending.setdefault(other, set()).update(suspects)
                continue
            self._pending.setdefault(path, set()).update(suspects)
        self._ran_since_check = set(running)
        self._judge(out, set(ended), set(running))
        self._guard(out, suspects, set(ended))
        for t in ended:
            # An owned file turned into a FIFO, a device or a link out of the root cannot
            # be kept (guildrun would hang or read forever on it): the attempt fails.
            own = {*out.touched[t], *(self._before.get(t) or {})}
            problems = [p for p in map(self.store.problem, sorted(own)) if p]
            if problems:
                out.unsafe[t] = "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "")
        return out

    def _not_a_change(self, path: str) -> bool:
        """A path that was no file at the start and is none now: a folder (its files are
        judged one by one), or a file made and removed again, such as the temporary file
        `write_file` renames over the file it writes (`.name.XXXXXXXX.guildrun`) or a
        tool's. Such a path never counts as a change, nor as an extra file of a task."""
        assert self.baseline is not None
        return path not in self.baseline.index and self.baseline.current(path) is None

    def _judge(self, out: Check, ended: set[str], running: set[str]) -> None:
        assert self.baseline is not None
        for path in sorted(self._pending):
            who = self._pending[path]
            if who & running:
                continue  # a task that may have made it is still at work
            del self._pending[path]
            if not self.baseline.differs(path):
                continue  # a temporary file, gone again
            self.baseline.restore(path)
            if len(who) == 1 and who <= ended:
                out.violations.setdefault(next(iter(who)), []).append(path)
            else:
                out.stray[path] = sorted(who)

    def _other_names(self, rel: str) -> list[str]:
        """The other names, at run start, of the file `rel` now is (a task made it a hard
        link to them); empty for a file with one name."""
        assert self.baseline is not None
        try:
            st = (self.root / rel).lstat()
        except OSError:
            return []
        if st.st_nlink < 2 or not stat_mod.S_ISREG(st.st_mode):
            return []
        return [p for p, s in self.baseline.index.items() if s.ino == st.st_ino and p != rel]

    def _guard(self, out: Check, suspects: set[str], ended: set[str]) -> None:
        """Protected places (git's config, hooks, info) changed: put back at once, and
        blamed like any unowned change: on the one task that ran, else on nobody."""
        for guard in self.protected:
            hit = guard.changed()
            if not hit:
                continue
            guard.restore(hit)
            if len(suspects) == 1 and suspects <= ended:
                out.violations.setdefault(next(iter(suspects)), []).extend(hit)
            else:
                for path in hit:
                    out.stray[path] = sorted(suspects)

    def _rescan(self) -> set[str]:
        assert self.baseline is not None
        seen = {rel: Stat.of(st, self.root / rel) for rel, st in walk(self.root)}
        index = self.baseline.index
        changed = {p for p, s in seen.items() if index.get(p) != s}
        changed |= set(index) - set(seen)
        return changed

    def accept(self, task: str, files: Sequence[str], touched: Iterable[str]) -> Manifest | None:
        after = self.store.capture(files) if files else None
        if self.baseline is not None:
            # Only what the task was seen to change becomes the new baseline: a file it
            # owns but left alone may hold another task's stray write, still to be judged.
            for path in touched:
                self.baseline.accept(path)
        return after

    def undo(self, task: str, extra: Iterable[str] = ()) -> None:
        self._kept.discard(task)
        manifest = self._before.get(task)
        if manifest:
            self.store.restore(manifest)
        if self.baseline is not None:
            for path in extra:
                if path not in (manifest or {}) and self.baseline.differs(path):
                    self.baseline.restore(path)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.baseline is not None:
            self.baseline.pack.close()
