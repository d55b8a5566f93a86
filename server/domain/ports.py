"""The one interface the domain needs from persistence.

An implementation makes each method's changes in one transaction, in as few
hops to the database as it can, and keeps the invariants no rule may break:
balances never go negative, every balance change has its ledger row in the
same transaction, a code goes to at most one order. Several processes may
share one database (PostgreSQL): the invariants hold across them too.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from server.domain.bulk import BulkFacts, BulkPlan
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
    Cancellation,
    Cancelled,
    CancelRequest,
    NewBulkOrder,
    NewOrder,
    OrderFacts,
    OrderOutcome,
    OrderPlan,
    Refused,
)


@dataclass(frozen=True)
class NewCode:
    sku: str
    redeem_code: str
    pin_code: str | None


@dataclass(frozen=True)
class WaitingUnits:
    """Units of one order waiting for codes of `sku`: an instant order's one (line
    0), or the undelivered units of a bulk order's line."""

    order_id: int
    line: int
    sku: str
    units: int


@dataclass(frozen=True)
class Delivery:
    """What handing out codes changed: orders now COMPLETED, and bulk orders that got
    units of theirs but still wait for others (transaction ids)."""

    completed: tuple[str, ...] = ()
    partly: tuple[str, ...] = ()

    @property
    def changed(self) -> list[str]:
        return [*self.completed, *self.partly]


@dataclass(frozen=True)
class NewAccount:
    name: str
    balances: tuple[Money, ...]
    api_key: str
    secret_hash: str


@dataclass(frozen=True)
class StockLevel:
    """One product's stock: unsold codes, orders waiting, and since when the oldest waits."""

    sku: str
    unsold: int
    waiting: int
    oldest_waiting_since: datetime | None


@dataclass(frozen=True)
class AccountBalance:
    account_id: int
    account_name: str
    balance: Money


@dataclass(frozen=True)
class Dataset:
    """Everything `admin load` adds, applied all or nothing."""

    accounts: tuple[NewAccount, ...] = ()
    products: tuple[Product, ...] = ()
    codes: tuple[NewCode, ...] = ()
    rates: tuple[ExchangeRate, ...] = ()


class Store(Protocol):
    #: The schema version the database had when opened (0: a new database), and
    #: the one it has now, the latest this backend knows.
    found_schema_version: int
    schema_version: int

    async def place_instant_order(
        self,
        order: NewOrder,
        decide: Callable[[OrderFacts], OrderPlan | Refused],
        key: IdempotencyKey | None = None,
    ) -> OrderOutcome | Remembered | KeyInUse:
        """Reads the facts and lets `decide` apply the rules; unless they refuse,
        claims the clientOrderNumber, debits, reserves a code if one is in stock
        and records the order and its audit rows, all in one transaction. Facts
        that may change before the writes (a balance, a clientOrderNumber taken
        meanwhile) are checked again by them, and reported as an outcome.

        With a key: the answer stored with it if it has one (Remembered), or
        KeyInUse while another transaction holds it; else the key's record of the
        outcome is stored in the same transaction as the order."""
        ...

    async def place_bulk_order(
        self,
        order: NewBulkOrder,
        decide: Callable[[BulkFacts], BulkPlan | Refused],
        key: IdempotencyKey | None = None,
    ) -> OrderOutcome | Remembered | KeyInUse:
        """As place_instant_order, for a bulk order: the grand total debited and the
        order and its lines recorded, all PROCESSING, in one transaction."""
        ...

    async def cancel_order(
        self,
        request: CancelRequest,
        decide: Callable[[Order | None], Cancellation | Refused],
        key: IdempotencyKey | None = None,
    ) -> Cancelled | Refused | Remembered | KeyInUse:
        """Locks the order, lets `decide` rule, and cancels and refunds it when told,
        in one transaction (with the key's record, as for an order)."""
        ...

    async def forget_keys(self, before: datetime, limit: int) -> int:
        """Deletes up to `limit` idempotency keys stored before `before`; returns how many."""
        ...

    async def get_order(self, account_id: int, transaction_id: str) -> Order | None: ...

    async def unit_codes(self, order_id: int, stock_ids: Sequence[int]) -> dict[int, DeliveredCode]:
        """The codes of the order's delivered units among `stock_ids`, by stockId."""
        ...

    # --- fulfillment: orders waiting for a code ---------------------------------------

    async def wait_for_restock(self, max_seconds: float) -> None:
        """Returns when codes may have been added (through this process, or through
        any process where the backend can tell), or after `max_seconds`."""
        ...

    async def waiting_skus(self) -> list[str]:
        """The SKUs that PROCESSING orders wait for."""
        ...

    async def waiting_units(
        self, skus: Collection[str], not_before: datetime, limit: int
    ) -> list[WaitingUnits]:
        """What waits for these SKUs in orders placed since `not_before`, oldest order
        first, across both kinds of order."""
        ...

    async def skus_in_stock(self, skus: Collection[str]) -> set[str]:
        """The SKUs among `skus` with an unsold code in the local inventory."""
        ...

    async def complete_from_stock(
        self, waiting: Sequence[WaitingUnits], now: datetime, max_units: int
    ) -> Delivery:
        """Gives the waiting units, in turn, the oldest unsold codes of their SKUs,
        `max_units` codes at most (an instant order COMPLETED, a bulk order once
        none of its units waits). Atomic; what no longer waits is skipped."""
        ...

    async def cancel_overdue(
        self, created_before: datetime, now: datetime, limit: int
    ) -> list[str]:
        """Cancels PROCESSING orders created before `created_before`, oldest first, each
        with its refund in the same step; returns their transaction ids."""
        ...

    async def progress_among(self, transaction_ids: Collection[str]) -> dict[str, str]:
        """How far each order among `transaction_ids` has come, as a text that changes
        whenever the order does: its status and its units delivered."""
        ...

    async def list_orders(
        self, account_id: int, order_filter: OrderFilter, page: int, page_size: int
    ) -> Page[Order]: ...

    async def list_products(
        self, skus: Sequence[str], page: int, page_size: int
    ) -> Page[Product]: ...

    async def balances(self, account_id: int) -> list[Money]: ...

    async def exchange_rates(self) -> list[ExchangeRate]: ...

    async def product_currencies(self) -> list[str]: ...

    async def credentials(self, api_key: str) -> ApiCredentials | None: ...

    async def api_key_active(self, api_key: str, account_id: int) -> bool:
        """Whether the key exists, belongs to the account and is not disabled."""
        ...

    async def record_audit(self, record: AuditRecord) -> None: ...

    async def audit_trail(self, account_id: int, since: datetime) -> list[AuditRecord]: ...

    async def create_api_key(
        self, account_id: int, api_key: str, secret_hash: str, now: datetime, max_active: int
    ) -> None:
        """Adds a key (and its audit row); refuses when the account has `max_active` already."""
        ...

    async def disable_api_key(self, api_key: str, now: datetime) -> int:
        """Disables the key (and writes its audit row); returns its account's id."""
        ...

    async def reseal_codes(self, limit: int) -> int:
        """Re-encrypts up to `limit` codes under the active data key; returns how many."""
        ...

    async def load(
        self, dataset: Dataset, now: datetime, progress: Callable[[int], object] | None = None
    ) -> list[int]:
        """Adds the dataset; returns the new accounts' ids in the dataset's order.
        `progress` is told how many more codes each step added."""
        ...

    async def add_codes(
        self,
        codes: Sequence[NewCode],
        now: datetime,
        progress: Callable[[int], object] | None = None,
    ) -> int: ...

    async def backup(self, to: Path) -> None:
        """Writes a consistent copy of the live database to `to` (SQLite), or refuses
        with DataConflict saying how to back this backend up (PostgreSQL)."""
        ...

    async def top_up(self, account_id: int, amount: Money, now: datetime) -> Money:
        """Credits the account (a ledger row); returns the new balance."""
        ...

    async def set_rate(self, rate: ExchangeRate) -> None: ...

    # --- operations -------------------------------------------------------------------

    async def ping(self) -> None:
        """Returns once the database answered a query (raises if it cannot)."""
        ...

    async def stock_levels(self) -> list[StockLevel]: ...

    async def all_balances(self) -> list[AccountBalance]: ...

    async def orders_by_status(self, since: datetime) -> dict[str, int]:
        """How many orders created since `since` are in each status."""
        ...

    async def close(self) -> None: ...
