"""The one way guildrun runs git: with every program a repository can configure switched off.

Agents write files with the user's rights, `.git/config` included. A line such as
`core.fsmonitor = "<command>"`, a hook, a `filter.<name>.clean`, a merge driver or a pager
would make guildrun's own git calls run that command, outside any task's timeout and
process group (issue 9). So every call here:

- starts from an environment without the caller's `GIT_*` variables (a `GIT_DIR` left by
  a hook must not point guildrun at another repository), with the system config off,
  no terminal prompts, no pager or editor, and replace refs ignored;
- overrides, at the command-line scope that beats every config file, each setting that
  names a program: hooks, fsmonitor, pager, editor, askpass, credential helpers, ssh,
  external diff, signing, auto gc, and every transport (`protocol.allow=never`);
- for commands that can reach content drivers (checkout, add, merge, diff, ...), first
  lists the configured `filter.*`, `merge.*`, `diff.*`, `gpg.*` and `credential.*`
  drivers in every scope and blanks each one (a merge driver becomes `false`, so a path
  that needs it conflicts for a person instead of merging silently). The listing runs
  with the same settings and starts nothing. Git LFS and other filters therefore do not
  run in guildrun's own calls: pointers stay pointers.

Errors come back as `GitError`, naming the command and the first line git wrote to stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import GuildrunError

# Settings that name a program, or make git start one (maintenance can detach a daemon).
_FIXED: tuple[tuple[str, str], ...] = (
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.pager", "cat"),
    ("core.editor", "true"),
    ("sequence.editor", "true"),
    ("core.askPass", ""),
    ("credential.helper", ""),
    ("core.sshCommand", ""),
    ("core.gitProxy", ""),
    ("core.attributesFile", "/dev/null"),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("log.showSignature", "false"),
    ("merge.verifySignatures", "false"),
    ("gpg.program", "false"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    ("protocol.allow", "never"),
    ("color.ui", "false"),
    ("core.quotePath", "false"),
    ("advice.detachedHead", "false"),
)

# Configured drivers (any subsection name) that run a program, and what replaces each.
_DRIVERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^filter\..+\.(clean|smudge|process)$"), ""),
    (re.compile(r"^filter\..+\.required$"), "false"),
    (re.compile(r"^merge\..+\.driver$"), "false"),
    (re.compile(r"^diff\..+\.textconv$"), ""),
    (re.compile(r"^gpg\..+\.(program|defaultkeycommand)$"), "false"),
    (re.compile(r"^credential\..+\.helper$"), ""),
    (re.compile(r"^trailer\..+\.(command|cmd)$"), ""),
)

# Commands that show diffs: an external diff or textconv program is switched off by flag
# (an empty `diff.external` is not "none" to git, it is a program that cannot be found).
_DIFFS = frozenset({"diff", "diff-files", "diff-tree", "format-patch", "log", "show"})

# Commands that read refs and objects only, never the index or a file of a checkout (even
# `write-tree` may look at files and run a clean filter): no listing of drivers needed.
_PLAIN = frozenset(
    {
        "branch",
        "cat-file",
        "commit-tree",
        "config",
        "for-each-ref",
        "log",
        "ls-tree",
        "merge-base",
        "rev-list",
        "rev-parse",
        "symbolic-ref",
        "update-ref",
    }
)


_SAFE_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_ATTR_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "",
    "GIT_PAGER": "cat",
    "PAGER": "cat",
    "GIT_EDITOR": "true",
    "GIT_SEQUENCE_EDITOR": "true",
    "GIT_NO_REPLACE_OBJECTS": "1",
    "GIT_OPTIONAL_LOCKS": "0",
    "LC_ALL": "C",
}


def _config_files(cwd: Path, env: Mapping[str, str]) -> list[Path] | None:
    """Every file git reads config from for a call in `cwd`; None when not sure which."""
    gitdir = Path(env["GIT_DIR"]) if "GIT_DIR" in env else cwd / ".git"
    if not gitdir.is_dir() or gitdir.is_symlink():
        return None
    common = gitdir
    pointer = gitdir / "commondir"
    if pointer.exists():
        try:
            common = (gitdir / pointer.read_text()[:4096].strip()).resolve()
        except OSError:
            return None
    home = Path(env.get("HOME", "/nonexistent"))
    xdg = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    return [
        home / ".gitconfig",
        xdg / "git" / "config",
        common / "config",
        common / "config.worktree",
        gitdir / "config.worktree",
        gitdir / "commondir",
    ]


def _stat(path: Path) -> tuple[int, int, int, int] | None:
    """Followed through links: a ~/.gitconfig kept elsewhere changes where it points to."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class GitError(GuildrunError):
    """A git command failed; carries its arguments, exit code and stderr's first line."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.args_ = tuple(args)
        self.returncode = returncode
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        self.first_line = lines[0] if lines else ""
        detail = f": {self.first_line}" if self.first_line else ""
        super().__init__(f"git {' '.join(args)} failed (exit {returncode}){detail}")


@dataclass(frozen=True)
class Done:
    """What a git command returned."""

    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "surrogateescape").strip()


@dataclass(frozen=True)
class Git:
    """Runs git in `cwd` (default: the project root) with repository programs disabled.

    `identity` names the author and committer of the commits guildrun makes when the
    user's own config has none.
    """

    root: Path
    timeout: float = 300.0
    identity: tuple[str, str] = ("guildrun", "guildrun@localhost")
    extra_env: Mapping[str, str] = field(default_factory=dict)
    _listings: dict[tuple[str, str], tuple[tuple[object, ...], list[tuple[str, str]]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def env(
        self,
        cwd: Path | None = None,
        *,
        drivers: bool = True,
        extra: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """The environment of a git call in `cwd`: the caller's minus `GIT_*`, plus ours.

        `extra` (a private index, an explicit GIT_DIR) applies to the driver listing too,
        so the listing reads the same configuration as the call.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.pop("SSH_ASKPASS", None)
        env.update(_SAFE_ENV)
        env.update(self.extra_env)
        env.update(extra or {})
        overrides = list(_FIXED)
        if drivers:
            overrides += self._driver_overrides(cwd or self.root, env)
        env["GIT_CONFIG_COUNT"] = str(len(overrides))
        for i, (key, value) in enumerate(overrides):
            env[f"GIT_CONFIG_KEY_{i}"] = key
            env[f"GIT_CONFIG_VALUE_{i}"] = value
        return env

    def _driver_overrides(self, cwd: Path, env: dict[str, str]) -> list[tuple[str, str]]:
        """The configured drivers to blank, listed anew unless no config file changed.

        The listing is kept only while the files it came from are unchanged: same inode,
        size, mtime and ctime (which no one can set back), and only when no `include`
        can pull in a file not watched here.
        """
        files = _config_files(cwd, env)
        key = (str(cwd), env.get("GIT_DIR", ""))
        sig = None if files is None else tuple(_stat(f) for f in files)
        if sig is not None:
            hit = self._listings.get(key)
            if hit is not None and hit[0] == sig:
                return hit[1]
        fixed = dict(env)
        fixed["GIT_CONFIG_COUNT"] = str(len(_FIXED))
        for i, (k, value) in enumerate(_FIXED):
            fixed[f"GIT_CONFIG_KEY_{i}"] = k
            fixed[f"GIT_CONFIG_VALUE_{i}"] = value
        done = self._exec(["config", "--list", "-z", "--name-only"], cwd, fixed, None)
        if done.returncode not in (0, 1):  # 1: no config at all
            raise GitError(["config", "--list"], done.returncode, _decode(done.stderr))
        keys = done.stdout.decode("utf-8", "surrogateescape").split("\0")
        found = configured_drivers(keys)
        includes = any(k.lower().startswith(("include.", "includeif.")) for k in keys)
        if sig is not None and not includes:
            self._listings[key] = (sig, found)
        return found

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> Done:
        """Run `git ARGS`; raise GitError on a non-zero exit unless `check` is false."""
        where = cwd or self.root
        full = self.env(where, drivers=args[0] not in _PLAIN, extra=env)
        argv = list(args)
        if argv[0] in _DIFFS:
            argv[1:1] = ["--no-ext-diff", "--no-textconv"]
        done = self._exec(argv, where, full, stdin)
        if check and done.returncode != 0:
            raise GitError(args, done.returncode, _decode(done.stderr))
        return done

    def text(
        self, *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> str:
        return self.run(*args, cwd=cwd, env=env).text

    def commit_env(self) -> dict[str, str]:
        """Author and committer for a commit: the user's if configured, else guildrun's."""
        got = self.run("config", "user.email", check=False)
        if got.returncode == 0 and got.text:
            return {}
        name, email = self.identity
        return {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }

    def _exec(
        self, args: list[str], cwd: Path, env: Mapping[str, str], stdin: bytes | None
    ) -> Done:
        argv = ["git", "--no-pager", *args]
        try:
            proc = subprocess.run(
                argv,
                cwd=cwd,
                env=dict(env),
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise GitError(args, -1, f"timed out after {self.timeout:g} s") from None
        except OSError as exc:
            raise GitError(args, -1, str(exc)) from None
        return Done(proc.returncode, proc.stdout, proc.stderr)


def configured_drivers(keys: Sequence[str]) -> list[tuple[str, str]]:
    """Overrides that blank each configured driver among config `keys` (as git lists them)."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in keys:
        key = raw.strip()
        if not key or key in seen:
            continue
        low = _lower_ends(key)
        for pattern, value in _DRIVERS:
            if pattern.match(low):
                seen.add(key)
                out.append((key, value))
                break
    return out


def _lower_ends(key: str) -> str:
    """Section and name are case-insensitive in git; the subsection between is not."""
    section, _, rest = key.partition(".")
    middle, _, name = rest.rpartition(".")
    return f"{section.lower()}.{middle}.{name.lower()}" if middle else key.lower()


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")
