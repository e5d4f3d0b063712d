"""The state folder `.guildrun/`, made so that git never sees it.

The journal, logs, snapshots and reports are guildrun's, not the project's: a
`.gitignore` holding `*` inside the folder keeps all of it (the `.gitignore` too) out
of `git status` and out of a careless `git add -A`, without touching the project's own
ignore file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ._paths import STATE_DIR

GITIGNORE = "# made by guildrun: nothing in this folder belongs in git\n*\n"


def ensure_state_dir(root: Path) -> Path:
    """`root/.guildrun`, made if missing, with its `.gitignore`; returns the folder.

    An existing `.gitignore` is left as it is (someone chose its content). The file is
    made with O_EXCL and O_NOFOLLOW, so a link planted in its place is not written through.
    """
    state = root / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with contextlib.suppress(FileExistsError):
        fd = os.open(state / ".gitignore", flags, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(GITIGNORE)
    return state
