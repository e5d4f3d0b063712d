"""Finding a `python: module:function` specialist.

The README's pattern keeps the module next to the plan, in the project root; but the
`guildrun` command's own folder, not the project, leads sys.path. The root is searched
first, for that one import only, so a project file never shadows a module elsewhere.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import PlanError

if TYPE_CHECKING:
    from ._plan import SpecialistSpec


def load_callable(ref: str) -> Callable[..., Any]:
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    fn = getattr(module, attr)
    if not callable(fn):
        raise TypeError(f"{ref} is not callable")
    return fn  # type: ignore[no-any-return]


def load_specialist(ref: str, root: Path | None) -> Callable[..., Any]:
    """Import `ref` ("module:function"), looking in `root` first; errors propagate."""
    top = ref.partition(":")[0].split(".", 1)[0]
    folder = str(root) if root is not None else None
    if (
        folder is None
        or top in sys.modules
        or folder in sys.path
        or importlib.machinery.PathFinder.find_spec(top, [folder]) is None
    ):
        return load_callable(ref)
    sys.path.insert(0, folder)
    try:
        return load_callable(ref)
    finally:
        if sys.path and sys.path[0] == folder:
            del sys.path[0]


def specialist_function(spec: SpecialistSpec, source: str | None) -> Callable[..., Any]:
    """Import a `python: module:function` specialist; failing that is bad input (exit 2)."""
    assert spec.python is not None
    try:
        return load_specialist(spec.python, spec.root)
    except Exception as exc:  # any import-time error of the user's module
        raise PlanError(
            f"cannot load {spec.python!r}: {type(exc).__name__}: {exc}",
            file=source,
            field=f"specialists.{spec.name}.python",
        ) from None
