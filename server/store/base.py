"""The Store, once for both backends: each method runs a transaction of
transactions.py on the backend's connections.

A backend (sqlite.py, postgres.py) says how a transaction runs (`_read`,
`_write`), how a restock is announced to the fulfillers, and, where it must,
how one method runs faster on it (PostgreSQL places an order in two round
trips).
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import datetime
from functools import partial
from typing import Any, ParamSpec, TypeVar

from server import metrics, tracing
from server.domain.clock import from_micros, micros
from server.domain.idempotency import IdempotencyKey, KeyInUse, Remembered
from server.domain.models import (
    ApiCredentials,
    AuditRecord,
    DeliveredCode,
    ExchangeRate,
    Order,
    OrderFilter,
    Page,
    Product,
)
from server.domain.money import Money
from server.domain.orders import (
    BalanceSpent,
    Cancellation,
    Cancelled,
    CancelRequest,
    NewBulkOrder,
    NewOrder,
    OrderOutcome,
    Refused,
)
from server.domain.ports import (
    AccountBalance,
    Dataset,
    Delivery,
    NewCode,
    StockLevel,
    WaitingUnits,
)
from server.keys import CodeCipher
from server.store import statements as sql
from server.store import transactions
from server.store.rows import (
    audit_from_row,
    balances_from_rows,
    credentials_from_row,
    product_from_row,
    rate_from_row,
    rate_params,
)
from server.store.schema import SCHEMA_VERSION
from server.store.sql import Query, Unit
from server.store.transactions import Decide, DecideBulk, one

P = ParamSpec("P")
#: Told how many more rows a long job has done (from the database's thread, on SQLite).
Progress = Callable[[int], object]
T = TypeVar("T")


class SqlStore(ABC):
    def __init__(self, cipher: CodeCipher, found_schema_version: int) -> None:
        self._cipher = cipher
        #: The schema version the database had when opened (0: a new database), and
        #: the one it has now.
        self.found_schema_version = found_schema_version
        self.schema_version = SCHEMA_VERSION

    #: The backend's name, as metrics and traces label it.
    backend: str

    @abstractmethod
    async def _run(self, transaction: Callable[[], Unit[T]], *, writes: bool) -> T:
        """Runs the transaction the callable makes. One that writes is atomic and
        durable once this returns; a Rollback it raises undoes it and is returned."""

    async def _read(
        self, transaction: Callable[P, Unit[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await self._timed(transaction.__name__, partial(transaction, *args, **kwargs))

    async def _write(
        self, transaction: Callable[P, Unit[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await self._timed(
            transaction.__name__, partial(transaction, *args, **kwargs), writes=True
        )

    async def _timed(
        self, operation: str, transaction: Callable[[], Unit[T]], *, writes: bool = False
    ) -> T:
        with self._measured(operation):
            return await self._run(transaction, writes=writes)

    @contextlib.contextmanager
    def _measured(self, operation: str) -> Iterator[None]:
        """Times the block in instant_orders_db_transaction_seconds and, when tracing is
        on, spans it."""
        with tracing.span(f"db {operation}", backend=self.backend):
            started = time.perf_counter()
            try:
                yield
            finally:
                metrics.db_transaction(self.backend, operation, time.perf_counter() - started)

    @abstractmethod
    async def _announce_restock(self) -> None:
        """Wakes the fulfillers that can be woken: this process's, or every process's."""

    @abstractmethod
    async def wait_for_restock(self, max_seconds: float) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def _query(self, query: Query) -> Any:
        """The result of one query that only reads."""
        return await self._timed(query.statement.name, partial(one, query))

    # --- orders ---------------------------------------------------------------------

    async def place_instant_order(
        self, order: NewOrder, decide: Decide, key: IdempotencyKey | None = None
    ) -> OrderOutcome | Remembered | KeyInUse:
        return await self._write(transactions.place_instant_order, order, decide, self._cipher, key)

    async def place_bulk_order(
        self, order: NewBulkOrder, decide: DecideBulk, key: IdempotencyKey | None = None
    ) -> OrderOutcome | Remembered | KeyInUse:
        """A balance spent by another transaction between the facts and the debit (on
        PostgreSQL) rolls the order back, and its key's answer with it: that refusal is
        stored with the key in a transaction of its own, so a retry gets it again."""
        outcome = await self._write(transactions.place_bulk_order, order, decide, key)
        if key is None or not isinstance(outcome, BalanceSpent):
            return outcome
        account_id = order.caller.account_id
        held = await self._write(
            transactions.remember_refusal, account_id, key, key.record_of(outcome), order.at
        )
        return outcome if held is None else held

    async def cancel_order(
        self,
        request: CancelRequest,
        decide: Callable[[Order | None], Cancellation | Refused],
        key: IdempotencyKey | None = None,
    ) -> Cancelled | Refused | Remembered | KeyInUse:
        return await self._write(transactions.cancel_order, request, decide, self._cipher, key)

    async def forget_keys(self, before: datetime, limit: int) -> int:
        return await self._write(transactions.forget_keys, before, limit)

    async def get_order(self, account_id: int, transaction_id: str) -> Order | None:
        return await self._read(transactions.get_order, account_id, transaction_id, self._cipher)

    async def unit_codes(self, order_id: int, stock_ids: Sequence[int]) -> dict[int, DeliveredCode]:
        return await self._read(transactions.unit_codes, order_id, stock_ids, self._cipher)

    async def list_orders(
        self, account_id: int, order_filter: OrderFilter, page: int, page_size: int
    ) -> Page[Order]:
        orders, total = await self._read(
            transactions.orders_page,
            account_id,
            order_filter.transaction_id,
            order_filter.client_order_number,
            page_size,
            (page - 1) * page_size,
            self._cipher,
        )
        return Page(orders, total, page, page_size)

    # --- fulfillment ----------------------------------------------------------------

    async def waiting_skus(self) -> list[str]:
        skus: list[str] = await self._query(sql.WAITING_SKUS.column())
        return skus

    async def waiting_units(
        self, skus: Collection[str], not_before: datetime, limit: int
    ) -> list[WaitingUnits]:
        return await self._read(transactions.waiting_units, skus, not_before, limit)

    async def skus_in_stock(self, skus: Collection[str]) -> set[str]:
        return set(await self._query(sql.SKUS_IN_STOCK.column(skus=list(skus))))

    async def complete_from_stock(
        self, waiting: Sequence[WaitingUnits], now: datetime, max_units: int
    ) -> Delivery:
        return await self._write(transactions.complete_from_stock, waiting, now, max_units)

    async def cancel_overdue(
        self, created_before: datetime, now: datetime, limit: int
    ) -> list[str]:
        # Asked every pass: a read first, and a write only when something is overdue.
        if not await self._query(sql.ANY_OVERDUE.value(before=micros(created_before))):
            return []
        return await self._write(transactions.cancel_overdue, created_before, now, limit)

    async def progress_among(self, transaction_ids: Collection[str]) -> dict[str, str]:
        rows = await self._query(sql.PROGRESS_AMONG.rows(transaction_ids=list(transaction_ids)))
        return {row["transaction_id"]: f"{row['status']} {row['delivered']}" for row in rows}

    # --- catalogue, balances, rates, credentials ------------------------------------

    async def list_products(self, skus: Sequence[str], page: int, page_size: int) -> Page[Product]:
        count, rows = sql.PRODUCTS_BY_SKU if skus else sql.PRODUCTS
        where = {"skus": list(skus)}
        total = await self._query(count.value(**where))
        found = await self._query(
            rows.rows(**where, limit=page_size, offset=(page - 1) * page_size)
        )
        return Page([product_from_row(row) for row in found], total, page, page_size)

    async def balances(self, account_id: int) -> list[Money]:
        rows = await self._query(sql.BALANCES.rows(account_id=account_id))
        return sorted(balances_from_rows(rows).values(), key=lambda money: money.currency)

    async def exchange_rates(self) -> list[ExchangeRate]:
        return [rate_from_row(row) for row in await self._query(sql.ALL_RATES.rows())]

    async def product_currencies(self) -> list[str]:
        currencies: list[str] = await self._query(sql.PRODUCT_CURRENCIES.column())
        return currencies

    async def credentials(self, api_key: str) -> ApiCredentials | None:
        row = await self._query(sql.CREDENTIALS.row(api_key=api_key))
        return None if row is None else credentials_from_row(row)

    async def api_key_active(self, api_key: str, account_id: int) -> bool:
        row = await self._query(sql.API_KEY_ACTIVE.row(api_key=api_key, account_id=account_id))
        return row is not None

    # --- audit ----------------------------------------------------------------------

    async def record_audit(self, record: AuditRecord) -> None:
        await self._write(transactions.record_audit, record)

    async def audit_trail(self, account_id: int, since: datetime) -> list[AuditRecord]:
        rows = await self._query(sql.AUDIT_TRAIL.rows(account_id=account_id, since=micros(since)))
        return [audit_from_row(row) for row in rows]

    # --- operations -----------------------------------------------------------------

    async def ping(self) -> None:
        await self._query(sql.PING.value())

    async def stock_levels(self) -> list[StockLevel]:
        rows = await self._query(sql.STOCK_LEVELS.rows())
        return [
            StockLevel(
                row["sku"],
                row["unsold"],
                row["waiting"],
                None if row["oldest_waiting_us"] is None else from_micros(row["oldest_waiting_us"]),
            )
            for row in rows
        ]

    async def all_balances(self) -> list[AccountBalance]:
        rows = await self._query(sql.ALL_BALANCES.rows())
        return [
            AccountBalance(
                row["account_id"],
                row["name"],
                Money.from_minor(row["amount_minor"], row["currency"]),
            )
            for row in rows
        ]

    async def orders_by_status(self, since: datetime) -> dict[str, int]:
        rows = await self._query(sql.ORDERS_BY_STATUS.rows(since=micros(since)))
        return {row["status"]: row["orders"] for row in rows}

    # --- administration -------------------------------------------------------------

    async def create_api_key(
        self, account_id: int, api_key: str, secret_hash: str, now: datetime, max_active: int
    ) -> None:
        await self._write(
            transactions.create_api_key, account_id, api_key, secret_hash, now, max_active
        )

    async def disable_api_key(self, api_key: str, now: datetime) -> int:
        return await self._write(transactions.disable_api_key, api_key, now)

    async def load(
        self, dataset: Dataset, now: datetime, progress: Progress | None = None
    ) -> list[int]:
        account_ids = await self._write(transactions.load, dataset, self._cipher, now, progress)
        await self._announce_restock()
        return account_ids

    async def add_codes(
        self, codes: Sequence[NewCode], now: datetime, progress: Progress | None = None
    ) -> int:
        added = await self._write(transactions.add_codes, codes, self._cipher, now, progress)
        await self._announce_restock()
        return added

    async def reseal_codes(self, limit: int) -> int:
        """Re-encrypts up to `limit` codes not sealed with the active data key (after
        a rotation, which this reads from the key file); returns how many."""
        self._cipher.reload()
        return await self._write(transactions.reseal_codes, self._cipher, limit)

    async def top_up(self, account_id: int, amount: Money, now: datetime) -> Money:
        return await self._write(transactions.top_up, account_id, amount, now)

    async def set_rate(self, rate: ExchangeRate) -> None:
        await self._write(one, sql.UPSERT_RATE.run(**rate_params(rate)))
