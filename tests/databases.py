"""The two backends the tests run on: a SQLite file per test, or a PostgreSQL schema
per test in the database of INSTANT_ORDERS_TEST_POSTGRES (default: the local
server's `test` database). Tests read either directly, with the same SQL."""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path
from typing import Any

import psycopg

from server.settings import is_postgres
from server.store import schema

POSTGRES_URL = os.environ.get("INSTANT_ORDERS_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")
_KEY_FILES: dict[str, str] = {}


@functools.cache
def postgres_unreachable() -> str | None:
    """Why the tests cannot use PostgreSQL, or None when they can."""
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as db:
            db.execute("SELECT 1")
    except psycopg.Error as error:
        return f"cannot reach PostgreSQL at {POSTGRES_URL}: {str(error).strip()}"
    return None


def new_postgres_schema(key_dir: Path) -> str:
    """A fresh, empty schema; returns the URL that selects it (the key file in key_dir)."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {schema}")
    url = f"{POSTGRES_URL}?search_path={schema}"
    _KEY_FILES[url] = str(key_dir / "orders.key")
    return url


def drop_postgres_schema(url: str) -> None:
    schema = url.rpartition("search_path=")[2]
    if reader := _READERS.pop(url, None):
        reader.close()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
        db.execute("SET lock_timeout = '30s'")
        db.execute(f"DROP SCHEMA {schema} CASCADE")
    _KEY_FILES.pop(url, None)


def key_file(database: str) -> str:
    """The key file that goes with the database: beside a SQLite file."""
    return _KEY_FILES.get(database, database + ".key")


# One autocommit connection per test schema: connecting costs ~5 ms, and the model
# test alone queries thousands of times.
_READERS: dict[str, psycopg.Connection[Any]] = {}


def _postgres_reader(database: str) -> psycopg.Connection[Any]:
    reader = _READERS.get(database)
    if reader is None or reader.closed or reader.broken:
        base, _, schema = database.partition("?search_path=")
        reader = psycopg.connect(base, options=f"-c search_path={schema}", autocommit=True)
        _READERS[database] = reader
    return reader


def query(database: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Runs one statement (with ? placeholders) in its own transaction; returns its rows."""
    if is_postgres(database):
        return _postgres_query(_postgres_reader(database), sql, params)
    import sqlite3

    with sqlite3.connect(database) as sqlite:
        return sqlite.execute(sql, params).fetchall()


def _postgres_query(
    reader: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]
) -> list[tuple[Any, ...]]:
    cursor = reader.execute(sql.replace("?", "%s"), params)
    return cursor.fetchall() if cursor.description else []


def one(database: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The single value the query returns."""
    ((value,),) = query(database, sql, params)
    return value


def latest_schema_version(database: str) -> int:
    return schema.SCHEMA_VERSION


def stored_schema_version(database: str) -> int:
    if is_postgres(database):
        return int(one(database, "SELECT version FROM schema_version"))
    return int(one(database, "PRAGMA user_version"))


def stamp_schema_version(database: str, version: int) -> None:
    """Makes the database claim another schema version (as a newer service would)."""
    if is_postgres(database):
        query(database, "UPDATE schema_version SET version = ?", (version,))
    else:
        query(database, f"PRAGMA user_version = {int(version)}")
