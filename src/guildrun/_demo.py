"""`guildrun demo`: the product shown working on a fresh machine, with nothing else installed.

It builds a small shop repository whose own test suite fails, runs a plan whose agents
make the edits that fix it, and lets the repository's tests say whether they did. It
then runs the same plan again on a fresh copy with one instance per specialist, so the
speedup printed is two measured wall times, not an estimate. Each run's own figure,
summed task time over its wall time, is printed as parallelism, never as speedup.

The agents (`_demo_agents`) are stand-ins: they sleep where a language model would
think, and the demo says so, with `--think` to set that time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import _demo_agents
from ._engine import run
from ._errors import Interrupted, UsageError
from ._journal import Journal, journal_path
from ._metrics import Summary
from ._plan import Plan, Specialist, Task
from ._settings import Settings

PARALLEL = 3
VALIDATE_TASK = "validate"
UNITTEST = ("-m", "unittest", "discover", "-s", "tests", "-t", ".")
GIT_IDENTITY = ("-c", "user.name=guildrun", "-c", "user.email=demo@guildrun.invalid")


# ---------------------------------------------------------------------------- the repository


@dataclass(frozen=True)
class Component:
    """One UI component of the sample shop; its spec is what the interface agent implements."""

    module: str
    title: str
    model: str
    arg: str
    spec: str
    purpose: str

    @property
    def path(self) -> str:
        return f"shop/components/{self.module}.py"

    @property
    def is_list(self) -> bool:
        return self.spec.startswith("list ")

    @property
    def card(self) -> str:
        """The card module a list renders its items with."""
        return self.spec.split()[2] if self.is_list else self.module


COMPONENTS: tuple[Component, ...] = (
    Component(
        "user_card",
        "UserCard",
        "User",
        "user",
        "card user-card name email",
        "one user, as the account page shows them.",
    ),
    Component(
        "user_list",
        "UserList",
        "User",
        "users",
        "list user-list user_card No users yet",
        "every user, for the members page.",
    ),
    Component(
        "product_card",
        "ProductCard",
        "Product",
        "product",
        "card product-card name sku price_cents:money",
        "one product, with its price as the shop shows money.",
    ),
    Component(
        "product_list",
        "ProductList",
        "Product",
        "products",
        "list product-list product_card Nothing for sale",
        "the catalogue page.",
    ),
    Component(
        "order_card",
        "OrderCard",
        "Order",
        "order",
        "card order-card id user_email total_cents:money status",
        "one order, for the order history.",
    ),
    Component(
        "order_list",
        "OrderList",
        "Order",
        "orders",
        "list order-list order_card No orders yet",
        "a user's order history.",
    ),
)

# Complete modules with doctest examples: the test agents turn those into unittest files.
TESTED_MODULES: tuple[str, ...] = ("pricing", "validation", "formatting", "cart", "inventory")


def _component_source(c: Component) -> str:
    if c.is_list:
        imports = (
            "from collections.abc import Sequence\n\n"
            f"from shop.components import {c.card}\n"
            f"from shop.models import {c.model}\n"
        )
        signature = f"def render({c.arg}: Sequence[{c.model}]) -> str:"
    else:
        money = "from shop.formatting import format_money\n" if ":money" in c.spec else ""
        imports = f"from html import escape\n\n{money}from shop.models import {c.model}\n"
        signature = f"def render({c.arg}: {c.model}) -> str:"
    return (
        f'"""{c.title}: {c.purpose}"""\n\n'
        "from __future__ import annotations\n\n"
        f"{imports}\n\n"
        f"{signature}\n"
        f'    """HTML for {c.title}; every value from a record is escaped.\n\n'
        f"    Spec: {c.spec}\n"
        '    """\n'
        f'    raise NotImplementedError("{c.title} is waiting for the interface agent")\n'
    )


@dataclass(frozen=True)
class Query:
    """One service function; its spec is what the service agent implements."""

    name: str
    signature: str
    why: str
    spec: str

    def source(self) -> str:
        return (
            f"\n\ndef {self.name}{self.signature}:\n"
            f'    """{self.why}\n\n    Spec: {self.spec}\n    """\n'
            f'    raise NotImplementedError("{self.name} is waiting for the service agent")\n'
        )


# service name -> (record it queries, module docstring, its queries)
QUERIES: dict[str, tuple[str, str, tuple[Query, ...]]] = {
    "user": (
        "User",
        "Queries over users, shared by the pages and the tests.",
        (
            Query(
                "active_users",
                "(users: Sequence[User]) -> list[User]",
                "Members who may log in, by name, for the members page.",
                "where active | sort name",
            ),
            Query(
                "find_by_email",
                "(users: Sequence[User], email: str) -> User | None",
                "The account behind a login.",
                "where email == email | first",
            ),
            Query(
                "count_active",
                "(users: Sequence[User]) -> int",
                "The number the admin dashboard shows.",
                "where active | count",
            ),
        ),
    ),
    "product": (
        "Product",
        "Queries over the catalogue.",
        (
            Query(
                "in_stock",
                "(products: Sequence[Product]) -> list[Product]",
                "What can be bought today, by name.",
                "where stock > 0 | sort name",
            ),
            Query(
                "cheapest",
                "(products: Sequence[Product]) -> Product | None",
                "The product the front page advertises.",
                "sort price_cents | first",
            ),
            Query(
                "find_by_sku",
                "(products: Sequence[Product], sku: str) -> Product | None",
                "The product a cart line names.",
                "where sku == sku | first",
            ),
            Query(
                "total_stock",
                "(products: Sequence[Product]) -> int",
                "Units in the warehouse, for the reorder report.",
                "sum stock",
            ),
        ),
    ),
    "order": (
        "Order",
        "Queries over orders.",
        (
            Query(
                "pending_orders",
                "(orders: Sequence[Order]) -> list[Order]",
                "Orders the warehouse still has to ship, oldest first.",
                'where status == "pending" | sort id',
            ),
            Query(
                "orders_for",
                "(orders: Sequence[Order], email: str) -> list[Order]",
                "A user's order history, newest first.",
                "where user_email == email | sort -id",
            ),
            Query(
                "revenue",
                "(orders: Sequence[Order]) -> int",
                "Cents actually paid, for the accounts.",
                'where status == "paid" | sum total_cents',
            ),
        ),
    ),
}


def _service_source(model: str, doc: str, queries: tuple[Query, ...]) -> str:
    head = (
        f'"""{doc}"""\n\nfrom __future__ import annotations\n\n'
        f"from collections.abc import Sequence\n\nfrom shop.models import {model}\n"
    )
    return head + "".join(q.source() for q in queries)


def _service_path(name: str) -> str:
    return f"shop/services/{name}_service.py"


def repo_files() -> dict[str, str]:
    """Every file of the sample repository, by path; components and services start as stubs."""
    files = {path: textwrap.dedent(text).lstrip("\n") for path, text in _STATIC_FILES.items()}
    files.update({c.path: _component_source(c) for c in COMPONENTS})
    files.update({_service_path(name): _service_source(*q) for name, q in QUERIES.items()})
    return files


def build_repo(dest: Path) -> None:
    """Write the sample repository into `dest` (empty or new) and commit it when git is here.

    The commit is what lets a user (and the tests) see the agents' edits with `git diff`.
    """
    _check_free(dest)
    for rel, text in repo_files().items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    _git_commit(dest)


def _check_free(dest: Path) -> None:
    """Refuse a folder with anything in it: the demo never writes over someone's files."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest}: exists and is not an empty folder; the demo will not touch it")


def _git_commit(dest: Path) -> None:
    git = shutil.which("git")
    if git is None:
        return
    steps = (
        [git, "init", "-q"],
        [git, "add", "-A"],
        [git, *GIT_IDENTITY, "commit", "-q", "--no-gpg-sign", "-m", "Sample shop: stubs, tests"],
    )
    for argv in steps:
        try:
            done = subprocess.run(argv, cwd=dest, capture_output=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return
        if done.returncode != 0:
            return


# ---------------------------------------------------------------------------- the plan


def _agent(specialist: str, think: float, *, with_files: bool = True) -> list[str]:
    # -P and a script path, not -m: the agent needs only the standard library, and
    # skipping guildrun's own imports saves a few hundred ms of CPU in every agent.
    argv = [sys.executable, "-P", str(Path(_demo_agents.__file__).resolve()), specialist]
    argv += ["{task_id}", "--think", f"{think:g}"]
    return [*argv, "--", "{files}"] if with_files else argv


def demo_plan(think: float, workspace: str = "shared") -> Plan:
    """The team: research, then interface, service and test agents, then the test suite.

    `workspace: worktree`: each instance in its own git worktree, the result applied to the
    sample repository's branch at the end."""
    limit = think + 60.0
    specialists = {
        "research": Specialist(run=_agent("research", think, with_files=False), timeout=limit),
        "interface": Specialist(run=_agent("interface", think), timeout=limit),
        "service": Specialist(run=_agent("service", think), timeout=limit),
        "test": Specialist(run=_agent("test", think), timeout=limit),
        "validator": Specialist(
            run=[sys.executable, *UNITTEST], env={"PYTHONDONTWRITEBYTECODE": "1"}, timeout=120
        ),
    }
    tasks = [
        Task(
            id="survey",
            specialist="research",
            phase="research",
            prompt="List the stubbed functions and the modules that have no tests.",
        ),
        *_component_tasks(),
        *(
            Task(
                id=f"svc-{name}",
                specialist="service",
                files=[_service_path(name)],
                scope=name,
                prompt=f"Implement the {name} queries from the Spec line of each docstring.",
            )
            for name in QUERIES
        ),
        *(
            Task(
                id=f"test-{mod}",
                specialist="test",
                files=[f"tests/test_{mod}.py"],
                scope=mod,
                prompt=f"Write unittest tests for shop/{mod}.py from its documented examples.",
            )
            for mod in TESTED_MODULES
        ),
        Task(
            id=VALIDATE_TASK,
            specialist="validator",
            phase="validation",
            prompt="Run the repository's unittest suite.",
        ),
    ]
    settings = Settings(per_agent_type=PARALLEL)
    if workspace == "worktree":
        settings = Settings(per_agent_type=PARALLEL, workspace="worktree", apply=True)
    return Plan(settings=settings, specialists=specialists, tasks=tasks)


def _component_tasks() -> list[Task]:
    """A list renders its cards, so its task waits for the card's."""
    return [
        Task(
            id=f"ui-{c.module.replace('_', '-')}",
            specialist="interface",
            files=[c.path],
            scope=c.module.split("_")[0],
            depends_on=[f"ui-{c.card.replace('_', '-')}"] if c.is_list else [],
            prompt=f"Implement {c.title}.render as its docstring's Spec describes.",
        )
        for c in COMPONENTS
    ]


def owned_files(plan: Plan) -> set[str]:
    """Every path some task may write: the whole of what a run is allowed to change."""
    return {f for t in plan.tasks for f in t.files}


# ---------------------------------------------------------------------------- verdicts


def unittest_verdict(output: str) -> tuple[bool, str]:
    """unittest's own last words, e.g. (True, 'unittest passed, 41 tests')."""
    ran = re.search(r"^Ran (\d+) tests?", output, re.MULTILINE)
    count = f"{ran[1]} tests" if ran else "no tests found"
    status = re.search(r"^(OK|FAILED)\b(.*)$", output, re.MULTILINE)
    if status is None or ran is None:
        return False, f"unittest did not finish ({count})"
    if status[1] == "OK" and int(ran[1]) > 0:
        return True, f"unittest passed, {count}"
    return False, f"unittest failed, {count} {status[2].strip()}".rstrip()


def run_unittest(repo: Path) -> tuple[bool, str]:
    """The repository's suite, run as a developer would run it."""
    done = subprocess.run(
        [sys.executable, *UNITTEST],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=_clean_env(),
    )
    ok, text = unittest_verdict(done.stderr + done.stdout)
    return ok and done.returncode == 0, text


def _clean_env() -> dict[str, str]:
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def validation_verdict(summary: Summary) -> tuple[bool, str]:
    """What the validation task saw, read from its log; its state alone would hide the count."""
    line = next((t for t in summary.tasks if t.id == VALIDATE_TASK), None)
    if line is None or line.state not in ("done", "failed"):
        state = line.state if line is not None else "missing"
        cause = f" ({line.cause})" if line is not None and line.cause else ""
        return False, f"validation {state}{cause}"
    journal = Journal(journal_path(Path(summary.root)), readonly=True)
    try:
        attempts = [a for a in journal.attempts(summary.run_id) if a["task_id"] == VALIDATE_TASK]
    finally:
        journal.close()
    text = ""
    for key in ("stderr_path", "stdout_path"):
        path = attempts[-1][key] if attempts else None
        if path and Path(path).is_file():
            text += Path(path).read_text(encoding="utf-8", errors="replace")
    ok, verdict = unittest_verdict(text)
    return ok and line.state == "done", verdict


# ---------------------------------------------------------------------------- the demo

Emit = Callable[[str], None]


def _emitter(out: Any) -> Emit:
    """Print to a rich Console (no markup: paths may hold brackets), a stream, or a callable."""
    from rich.console import Console

    if isinstance(out, Console):
        console = out
        return lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True)
    if hasattr(out, "write"):
        stream: IO[str] = out
        return lambda text: print(text, file=stream, flush=True)
    if callable(out):
        return lambda text: out(text)
    return print


def _places(dest: Path | None) -> tuple[Path, Path]:
    """Where the two copies go: `dest` and its `-sequential` sibling, or a new temp folder."""
    if dest is None:
        base = Path(tempfile.mkdtemp(prefix="guildrun-demo-"))
        return base / "parallel", base / "sequential"
    dest = dest.resolve()
    return dest, dest.with_name(dest.name + "-sequential")


@dataclass
class Measured:
    summary: Summary
    tests_ok: bool
    verdict: str


def _run_copy(repo: Path, plan: Plan, instances: int, emit: Emit) -> Measured:
    s = run(plan, root=repo, per_agent_type=instances)
    if s.status == "interrupted":
        raise Interrupted(f"demo interrupted; the run's journal is in {repo}")
    ok, verdict = validation_verdict(s)
    emit(f"  tasks: {s.done} done, {s.failed} failed, {s.skipped} skipped")
    emit(
        f"  wall {s.wall_s:.1f} s, task time {s.task_s:.1f} s, "
        f"parallelism {s.parallelism:.2f}x (task time / wall), utilization {s.utilization:.0%}"
    )
    for t in s.tasks:
        if t.state in ("failed", "skipped") and t.id != VALIDATE_TASK:
            emit(f"  {t.state}: {t.id}: {t.cause or ''}")
            for tail in t.tail[-3:]:
                emit(f"      {tail}")
    emit(f"  validation: {verdict}")
    return Measured(s, ok and s.failed == 0 and s.skipped == 0, verdict)


def run_demo(
    dest: Path | None, think: float = 1.0, out: Any = None, workspace: str = "shared"
) -> int:
    """Run the demo; 0 when both copies end with their test suite passing."""
    emit = _emitter(out)
    if think < 0:
        raise UsageError("--think: must not be negative")
    parallel_repo, sequential_repo = _places(dest)
    for place in (parallel_repo, sequential_repo):
        _check_free(place)  # both, before minutes are spent on the first run
    build_repo(parallel_repo)
    if workspace == "worktree" and shutil.which("git") is None:
        raise UsageError("--workspace worktree: the demo needs git on PATH")
    plan = demo_plan(think, workspace)
    n_files = len(owned_files(plan))
    _intro(emit, think, len(plan.tasks), n_files)
    _ok, before = run_unittest(parallel_repo)
    emit(f"before the agents: {before}")
    emit("")
    emit(f"run 1: up to {PARALLEL} instances of each specialist")
    emit(f"  in {parallel_repo}")
    fast = _run_copy(parallel_repo, plan, PARALLEL, emit)
    emit("")
    build_repo(sequential_repo)
    emit("run 2: the same plan on a fresh copy, 1 instance of each specialist")
    emit(f"  in {sequential_repo}")
    slow = _run_copy(sequential_repo, plan, 1, emit)
    emit("")
    _compare(emit, fast.summary, slow.summary)
    if workspace == "worktree":
        emit(f"see the agents' commits, one per task: git -C {parallel_repo} log --stat")
    elif (parallel_repo / ".git").is_dir():
        emit(f"see the agents' edits: git -C {parallel_repo} diff --stat")
    return 0 if fast.tests_ok and slow.tests_ok else 1


def _intro(emit: Emit, think: float, n_tasks: int, n_files: int) -> None:
    emit("guildrun demo: a sample shop whose tests fail, and a team of agents to fix it")
    emit(f"  {n_tasks} tasks owning {n_files} files: research; then interface, service and test")
    emit("  agents in parallel; then a validation phase that runs the repository's tests.")
    emit(f"  The agents are stand-ins: each sleeps {think:g} s where a language model would")
    emit("  think (set it with --think SECONDS), then makes a real, deterministic edit to")
    emit("  the files its task owns, and no others.")
    emit("")


def _compare(emit: Emit, fast: Summary, slow: Summary) -> None:
    ratio = slow.wall_s / fast.wall_s if fast.wall_s > 0 else 0.0
    emit(
        f"measured wall time: {slow.wall_s:.1f} s with 1 instance per specialist, "
        f"{fast.wall_s:.1f} s with {PARALLEL}"
    )
    emit(f"  speedup {ratio:.2f}x: measured, {PARALLEL} instances per specialist against 1")
    emit("  (parallelism, above, is one run's task time over its own wall time: how many")
    emit("  tasks ran at once on average; tasks sharing a machine slow each other down,")
    emit("  so it is more than the time saved)")


_STATIC_FILES: dict[str, str] = {
    ".gitignore": """
        __pycache__/
        .guildrun/
    """,
    "README.md": """
        # shop (a guildrun demo repository)

        A tiny shop written to be fixed by agents. The components in `shop/components/`
        and the services in `shop/services/` are stubs that raise NotImplementedError; each
        carries a `Spec:` line saying what it should do. `tests/` checks them, so

            python -m unittest discover -s tests -t .

        fails until the agents of `guildrun demo` have done their work.
    """,
    "shop/__init__.py": '''
        """A tiny shop: records, pages made of components, and queries over the records."""
    ''',
    "shop/components/__init__.py": '''
        """The pages' building blocks: each renders records as HTML."""
    ''',
    "shop/services/__init__.py": '''
        """Queries over records, kept apart from the markup so both can be tested alone."""
    ''',
    "shop/models.py": '''
        """The shop's records, frozen so a render or a query cannot change them."""

        from __future__ import annotations

        from dataclasses import dataclass


        @dataclass(frozen=True)
        class User:
            id: int
            name: str
            email: str
            active: bool = True


        @dataclass(frozen=True)
        class Product:
            sku: str
            name: str
            price_cents: int
            stock: int = 0


        @dataclass(frozen=True)
        class Order:
            id: int
            user_email: str
            total_cents: int
            status: str = "pending"
    ''',
    "shop/formatting.py": '''
        """How the shop writes numbers for people; money is kept in cents everywhere else."""

        from __future__ import annotations


        def format_money(cents: int) -> str:
            """Dollars, because customers do not read cents.

            >>> format_money(1234)
            '$12.34'
            >>> format_money(5)
            '$0.05'
            >>> format_money(-250)
            '-$2.50'
            """
            sign = "-" if cents < 0 else ""
            cents = abs(cents)
            return f"{sign}${cents // 100}.{cents % 100:02d}"


        def plural(count: int, word: str) -> str:
            """A count with its noun, for the cart badge.

            >>> plural(1, "item")
            '1 item'
            >>> plural(3, "item")
            '3 items'
            >>> plural(0, "order")
            '0 orders'
            """
            return f"{count} {word}" if count == 1 else f"{count} {word}s"
    ''',
    "shop/pricing.py": '''
        """Prices in integer cents, so that totals never drift by a rounding error."""

        from __future__ import annotations

        from collections.abc import Sequence


        def subtotal(prices: Sequence[int], quantities: Sequence[int]) -> int:
            """The cart's sum before discounts and tax.

            >>> subtotal([250, 100], [2, 3])
            800
            >>> subtotal([], [])
            0
            >>> subtotal([100], [1, 2])
            Traceback (most recent call last):
            ValueError: prices and quantities differ in length
            """
            if len(prices) != len(quantities):
                raise ValueError("prices and quantities differ in length")
            return sum(p * q for p, q in zip(prices, quantities))


        def apply_discount(cents: int, percent: int) -> int:
            """A discount rounds in the customer's favour.

            >>> apply_discount(1000, 10)
            900
            >>> apply_discount(999, 50)
            500
            >>> apply_discount(1000, 120)
            Traceback (most recent call last):
            ValueError: percent must be between 0 and 100
            """
            if not 0 <= percent <= 100:
                raise ValueError("percent must be between 0 and 100")
            return cents - cents * percent // 100


        def with_tax(cents: int, rate_percent: int) -> int:
            """Tax rounds half up, as the tax office does.

            >>> with_tax(1000, 8)
            1080
            >>> with_tax(999, 7)
            1069
            """
            return cents + (cents * rate_percent + 50) // 100
    ''',
    "shop/validation.py": '''
        """Checks on what customers type, kept strict so bad data stops at the form."""

        from __future__ import annotations

        import re

        _EMAIL = re.compile(r"[^@\\s]+@[^@\\s]+\\.[A-Za-z]{2,}")
        _SKU = re.compile(r"[A-Z]{3}-\\d{4}")


        def is_valid_email(text: str) -> bool:
            """Good enough to catch typos; the confirmation mail does the rest.

            >>> is_valid_email("ada@example.com")
            True
            >>> is_valid_email("ada@example")
            False
            >>> is_valid_email("a da@example.com")
            False
            """
            return _EMAIL.fullmatch(text) is not None


        def is_valid_sku(text: str) -> bool:
            """Stock keeping units as the warehouse prints them.

            >>> is_valid_sku("LMP-0001")
            True
            >>> is_valid_sku("lmp-0001")
            False
            >>> is_valid_sku("LMP-01")
            False
            """
            return _SKU.fullmatch(text) is not None


        def clamp_quantity(quantity: int, low: int = 1, high: int = 99) -> int:
            """A cart line holds at least one and at most a shelf's worth.

            >>> clamp_quantity(0)
            1
            >>> clamp_quantity(150)
            99
            >>> clamp_quantity(5)
            5
            """
            return max(low, min(high, quantity))
    ''',
    "shop/cart.py": '''
        """The cart as a mapping of SKU to quantity; every change returns a new cart."""

        from __future__ import annotations

        from collections.abc import Mapping


        def add_item(cart: Mapping[str, int], sku: str, quantity: int = 1) -> dict[str, int]:
            """Adding what is already there raises its quantity instead of adding a line.

            >>> add_item({}, "LMP-0001", 2)
            {'LMP-0001': 2}
            >>> add_item({"LMP-0001": 2}, "LMP-0001")
            {'LMP-0001': 3}
            """
            out = dict(cart)
            out[sku] = out.get(sku, 0) + quantity
            return out


        def remove_item(cart: Mapping[str, int], sku: str) -> dict[str, int]:
            """Removing a missing line is not an error: the customer may have clicked twice.

            >>> remove_item({"LMP-0001": 2, "MUG-0003": 1}, "LMP-0001")
            {'MUG-0003': 1}
            >>> remove_item({}, "LMP-0001")
            {}
            """
            return {k: v for k, v in cart.items() if k != sku}


        def item_count(cart: Mapping[str, int]) -> int:
            """The number on the cart badge.

            >>> item_count({"LMP-0001": 2, "MUG-0003": 1})
            3
            >>> item_count({})
            0
            """
            return sum(cart.values())
    ''',
    "shop/inventory.py": '''
        """Stock levels by SKU, and when to reorder."""

        from __future__ import annotations

        from collections.abc import Mapping


        def restock(stock: Mapping[str, int], sku: str, amount: int) -> dict[str, int]:
            """A delivery; taking stock out goes through orders, never through here.

            >>> restock({"LMP-0001": 1}, "LMP-0001", 4)
            {'LMP-0001': 5}
            >>> restock({}, "LMP-0001", -1)
            Traceback (most recent call last):
            ValueError: amount must be positive
            """
            if amount <= 0:
                raise ValueError("amount must be positive")
            out = dict(stock)
            out[sku] = out.get(sku, 0) + amount
            return out


        def low_stock(stock: Mapping[str, int], threshold: int = 3) -> list[str]:
            """What to reorder, sorted so the report is stable.

            >>> low_stock({"MUG-0003": 3, "CHR-0002": 10, "LMP-0001": 1})
            ['LMP-0001', 'MUG-0003']
            """
            return sorted(sku for sku, n in stock.items() if n <= threshold)
    ''',
    "tests/__init__.py": "",
    "tests/test_components.py": '''
        """What the pages rely on from each component. Fails until the components exist."""

        import unittest

        from shop.components import (
            order_card,
            order_list,
            product_card,
            product_list,
            user_card,
            user_list,
        )
        from shop.models import Order, Product, User

        ADA = User(1, "Ada <admin>", "ada@example.com")
        BOB = User(2, "Bob", "bob@example.com", active=False)
        LAMP = Product("LMP-0001", "Lamp & shade", 2599, stock=4)
        MUG = Product("MUG-0003", "Mug", 899, stock=12)
        PAID = Order(7, "ada@example.com", 1234, status="paid")
        OPEN = Order(8, "ada@example.com", 500)


        class TestUserComponents(unittest.TestCase):
            def test_card_escapes_the_name(self) -> None:
                html = user_card.render(ADA)
                self.assertTrue(html.startswith('<div class="user-card">'))
                self.assertIn("Ada &lt;admin&gt;", html)
                self.assertIn("ada@example.com", html)

            def test_list_wraps_each_card(self) -> None:
                html = user_list.render([ADA, BOB])
                self.assertTrue(html.startswith('<ul class="user-list">'))
                self.assertEqual(html.count("<li>"), 2)
                self.assertIn(user_card.render(BOB), html)

            def test_empty_list_says_so(self) -> None:
                self.assertIn("No users yet", user_list.render([]))


        class TestProductComponents(unittest.TestCase):
            def test_card_shows_price_as_money(self) -> None:
                html = product_card.render(LAMP)
                self.assertTrue(html.startswith('<div class="product-card">'))
                self.assertIn("Lamp &amp; shade", html)
                self.assertIn("$25.99", html)
                self.assertIn("LMP-0001", html)

            def test_list_keeps_the_order_given(self) -> None:
                html = product_list.render([MUG, LAMP])
                self.assertLess(html.index("Mug"), html.index("Lamp"))
                self.assertEqual(html.count('class="product-card"'), 2)

            def test_empty_list_says_so(self) -> None:
                self.assertIn("Nothing for sale", product_list.render([]))


        class TestOrderComponents(unittest.TestCase):
            def test_card_shows_total_and_status(self) -> None:
                html = order_card.render(PAID)
                self.assertTrue(html.startswith('<div class="order-card">'))
                self.assertIn("$12.34", html)
                self.assertIn("paid", html)

            def test_list_wraps_each_card(self) -> None:
                html = order_list.render([PAID, OPEN])
                self.assertEqual(html.count("<li>"), 2)
                self.assertIn("pending", html)

            def test_empty_list_says_so(self) -> None:
                self.assertIn("No orders yet", order_list.render([]))


        if __name__ == "__main__":
            unittest.main()
    ''',
    "tests/test_services.py": '''
        """The queries the pages run. Fails until the services exist."""

        import unittest

        from shop.models import Order, Product, User
        from shop.services import order_service, product_service, user_service

        USERS = [
            User(2, "Zoe", "zoe@example.com"),
            User(1, "Ada", "ada@example.com"),
            User(3, "Max", "max@example.com", active=False),
        ]
        PRODUCTS = [
            Product("LMP-0001", "Lamp", 2599, stock=4),
            Product("CHR-0002", "Chair", 4999, stock=0),
            Product("MUG-0003", "Mug", 899, stock=12),
        ]
        ORDERS = [
            Order(1, "ada@example.com", 1000, status="paid"),
            Order(2, "bob@example.com", 500),
            Order(3, "ada@example.com", 250),
            Order(4, "ada@example.com", 2000, status="paid"),
        ]


        class TestUserService(unittest.TestCase):
            def test_active_users_by_name(self) -> None:
                names = [u.name for u in user_service.active_users(USERS)]
                self.assertEqual(names, ["Ada", "Zoe"])

            def test_find_by_email(self) -> None:
                found = user_service.find_by_email(USERS, "max@example.com")
                self.assertIsNotNone(found)
                assert found is not None
                self.assertEqual(found.id, 3)
                self.assertIsNone(user_service.find_by_email(USERS, "nobody@example.com"))

            def test_count_active(self) -> None:
                self.assertEqual(user_service.count_active(USERS), 2)


        class TestProductService(unittest.TestCase):
            def test_in_stock_by_name(self) -> None:
                names = [p.name for p in product_service.in_stock(PRODUCTS)]
                self.assertEqual(names, ["Lamp", "Mug"])

            def test_cheapest(self) -> None:
                cheapest = product_service.cheapest(PRODUCTS)
                self.assertEqual(cheapest.sku if cheapest else None, "MUG-0003")
                self.assertIsNone(product_service.cheapest([]))

            def test_find_by_sku(self) -> None:
                found = product_service.find_by_sku(PRODUCTS, "CHR-0002")
                self.assertEqual(found.name if found else None, "Chair")

            def test_total_stock(self) -> None:
                self.assertEqual(product_service.total_stock(PRODUCTS), 16)


        class TestOrderService(unittest.TestCase):
            def test_pending_oldest_first(self) -> None:
                ids = [o.id for o in order_service.pending_orders(ORDERS)]
                self.assertEqual(ids, [2, 3])

            def test_history_newest_first(self) -> None:
                ids = [o.id for o in order_service.orders_for(ORDERS, "ada@example.com")]
                self.assertEqual(ids, [4, 3, 1])

            def test_revenue_counts_paid_orders(self) -> None:
                self.assertEqual(order_service.revenue(ORDERS), 3000)


        if __name__ == "__main__":
            unittest.main()
    ''',
}
