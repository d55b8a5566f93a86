"""One text per statement: how a statement reads in each dialect, and that no
statement is written twice in the server."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

from server.store.sql import Dialect, Statement

SERVER = Path(__file__).resolve().parents[1] / "server"
_SQL = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\s")


def test_named_parameters_become_numbered_ones_for_postgresql():
    statement = Statement(
        "SELECT id::text FROM orders WHERE sku = :sku AND account_id = :account_id"
        " AND NOT EXISTS (SELECT 1 FROM orders w WHERE w.sku = :sku)"
    )
    compiled = statement.compiled(Dialect.POSTGRES)
    assert compiled.text == (
        "SELECT id::text FROM orders WHERE sku = $1 AND account_id = $2"
        " AND NOT EXISTS (SELECT 1 FROM orders w WHERE w.sku = $1)"
    )
    assert compiled.names == ("sku", "account_id")


def test_sqlite_keeps_named_parameters_and_reads_lists_as_json():
    statement = Statement("SELECT id FROM orders WHERE id = ANY(:ids) AND sku = :sku")
    assert statement.compiled(Dialect.SQLITE).text == (
        "SELECT id FROM orders WHERE id IN (SELECT value FROM json_each(:ids)) AND sku = :sku"
    )


def test_fragments_say_what_each_dialect_needs():
    statement = Statement(
        "SELECT id FROM codes {unsold_codes_index} WHERE order_id IS NULL LIMIT 1 {skip_locked}"
    )
    assert statement.compiled(Dialect.SQLITE).text == (
        "SELECT id FROM codes INDEXED BY unsold_codes WHERE order_id IS NULL LIMIT 1"
    )
    assert statement.compiled(Dialect.POSTGRES).text == (
        "SELECT id FROM codes WHERE order_id IS NULL LIMIT 1 FOR UPDATE SKIP LOCKED"
    )


def sql_texts() -> list[tuple[Path, str]]:
    """Every string literal in server/ that is an SQL statement, white space folded."""
    return [
        (path.relative_to(SERVER), " ".join(node.value.split()))
        for path in SERVER.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.match(node.value)
    ]


def test_no_statement_is_written_twice_in_the_server():
    texts = Counter(text for _, text in sql_texts())
    assert len(texts) > 30  # the scan finds the statements
    assert [text for text, count in texts.items() if count > 1] == []


def test_only_the_store_speaks_sql():
    assert {path.parts[0] for path, _ in sql_texts()} == {"store"}
