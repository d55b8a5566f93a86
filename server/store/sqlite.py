"""The embedded store: SQLite in WAL mode behind aiosqlite.

aiosqlite gives each connection its own thread. A transaction (transactions.py)
runs there whole, as one plain function call, so an order costs one hop
between the event loop and the database, never one per statement; concurrent
requests share hops and commits (see batches.py). Writes go through one
connection inside BEGIN IMMEDIATE transactions, so they are serialized:
read-check-write sequences (balance, duplicate check, code reservation)
cannot interleave. Reads use a second connection and never wait for writes
(WAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from server import metrics
from server.domain.failures import DataConflict
from server.keys import CodeCipher
from server.store.base import SqlStore
from server.store.batches import Batcher, in_thread, read_batch, write_batch
from server.store.common import RestockSignal, SchemaTooNew
from server.store.schema import SCHEMA_VERSION, migrate
from server.store.sealing import check_key_file
from server.store.sql import Dialect, Query, Returns, Rollback, Unit, advance
from server.store.storage_faults import StorageHealth, touch

T = TypeVar("T")


class SqliteStore(SqlStore):
    backend = "sqlite"

    def __init__(
        self,
        cipher: CodeCipher,
        found_schema_version: int,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        path: Path,
    ) -> None:
        super().__init__(cipher, found_schema_version)
        self._path = path
        self._writer, self._reader = writer, reader
        self._restocked = RestockSignal()
        self._writes = Batcher(writer, write_batch, sizes=metrics.write_batch)
        self._reads = Batcher(reader, read_batch)
        self._storage = StorageHealth(probe=lambda: self._writes.run(touch))

    @classmethod
    async def open(cls, path: str | Path, cipher: CodeCipher) -> SqliteStore:
        """Opens (creating or migrating) the database; codes are sealed with `cipher`."""
        _create_private(Path(path))
        writer = await _connect(path)
        try:
            _refuse_readable_by_others(Path(path))  # once SQLite knows it for a database
            found_version = await in_thread(writer, lambda db: _migrate(db, cipher))
            if found_version < SCHEMA_VERSION:
                # Copy the migrated pages into the database file at once, so no
                # pre-migration page (say, a code in the clear) lingers in it.
                await in_thread(
                    writer, lambda db: db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                )
            reader = await _connect(path)
        except BaseException:
            await _close(writer)
            raise
        return cls(cipher, found_version, writer, reader, Path(path))

    async def close(self) -> None:
        await self._storage.close()
        await self._writes.close()
        await self._reads.close()
        await self._reader.close()
        await self._writer.close()

    async def wait_for_restock(self, max_seconds: float) -> None:
        """Wakes for restocks through this process; the fulfiller's polling finds
        the others (`admin add-codes` in another process)."""
        await self._restocked.wait(max_seconds)

    async def _announce_restock(self) -> None:
        self._restocked.set()

    async def ping(self) -> None:
        """Fails while the storage fails (a full disk), though reads still work."""
        self._storage.check()
        await super().ping()

    async def backup(self, to: Path) -> None:
        """VACUUM INTO a new file made 0600 first, on a connection of its own: one
        read transaction, so a consistent copy, while writers go on (WAL)."""
        descriptor = os.open(to, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(descriptor)
        await asyncio.to_thread(_vacuum_into, self._path, to)

    async def _run(self, transaction: Callable[[], Unit[T]], *, writes: bool) -> T:
        """Writes share a transaction with concurrent writes (group commit, see
        batches.py), each atomic on its own in a savepoint; reads share a snapshot."""
        batches = self._writes if writes else self._reads
        try:
            return await batches.run(lambda db: run(db, transaction()))
        except Rollback as rolled_back:
            return rolled_back.value  # type: ignore[no-any-return]
        except (sqlite3.Error, OSError) as error:
            failing = self._storage.failed(error)  # a full disk, say: logged once per burst
            if failing is None:
                raise
            raise failing from error


def run(db: sqlite3.Connection, transaction: Unit[T]) -> T:
    """Runs a transaction's queries on the connection; returns what it returns."""
    step = advance(transaction, None)
    while isinstance(step, Query):
        step = advance(transaction, _execute(db, step))
    return step.value


def _execute(db: sqlite3.Connection, query: Query) -> Any:
    statement, returns = query.statement, query.returns
    if returns is Returns.SCRIPT:
        for text in _statements(statement.script_text(Dialect.SQLITE)):
            db.execute(text)
        return None
    compiled = statement.sqlite
    try:
        if query.batch is not None:
            db.executemany(compiled.text, [_json_lists(p, compiled.lists) for p in query.batch])
            return None
        cursor = db.execute(compiled.text, _json_lists(query.params, compiled.lists))
    except sqlite3.IntegrityError as error:
        if query.conflict and error.sqlite_errorname == "SQLITE_CONSTRAINT_UNIQUE":
            raise DataConflict(query.conflict) from None
        raise
    if returns is Returns.NOTHING:
        return None
    if returns is Returns.COUNT:
        return cursor.rowcount
    if returns is Returns.ROWS:
        return cursor.fetchall()
    if returns is Returns.COLUMN:
        return [row[0] for row in cursor]
    row = cursor.fetchone()  # ROW and VALUE: at most one row is ever asked for
    if row is None or returns is Returns.ROW:
        return row
    return row[0]


def _json_lists(params: Mapping[str, Any], lists: tuple[str, ...]) -> Mapping[str, Any]:
    """Lists go to SQLite as JSON text, which `= ANY(:list)` reads with json_each."""
    if not lists:
        return params
    return {**params, **{name: json.dumps(params[name]) for name in lists}}


async def _connect(path: str | Path) -> aiosqlite.Connection:
    connection = aiosqlite.connect(path, isolation_level=None)
    try:
        await connection
        await in_thread(connection, _configure)  # a file that is no database fails here
    except BaseException:
        await _close(connection)
        raise
    return connection


async def _close(connection: aiosqlite.Connection) -> None:
    """Closes the connection and waits for its thread to end. The thread is not a
    daemon: one left running keeps the process from ever exiting. A connection that
    failed to open has had its thread told to stop, but not waited for: it would
    report to an event loop already closed."""
    try:
        await connection.close()
    finally:
        # aiosqlite before 0.22 runs each connection as a Thread; since, it holds one.
        thread = cast(threading.Thread, getattr(connection, "_thread", connection))
        if thread.is_alive():
            await asyncio.to_thread(thread.join)


def _create_private(path: Path) -> None:
    """Creates a missing database file with mode 0600, whatever the umask; SQLite gives
    its -wal and -shm files the database file's mode."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return  # it exists; or it cannot be made, and SQLite says why in its own words
    os.fchmod(descriptor, 0o600)  # a umask such as 0277 would leave it unwritable
    os.close(descriptor)


#: The database's files: it holds key hashes, balances, orders and sealed codes.
_DATABASE_FILES = ("", "-wal", "-shm")


def _refuse_readable_by_others(path: Path) -> None:
    """The key file's rule (keys.py): a file others may read or write is refused."""
    for suffix in _DATABASE_FILES:
        name = Path(f"{path}{suffix}")
        with contextlib.suppress(FileNotFoundError):
            if name.stat().st_mode & 0o077:
                raise PermissionError(f"{name} is readable by others: chmod 600 {path}*")


def _configure(db: sqlite3.Connection) -> None:
    db.row_factory = sqlite3.Row  # rows read by column name, as asyncpg's
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")  # an acknowledged order survives power loss
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA busy_timeout = 5000")  # other processes (admin commands) may write
    db.execute("PRAGMA secure_delete = ON")  # deleted content is zeroed, not left in free pages


def _migrate(db: sqlite3.Connection, cipher: CodeCipher) -> int:
    """Brings the schema up to date in one transaction; returns the version it found."""
    db.execute("BEGIN IMMEDIATE")
    try:
        (found,) = db.execute("PRAGMA user_version").fetchone()
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(found, SCHEMA_VERSION)
        run(db, migrate(Dialect.SQLITE, found, cipher))
        run(db, check_key_file(cipher))  # refused: the migration rolls back too
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        if db.in_transaction:  # a full disk may have rolled it back already
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return int(found)


def _vacuum_into(database: Path, to: Path) -> None:
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("VACUUM INTO ?", (str(to),))


def _statements(script: str) -> list[str]:
    """The script's statements; a ";" inside a trigger body or a comment does not end one."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return [statement for statement in statements if statement.strip(";\n ")]
