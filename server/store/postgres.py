"""The shared store: PostgreSQL behind asyncpg, for many replicas of the service.

Each transaction (transactions.py) runs at READ COMMITTED on a connection of
the process's pool. Races between replicas are settled by PostgreSQL's row
locks, never by SERIALIZABLE retries:

- a debit is conditional (`... WHERE amount_minor >= :amount_minor`): of two
  orders racing for the last funds, the second finds the first's balance and fails;
- codes and fulfillment work are claimed with `FOR UPDATE SKIP LOCKED`, so
  concurrent claimers take different rows instead of waiting on each other;
- the duplicate check is the primary key of client_order_numbers: a second
  claim of a clientOrderNumber waits for the first's transaction, then sees it.

Each transaction takes at most one waiting lock that another can hold while
waiting on it (a balance row, or a clientOrderNumber claim taken before it),
so they cannot deadlock; a deadlock or serialization failure is retried anyway.

Restocks NOTIFY; every process LISTENs, so fulfillers anywhere wake at once
(`wait_for_restock`). While PostgreSQL is unreachable, calls fail with
StorageUnavailable, and the pool reconnects by itself once it is back.

Every call, waiting for a connection included, is bounded by the statement
timeout. Every write is an explicit transaction, so that its outcome is known
whenever the call gives up before sending COMMIT: the connection is then
dropped (never waiting on a cancellation), and PostgreSQL rolls the write back
when it reads the end of the connection, however late it runs it. Only a call
that gave up waiting for COMMIT's answer cannot know: OutcomeUnknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import asyncpg

from server.domain.failures import DataConflict, OutcomeUnknown, StorageUnavailable
from server.domain.idempotency import IdempotencyKey, KeyInUse, Remembered
from server.domain.models import OrderStatus
from server.domain.orders import (
    BalanceSpent,
    DuplicateOf,
    NewOrder,
    OrderFacts,
    OrderOutcome,
    OrderPlan,
    Placed,
    Refused,
)
from server.keys import CodeCipher
from server.store import statements as sql
from server.store import transactions
from server.store.base import SqlStore
from server.store.common import RestockSignal, SchemaTooNew
from server.store.rows import (
    SealedCode,
    balances_from_rows,
    priced_product,
    rate_from_row,
    remembered_from_row,
)
from server.store.schema import LEGACY_VERSIONS, ROUTINES, SCHEMA_VERSION, migrate
from server.store.sealing import check_key_file
from server.store.sql import Dialect, Query, Returns, Rollback, Statement, Unit, advance
from server.store.transactions import Decide, as_placed, one, order_params

P = ParamSpec("P")
T = TypeVar("T")
log = logging.getLogger(__name__)
Connection = Any  # asyncpg.Connection or the pool's proxy of one; asyncpg is untyped

#: The channel restocks are announced on.
STOCK_CHANNEL = "instant_orders_stock"
#: Attempts of a transaction that PostgreSQL aborted to break a deadlock or a
#: serialization conflict (the whole transaction is rolled back, so retrying is safe).
ATTEMPTS = 3
#: How long to wait before reconnecting the LISTEN connection.
RELISTEN_DELAY_SECONDS = 0.5

# Failures that mean "PostgreSQL cannot serve now" (down, restarting, out of
# connections, a statement over its timeout), reported as StorageUnavailable.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.QueryCanceledError,
    # The client's protocol state broken by a connection lost mid-message, as
    # during a restart of PostgreSQL ("cannot switch to state ...").
    asyncpg.InternalClientError,
)
#: Failures after which a connection may be mid-message: it is dropped, not reused.
_CONNECTION_SPOILT = (
    asyncio.CancelledError,
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
#: The SQLSTATE place_instant_order raises when the balance was spent meanwhile.
_BALANCE_SPENT = "IO001"


@dataclass(frozen=True)
class PoolSettings:
    #: Connections per process; replicas x size must stay under max_connections.
    size: int = 10
    #: The longest a call may take, waiting for a free connection included,
    #: before it fails with UNAVAILABLE (or OUTCOME_UNKNOWN, see above).
    statement_timeout_seconds: float = 5.0

    @property
    def idle_in_transaction_seconds(self) -> float:
        """How long PostgreSQL keeps a transaction whose client went silent (its
        locks held) before ending it. Longer than a call, so that a retry made
        at once still finds an undecided transaction's Idempotency-Key in use."""
        return 3 * self.statement_timeout_seconds


class PostgresStore(SqlStore):
    backend = "postgresql"

    def __init__(
        self,
        cipher: CodeCipher,
        found_schema_version: int,
        pool: asyncpg.Pool,
        notifications: _Notifications,
        settings: PoolSettings,
    ) -> None:
        super().__init__(cipher, found_schema_version)
        self._pool = pool
        self._notifications = notifications
        self._timeout = settings.statement_timeout_seconds
        #: Transactions PostgreSQL aborted (deadlock, serialization) and that were
        #: run again: zero by design, counted to prove it under load.
        self.retried = 0

    @property
    def listening(self) -> bool:
        """Whether restocks in other processes wake this one's fulfiller now."""
        return self._notifications.listening

    @classmethod
    async def open(
        cls, url: str, cipher: CodeCipher, settings: PoolSettings = PoolSettings()
    ) -> PostgresStore:
        """Connects a pool to `url` (settings in its query, such as search_path, go to
        the server) and brings the schema up to date."""
        server_settings = {
            "statement_timeout": _milliseconds(settings.statement_timeout_seconds),
            "idle_in_transaction_session_timeout": _milliseconds(
                settings.idle_in_transaction_seconds
            ),
            "application_name": "instant-orders",
        }
        connect = {
            "timeout": settings.statement_timeout_seconds,  # to connect
            "server_settings": server_settings,
        }
        try:
            pool = await asyncpg.create_pool(
                url, min_size=0, max_size=settings.size, reset=_keep_session, **connect
            )
        except _UNAVAILABLE as error:
            raise ConnectionError(f"cannot reach PostgreSQL: {error}") from None
        try:
            async with pool.acquire() as connection:
                found = await _migrate(connection, cipher)
            notifications = _Notifications(url, connect)
            await notifications.start()
        except BaseException:
            await pool.close()
            raise
        return cls(cipher, found, pool, notifications, settings)

    async def close(self) -> None:
        await self._notifications.stop()
        await self._pool.close()

    async def wait_for_restock(self, max_seconds: float) -> None:
        await self._notifications.restocked.wait(max_seconds)

    async def backup(self, to: Path) -> None:
        raise DataConflict(
            "back a PostgreSQL database up with pg_dump (see docs/operations.md);"
            " keep the key file apart from it"
        )

    async def _announce_restock(self) -> None:
        await self._statement(_NOTIFY_RESTOCK.run(channel=STOCK_CHANNEL))

    async def _run(self, transaction: Callable[[], Unit[T]], *, writes: bool) -> T:
        """Writes inside BEGIN and COMMIT. Reads need no common snapshot, so their
        statements run alone: two round trips fewer."""
        return await self._on_pool(transaction, in_transaction=writes)

    async def _statement(self, query: Query) -> Any:
        """One statement that changes nothing, atomic on its own without BEGIN and COMMIT."""
        return await self._on_pool(partial(one, query), in_transaction=False)

    async def _write_statement(self, query: Query) -> Any:
        """One statement that changes data: inside BEGIN and COMMIT, so that its
        outcome is known unless the call gave up waiting for COMMIT's answer."""
        return await self._on_pool(partial(one, query), in_transaction=True)

    async def _on_pool(self, transaction: Callable[[], Unit[T]], *, in_transaction: bool) -> T:
        """Runs the transaction on a pooled connection, the whole call bounded by the
        timeout. One that PostgreSQL aborted to break a deadlock is run again.

        A write begun is finished (or rolled back) even when its caller goes away,
        as a client that disconnects does: cut short, it would have to drop its
        connection (the next call then pays a reconnect), and the client may
        still retry with its Idempotency-Key and be answered what was done."""
        bounded = self._bounded(transaction, in_transaction)
        if not in_transaction:
            return await bounded
        write = asyncio.ensure_future(bounded)
        write.add_done_callback(_retrieve_exception)  # an abandoned write's is logged already
        return await asyncio.shield(write)

    async def _bounded(self, transaction: Callable[[], Unit[T]], in_transaction: bool) -> T:
        call = _Call()
        try:
            async with asyncio.timeout(self._timeout):
                return await self._attempts(transaction, in_transaction, call)
        except Rollback as rolled_back:
            return rolled_back.value  # type: ignore[no-any-return]
        except _UNAVAILABLE as error:
            log.warning("PostgreSQL is unavailable: %s", type(error).__name__)
            if call.committing:
                raise OutcomeUnknown("the database did not confirm the commit") from None
            raise StorageUnavailable("the database is unavailable") from None

    async def _attempts(
        self, transaction: Callable[[], Unit[T]], in_transaction: bool, call: _Call
    ) -> T:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self._pool.acquire() as db:
                    return await _on_connection(db, transaction, in_transaction, call)
            except _RETRYABLE as error:
                if attempt == ATTEMPTS:
                    raise
                self.retried += 1
                log.warning(
                    "transaction aborted by PostgreSQL (%s); retrying", type(error).__name__
                )
        raise AssertionError("unreachable")

    # --- orders ---------------------------------------------------------------------

    async def place_instant_order(
        self, order: NewOrder, decide: Decide, key: IdempotencyKey | None = None
    ) -> OrderOutcome | Remembered | KeyInUse:
        """Two round trips: the facts in one query, the writes in one statement
        (place_instant_order in schema.py), each atomic alone; what may change
        between them (a balance spent, a number claimed, a key used) the statement
        checks again. A refusal found outside that statement is stored with the
        key in a transaction of its own: nothing else changed."""
        with self._measured("place_instant_order"):
            return await self._place_in_two_round_trips(order, decide, key)

    async def _place_in_two_round_trips(
        self, order: NewOrder, decide: Decide, key: IdempotencyKey | None
    ) -> OrderOutcome | Remembered | KeyInUse:
        caller, request = order.caller, order.request
        row = await self._query(
            sql.ORDER_FACTS.row(
                sku=request.sku,
                account_id=caller.account_id,
                client_order_number=request.client_order_number,
                idempotency_key="" if key is None else key.key,
            )
        )
        if row["remembered"] is not None:
            return remembered_from_row(row["remembered"])
        plan = decide(_order_facts(row))
        outcome = plan if isinstance(plan, Refused) else await self._place(order, plan, key)
        if key is None or isinstance(outcome, Placed | Remembered | KeyInUse):
            return outcome
        held = await self._write(
            transactions.remember_refusal, caller.account_id, key, key.record_of(outcome), order.at
        )
        return outcome if held is None else held

    async def _place(
        self, order: NewOrder, plan: OrderPlan, key: IdempotencyKey | None
    ) -> OrderOutcome | Remembered | KeyInUse:
        place = sql.PLACE_INSTANT_ORDER.row(
            **order_params(order, plan, OrderStatus.PROCESSING),
            dup_check=order.request.dup_check,
            api_key=order.caller.api_key,
            request_id=order.caller.request_id or None,
            client_request_id=order.caller.client_request_id or None,
            idempotency_key=None if key is None else key.key,
            fingerprint=None if key is None else key.fingerprint,
        )
        try:
            placed = await self._write_statement(place)
        except asyncpg.PostgresError as error:
            if error.sqlstate == _BALANCE_SPENT:
                return BalanceSpent(plan.unit_price)
            raise
        if placed["key_state"] == "in_use":
            return KeyInUse()
        if placed["key_state"] == "remembered":
            return remembered_from_row(_unprefixed(placed, "remembered_"))
        if placed["duplicate_of"] is not None:
            return DuplicateOf(placed["duplicate_of"])
        code = None
        if placed["code_id"] is not None:
            sealed = SealedCode(
                placed["code_id"], placed["code_key_id"], placed["code_redeem"], placed["code_pin"]
            )
            code = sealed.opened(self._cipher)
        status = OrderStatus(placed["order_status"])
        return Placed(as_placed(order, plan, placed["new_order_id"], status, code))


def _unprefixed(row: Any, prefix: str) -> dict[str, Any]:
    """The row's columns named `prefix`..., without the prefix."""
    columns = row.keys()
    return {key.removeprefix(prefix): row[key] for key in columns if key.startswith(prefix)}


#: Only PostgreSQL can wake other processes; SQLite's fulfillers poll.
_NOTIFY_RESTOCK = Statement("SELECT pg_notify(:channel, '')")


def _order_facts(row: Any) -> OrderFacts:
    """ORDER_FACTS's row: whole rows of products, balances and rates (composites)."""
    return OrderFacts(
        product=None if row["product"] is None else priced_product(row["product"]),
        balances=balances_from_rows(row["balances"]),
        rates={(rate["base"], rate["quote"]): rate_from_row(rate) for rate in row["rates"]},
        number_holder=row["duplicate_of"],
    )


@dataclass
class _Call:
    #: Whether COMMIT was sent: if no answer comes, the outcome is unknown.
    committing: bool = False


async def _on_connection(
    db: Connection, transaction: Callable[[], Unit[T]], in_transaction: bool, call: _Call
) -> T:
    """Runs the transaction, inside BEGIN and COMMIT if it writes. A connection
    that may be mid-message (a timeout, a lost peer) is dropped at once: waiting
    on it could hang, and dropping it is what rolls an uncommitted write back."""
    try:
        if not in_transaction:
            return await run(db, transaction())
        await db.execute("BEGIN")
        try:
            result = await run(db, transaction())
        except _CONNECTION_SPOILT:
            raise
        except BaseException:
            await db.execute("ROLLBACK")  # the connection answers: undo on it
            raise
        call.committing = True
        await db.execute("COMMIT")
        return result
    except _CONNECTION_SPOILT:
        db.terminate()
        raise


def _retrieve_exception(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _milliseconds(seconds: float) -> str:
    return str(round(seconds * 1000))


async def run(db: Connection, transaction: Unit[T]) -> T:
    """Runs a transaction's queries on the connection; returns what it returns."""
    step = advance(transaction, None)
    while isinstance(step, Query):
        step = advance(transaction, await _execute(db, step))
    return step.value


async def _execute(db: Connection, query: Query) -> Any:
    if query.returns is Returns.SCRIPT:
        return await db.execute(query.statement.script_text(Dialect.POSTGRES))
    compiled = query.statement.postgres
    try:
        if query.batch is not None:
            rows = [[params[name] for name in compiled.names] for params in query.batch]
            return await db.executemany(compiled.text, rows) if rows else None
        args = [query.params[name] for name in compiled.names]
        if query.returns is Returns.ROWS:
            return await db.fetch(compiled.text, *args)
        if query.returns is Returns.COLUMN:
            return [row[0] for row in await db.fetch(compiled.text, *args)]
        if query.returns is Returns.ROW:
            return await db.fetchrow(compiled.text, *args)
        if query.returns is Returns.VALUE:
            return await db.fetchval(compiled.text, *args)
        status = await db.execute(compiled.text, *args)  # "UPDATE 1"
        return int(status.rpartition(" ")[2]) if query.returns is Returns.COUNT else None
    except asyncpg.UniqueViolationError:
        if query.conflict:
            raise DataConflict(query.conflict) from None
        raise


async def _keep_session(connection: Connection) -> None:
    """Skips asyncpg's reset of a connection returned to the pool (one more round
    trip per call: unlock, CLOSE ALL, UNLISTEN, RESET ALL). The store never
    changes a session's state: no SET, no LISTEN, no cursor or session lock
    outlives its transaction (the migration's lock is a transaction lock)."""


#: The longest a migration may take (each process migrates, one after the other,
#: when it starts): a step may rebuild a large table.
MIGRATION_TIMEOUT = "10min"


async def _migrate(db: Connection, cipher: CodeCipher) -> int:
    """Brings the schema and the routines up to date under an advisory lock, so
    replicas starting at once migrate one after the other; returns the version found."""
    async with db.transaction():
        # A step may rebuild a large table: it is not bound by the timeout of a call.
        await db.execute(f"SET LOCAL statement_timeout = '{MIGRATION_TIMEOUT}'")
        await db.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.migrate'))")
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        stored = await db.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        found = LEGACY_VERSIONS[Dialect.POSTGRES].get(stored, stored)
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(found, SCHEMA_VERSION)
        await run(db, migrate(Dialect.POSTGRES, found, cipher))
        await run(db, check_key_file(cipher))  # refused: the migration rolls back too
        if stored != SCHEMA_VERSION:
            await db.execute("DELETE FROM schema_version")
            await db.execute("INSERT INTO schema_version VALUES ($1)", SCHEMA_VERSION)
        await _create_routines(db)
        return int(found)


async def _create_routines(db: Connection) -> None:
    """(Re)creates each routine whose definition differs from the one in the database."""
    await db.execute(
        "CREATE TABLE IF NOT EXISTS schema_routines (name TEXT PRIMARY KEY, digest TEXT NOT NULL)"
    )
    digests = dict(await db.fetch("SELECT name, digest FROM schema_routines"))
    for routine in ROUTINES.values():
        if digests.get(routine.name) == routine.digest:
            continue
        await db.execute(f"DROP FUNCTION IF EXISTS {routine.name}")
        await db.execute(routine.definition)
        await db.execute(
            "INSERT INTO schema_routines VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET digest = excluded.digest",
            routine.name,
            routine.digest,
        )


class _Notifications:
    """One connection per process that LISTENs for restocks, reconnected whenever
    it is lost. Missing a notification only delays: the fulfiller polls too."""

    def __init__(self, url: str, connect: dict[str, Any]) -> None:
        self._url = url
        self._connect = connect
        self.restocked = RestockSignal()
        self.listening = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        connected = asyncio.Event()
        self._task = asyncio.create_task(self._listen(connected))
        await connected.wait()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self, connected: asyncio.Event) -> None:
        missed = False  # whether restocks may have gone unheard
        while True:
            try:
                async with self._connection() as lost:
                    self.listening = True
                    connected.set()
                    if missed:  # heard from now on; look for what came before
                        self.restocked.set()
                    await lost.wait()
                log.warning("the LISTEN connection to PostgreSQL was lost; reconnecting")
            except _UNAVAILABLE as error:
                log.warning("cannot LISTEN on PostgreSQL (%s); retrying", type(error).__name__)
            self.listening, missed = False, True
            connected.set()  # the store works without notifications meanwhile
            await asyncio.sleep(RELISTEN_DELAY_SECONDS)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncio.Event]:
        """A listening connection, and an event set when it is lost."""
        lost = asyncio.Event()
        connection = await asyncpg.connect(self._url, **self._connect)
        try:
            connection.add_termination_listener(lambda _: lost.set())
            await connection.add_listener(STOCK_CHANNEL, lambda *_: self.restocked.set())
            yield lost
        finally:
            connection.terminate()
