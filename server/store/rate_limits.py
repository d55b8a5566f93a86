"""Token buckets in PostgreSQL, shared by every replica (the domain's SharedBuckets).

One statement per check: an UPSERT computes the refill from PostgreSQL's clock
(the replicas' clocks may differ) and spends a token only if one is there, so
two replicas never both spend the last one. A bucket is kept as the time it
is full again (`full_at`, as in GCRA): a row whose time has passed is a full
bucket, which the sweep deletes, so the table holds only the keys spent lately.

The table is UNLOGGED (no WAL, no fsync: a check costs no disk write) and made
IF NOT EXISTS at open rather than by a migration: it holds nothing worth
keeping, and a crash of PostgreSQL that empties it only refills every bucket.
Checks run on a small pool of their own, so that they never queue behind
orders for a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg

from server.domain.failures import StorageUnavailable
from server.domain.limits import Rate
from server.settings import is_postgres
from server.store.sql import Statement

log = logging.getLogger(__name__)

#: Connections of the checks, per process (beside the store's pool).
POOL_SIZE = 4
#: How long closing waits for the checks in flight before it drops their connections.
CLOSE_SECONDS = 1.0
#: How often a process deletes the full buckets.
SWEEP_SECONDS = 60.0

CREATE_TABLE = Statement(
    "CREATE UNLOGGED TABLE IF NOT EXISTS rate_limit_buckets ("
    " budget TEXT NOT NULL, key TEXT NOT NULL,"
    " at DOUBLE PRECISION NOT NULL, full_at DOUBLE PRECISION NOT NULL,"
    " taken BOOLEAN NOT NULL, PRIMARY KEY (budget, key))"
)
#: Spends :count tokens (0: only looks) of (budget, key) if a token is there, that is
#: while the bucket is at most burst - 1 tokens short of full; returns whether one
#: was, and how many seconds short of full the bucket is now. The clock is
#: PostgreSQL's, one for every replica.
TAKE = Statement("""
    INSERT INTO rate_limit_buckets AS b (budget, key, at, full_at, taken)
    VALUES (:budget, :key, extract(epoch FROM statement_timestamp()),
            extract(epoch FROM statement_timestamp()) + :count::float8 / :rate::float8, true)
    ON CONFLICT (budget, key) DO UPDATE SET
        at = excluded.at,
        taken = b.full_at - excluded.at <= (:burst::float8 - 1) / :rate::float8,
        full_at = CASE WHEN b.full_at - excluded.at <= (:burst::float8 - 1) / :rate::float8
                       THEN greatest(b.full_at, excluded.at) + :count::float8 / :rate::float8
                       ELSE b.full_at END
    RETURNING taken, full_at - at AS short_seconds
""")
SWEEP = Statement(
    "DELETE FROM rate_limit_buckets WHERE full_at < extract(epoch FROM statement_timestamp())"
)

#: What an unreachable or failing PostgreSQL raises; all mean "no answer now".
_UNAVAILABLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
#: Failures after which a connection may be mid-message.
_SPOILT = (asyncio.CancelledError, OSError, asyncpg.InterfaceError)


class PostgresBuckets:
    """The shared buckets of every process that uses one PostgreSQL database."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._take = TAKE.postgres
        self._swept_at = time.monotonic()
        self._sweeping: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str) -> PostgresBuckets:
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            server_settings={"application_name": "instant-orders-limits"},
        )
        try:
            await _create_table(pool)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def take(self, budget: str, key: str, rate: Rate, count: int = 1) -> float:
        params = {"budget": budget, "key": key, "burst": rate.burst,
                  "rate": rate.per_second, "count": count}  # fmt: skip
        try:
            taken, short = await self._fetch(*(params[name] for name in self._take.names))
        except _UNAVAILABLE as error:
            raise StorageUnavailable(f"{type(error).__name__}: {error}") from None
        self._sweep_now_and_then()
        return 0.0 if taken else short - (rate.burst - 1) / rate.per_second

    async def _fetch(self, *args: object) -> asyncpg.Record:
        """The check's row. A check given up (the caller's timeout) or cut off leaves
        its connection mid-message: it is dropped at once, where the pool's release
        would wait for an answer that may never come."""
        connection = await self._pool.acquire()
        try:
            return await connection.fetchrow(self._take.text, *args)
        except _SPOILT:
            connection.terminate()
            raise
        finally:
            await self._pool.release(connection)

    def _sweep_now_and_then(self) -> None:
        if time.monotonic() - self._swept_at < SWEEP_SECONDS:
            return
        self._swept_at = time.monotonic()
        if self._sweeping is None or self._sweeping.done():
            self._sweeping = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        try:
            await self._pool.execute(SWEEP.postgres.text)
        except _UNAVAILABLE as error:  # the next sweep deletes them
            log.debug("sweeping the rate-limit buckets failed: %s", error)

    async def close(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeping
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await self._pool.close()
        except TimeoutError:  # a connection stuck on an unreachable server
            self._pool.terminate()


async def open_shared(database: str) -> PostgresBuckets | None:
    """The buckets every replica shares: on PostgreSQL only. A SQLite database
    serves one process, whose own buckets are exact."""
    return await PostgresBuckets.open(database) if is_postgres(database) else None


async def _create_table(pool: asyncpg.Pool) -> None:
    """Creates the table unless it is there; a replica that created it meanwhile
    makes PostgreSQL's IF NOT EXISTS fail with a duplicate, which is as good."""
    with contextlib.suppress(asyncpg.UniqueViolationError, asyncpg.DuplicateTableError):
        await pool.execute(CREATE_TABLE.postgres.text)
