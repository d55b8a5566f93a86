"""Choosing the store: a postgresql:// URL selects PostgreSQL, anything else is
the path of a SQLite file (the default)."""

from __future__ import annotations

from server.domain.ports import Store
from server.keys import CodeCipher
from server.store.postgres import PoolSettings, PostgresStore
from server.store.sqlite import SqliteStore

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(database: str) -> bool:
    return database.startswith(_POSTGRES_SCHEMES)


async def open_store(database: str, cipher: CodeCipher, pool: PoolSettings | None = None) -> Store:
    """Opens the database, creating or migrating its schema."""
    if is_postgres(database):
        return await PostgresStore.open(database, cipher, pool or PoolSettings())
    return await SqliteStore.open(database, cipher)
