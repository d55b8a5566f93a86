"""The embedded store: SQLite in WAL mode behind aiosqlite.

aiosqlite gives each connection its own thread. Every method hands that
thread one plain function that does all its work, so an order costs no more
than one hop between the event loop and the database, never one per
statement; concurrent requests share hops and commits (see batches.py).
Writes go through one connection inside BEGIN IMMEDIATE transactions, so they
are serialized: read-check-write sequences (balance, duplicate check, code
reservation) cannot interleave. Reads use a second connection and never wait
for writes (WAL).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import aiosqlite

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
from server.domain.ports import DataConflict, Dataset, NewCode
from server.keys import CodeCipher
from server.store.batches import Batcher, in_thread, read_batch, write_batch
from server.store.common import (
    AUDIT_COLUMNS,
    ORDER_COLUMNS,
    PRICED_PRODUCT_COLUMNS,
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
from server.store.schema import MIGRATIONS, SCHEMA_VERSION

T = TypeVar("T")
log = logging.getLogger(__name__)
Work = Callable[[sqlite3.Connection], T]


class SqliteStore:
    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        cipher: CodeCipher,
        found_schema_version: int,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._cipher = cipher
        #: The schema version the database had when opened (0: a new file).
        self.found_schema_version = found_schema_version
        self.schema_version = SCHEMA_VERSION
        self._restocked = RestockSignal()
        self._writes = Batcher(writer, write_batch)
        self._reads = Batcher(reader, read_batch)

    @classmethod
    async def open(cls, path: str | Path, cipher: CodeCipher) -> SqliteStore:
        """Opens (creating or migrating) the database; codes are sealed with `cipher`."""
        writer = await _connect(path)
        try:
            found_version = await in_thread(writer, lambda db: _migrate(db, cipher))
            if found_version < SCHEMA_VERSION:
                # Copy the migrated pages into the database file at once, so no
                # pre-migration page (say, a code in the clear) lingers in it.
                await in_thread(
                    writer, lambda db: db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                )
            reader = await _connect(path)
        except BaseException:
            await writer.close()
            raise
        return cls(writer, reader, cipher, found_version)

    async def close(self) -> None:
        await self._writes.close()
        await self._reads.close()
        await self._reader.close()
        await self._writer.close()

    async def wait_for_restock(self, max_seconds: float) -> None:
        """Wakes for restocks through this process; the fulfiller's polling finds
        the others (`admin add-codes` in another process)."""
        await self._restocked.wait(max_seconds)

    async def _write(self, work: Work[T]) -> T:
        """Runs `work` in a write transaction shared with concurrent writes (group
        commit, see batches.py): atomic on its own, returned once committed."""
        return await self._writes.run(work)

    async def _read(self, work: Work[T]) -> T:
        return await self._reads.run(work)

    # --- orders ---------------------------------------------------------------------

    async def place_instant_order(
        self,
        caller: Caller,
        request: InstantOrderRequest,
        transaction_id: str,
        now: datetime,
        decide: Callable[[OrderFacts], OrderPlan],
    ) -> Order:
        account_id = caller.account_id

        def work(db: sqlite3.Connection) -> Order:
            product = _product_to_price(db, request.sku)
            facts = OrderFacts(
                product=product,
                balances=_balances(db, account_id),
                rate=lambda base, quote: _rate_of(db, base, quote),
                duplicate_of=_duplicate_of(db, account_id, request),
            )
            plan = decide(facts)
            created_at_us = micros(now)
            # Orders already waiting for this SKU get new stock first (the
            # fulfiller serves them in order): a new order queues behind them.
            code = None if _has_waiting(db, request.sku) else _first_unsold_code(db, request.sku)
            status = OrderStatus.PROCESSING if code is None else OrderStatus.COMPLETED
            stock_id = _insert_order(
                db, account_id, request, transaction_id, plan, status, created_at_us
            )
            _debit(db, account_id, plan.unit_price, stock_id, created_at_us)
            audit = _Audit(db, created_at_us, account_id, caller.api_key, caller.request_id)
            audit(AuditEvent.ORDER_CREATED, transaction_id, sku=request.sku, status=status.value)
            if code is not None:
                db.execute("UPDATE codes SET order_id = ? WHERE id = ?", (stock_id, code.id))
                audit(AuditEvent.ORDER_COMPLETED, transaction_id, stockId=str(stock_id))
            opened = None if code is None else code.opened(self._cipher)
            return placed_order(
                request, transaction_id, plan, stock_id, status, created_at_us, opened
            )

        return await self._write(work)

    async def get_order(self, account_id: int, transaction_id: str) -> Order | None:
        def work(db: sqlite3.Connection) -> Order | None:
            row = db.execute(
                f"SELECT {ORDER_COLUMNS} WHERE o.transaction_id = ? AND o.account_id = ?",
                (transaction_id, account_id),
            ).fetchone()
            return None if row is None else order_from_row(row, self._cipher)

        return await self._read(work)

    # --- fulfillment ----------------------------------------------------------------

    async def waiting_skus(self) -> list[str]:
        def work(db: sqlite3.Connection) -> list[str]:
            rows = db.execute("SELECT DISTINCT sku FROM orders WHERE status = 'PROCESSING'")
            return [sku for (sku,) in rows]

        return await self._read(work)

    async def waiting_orders(self, skus: Collection[str], limit: int) -> list[Order]:
        def work(db: sqlite3.Connection) -> list[Order]:
            rows = db.execute(
                f"SELECT {ORDER_COLUMNS} WHERE o.status = 'PROCESSING'"
                f" AND o.sku IN ({_placeholders(skus)}) ORDER BY o.id LIMIT ?",
                [*skus, limit],
            )
            return [order_from_row(row, self._cipher) for row in rows]

        return await self._read(work)

    async def skus_in_stock(self, skus: Collection[str]) -> set[str]:
        def work(db: sqlite3.Connection) -> set[str]:
            return {sku for sku in skus if _first_unsold_code(db, sku) is not None}

        return await self._read(work)

    async def complete_from_stock(self, orders: Sequence[Order], now: datetime) -> list[int]:
        at = micros(now)

        def work(db: sqlite3.Connection) -> list[int]:
            # The oldest unsold codes of each SKU, read once for the batch.
            needed = Counter(order.sku for order in orders)
            stock = {sku: deque(_unsold_code_ids(db, sku, count)) for sku, count in needed.items()}

            def complete(db: sqlite3.Connection, order: Order) -> int | None:
                codes = stock[order.sku]
                if not codes or not _finish(db, order.stock_id, OrderStatus.COMPLETED, at):
                    return None
                db.execute(
                    "UPDATE codes SET order_id = ? WHERE id = ?", (order.stock_id, codes.popleft())
                )
                return order.stock_id

            return _each_atomically(db, orders, complete)

        return await self._write(work)

    async def cancel_overdue(
        self, created_before: datetime, now: datetime, limit: int
    ) -> list[int]:
        at = micros(now)

        def cancel(db: sqlite3.Connection, order: tuple[int, int, str, int]) -> int | None:
            stock_id, account_id, currency, minor = order
            if not _finish(db, stock_id, OrderStatus.CANCELLED, at):
                return None
            _credit(db, account_id, Money.from_minor(minor, currency), at, "REFUND", stock_id)
            return stock_id

        def overdue(db: sqlite3.Connection, limit: int) -> list[tuple[int, int, str, int]]:
            return db.execute(
                "SELECT id, account_id, pay_currency, unit_price_minor FROM orders"
                " WHERE status = 'PROCESSING' AND created_at_us < ?"
                " ORDER BY created_at_us LIMIT ?",
                (micros(created_before), limit),
            ).fetchall()

        # Asked every pass: look on the reader first, and take the write lock
        # from the order path only when something is overdue.
        if not await self._read(lambda db: overdue(db, 1)):
            return []
        return await self._write(lambda db: _each_atomically(db, overdue(db, limit), cancel))

    async def finished_among(self, stock_ids: Collection[int]) -> list[int]:
        ids = list(stock_ids)

        def work(db: sqlite3.Connection) -> list[int]:
            finished: list[int] = []
            for start in range(0, len(ids), 500):  # SQLite limits bound parameters
                chunk = ids[start : start + 500]
                rows = db.execute(
                    f"SELECT id FROM orders WHERE status <> 'PROCESSING'"  # noqa: S608
                    f" AND id IN ({_placeholders(chunk)})",
                    chunk,
                )
                finished += [stock_id for (stock_id,) in rows]
            return finished

        return await self._read(work)

    async def list_orders(
        self, account_id: int, order_filter: OrderFilter, page: int, page_size: int
    ) -> Page[Order]:
        where: list[str] = ["o.account_id = ?"]
        params: list[object] = [account_id]
        if order_filter.transaction_id:
            where.append("o.transaction_id = ?")
            params.append(order_filter.transaction_id)
        if order_filter.client_order_number:
            where.append("o.client_order_number = ?")
            params.append(order_filter.client_order_number)
        condition = " AND ".join(where)

        def work(db: sqlite3.Connection) -> Page[Order]:
            (total,) = db.execute(
                f"SELECT count(*) FROM orders o WHERE {condition}",  # noqa: S608
                params,
            ).fetchone()
            rows = db.execute(
                f"SELECT {ORDER_COLUMNS} WHERE {condition} ORDER BY o.id DESC LIMIT ? OFFSET ?",
                [*params, page_size, (page - 1) * page_size],
            ).fetchall()
            return Page([order_from_row(row, self._cipher) for row in rows], total, page, page_size)

        return await self._read(work)

    # --- catalogue, balances, rates, credentials ------------------------------------

    async def list_products(self, skus: Sequence[str], page: int, page_size: int) -> Page[Product]:
        condition = f"WHERE sku IN ({','.join('?' * len(skus))})" if skus else ""

        def work(db: sqlite3.Connection) -> Page[Product]:
            (total,) = db.execute(
                f"SELECT count(*) FROM products {condition}",  # noqa: S608
                list(skus),
            ).fetchone()
            rows = db.execute(
                f"SELECT {PRODUCT_COLUMNS} {condition} ORDER BY sku LIMIT ? OFFSET ?",
                [*skus, page_size, (page - 1) * page_size],
            ).fetchall()
            return Page([product_from_row(row) for row in rows], total, page, page_size)

        return await self._read(work)

    async def balances(self, account_id: int) -> list[Money]:
        balances = await self._read(lambda db: _balances(db, account_id))
        return sorted(balances.values(), key=lambda money: money.currency)

    async def exchange_rates(self) -> list[ExchangeRate]:
        def work(db: sqlite3.Connection) -> list[ExchangeRate]:
            rows = db.execute(f"SELECT {RATE_COLUMNS} ORDER BY base, quote").fetchall()
            return [rate_from_row(row) for row in rows]

        return await self._read(work)

    async def product_currencies(self) -> list[str]:
        def work(db: sqlite3.Connection) -> list[str]:
            rows = db.execute("SELECT DISTINCT currency FROM products ORDER BY currency")
            return [currency for (currency,) in rows]

        return await self._read(work)

    async def credentials(self, api_key: str) -> ApiCredentials | None:
        def work(db: sqlite3.Connection) -> ApiCredentials | None:
            row = db.execute(
                "SELECT api_key, account_id, secret_hash, disabled_at_us IS NULL FROM api_keys"
                " WHERE api_key = ?",
                (api_key,),
            ).fetchone()
            return None if row is None else ApiCredentials(row[0], row[1], row[2], bool(row[3]))

        return await self._read(work)

    async def api_key_active(self, api_key: str, account_id: int) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT 1 FROM api_keys WHERE api_key = ? AND account_id = ?"
                " AND disabled_at_us IS NULL",
                (api_key, account_id),
            ).fetchone()
            return row is not None

        return await self._read(work)

    # --- audit ----------------------------------------------------------------------

    async def record_audit(self, record: AuditRecord) -> None:
        def work(db: sqlite3.Connection) -> None:
            audit = _Audit(
                db, micros(record.at), record.account_id, record.api_key, record.request_id
            )
            audit(record.event, record.transaction_id, **record.details)

        await self._write(work)

    async def audit_trail(self, account_id: int, since: datetime) -> list[AuditRecord]:
        def work(db: sqlite3.Connection) -> list[AuditRecord]:
            rows = db.execute(
                f"SELECT {AUDIT_COLUMNS} WHERE account_id = ? AND at_us >= ? ORDER BY id",
                (account_id, micros(since)),
            )
            return [audit_from_row(row) for row in rows]

        return await self._read(work)

    # --- administration -------------------------------------------------------------

    async def create_api_key(
        self, account_id: int, api_key: str, secret_hash: str, now: datetime, max_active: int
    ) -> None:
        at = micros(now)

        def work(db: sqlite3.Connection) -> None:
            if db.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
                raise DataConflict(f"no account has id {account_id}")
            (active,) = db.execute(
                "SELECT count(*) FROM api_keys WHERE account_id = ? AND disabled_at_us IS NULL",
                (account_id,),
            ).fetchone()
            if active >= max_active:
                raise DataConflict(
                    f"account {account_id} has {active} active keys already: disable one first"
                )
            _insert_api_key(db, account_id, api_key, secret_hash, at)

        await self._write(work)

    async def disable_api_key(self, api_key: str, now: datetime) -> int:
        at = micros(now)

        def work(db: sqlite3.Connection) -> int:
            row = db.execute(
                "SELECT account_id FROM api_keys WHERE api_key = ? AND disabled_at_us IS NULL",
                (api_key,),
            ).fetchone()
            if row is None:
                raise DataConflict("no active API key has that id")
            db.execute("UPDATE api_keys SET disabled_at_us = ? WHERE api_key = ?", (at, api_key))
            _Audit(db, at, row[0], api_key, None)(AuditEvent.KEY_DISABLED, None)
            return int(row[0])

        return await self._write(work)

    async def load(self, dataset: Dataset, now: datetime) -> list[int]:
        at = micros(now)

        def work(db: sqlite3.Connection) -> list[int]:
            account_ids = []
            for account in dataset.accounts:
                account_id = _insert_account(db, account.name, at)
                _insert_api_key(db, account_id, account.api_key, account.secret_hash, at)
                for money in account.balances:
                    _credit(db, account_id, money, at)
                account_ids.append(account_id)
            for product in dataset.products:
                _upsert_product(db, product)
            _insert_codes(db, self._cipher, dataset.codes, at)
            for rate in dataset.rates:
                _upsert_rate(db, rate)
            return account_ids

        account_ids = await self._write(work)
        self._restocked.set()
        return account_ids

    async def add_codes(self, codes: Sequence[NewCode], now: datetime) -> int:
        added = await self._write(lambda db: _insert_codes(db, self._cipher, codes, micros(now)))
        self._restocked.set()
        return added

    async def reseal_codes(self, limit: int) -> int:
        """Re-encrypts up to `limit` codes not sealed with the active data key (after
        a rotation, which this reads from the key file); returns how many."""
        self._cipher.reload()

        def work(db: sqlite3.Connection) -> int:
            active = self._cipher.active_key_id
            rows = db.execute(
                "SELECT id, key_id, redeem_code, pin_code FROM codes WHERE key_id <> ? LIMIT ?",
                (active, limit),
            ).fetchall()
            for row in rows:
                code = self._cipher.open_code(*row)
                db.execute(
                    "UPDATE codes SET redeem_code = ?, pin_code = ?, key_id = ? WHERE id = ?",
                    (*self._cipher.seal_code(row[0], *code), active, row[0]),
                )
            return len(rows)

        return await self._write(work)

    async def top_up(self, account_id: int, amount: Money, now: datetime) -> Money:
        def work(db: sqlite3.Connection) -> Money:
            if db.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
                raise DataConflict(f"no account has id {account_id}")
            _credit(db, account_id, amount, micros(now))
            return _balances(db, account_id)[amount.currency]

        return await self._write(work)

    async def set_rate(self, rate: ExchangeRate) -> None:
        await self._write(lambda db: _upsert_rate(db, rate))


async def _connect(path: str | Path) -> aiosqlite.Connection:
    connection = await aiosqlite.connect(path, isolation_level=None)
    await in_thread(connection, _configure)
    return connection


def _configure(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")  # an acknowledged order survives power loss
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA busy_timeout = 5000")  # other processes (admin commands) may write
    db.execute("PRAGMA secure_delete = ON")  # deleted content is zeroed, not left in free pages


def _transaction(db: sqlite3.Connection, mode: str, work: Work[T]) -> T:
    db.execute(f"BEGIN {mode}")
    try:
        result = work(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def _migrate(db: sqlite3.Connection, cipher: CodeCipher) -> int:
    """Brings the schema up to date; returns the version it found."""

    def work(db: sqlite3.Connection) -> int:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(version, SCHEMA_VERSION)
        for step in MIGRATIONS[version:]:
            if isinstance(step, str):
                for statement in _statements(step):
                    db.execute(statement)
            else:
                step(db, cipher)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return int(version)

    return _transaction(db, "IMMEDIATE", work)


def _statements(script: str) -> list[str]:
    """The script's statements; a ";" inside a trigger body or a comment does not end one."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return [statement for statement in statements if statement.strip(";\n ")]


# --- statements, run inside a transaction on the connection's thread -----------------


def _product_to_price(db: sqlite3.Connection, sku: str) -> Product | None:
    row = db.execute(f"SELECT {PRICED_PRODUCT_COLUMNS} WHERE sku = ?", (sku,)).fetchone()
    return None if row is None else product_to_price(row)


def _balances(db: sqlite3.Connection, account_id: int) -> dict[str, Money]:
    rows = db.execute(
        "SELECT currency, amount_minor FROM balances WHERE account_id = ?", (account_id,)
    )
    return {currency: Money.from_minor(minor, currency) for currency, minor in rows}


def _rate_of(db: sqlite3.Connection, base: str, quote: str) -> ExchangeRate | None:
    row = db.execute(
        f"SELECT {RATE_COLUMNS} WHERE base = ? AND quote = ?",
        (base, quote),
    ).fetchone()
    return None if row is None else rate_from_row(row)


def _duplicate_of(
    db: sqlite3.Connection, account_id: int, request: InstantOrderRequest
) -> str | None:
    if not (request.dup_check and request.client_order_number):
        return None
    row = db.execute(
        "SELECT transaction_id FROM orders WHERE account_id = ? AND client_order_number = ?"
        " ORDER BY id LIMIT 1",
        (account_id, request.client_order_number),
    ).fetchone()
    return None if row is None else str(row[0])


def _has_waiting(db: sqlite3.Connection, sku: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM orders WHERE sku = ? AND status = 'PROCESSING' LIMIT 1", (sku,)
    ).fetchone()
    return row is not None


def _finish(db: sqlite3.Connection, stock_id: int, status: OrderStatus, at: int) -> bool:
    """PROCESSING -> `status`, with the fulfiller's audit row; False when the order is
    no longer PROCESSING (another fulfiller got there first), which makes every
    step safe to repeat."""
    finished = db.execute(
        "UPDATE orders SET status = ?, finished_at_us = ? WHERE id = ? AND status = 'PROCESSING'"
        " RETURNING account_id, transaction_id",
        (status.value, at, stock_id),
    ).fetchall()
    if not finished:
        return False
    ((account_id, transaction_id),) = finished
    event = (
        AuditEvent.ORDER_COMPLETED
        if status is OrderStatus.COMPLETED
        else AuditEvent.ORDER_CANCELLED
    )
    _Audit(db, at, account_id, None, None)(event, transaction_id, by="fulfiller")
    return True


def _each_atomically(
    db: sqlite3.Connection,
    items: Iterable[T],
    step: Callable[[sqlite3.Connection, T], int | None],
) -> list[int]:
    """Runs `step` on each item inside its own savepoint, within the caller's
    transaction: one item failing is rolled back and logged alone, and the
    batch still commits with one fsync. A step returns the stock id of the
    order it changed, or None; the ids are returned."""
    done = []
    for item in items:
        db.execute("SAVEPOINT step")
        try:
            changed = step(db, item)
        except sqlite3.Error:
            db.execute("ROLLBACK TO step")
            log.exception("a fulfillment step failed and was rolled back")
            changed = None
        db.execute("RELEASE step")
        if changed is not None:
            done.append(changed)
    return done


def _unsold_code_ids(db: sqlite3.Connection, sku: str, count: int) -> list[int]:
    rows = db.execute(
        "SELECT id FROM codes INDEXED BY unsold_codes"
        " WHERE sku = ? AND order_id IS NULL ORDER BY id LIMIT ?",
        (sku, count),
    )
    return [code_id for (code_id,) in rows]


def _first_unsold_code(db: sqlite3.Connection, sku: str) -> SealedCode | None:
    # Left to itself, SQLite walks the NULL entries of the order_id index
    # (every SKU's unsold codes, oldest first), which costs O(stock of older
    # SKUs) per call: the partial index costs O(log n).
    row = db.execute(
        "SELECT id, key_id, redeem_code, pin_code FROM codes INDEXED BY unsold_codes"
        " WHERE sku = ? AND order_id IS NULL ORDER BY id LIMIT 1",
        (sku,),
    ).fetchone()
    return None if row is None else SealedCode(*row)


def _insert_order(
    db: sqlite3.Connection,
    account_id: int,
    request: InstantOrderRequest,
    transaction_id: str,
    plan: OrderPlan,
    status: OrderStatus,
    created_at_us: int,
) -> int:
    cursor = db.execute(
        "INSERT INTO orders (transaction_id, account_id, client_order_number, sku, status,"
        " pay_currency, unit_price_minor, original_currency, unit_price_original_minor,"
        " fx_rate, fx_as_of, created_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            transaction_id,
            account_id,
            request.client_order_number,
            request.sku,
            status.value,
            plan.unit_price.currency,
            plan.unit_price.minor,
            plan.unit_price_original.currency,
            plan.unit_price_original.minor,
            None if plan.fx is None else str(plan.fx.rate),
            None if plan.fx is None else plan.fx.as_of,
            created_at_us,
        ),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _debit(db: sqlite3.Connection, account_id: int, amount: Money, order_id: int, at: int) -> None:
    # The guard repeats the domain's balance check: whatever happens above, a
    # balance never goes negative (the CHECK constraint backs it too).
    updated = db.execute(
        "UPDATE balances SET amount_minor = amount_minor - ?"
        " WHERE account_id = ? AND currency = ? AND amount_minor >= ?",
        (amount.minor, account_id, amount.currency, amount.minor),
    ).rowcount
    if updated != 1:
        raise RuntimeError("debit would overdraw the balance")
    _ledger(db, account_id, -amount.minor, amount.currency, "ORDER", order_id, at)


def _credit(
    db: sqlite3.Connection,
    account_id: int,
    amount: Money,
    at: int,
    kind: str = "TOP_UP",
    order_id: int | None = None,
) -> None:
    db.execute(
        "INSERT INTO balances (account_id, currency, amount_minor) VALUES (?, ?, ?)"
        " ON CONFLICT (account_id, currency) DO UPDATE"
        " SET amount_minor = amount_minor + excluded.amount_minor",
        (account_id, amount.currency, amount.minor),
    )
    if amount.minor:
        _ledger(db, account_id, amount.minor, amount.currency, kind, order_id, at)


def _ledger(
    db: sqlite3.Connection,
    account_id: int,
    minor: int,
    currency: str,
    kind: str,
    order_id: int | None,
    at: int,
) -> None:
    db.execute(
        "INSERT INTO ledger (account_id, currency, amount_minor, kind, order_id, created_at_us)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (account_id, currency, minor, kind, order_id, at),
    )


def _insert_api_key(
    db: sqlite3.Connection, account_id: int, api_key: str, secret_hash: str, at: int
) -> None:
    db.execute(
        "INSERT INTO api_keys (api_key, account_id, secret_hash, created_at_us)"
        " VALUES (?, ?, ?, ?)",
        (api_key, account_id, secret_hash, at),
    )
    _Audit(db, at, account_id, api_key, None)(AuditEvent.KEY_CREATED, None)


class _Audit:
    """Writes audit rows for one actor, in the caller's transaction."""

    def __init__(
        self,
        db: sqlite3.Connection,
        at: int,
        account_id: int | None,
        api_key: str | None,
        request_id: str | None,
    ) -> None:
        self._db = db
        self._row = (at, account_id, api_key, request_id or None)

    def __call__(self, event: AuditEvent, transaction_id: str | None, **details: str) -> None:
        at, account_id, api_key, request_id = self._row
        self._db.execute(
            "INSERT INTO audit (at_us, event, account_id, api_key, request_id, transaction_id,"
            " details) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (at, event.value, account_id, api_key, request_id, transaction_id, json.dumps(details)),
        )


def _insert_account(db: sqlite3.Connection, name: str, at: int) -> int:
    try:
        cursor = db.execute("INSERT INTO accounts (name, created_at_us) VALUES (?, ?)", (name, at))
    except sqlite3.IntegrityError:
        raise DataConflict(f"an account named {name!r} exists already") from None
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _upsert_product(db: sqlite3.Connection, product: Product) -> None:
    db.execute(
        "INSERT INTO products (sku, name, brand, currency, price_minor, face_value_minor,"
        " instant_delivery_supported, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (sku) DO UPDATE SET name = excluded.name, brand = excluded.brand,"
        " currency = excluded.currency, price_minor = excluded.price_minor,"
        " face_value_minor = excluded.face_value_minor,"
        " instant_delivery_supported = excluded.instant_delivery_supported,"
        " details = excluded.details",
        (
            product.sku,
            product.name,
            product.brand,
            product.currency,
            product.price.minor,
            product.face_value.minor,
            product.instant_delivery_supported,
            product_details(product),
        ),
    )


def _insert_codes(
    db: sqlite3.Connection, cipher: CodeCipher, codes: Sequence[NewCode], at: int
) -> int:
    for sku in sorted({code.sku for code in codes}):
        if db.execute("SELECT 1 FROM products WHERE sku = ?", (sku,)).fetchone() is None:
            raise DataConflict(f"no product has SKU {sku!r}")
    # The row id is part of each sealed value, so it is chosen before the insert
    # (writers are serialized: nobody else takes it meanwhile).
    (next_id,) = db.execute("SELECT coalesce(max(id), 0) + 1 FROM codes").fetchone()
    for code_id, code in enumerate(codes, start=next_id):
        try:
            db.execute(
                "INSERT INTO codes (id, sku, fingerprint, redeem_code, pin_code, key_id,"
                " added_at_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    code_id,
                    code.sku,
                    cipher.fingerprint(code.sku, code.redeem_code),
                    *cipher.seal_code(code_id, code.redeem_code, code.pin_code),
                    cipher.active_key_id,
                    at,
                ),
            )
        except sqlite3.IntegrityError:
            # Loading a code twice would let it be sold twice.
            raise DataConflict(f"a code for SKU {code.sku!r} is already in stock") from None
    return len(codes)


def _upsert_rate(db: sqlite3.Connection, rate: ExchangeRate) -> None:
    db.execute(
        "INSERT INTO rates (base, quote, rate, as_of, updated_at_us) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (base, quote) DO UPDATE SET rate = excluded.rate,"
        " as_of = excluded.as_of, updated_at_us = excluded.updated_at_us",
        (rate.base, rate.quote, str(rate.rate), rate.as_of, micros(rate.updated_at)),
    )


def _placeholders(values: Collection[object]) -> str:
    return ",".join("?" * len(values))
