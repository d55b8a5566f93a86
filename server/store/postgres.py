"""The shared store: PostgreSQL behind asyncpg, for many replicas of the service.

Each method is one short transaction at READ COMMITTED on a connection of the
process's pool. Races between replicas are settled by PostgreSQL's row locks,
never by SERIALIZABLE retries:

- a debit is conditional (`... WHERE amount_minor >= $amount`): of two orders
  racing for the last funds, the second finds the first's balance and fails;
- codes and fulfillment work are claimed with `FOR UPDATE SKIP LOCKED`, so
  concurrent claimers take different rows instead of waiting on each other;
- the duplicate check is the primary key of client_order_numbers: a second
  claim of a clientOrderNumber waits for the first's transaction, then sees it.

Each transaction takes at most one waiting lock that another can hold while
waiting on it (a balance row, or a clientOrderNumber claim taken before it),
so they cannot deadlock; a deadlock or serialization failure is retried anyway.

Restocks NOTIFY; every process LISTENs, so fulfillers anywhere wake at once
(`wait_for_restock`). While PostgreSQL is unreachable, calls fail with
UNAVAILABLE, and the pool reconnects by itself once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import groupby
from typing import Any, TypeVar

import asyncpg

from server.domain.errors import ApiError, Reason
from server.domain.models import (
    ApiCredentials,
    AuditEvent,
    AuditRecord,
    Caller,
    ExchangeRate,
    InstantOrderRequest,
    Order,
    OrderFilter,
    OrderStatus,
    Page,
    Product,
)
from server.domain.money import Money
from server.domain.orders import OrderFacts, OrderPlan
from server.domain.ports import DataConflict, Dataset, NewAccount, NewCode
from server.keys import CodeCipher
from server.store.common import (
    AUDIT_COLUMNS,
    ORDER_COLUMNS,
    PRODUCT_COLUMNS,
    RATE_COLUMNS,
    RestockSignal,
    SchemaTooNew,
    SealedCode,
    audit_from_row,
    micros,
    order_from_row,
    placed_order,
    product_details,
    product_from_row,
    product_to_price,
    rate_from_row,
)
from server.store.pg_schema import MIGRATIONS, SCHEMA_VERSION

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
# connections, a statement over its timeout), answered as UNAVAILABLE.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.QueryCanceledError,
)
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
#: The SQLSTATE place_instant_order raises when the balance was spent meanwhile.
_BALANCE_SPENT = "IO001"
#: An order's facts in one round trip: the product, the account's balances, the
#: rates from the product's currency (the rule needs at most one) and the order
#: holding the clientOrderNumber, if any.
_ORDER_FACTS = """
    SELECT
        (SELECT (sku, name, brand, currency, price_minor, face_value_minor,
                 instant_delivery_supported)
         FROM products WHERE sku = $1) AS product,
        ARRAY(SELECT (currency, amount_minor) FROM balances WHERE account_id = $2) AS balances,
        ARRAY(SELECT (base, quote, rate, as_of, updated_at_us) FROM rates
              WHERE base = (SELECT currency FROM products WHERE sku = $1)) AS rates,
        (SELECT transaction_id FROM client_order_numbers
         WHERE account_id = $2 AND client_order_number = $3) AS duplicate_of
"""


@dataclass(frozen=True)
class PoolSettings:
    #: Connections per process; replicas x size must stay under max_connections.
    size: int = 10
    #: The longest any statement may run, and the longest a call waits for a
    #: free connection, before it fails with UNAVAILABLE.
    statement_timeout_seconds: float = 5.0


class PostgresStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        cipher: CodeCipher,
        found_schema_version: int,
        notifications: _Notifications,
        settings: PoolSettings,
    ) -> None:
        self._pool = pool
        self._cipher = cipher
        self._notifications = notifications
        self._timeout = settings.statement_timeout_seconds
        #: The schema version the database had when opened (0: a new database).
        self.found_schema_version = found_schema_version
        self.schema_version = SCHEMA_VERSION
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
        timeout_ms = str(round(settings.statement_timeout_seconds * 1000))
        server_settings = {"statement_timeout": timeout_ms, "application_name": "instant-orders"}
        connect = {
            "timeout": settings.statement_timeout_seconds,  # to connect
            # A statement PostgreSQL never answers (a dead peer) fails on our side too.
            "command_timeout": settings.statement_timeout_seconds + 1,
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
                found = await _migrate(connection)
            notifications = _Notifications(url, connect)
            await notifications.start()
        except BaseException:
            await pool.close()
            raise
        return cls(pool, cipher, found, notifications, settings)

    async def close(self) -> None:
        await self._notifications.stop()
        await self._pool.close()

    async def wait_for_restock(self, max_seconds: float) -> None:
        await self._notifications.restocked.wait(max_seconds)

    async def _run(
        self, work: Callable[[Connection], Awaitable[T]], *, transaction: bool = True
    ) -> T:
        """Runs `work` on a pooled connection, in one transaction (without one, each
        statement is its own: for single statements, two round trips fewer). A
        transaction PostgreSQL aborts to break a deadlock is run again;
        UNAVAILABLE when PostgreSQL cannot serve."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self._pool.acquire(timeout=self._timeout) as db:
                    if not transaction:
                        return await work(db)
                    async with db.transaction():
                        return await work(db)
            except _RETRYABLE as error:
                if attempt == ATTEMPTS:
                    raise
                self.retried += 1
                log.warning(
                    "transaction aborted by PostgreSQL (%s); retrying", type(error).__name__
                )
            except _UNAVAILABLE as error:
                log.warning("PostgreSQL is unavailable: %s", type(error).__name__)
                raise ApiError(
                    Reason.UNAVAILABLE, detail="The database is unavailable. Retry shortly."
                ) from None
        raise AssertionError("unreachable")

    async def _read(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Runs `work`, whose statements need no common snapshot, without a transaction."""
        return await self._run(work, transaction=False)

    async def _row(self, sql: str, *args: Any) -> Any:
        """The one row a query returns, or None."""
        return await self._read(lambda db: db.fetchrow(sql, *args))

    async def _first_column(self, sql: str, *args: Any) -> list[Any]:
        """The first column of the rows of one query."""

        async def work(db: Connection) -> list[Any]:
            return [row[0] for row in await db.fetch(sql, *args)]

        return await self._read(work)

    # --- orders ---------------------------------------------------------------------

    async def place_instant_order(
        self,
        caller: Caller,
        request: InstantOrderRequest,
        transaction_id: str,
        now: datetime,
        decide: Callable[[OrderFacts], OrderPlan],
    ) -> Order:
        """Two round trips: the facts in one query, the writes in one statement
        (place_instant_order in pg_schema.py). Each is atomic alone; what may change
        between them (a balance spent, a number claimed) the statement checks again."""
        at = micros(now)

        async def read_facts(db: Connection) -> OrderFacts:
            row = await db.fetchrow(
                _ORDER_FACTS, request.sku, caller.account_id, request.client_order_number
            )
            product = None if row["product"] is None else product_to_price(row["product"])
            rates = {(r[0], r[1]): rate_from_row(r) for r in row["rates"]}
            return OrderFacts(
                product=product,
                balances={c: Money.from_minor(minor, c) for c, minor in row["balances"]},
                rate=lambda base, quote: rates.get((base, quote)),
                duplicate_of=row["duplicate_of"] if request.dup_check else None,
            )

        facts = await self._read(read_facts)
        plan = decide(facts)

        async def write(db: Connection) -> Any:
            try:
                return await db.fetchrow(
                    "SELECT * FROM place_instant_order($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,"
                    " $11, $12, $13, $14)",
                    transaction_id, caller.account_id, request.client_order_number,
                    request.dup_check, request.sku, plan.unit_price.currency,
                    plan.unit_price.minor, plan.unit_price_original.currency,
                    plan.unit_price_original.minor,
                    None if plan.fx is None else str(plan.fx.rate),
                    None if plan.fx is None else plan.fx.as_of,
                    at, caller.api_key, caller.request_id or None,
                )  # fmt: skip
            except asyncpg.PostgresError as error:
                if error.sqlstate == _BALANCE_SPENT:
                    raise ApiError(
                        Reason.INSUFFICIENT_BALANCE,
                        currency=plan.unit_price.currency,
                        requiredAmount=str(plan.unit_price.amount),
                    ) from None
                raise

        placed = await self._read(write)
        if placed["duplicate_of"] is not None:  # claimed since the facts were read
            decide(replace(facts, duplicate_of=placed["duplicate_of"]))  # raises DUPLICATE
            raise AssertionError("the rules let a duplicate through")
        code = None if placed["code_id"] is None else SealedCode(*tuple(placed)[3:])
        opened = None if code is None else code.opened(self._cipher)
        status = OrderStatus(placed["status"])
        return placed_order(request, transaction_id, plan, placed["stock_id"], status, at, opened)

    async def get_order(self, account_id: int, transaction_id: str) -> Order | None:
        row = await self._row(
            f"SELECT {ORDER_COLUMNS} WHERE o.transaction_id = $1 AND o.account_id = $2",
            transaction_id,
            account_id,
        )
        return None if row is None else order_from_row(row, self._cipher)

    # --- fulfillment ----------------------------------------------------------------

    async def waiting_skus(self) -> list[str]:
        return await self._first_column(
            "SELECT DISTINCT sku FROM orders WHERE status = 'PROCESSING'"
        )

    async def waiting_orders(self, skus: Collection[str], limit: int) -> list[Order]:
        async def work(db: Connection) -> list[Order]:
            rows = await db.fetch(
                f"SELECT {ORDER_COLUMNS} WHERE o.status = 'PROCESSING' AND o.sku = ANY($1)"
                " ORDER BY o.id LIMIT $2",
                list(skus),
                limit,
            )
            return [order_from_row(row, self._cipher) for row in rows]

        return await self._read(work)

    async def skus_in_stock(self, skus: Collection[str]) -> set[str]:
        async def work(db: Connection) -> set[str]:
            rows = await db.fetch(
                "SELECT sku FROM unnest($1::text[]) AS wanted(sku) WHERE EXISTS"
                " (SELECT 1 FROM codes c WHERE c.sku = wanted.sku AND c.order_id IS NULL)",
                list(skus),
            )
            return {row[0] for row in rows}

        return await self._read(work)

    async def complete_from_stock(self, orders: Sequence[Order], now: datetime) -> list[int]:
        """Claims the orders still PROCESSING and the oldest unsold codes of their
        SKUs, skipping rows another fulfiller holds, and pairs them in order."""
        at = micros(now)

        async def work(db: Connection) -> list[int]:
            claimed = await db.fetch(
                "SELECT id, sku FROM orders WHERE id = ANY($1::bigint[])"
                " AND status = 'PROCESSING' ORDER BY id FOR UPDATE SKIP LOCKED",
                [order.stock_id for order in orders],
            )
            pairs: list[tuple[int, int]] = []  # (order, code)
            for sku, group in groupby(sorted(claimed, key=lambda row: row[1]), lambda r: r[1]):
                order_ids = [row[0] for row in group]
                code_ids = await _claim_code_ids(db, sku, len(order_ids))
                pairs += zip(order_ids, code_ids, strict=False)
            if not pairs:
                return []
            order_ids = [order_id for order_id, _ in pairs]
            await _finish(db, order_ids, OrderStatus.COMPLETED, at)
            await db.execute(
                "UPDATE codes SET order_id = paired.order_id"
                " FROM unnest($1::bigint[], $2::bigint[]) AS paired(order_id, code_id)"
                " WHERE codes.id = paired.code_id",
                order_ids,
                [code_id for _, code_id in pairs],
            )
            return sorted(order_ids)

        return await self._run(work)

    async def cancel_overdue(
        self, created_before: datetime, now: datetime, limit: int
    ) -> list[int]:
        at = micros(now)

        async def work(db: Connection) -> list[int]:
            overdue = await db.fetch(
                "SELECT id FROM orders WHERE status = 'PROCESSING' AND created_at_us < $1"
                " ORDER BY created_at_us LIMIT $2 FOR UPDATE SKIP LOCKED",
                micros(created_before),
                limit,
            )
            if not overdue:
                return []
            cancelled = await _finish(db, [row[0] for row in overdue], OrderStatus.CANCELLED, at)
            # Balances locked in one order by everyone, so refunds cannot deadlock.
            for order_id, account_id, currency, minor in sorted(cancelled, key=lambda r: r[1:3]):
                await _credit(
                    db, account_id, Money.from_minor(minor, currency), at, "REFUND", order_id
                )
            return [row[0] for row in cancelled]

        return await self._run(work)

    async def finished_among(self, stock_ids: Collection[int]) -> list[int]:
        return await self._first_column(
            "SELECT id FROM orders WHERE id = ANY($1::bigint[]) AND status <> 'PROCESSING'",
            list(stock_ids),
        )

    async def list_orders(
        self, account_id: int, order_filter: OrderFilter, page: int, page_size: int
    ) -> Page[Order]:
        params: list[object] = [account_id]
        where = ["o.account_id = $1"]
        for column, value in (
            ("transaction_id", order_filter.transaction_id),
            ("client_order_number", order_filter.client_order_number),
        ):
            if value:
                params.append(value)
                where.append(f"o.{column} = ${len(params)}")
        condition = " AND ".join(where)
        limits = f"LIMIT ${len(params) + 1} OFFSET ${len(params) + 2}"

        async def work(db: Connection) -> Page[Order]:
            total = await db.fetchval(
                f"SELECT count(*) FROM orders o WHERE {condition}",  # noqa: S608
                *params,
            )
            rows = await db.fetch(
                f"SELECT {ORDER_COLUMNS} WHERE {condition} ORDER BY o.id DESC {limits}",
                *params,
                page_size,
                (page - 1) * page_size,
            )
            return Page([order_from_row(row, self._cipher) for row in rows], total, page, page_size)

        return await self._read(work)

    # --- catalogue, balances, rates, credentials ------------------------------------

    async def list_products(self, skus: Sequence[str], page: int, page_size: int) -> Page[Product]:
        async def work(db: Connection) -> Page[Product]:
            total = await db.fetchval(
                "SELECT count(*) FROM products WHERE sku = ANY($1) OR cardinality($1) = 0",
                list(skus),
            )
            rows = await db.fetch(
                f"SELECT {PRODUCT_COLUMNS} WHERE sku = ANY($1::text[]) OR cardinality($1) = 0"
                " ORDER BY sku LIMIT $2 OFFSET $3",
                list(skus),
                page_size,
                (page - 1) * page_size,
            )
            return Page([product_from_row(row) for row in rows], total, page, page_size)

        return await self._read(work)

    async def balances(self, account_id: int) -> list[Money]:
        balances = await self._read(lambda db: _balances(db, account_id))
        return sorted(balances.values(), key=lambda money: money.currency)

    async def exchange_rates(self) -> list[ExchangeRate]:
        async def work(db: Connection) -> list[ExchangeRate]:
            rows = await db.fetch(f"SELECT {RATE_COLUMNS} ORDER BY base, quote")
            return [rate_from_row(row) for row in rows]

        return await self._read(work)

    async def product_currencies(self) -> list[str]:
        return await self._first_column("SELECT DISTINCT currency FROM products ORDER BY currency")

    async def credentials(self, api_key: str) -> ApiCredentials | None:
        row = await self._row(
            "SELECT api_key, account_id, secret_hash, disabled_at_us IS NULL FROM api_keys"
            " WHERE api_key = $1",
            api_key,
        )
        return None if row is None else ApiCredentials(*row)

    async def api_key_active(self, api_key: str, account_id: int) -> bool:
        row = await self._row(
            "SELECT 1 FROM api_keys WHERE api_key = $1 AND account_id = $2"
            " AND disabled_at_us IS NULL",
            api_key,
            account_id,
        )
        return row is not None

    # --- audit ----------------------------------------------------------------------

    async def record_audit(self, record: AuditRecord) -> None:
        row = (
            micros(record.at),
            record.event,
            record.account_id,
            record.api_key,
            record.request_id,
            record.transaction_id,
            record.details,
        )
        await self._run(lambda db: _audit(db, [row]))

    async def audit_trail(self, account_id: int, since: datetime) -> list[AuditRecord]:
        async def work(db: Connection) -> list[AuditRecord]:
            rows = await db.fetch(
                f"SELECT {AUDIT_COLUMNS} WHERE account_id = $1 AND at_us >= $2 ORDER BY id",
                account_id,
                micros(since),
            )
            return [audit_from_row(row) for row in rows]

        return await self._read(work)

    # --- administration -------------------------------------------------------------

    async def create_api_key(
        self, account_id: int, api_key: str, secret_hash: str, now: datetime, max_active: int
    ) -> None:
        async def work(db: Connection) -> None:
            # The account's row lock serializes key creations, so the count holds.
            if (
                await db.fetchrow("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", account_id)
                is None
            ):
                raise DataConflict(f"no account has id {account_id}")
            active = await db.fetchval(
                "SELECT count(*) FROM api_keys WHERE account_id = $1 AND disabled_at_us IS NULL",
                account_id,
            )
            if active >= max_active:
                raise DataConflict(
                    f"account {account_id} has {active} active keys already: disable one first"
                )
            await _insert_api_key(db, account_id, api_key, secret_hash, micros(now))

        await self._run(work)

    async def disable_api_key(self, api_key: str, now: datetime) -> int:
        at = micros(now)

        async def work(db: Connection) -> int:
            account_id = await db.fetchval(
                "UPDATE api_keys SET disabled_at_us = $1"
                " WHERE api_key = $2 AND disabled_at_us IS NULL RETURNING account_id",
                at,
                api_key,
            )
            if account_id is None:
                raise DataConflict("no active API key has that id")
            await _audit(db, [(at, AuditEvent.KEY_DISABLED, account_id, api_key, None, None, {})])
            return int(account_id)

        return await self._run(work)

    async def load(self, dataset: Dataset, now: datetime) -> list[int]:
        at = micros(now)

        async def work(db: Connection) -> list[int]:
            account_ids = [await _insert_account(db, account, at) for account in dataset.accounts]
            for product in dataset.products:
                await _upsert_product(db, product)
            await _insert_codes(db, self._cipher, dataset.codes, at)
            for rate in dataset.rates:
                await _upsert_rate(db, rate)
            return account_ids

        return await self._run(work)

    async def add_codes(self, codes: Sequence[NewCode], now: datetime) -> int:
        return await self._run(lambda db: _insert_codes(db, self._cipher, codes, micros(now)))

    async def reseal_codes(self, limit: int) -> int:
        """Re-encrypts up to `limit` codes not sealed with the active data key (after
        a rotation, which this reads from the key file); returns how many."""
        self._cipher.reload()

        async def work(db: Connection) -> int:
            active = self._cipher.active_key_id
            rows = await db.fetch(
                "SELECT id, key_id, redeem_code, pin_code FROM codes WHERE key_id <> $1"
                " LIMIT $2 FOR UPDATE SKIP LOCKED",
                active,
                limit,
            )
            resealed = [
                (row[0], *self._cipher.seal_code(row[0], *self._cipher.open_code(*row)), active)
                for row in rows
            ]
            await db.executemany(
                "UPDATE codes SET redeem_code = $2, pin_code = $3, key_id = $4 WHERE id = $1",
                resealed,
            )
            return len(rows)

        return await self._run(work)

    async def top_up(self, account_id: int, amount: Money, now: datetime) -> Money:
        async def work(db: Connection) -> Money:
            if await db.fetchrow("SELECT 1 FROM accounts WHERE id = $1", account_id) is None:
                raise DataConflict(f"no account has id {account_id}")
            minor = await _credit(db, account_id, amount, micros(now))
            return Money.from_minor(minor, amount.currency)

        return await self._run(work)

    async def set_rate(self, rate: ExchangeRate) -> None:
        await self._run(lambda db: _upsert_rate(db, rate))


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


# --- statements, awaited inside a transaction ------------------------------------------


async def _keep_session(connection: Connection) -> None:
    """Skips asyncpg's reset of a connection returned to the pool (one more round
    trip per call: unlock, CLOSE ALL, UNLISTEN, RESET ALL). The store never
    changes a session's state: no SET, no LISTEN, no cursor or session lock
    outlives its transaction (the migration's lock is a transaction lock)."""


async def _migrate(db: Connection) -> int:
    """Brings the schema up to date under an advisory lock, so replicas starting at
    once migrate one after the other; returns the version it found."""
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.migrate'))")
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        found = await db.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(found, SCHEMA_VERSION)
        for step in MIGRATIONS[found:]:
            await db.execute(step)
        if found < SCHEMA_VERSION:
            await db.execute("DELETE FROM schema_version")
            await db.execute("INSERT INTO schema_version VALUES ($1)", SCHEMA_VERSION)
        return int(found)


async def _balances(db: Connection, account_id: int) -> dict[str, Money]:
    rows = await db.fetch(
        "SELECT currency, amount_minor FROM balances WHERE account_id = $1", account_id
    )
    return {currency: Money.from_minor(minor, currency) for currency, minor in rows}


async def _claim_code_ids(db: Connection, sku: str, count: int) -> list[int]:
    rows = await db.fetch(
        "SELECT id FROM codes WHERE sku = $1 AND order_id IS NULL"
        " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        sku,
        count,
    )
    return [row[0] for row in rows]


async def _credit(
    db: Connection,
    account_id: int,
    amount: Money,
    at: int,
    kind: str = "TOP_UP",
    order_id: int | None = None,
) -> int:
    """Adds to the balance (creating it), with its ledger row; returns the new balance."""
    balance: int = await db.fetchval(
        "INSERT INTO balances (account_id, currency, amount_minor) VALUES ($1, $2, $3)"
        " ON CONFLICT (account_id, currency) DO UPDATE"
        " SET amount_minor = balances.amount_minor + excluded.amount_minor"
        " RETURNING amount_minor",
        account_id,
        amount.currency,
        amount.minor,
    )
    if amount.minor:
        await _ledger(db, account_id, amount.minor, amount.currency, kind, order_id, at)
    return balance


async def _ledger(
    db: Connection,
    account_id: int,
    minor: int,
    currency: str,
    kind: str,
    order_id: int | None,
    at: int,
) -> None:
    await db.execute(
        "INSERT INTO ledger (account_id, currency, amount_minor, kind, order_id, created_at_us)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        account_id,
        currency,
        minor,
        kind,
        order_id,
        at,
    )


async def _finish(
    db: Connection, order_ids: list[int], status: OrderStatus, at: int
) -> list[tuple[int, int, str, int]]:
    """PROCESSING -> `status` for orders this transaction has locked, with the
    fulfiller's audit rows; returns (id, account, pay currency, price) of each."""
    rows = await db.fetch(
        "UPDATE orders SET status = $1, finished_at_us = $2"
        " WHERE id = ANY($3::bigint[]) AND status = 'PROCESSING'"
        " RETURNING id, account_id, transaction_id, pay_currency, unit_price_minor",
        status.value,
        at,
        order_ids,
    )
    event = (
        AuditEvent.ORDER_COMPLETED
        if status is OrderStatus.COMPLETED
        else AuditEvent.ORDER_CANCELLED
    )
    await _audit(db, [(at, event, row[1], None, None, row[2], {"by": "fulfiller"}) for row in rows])
    return [(row[0], row[1], row[3], row[4]) for row in rows]


AuditRow = tuple[int, AuditEvent, int | None, str | None, str | None, str | None, dict[str, str]]


async def _audit(db: Connection, rows: Sequence[AuditRow]) -> None:
    await db.executemany(
        "INSERT INTO audit (at_us, event, account_id, api_key, request_id, transaction_id,"
        " details) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            (at, event.value, account_id, api_key, request_id or None, tx, json.dumps(details))
            for at, event, account_id, api_key, request_id, tx, details in rows
        ],
    )


async def _insert_account(db: Connection, account: NewAccount, at: int) -> int:
    try:
        account_id: int = await db.fetchval(
            "INSERT INTO accounts (name, created_at_us) VALUES ($1, $2) RETURNING id",
            account.name,
            at,
        )
    except asyncpg.UniqueViolationError:
        raise DataConflict(f"an account named {account.name!r} exists already") from None
    await _insert_api_key(db, account_id, account.api_key, account.secret_hash, at)
    for money in account.balances:
        await _credit(db, account_id, money, at)
    return account_id


async def _insert_api_key(
    db: Connection, account_id: int, api_key: str, secret_hash: str, at: int
) -> None:
    await db.execute(
        "INSERT INTO api_keys (api_key, account_id, secret_hash, created_at_us)"
        " VALUES ($1, $2, $3, $4)",
        api_key,
        account_id,
        secret_hash,
        at,
    )
    await _audit(db, [(at, AuditEvent.KEY_CREATED, account_id, api_key, None, None, {})])


async def _upsert_product(db: Connection, product: Product) -> None:
    await db.execute(
        "INSERT INTO products (sku, name, brand, currency, price_minor, face_value_minor,"
        " instant_delivery_supported, details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (sku) DO UPDATE SET name = excluded.name, brand = excluded.brand,"
        " currency = excluded.currency, price_minor = excluded.price_minor,"
        " face_value_minor = excluded.face_value_minor,"
        " instant_delivery_supported = excluded.instant_delivery_supported,"
        " details = excluded.details",
        product.sku,
        product.name,
        product.brand,
        product.currency,
        product.price.minor,
        product.face_value.minor,
        product.instant_delivery_supported,
        product_details(product),
    )


async def _insert_codes(
    db: Connection, cipher: CodeCipher, codes: Sequence[NewCode], at: int
) -> int:
    """Adds the codes, sealed, and announces the restock to every process (the
    NOTIFY is delivered when the transaction commits)."""
    if not codes:
        return 0
    skus = sorted({code.sku for code in codes})
    known = {row[0] for row in await db.fetch("SELECT sku FROM products WHERE sku = ANY($1)", skus)}
    for sku in skus:
        if sku not in known:
            raise DataConflict(f"no product has SKU {sku!r}")
    # The row id is part of each sealed value, so it is drawn before the insert.
    ids = await db.fetch(
        "SELECT nextval(pg_get_serial_sequence('codes', 'id')) FROM generate_series(1, $1)",
        len(codes),
    )
    rows = [
        (
            code_id,
            code.sku,
            cipher.fingerprint(code.sku, code.redeem_code),
            *cipher.seal_code(code_id, code.redeem_code, code.pin_code),
            cipher.active_key_id,
            at,
        )
        for (code_id,), code in zip(ids, codes, strict=True)
    ]
    try:
        await db.executemany(
            "INSERT INTO codes (id, sku, fingerprint, redeem_code, pin_code, key_id, added_at_us)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            rows,
        )
    except asyncpg.UniqueViolationError:
        # Loading a code twice would let it be sold twice.
        raise DataConflict("a code in the list is already in stock") from None
    await db.execute("SELECT pg_notify($1, '')", STOCK_CHANNEL)
    return len(codes)


async def _upsert_rate(db: Connection, rate: ExchangeRate) -> None:
    await db.execute(
        "INSERT INTO rates (base, quote, rate, as_of, updated_at_us) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (base, quote) DO UPDATE SET rate = excluded.rate,"
        " as_of = excluded.as_of, updated_at_us = excluded.updated_at_us",
        rate.base,
        rate.quote,
        str(rate.rate),
        rate.as_of,
        micros(rate.updated_at),
    )
