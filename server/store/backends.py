"""Choosing the store: a postgresql:// URL selects PostgreSQL, anything else is
the path of a SQLite file (the default)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

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


async def open_store(database: str, cipher: CodeCipher, pool: PoolSettings | None = None) -> Store:
    """Opens the database, creating or migrating its schema."""
    if is_postgres(database):
        return await PostgresStore.open(database, cipher, pool or PoolSettings())
    return await SqliteStore.open(database, cipher)
