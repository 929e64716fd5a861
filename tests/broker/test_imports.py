"""The import graph keeps the rooms honest: no cycles, the store imports no service, the CLI
and the shared code import nothing from the broker (the CLI installs without it).

Imports are read with ``ast`` from each module's source, both module-level and inside
functions. Only module-level imports (outside ``if TYPE_CHECKING:``) can form a cycle at
import time; the layering rules count every import, since a function-level one still binds
the importer to what it imports.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import pkgutil
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import access.broker
import access.cli
import access.shared

ROOTS = (access.broker, access.cli, access.shared)

# Cycles among module-level imports that exist today in rooms other helpers own; each is the
# set of modules of one strongly connected component. Remove an entry once its cycle is gone
# (the test fails when an entry no longer matches reality, so this list cannot go stale).
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()


@dataclass(frozen=True)
class Import:
    target: str  # the module imported (a submodule when ``from package import submodule``)
    module_level: bool  # executed when the importer is imported (not in a function or TYPE_CHECKING)
    line: int


@functools.cache
def _modules() -> dict[str, Path]:
    """Every module of ours and its source file (read once, by the first test that asks: not at
    collection, which every pytest-xdist worker does)."""
    found: dict[str, Path] = {}
    for root in ROOTS:
        found[root.__name__] = Path(root.__file__ or "")
        for info in pkgutil.walk_packages(root.__path__, root.__name__ + "."):
            spec = importlib.util.find_spec(info.name)
            assert spec is not None and spec.origin is not None, info.name
            origin = Path(spec.origin)
            # A compiled module (mypyc) sits next to its source; the source is what we read.
            source = (
                origin if origin.suffix == ".py" else origin.with_name(info.name.rpartition(".")[2] + ".py")
            )
            found[info.name] = source
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    parts = importer.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(name: str) -> Iterator[Import]:
    path = _modules()[name]
    return _parse(name, path.read_text(), is_package=path.name == "__init__.py")


def _parse(name: str, source: str, *, is_package: bool) -> Iterator[Import]:
    tree = ast.parse(source)

    def visit(node: ast.AST, module_level: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, module_level, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield Import(sub if sub in _modules() else base, module_level, node.lineno)
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
                yield from visit(child, False)
            else:
                nested = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                yield from visit(child, module_level and not nested)

    yield from visit(tree, True)


@functools.cache
def _graph() -> dict[str, list[Import]]:
    """What each module imports."""
    return {name: list(_imports(name)) for name in _modules()}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


Graph = dict[str, list[Import]]


def _violations(graph: Graph, importers: str, forbidden: str, allowed: tuple[str, ...] = ()) -> list[str]:
    return [
        f"{name}:{imp.line} imports {imp.target}"
        for name, imports in graph.items()
        if _within(name, importers)
        for imp in imports
        if _within(imp.target, forbidden) and not any(_within(imp.target, ok) for ok in allowed)
    ]


def _cycles(imports_of: Graph) -> set[frozenset[str]]:
    """Strongly connected components (Tarjan) of more than one module, or with a self-import."""
    graph = {
        name: sorted({i.target for i in imports if i.module_level and i.target in imports_of})
        for name, imports in imports_of.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.add(frozenset(component))

    for name in graph:
        if name not in index:
            connect(name)
    return found


def test_every_package_is_walked() -> None:
    # A guard against a walk that silently finds nothing (the rules below would pass vacuously).
    for expected in (
        "access.broker.store.tables",
        "access.broker.auth.identity.embedded",
        "access.cli.main",
        "access.shared.errors",
    ):
        assert expected in _modules(), expected
    assert any(not i.module_level for imports in _graph().values() for i in imports)


def test_no_import_cycles_at_module_level() -> None:
    cycles = _cycles(_graph())
    new = sorted(sorted(c) for c in cycles - KNOWN_CYCLES)
    gone = sorted(sorted(c) for c in KNOWN_CYCLES - cycles)
    assert not new, f"import cycles: {new}"
    assert not gone, f"these KNOWN_CYCLES are gone (or changed shape): remove them: {gone}"


# Cycles that close only through a function-level import (deferred to dodge the cycle, as
# identity <-> sessions did before the auth room was split); same rules as KNOWN_CYCLES.
KNOWN_DEFERRED_CYCLES: frozenset[frozenset[str]] = frozenset()


def test_no_import_cycles_even_through_function_level_imports() -> None:
    every = {name: [Import(i.target, True, i.line) for i in imports] for name, imports in _graph().items()}
    cycles = _cycles(every) - _cycles(_graph())
    new = sorted(sorted(c) for c in cycles - KNOWN_DEFERRED_CYCLES)
    gone = sorted(sorted(c) for c in KNOWN_DEFERRED_CYCLES - cycles)
    assert not new, f"import cycles through function-level imports: {new}"
    assert not gone, f"these KNOWN_DEFERRED_CYCLES are gone (or changed shape): remove them: {gone}"


def test_the_store_imports_no_service() -> None:
    allowed = ("access.broker.store", "access.broker.clock", "access.broker.errors")
    assert _violations(_graph(), "access.broker.store", "access.broker", allowed) == []


# What building or running a query looks like in SQLAlchemy Core: none of it outside store/.
_SQL = re.compile(
    r"\bsa\.(select|insert|update|delete|text|func|and_|or_)\b|\.(insert|update|delete)\(\)"
    r"|\bexec_driver_sql\b|\.execute\("
)


# Rooms whose SQL goes to a TARGET with the broker's admin credential (per-grant identities),
# never to the broker's own database: they may not touch the store (next test) instead.
TARGET_SQL = ("access.broker.provision",)


def test_all_sql_lives_in_the_store() -> None:
    outside = {name: path for name, path in _modules().items() if _within(name, "access.broker")}
    outside = {n: p for n, p in outside.items() if not _within(n, "access.broker.store")}
    outside = {n: p for n, p in outside.items() if not any(_within(n, room) for room in TARGET_SQL)}
    tables = _violations(_graph(), "access.broker", "access.broker.store.tables")
    tables = [v for v in tables if not v.startswith("access.broker.store")]
    assert tables == [], "only store/ uses the tables"
    queries = [
        f"{name}:{number}: {line.strip()}"
        for name, path in sorted(outside.items())
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _SQL.search(line)
    ]
    assert queries == [], "SQL outside access.broker.store"


@pytest.mark.parametrize("room", TARGET_SQL)
@pytest.mark.parametrize("forbidden", ["access.broker.store", "access.broker.tunnel"])
def test_target_sql_rooms_do_not_reach_the_store_or_the_tunnel(room: str, forbidden: str) -> None:
    assert any(_within(name, room) for name in _modules()), room
    assert _violations(_graph(), room, forbidden) == []


@pytest.mark.parametrize("importers", ["access.cli", "access.shared"])
def test_cli_and_shared_import_nothing_from_the_broker(importers: str) -> None:
    assert _violations(_graph(), importers, "access.broker") == []


def test_shared_imports_nothing_from_the_cli() -> None:
    assert _violations(_graph(), "access.shared", "access.cli") == []


def test_the_checks_see_what_they_look_for() -> None:
    # A made-up graph: the checks must report its cycle and its function-level violation, and
    # must not count a function-level or TYPE_CHECKING import towards a cycle.
    graph: Graph = {
        "access.broker.a": [Import("access.broker.b", True, 1)],
        "access.broker.b": [Import("access.broker.a", True, 1), Import("access.broker.c", True, 2)],
        "access.broker.c": [Import("access.broker.b", False, 3)],
        "access.shared.x": [Import("access.broker.c", False, 9)],
    }
    assert _cycles(graph) == {frozenset({"access.broker.a", "access.broker.b"})}
    assert _violations(graph, "access.shared", "access.broker") == [
        "access.shared.x:9 imports access.broker.c"
    ]
    assert _violations(graph, "access.shared", "access.broker", ("access.broker.c",)) == []
    assert not _within("access.brokerage", "access.broker")


def test_the_parser_tells_module_level_imports_from_the_others() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import access.broker.clock\n"
        "from . import tables\n"
        "from ..auth import tokens\n"
        "if TYPE_CHECKING:\n"
        "    from access.broker.runtime import Broker\n"
        "try:\n"
        "    import access.broker.keys\n"
        "except ImportError:\n"
        "    pass\n"
        "class C:\n"
        "    from access.broker import errors\n"
        "    def f(self):\n"
        "        import access.cli.main\n"
        "async def g():\n"
        "    from access.shared import names\n"
    )
    found = [(i.target, i.module_level) for i in _parse("access.broker.store.x", source, is_package=False)]
    assert found == [
        ("typing", True),
        ("access.broker.clock", True),
        ("access.broker.store.tables", True),
        ("access.broker.auth.tokens", True),
        ("access.broker.runtime", False),
        ("access.broker.keys", True),
        ("access.broker.errors", True),
        ("access.cli.main", False),
        ("access.shared.names", False),
    ]


def test_imports_inside_functions_are_not_module_level() -> None:
    imports = {(i.target, i.module_level) for i in _graph()["access.broker.auth.identity.directory"]}
    assert ("access.broker.grants", False) in imports
    assert ("access.broker.store.principals", True) in imports
    # ``from access.broker.store import sessions`` names the submodule, not the package.
    assert ("access.broker.store.sessions", True) in imports


def test_the_wire_machines_import_no_other_room_and_no_io() -> None:
    """broker/wire is sans-I/O: bytes in, bytes out. It imports nothing else of ours, and no
    socket or event loop, so each machine can be tested byte by byte."""
    assert _violations(_graph(), "access.broker.wire", "access", ("access.broker.wire",)) == []
    for io in ("socket", "asyncio", "selectors", "ssl"):
        assert _violations(_graph(), "access.broker.wire", io) == [], io
