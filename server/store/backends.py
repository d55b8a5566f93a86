"""Choosing the store: a postgresql:// URL selects PostgreSQL, anything else is
the path of a SQLite file (the default)."""

from __future__ import annotations

import sqlite3
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from server.domain.failures import StorageUnavailable
from server.domain.ports import Store
from server.keys import CodeCipher
from server.settings import is_postgres
from server.store.postgres import PoolSettings, PostgresStore
from server.store.sqlite import SqliteStore


def shown(database: str) -> str:
    """The database as logs may show it: a URL without its password."""
    if not is_postgres(database):
        return database
    url = urlsplit(database)
    if url.password is None:
        return database
    host = url.netloc.rpartition("@")[2]
    return urlunsplit(url._replace(netloc=f"{url.username}:***@{host}"))


class CannotOpenDatabase(Exception):
    """The database could not be opened or brought up to date: one line says which
    (its password hidden) and why."""

    def __init__(self, database: str, reason: BaseException) -> None:
        why = " ".join(str(reason).split()) or type(reason).__name__  # on one line
        password = urlsplit(database).password if is_postgres(database) else None
        if password:
            why = why.replace(password, "***")
        super().__init__(f"cannot open the database {shown(database)}: {why}")


#: What a database that cannot be opened raises, besides StorageUnavailable:
#: SQLite's errors and the file system's; for PostgreSQL, its errors, a refused or
#: timed-out connection, and a URL asyncpg cannot parse (ValueError).
_SQLITE_FAILURES = (sqlite3.Error, OSError, StorageUnavailable)
_POSTGRES_FAILURES = (
    asyncpg.PostgresError, asyncpg.InterfaceError, OSError, ValueError, StorageUnavailable,
)  # fmt: skip


async def open_store(database: str, cipher: CodeCipher, pool: PoolSettings | None = None) -> Store:
    """Opens the database, creating or migrating its schema. Raises CannotOpenDatabase
    when it cannot, having released whatever it had opened."""
    if is_postgres(database):
        try:
            return await PostgresStore.open(database, cipher, pool or PoolSettings())
        except _POSTGRES_FAILURES as error:
            raise CannotOpenDatabase(database, error) from error
    try:
        return await SqliteStore.open(database, cipher)
    except _SQLITE_FAILURES as error:
        raise CannotOpenDatabase(database, error) from error
