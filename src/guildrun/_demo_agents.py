"""Stand-in agents for `guildrun demo`: real edits, with a sleep where a model would think.

    python -m guildrun._demo_agents SPECIALIST TASK_ID [--think SECONDS] [--] FILE...

The demo has to work on a fresh machine with nothing but guildrun installed, so these
agents cannot call a language model. What they can do is everything around it: read
the repository, decide on an edit, and write it, deterministically, to exactly the
files the plan gave them. The model's think time is a sleep (`--think`), said out loud
by the demo, so the measured speedup is the scheduler's and nothing else's.

The edits follow small specs the sample repository carries in its docstrings:

- interface: a component's `Spec: card CLASS FIELD[:money]...` or
  `Spec: list CLASS CARD_MODULE EMPTY TEXT...` becomes the body of its stub.
- service: `Spec: where ATTR [OP VALUE] | sort [-]ATTR | first | count | sum ATTR`
  becomes a query over the function's first argument.
- test: `tests/test_NAME.py` is written from the doctest examples of `shop/NAME.py`.
- research: reads only; reports the stubs left and the modules without tests.

Only the standard library is used, and the module imports nothing from guildrun, so
the demo can start it as a plain script (`python -P path/to/_demo_agents.py`) without
paying for the package's imports in every agent.
"""

from __future__ import annotations

import argparse
import ast
import doctest
import html
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

SPEC_PREFIX = "Spec:"
SOURCE_PACKAGE = "shop"
TESTS_DIR = "tests"


class AgentError(Exception):
    """A task this agent cannot do; reported on stderr with exit status 2."""


# ---------------------------------------------------------------------------- stubs


@dataclass(frozen=True)
class Stub:
    """A function whose body is still `raise NotImplementedError`, and where that body is."""

    name: str
    params: tuple[str, ...]
    spec: str
    body_start: int  # 1-based line of the raise statement
    body_end: int  # 1-based last line of it
    indent: str


def _is_stub(fn: ast.FunctionDef) -> bool:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
        return False
    exc = body[0].exc
    target = exc.func if isinstance(exc, ast.Call) else exc
    return isinstance(target, ast.Name) and target.id == "NotImplementedError"


def _spec_of(fn: ast.FunctionDef) -> str:
    for line in (ast.get_docstring(fn) or "").splitlines():
        if line.strip().startswith(SPEC_PREFIX):
            return line.strip()[len(SPEC_PREFIX) :].strip()
    raise AgentError(f"{fn.name}: its docstring has no '{SPEC_PREFIX}' line to work from")


def find_stubs(source: str) -> list[Stub]:
    """Top-level stubs, so an edit replaces just the raise and keeps signature and docstring."""
    lines = source.splitlines()
    stubs: list[Stub] = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and _is_stub(node):
            raise_stmt = node.body[-1]
            start = raise_stmt.lineno
            end = raise_stmt.end_lineno or start
            first = lines[start - 1]
            indent = first[: len(first) - len(first.lstrip())]
            params = tuple(a.arg for a in node.args.args)
            stubs.append(Stub(node.name, params, _spec_of(node), start, end, indent))
    return stubs


def fill_stubs(source: str, write_body: Callable[[Stub], list[str]]) -> tuple[str, list[str]]:
    """Replace every stub's raise with the body `write_body` gives; bottom-up keeps lines valid."""
    lines = source.splitlines()
    stubs = find_stubs(source)
    for stub in sorted(stubs, key=lambda s: s.body_start, reverse=True):
        body = [stub.indent + line if line else "" for line in write_body(stub)]
        lines[stub.body_start - 1 : stub.body_end] = body
    text = "\n".join(lines) + "\n"
    ast.parse(text)  # never leave a file that does not parse
    return text, [s.name for s in stubs]


# ---------------------------------------------------------------------------- interface


def component_body(stub: Stub) -> list[str]:
    """The markup a component's spec asks for; values are escaped, as user data must be."""
    kind, _, rest = stub.spec.partition(" ")
    if not stub.params:
        raise AgentError(f"{stub.name}: a component renders its first argument; it has none")
    arg = stub.params[0]
    if kind == "card":
        return _card_body(arg, rest.split())
    if kind == "list":
        return _list_body(arg, rest.split())
    raise AgentError(f"{stub.name}: unknown component kind {kind!r} (card or list)")


def _card_body(arg: str, words: list[str]) -> list[str]:
    if len(words) < 2:
        raise AgentError("a card spec needs a class and at least one field")
    css, fields = words[0], words[1:]
    out = ["return (", f"    '<div class=\"{css}\">'"]
    for item in fields:
        name, _, fmt = item.partition(":")
        value = f"format_money({arg}.{name})" if fmt == "money" else f"str({arg}.{name})"
        out.append(f"    f'<span class=\"{name}\">{{escape({value})}}</span>'")
    out += ['    "</div>"', ")"]
    return out


def _list_body(arg: str, words: list[str]) -> list[str]:
    if len(words) < 3:
        raise AgentError("a list spec needs a class, a card module and the empty text")
    css, card, empty = words[0], words[1], " ".join(words[2:])
    empty_html = f'<p class="{css} empty">{html.escape(empty)}</p>'
    return [
        f"if not {arg}:",
        f"    return {empty_html!r}",
        f'items = "".join(f"<li>{{{card}.render(item)}}</li>" for item in {arg})',
        f"return f'<ul class=\"{css}\">{{items}}</ul>'",
    ]


# ---------------------------------------------------------------------------- service

_WHERE = re.compile(r"where\s+(\w+)(?:\s*(==|!=|>=|<=|>|<)\s*(.+))?\Z")
_SORT = re.compile(r"sort\s+(-?)(\w+)\Z")
_SUM = re.compile(r"sum\s+(\w+)\Z")


def service_body(stub: Stub) -> list[str]:
    """A query pipeline over the first argument; the last step decides what is returned."""
    if not stub.params:
        raise AgentError(f"{stub.name}: a query runs over its first argument; it has none")
    steps = [s.strip() for s in stub.spec.split("|")]
    out = [f"result = list({stub.params[0]})"]
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        terminal = _terminal_step(step)
        if terminal is not None:
            if not last:
                raise AgentError(f"{stub.name}: {step!r} must be the last step")
            return [*out, terminal]
        out.append(_filter_step(step, stub))
    return [*out, "return result"]


def _terminal_step(step: str) -> str | None:
    if step == "first":
        return "return result[0] if result else None"
    if step == "count":
        return "return len(result)"
    m = _SUM.match(step)
    if m:
        return f"return sum(item.{m[1]} for item in result)"
    return None


def _filter_step(step: str, stub: Stub) -> str:
    m = _WHERE.match(step)
    if m:
        attr, op, value = m[1], m[2], m[3]
        if op is None:
            return f"result = [item for item in result if item.{attr}]"
        return f"result = [item for item in result if item.{attr} {op} {_operand(value, stub)}]"
    m = _SORT.match(step)
    if m:
        reverse = ", reverse=True" if m[1] else ""
        return f"result = sorted(result, key=lambda item: item.{m[2]}{reverse})"
    raise AgentError(f"{stub.name}: cannot read the step {step!r}")


def _operand(value: str, stub: Stub) -> str:
    """A parameter by name, else a literal; anything else is refused rather than pasted in."""
    value = value.strip()
    if value in stub.params[1:]:
        return value
    try:
        literal = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise AgentError(f"{stub.name}: {value!r} is neither a parameter nor a literal") from None
    return repr(literal)


# ---------------------------------------------------------------------------- tests


def module_for_test(test_file: str) -> str:
    """tests/test_NAME.py tests shop/NAME.py: the naming is the whole contract."""
    path = Path(test_file)
    if path.parent.as_posix() != TESTS_DIR or not re.fullmatch(r"test_\w+\.py", path.name):
        raise AgentError(f"{test_file}: a test file is tests/test_NAME.py")
    return f"{SOURCE_PACKAGE}/{path.name[len('test_') :]}"


def write_tests(module_path: str, source: str) -> tuple[str, int]:
    """A unittest module asserting each doctest example, so the docs become checked claims."""
    tree = ast.parse(source)
    names = [
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.ClassDef) and not n.name.startswith("_")
    ]
    dotted = module_path.removesuffix(".py").replace("/", ".")
    cls = "Test" + "".join(p.capitalize() for p in dotted.split(".")[-1].split("_"))
    methods: list[str] = []
    count = 0
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        examples = doctest.DocTestParser().get_examples(ast.get_docstring(fn) or "")
        if not examples:
            continue
        methods += ["", f"    def test_{fn.name}(self) -> None:"]
        for ex in examples:
            methods += _assertion(ex)
            count += 1
    if not count:
        raise AgentError(f"{module_path}: no doctest examples to turn into tests")
    head = [
        f'"""Tests of {dotted}, from the examples in its docstrings (demo test agent)."""',
        "",
        "import unittest",
        "",
        f"from {dotted} import {', '.join(sorted(names))}",
        "",
        "",
        f"class {cls}(unittest.TestCase):",
    ]
    text = "\n".join([*head, *methods[1:], ""])
    ast.parse(text)
    return text, count


def _assertion(ex: doctest.Example) -> list[str]:
    call = ex.source.strip()
    if ex.exc_msg is not None:
        exc_type, _, message = ex.exc_msg.strip().partition(": ")
        return [
            f"        with self.assertRaises({exc_type}) as raised:",
            f"            {call}",
            f"        self.assertEqual(str(raised.exception), {message!r})",
        ]
    return [f"        self.assertEqual({call}, {ex.want.strip()})"]


# ---------------------------------------------------------------------------- research


def survey(root: Path) -> str:
    """What is left to do, as one line; the research phase's result for the others to read."""
    stubs: list[str] = []
    untested: list[str] = []
    for path in sorted((root / SOURCE_PACKAGE).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        try:
            found = find_stubs(path.read_text(encoding="utf-8"))
        except (AgentError, SyntaxError):
            found = []
        stubs += [f"{rel}:{s.name}" for s in found]
        is_module = path.parent == root / SOURCE_PACKAGE and path.name != "__init__.py"
        if is_module and not found and not (root / TESTS_DIR / f"test_{path.name}").exists():
            untested.append(rel)
    return (
        f"research: {len(stubs)} stubbed functions in "
        f"{len({s.split(':')[0] for s in stubs})} files; "
        f"{len(untested)} modules without tests: {', '.join(untested) or 'none'}"
    )


# ---------------------------------------------------------------------------- driver


def _owned(files: Sequence[str]) -> list[Path]:
    """The files as paths inside the project root (the cwd), or a refusal to touch them."""
    root = Path.cwd().resolve()
    out = []
    for name in files:
        path = (root / name).resolve()
        if not path.is_relative_to(root) or path == root:
            raise AgentError(f"{name}: outside the project root; refusing to write it")
        out.append(path)
    return out


def _implement(files: Sequence[str], write_body: Callable[[Stub], list[str]], what: str) -> str:
    done: list[str] = []
    for name, path in zip(files, _owned(files), strict=True):
        if not path.is_file():
            raise AgentError(f"{name}: no such file to implement")
        text, filled = fill_stubs(path.read_text(encoding="utf-8"), write_body)
        if filled:
            path.write_text(text, encoding="utf-8")
            done.append(f"{name} ({', '.join(filled)})")
    if not done:
        return f"{what}: nothing left to implement in {', '.join(files)}"
    return f"{what}: implemented {'; '.join(done)}"


def _write_test_files(files: Sequence[str]) -> str:
    root = Path.cwd().resolve()
    done: list[str] = []
    for name, path in zip(files, _owned(files), strict=True):
        module = module_for_test(name)
        text, count = write_tests(module, (root / module).read_text(encoding="utf-8"))
        path.write_text(text, encoding="utf-8")
        done.append(f"{name} ({count} assertions on {module})")
    return f"test: wrote {'; '.join(done)}"


def act(specialist: str, files: Sequence[str]) -> str:
    """Do one task's edit; the returned line is the task's result."""
    if specialist == "interface":
        return _implement(files, component_body, "interface")
    if specialist == "service":
        return _implement(files, service_body, "service")
    if specialist == "test":
        return _write_test_files(files)
    if specialist == "research":
        return survey(Path.cwd())
    raise AgentError(f"unknown specialist {specialist!r} (interface, service, test, research)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m guildrun._demo_agents",
        description="A stand-in agent for `guildrun demo`: it sleeps in place of a language "
        "model, then makes a real, deterministic edit to exactly the files it is given.",
    )
    p.add_argument("specialist", choices=["interface", "service", "test", "research"])
    p.add_argument("task_id")
    p.add_argument("files", nargs="*", metavar="FILE", help="the files this task owns")
    p.add_argument(
        "--think",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds to sleep in place of a language model's think time",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    time.sleep(max(0.0, args.think))
    try:
        line = act(args.specialist, args.files)
    except (AgentError, OSError, SyntaxError) as exc:
        print(f"{args.task_id}: {exc}", file=sys.stderr)
        return 2
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
