"""Dependencies point down: each layer imports only what its one job needs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    """Every module the file imports, by its full dotted name."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def importing(paths: list[Path], *forbidden: str) -> list[str]:
    """`path: module` for each import of a forbidden module (or one inside it)."""
    return [
        f"{path.relative_to(ROOT)}: {name}"
        for path in paths
        for name in sorted(imports_of(path))
        if any(name == bad or name.startswith(bad + ".") for bad in forbidden)
    ]


def test_the_domain_knows_no_transport_and_no_database():
    drivers = ("sqlite3", "aiosqlite", "asyncpg")
    transports = ("grpc", "aiohttp", "instantorders", "server.rpc")
    assert importing(files("server/domain"), *transports, "server.store", *drivers) == []


def test_no_store_builds_an_api_error():
    assert importing(files("server/store"), "server.domain.errors", "grpc", "aiohttp") == []


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("server/settings.py", ("server.store", "aiosqlite", "asyncpg")),
        ("server/logs.py", ("aiohttp", "grpc")),
        ("bench/report.py", ("bench.run",)),
    ],
)
def test_a_module_does_not_reach_up(module, forbidden):
    assert importing([ROOT / module], *forbidden) == []


def test_the_gateway_never_touches_the_database():
    assert importing(files("gateway"), "server.store", "server.rpc", "aiosqlite", "asyncpg") == []
