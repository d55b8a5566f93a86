"""Batches of database work: one hop to the connection's thread for many requests.

aiosqlite runs each connection on its own thread. Handing that thread one
call per request costs a thread switch and an event-loop wake-up per request,
and a commit (an fsync) per write. A `Batcher` queues the work of concurrent
requests instead and hands the thread everything queued at once:

- writes run in one transaction, each in its own savepoint, and commit
  together: group commit, one fsync per batch. A write that fails rolls back
  alone and its neighbours still commit. No caller hears of success before
  the commit, so durability is that of a commit per write;
- reads run in one read transaction: one consistent snapshot, taken after
  every read in the batch was asked for.

Nothing waits to fill a batch: while the thread works on one batch, the next
one gathers. A lone request goes at once, so an idle service answers as fast
as before; under load, batches grow with the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]

#: The most requests one batch takes: bounds the time a batch holds the
#: write lock and the latency of its first request.
MAX_BATCH = 256


@dataclass
class _Outcome:
    value: Any = None
    error: BaseException | None = None


BatchRunner = Callable[[sqlite3.Connection, Sequence[Work[Any]]], list[_Outcome]]


class Batcher:
    """Runs queued work on one aiosqlite connection's thread, a batch per hop."""

    def __init__(
        self,
        connection: aiosqlite.Connection,
        run_batch: BatchRunner,
        sizes: Callable[[int], None] | None = None,
    ) -> None:
        self._connection = connection
        self._run_batch = run_batch
        #: Told the size of each batch, if anyone is.
        self._sizes = sizes
        self._queue: list[tuple[Work[Any], asyncio.Future[Any]]] = []
        self._ready = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False

    async def run(self, work: Work[T]) -> T:
        """The work's result, once its batch is done (for writes: committed)."""
        if self._closing:
            raise RuntimeError("the database is closed")
        if self._worker is None:
            self._worker = asyncio.create_task(self._drain(), name="database batches")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((work, future))
        self._ready.set()
        return await future

    async def close(self) -> None:
        """Finishes the queued work, then stops."""
        self._closing = True
        self._ready.set()
        if self._worker is not None:
            await self._worker

    async def _drain(self) -> None:
        while not self._closing:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._run(batch)

    async def _run(self, batch: list[tuple[Work[Any], asyncio.Future[Any]]]) -> None:
        works = [work for work, _ in batch]
        if self._sizes is not None:
            self._sizes(len(works))

        def run_batch(db: sqlite3.Connection) -> list[_Outcome]:
            return self._run_batch(db, works)

        try:
            outcomes = await in_thread(self._connection, run_batch)
        except Exception as error:  # the batch as a whole failed: all of it
            outcomes = [_Outcome(error=error)] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the caller went away
                continue
            if outcome.error is None:
                future.set_result(outcome.value)
            else:
                future.set_exception(outcome.error)


def write_batch(db: sqlite3.Connection, works: Sequence[Work[Any]]) -> list[_Outcome]:
    """All the works in one IMMEDIATE transaction, each in a savepoint; one commit.

    A batch that fails (a full disk) is rolled back, if SQLite has not done it
    already, and the next batch finds the connection as the first did."""
    _begin(db)
    try:
        outcomes = [_in_savepoint(db, work) for work in works]
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # _begin rolls back what is left
                db.execute("ROLLBACK")
        raise
    return outcomes


def _begin(db: sqlite3.Connection) -> None:
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        if not db.in_transaction:
            raise
        # A ROLLBACK that failed (an I/O error) left the last batch's transaction
        # open: without this, every write from now on would fail.
        db.execute("ROLLBACK")
        db.execute("BEGIN IMMEDIATE")


def _in_savepoint(db: sqlite3.Connection, work: Work[Any]) -> _Outcome:
    db.execute("SAVEPOINT request")
    try:
        value = work(db)
    except Exception as error:
        if not db.in_transaction:
            # SQLite rolled the whole transaction back (disk full, I/O
            # error): the batch's earlier work is lost too, so all of it fails.
            raise
        db.execute("ROLLBACK TO request")
        db.execute("RELEASE request")
        return _Outcome(error=error)
    db.execute("RELEASE request")
    return _Outcome(value)


def read_batch(db: sqlite3.Connection, works: Sequence[Work[Any]]) -> list[_Outcome]:
    """All the works in one read transaction (one snapshot)."""
    db.execute("BEGIN DEFERRED")
    try:
        outcomes = []
        for work in works:
            try:
                outcomes.append(_Outcome(work(db)))
            except Exception as error:
                outcomes.append(_Outcome(error=error))
    finally:
        db.execute("COMMIT")
    return outcomes


async def in_thread(connection: aiosqlite.Connection, work: Work[T]) -> T:
    # aiosqlite has no public call for "run this function on the connection's
    # thread"; _execute is what its own methods use (pinned in pyproject).
    result: T = await connection._execute(work, connection._conn)  # type: ignore[no-untyped-call]
    return result
