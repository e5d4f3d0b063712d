"""Specialists the project defines once, for commands that take no plan file.

`guildrun fanout NAME` needs a specialist without a plan; it finds it here, in
``[specialists.NAME]`` of ``guildrun.toml`` (the settings then live under
``[settings]``), else in ``[tool.guildrun.specialists.NAME]`` of ``pyproject.toml``.
They are validated by the plan's own model, so a specialist means the same here as
in a plan.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ._errors import UsageError
from ._plan import Specialist, format_path


def project_specialists(root: Path) -> tuple[dict[str, Specialist], str | None]:
    """The project's specialists by name, with the file (and table) they came from."""
    own = root / "guildrun.toml"
    if own.is_file():
        table = _read(own).get("specialists", {})
        return _validate(table, f"{own}: specialists"), str(own)
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        tool = _read(pyproject).get("tool", {})
        section = tool.get("guildrun") if isinstance(tool, dict) else None
        if isinstance(section, dict) and "specialists" in section:
            where = f"{pyproject} [tool.guildrun.specialists]"
            return _validate(section["specialists"], where), where
    return {}, None


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None


def _validate(table: Any, where: str) -> dict[str, Specialist]:
    if not isinstance(table, dict):
        raise UsageError(f"{where}: expected a table of specialists by name")
    out: dict[str, Specialist] = {}
    for name, body in table.items():
        if not isinstance(body, dict):
            raise UsageError(f"{where}.{name}: expected a table")
        try:
            out[name] = Specialist.model_validate(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = format_path(tuple(err["loc"]))
            msg = (
                f"unknown field {err['loc'][-1]!r}"
                if err["type"] == "extra_forbidden"
                else err["msg"]
            )
            raise UsageError(f"{where}.{name}.{field}: {msg}") from None
    return out
