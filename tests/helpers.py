"""What the tests share: their dataset, a fulfiller, and reading the database
directly (either backend) to check what changed and what did not."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from server.domain import admin
from server.domain.clock import utc_now
from server.domain.fulfillment import BATCH_SIZE, Fulfiller, InventorySource
from server.domain.money import Money
from server.domain.ports import NewCode, Store
from server.domain.service import InstantOrdersService
from server.keys import CodeCipher, load_or_create
from server.store.backends import open_store as open_backend
from tests.databases import key_file, one, query

#: The catalogue of the tests: the reference's SKUs and its EUR/USD example.
DATASET: dict[str, Any] = {
    "accounts": [
        {"name": "acme", "balances": {"USD": "100.00"}},
        {"name": "globex", "balances": {"USD": "50.00", "EUR": "20.00"}},
    ],
    "products": [
        {"sku": "8PX-UF-Y5U", "name": "Steam USD 10", "brand": "Steam", "currency": "USD",
         "price": "9.75", "faceValue": "10.00", "instantDeliverySupported": True},
        {"sku": "TTR-WI-YWN", "name": "Google Play EUR 10", "brand": "Google Play",
         "currency": "EUR", "price": "9.70", "faceValue": "10.00",
         "instantDeliverySupported": True},
        {"sku": "ELX-BF-85S", "name": "Xbox GBP 25", "brand": "Xbox", "currency": "GBP",
         "price": "24.10", "faceValue": "25.00", "instantDeliverySupported": False},
        {"sku": "JPY-NT-1000", "name": "Nintendo JPY 1000", "brand": "Nintendo",
         "currency": "JPY", "price": "950", "faceValue": "1000",
         "instantDeliverySupported": True},
    ],
    "codes": [
        {"sku": "8PX-UF-Y5U", "redeemCode": "STEAM-0001", "pinCode": "0042"},
        {"sku": "8PX-UF-Y5U", "redeemCode": "STEAM-0002", "pinCode": "1234"},
        {"sku": "TTR-WI-YWN", "redeemCode": "PLAY-0001"},
    ],
    "rates": [
        {"pair": "EUR/USD", "rate": "1.1829", "asOfDate": "2025-10-06"},
        {"pair": "USD/CAD", "rate": "1.4102", "asOfDate": "2025-10-06"},
    ],
}  # fmt: skip


def make_fulfiller(
    store: Store,
    service: InstantOrdersService | None = None,
    timeout: timedelta = timedelta(days=1),
    clock: Callable[[], datetime] = utc_now,
    batch_size: int = BATCH_SIZE,
    monotonic: Callable[[], float] = time.monotonic,
) -> Fulfiller:
    """A fulfiller on the local inventory; it tells `service`'s watchers what it changed."""
    on_change = service.updates.notify if service else None
    return Fulfiller(
        store,
        InventorySource(store),
        timeout,
        clock,
        on_change,
        poll_interval=0.05,
        batch_size=batch_size,
        monotonic=monotonic,
    )


async def open_store(database: str) -> Store:
    """Another connection to the test database, with its key file."""
    return await open_backend(database, CodeCipher(key_file(database)))


def database_args(database: str) -> list[str]:
    """The command-line options that point a process at the test database."""
    return ["--database", database, "--secret-key-file", key_file(database)]


def signing_key(database: str) -> bytes:
    return load_or_create(key_file(database)).token_signing_key


def snapshot(database: str) -> dict[str, Any]:
    """Everything an order may change: balances, ledger, orders and sold codes."""
    return {
        "balances": query(database, "SELECT * FROM balances ORDER BY 1, 2"),
        "ledger": one(database, "SELECT count(*) FROM ledger"),
        "orders": one(database, "SELECT count(*) FROM orders"),
        "sold": one(database, "SELECT count(*) FROM codes WHERE order_id IS NOT NULL"),
    }


def order_statuses(database: str, sku: str | None = None) -> dict[str, int]:
    """How many orders (of `sku`, or of all) are in each status."""
    if sku is None:
        return dict(query(database, "SELECT status, count(*) FROM orders GROUP BY 1"))
    rows = query(database, "SELECT status, count(*) FROM orders WHERE sku = ? GROUP BY 1", (sku,))
    return dict(rows)


def balance(database: str, account_id: int, currency: str) -> Decimal:
    minor = one(
        database,
        "SELECT amount_minor FROM balances WHERE account_id = ? AND currency = ?",
        (account_id, currency),
    )
    digits = 0 if currency == "JPY" else 2
    return Decimal(minor).scaleb(-digits)


def assert_invariants(database: str) -> None:
    """Money is conserved and no code is sold twice; bulk orders agree with their lines."""
    mismatched = query(
        database,
        "SELECT b.account_id, b.currency FROM balances b"
        " LEFT JOIN (SELECT account_id, currency, sum(amount_minor) AS total FROM ledger"
        " GROUP BY 1, 2) l USING (account_id, currency)"
        " WHERE b.amount_minor <> coalesce(l.total, 0)",
    )
    assert mismatched == [], f"balances differ from their ledger: {mismatched}"
    assert one(database, "SELECT count(*) FROM balances WHERE amount_minor < 0") == 0
    unpaid = one(
        database,
        "SELECT count(*) FROM orders o WHERE o.kind = 'INSTANT' AND NOT EXISTS"
        " (SELECT 1 FROM ledger l WHERE l.order_id = o.id AND l.kind = 'ORDER'"
        " AND l.amount_minor = -o.unit_price_minor)",
    )
    assert unpaid == 0, "an order without its debit"
    assert_bulk_consistent(database)
    completed_without_code = one(
        database,
        "SELECT count(*) FROM orders o WHERE o.status = 'COMPLETED'"
        " AND NOT EXISTS (SELECT 1 FROM codes c WHERE c.order_id = o.id)",
    )
    assert completed_without_code == 0


def assert_fulfillment_consistent(database: str) -> None:
    """Every order's state agrees with its ledger rows and its code.

    PROCESSING: one debit, no code, no refund. COMPLETED: one debit, one code,
    no refund. CANCELLED: one debit, no code, and exactly one refund of the
    same amount. A bulk order as its lines say (assert_bulk_consistent). And no
    code is on two orders.
    """
    assert_invariants(database)
    rows = query(
        database,
        "SELECT o.id, o.status, o.unit_price_minor,"
        " (SELECT count(*) FROM ledger l WHERE l.order_id = o.id AND l.kind = 'ORDER'"
        "  AND l.amount_minor = -o.unit_price_minor),"
        " (SELECT count(*) FROM ledger l WHERE l.order_id = o.id AND l.kind = 'REFUND'"
        "  AND l.amount_minor = o.unit_price_minor),"
        " (SELECT count(*) FROM ledger l WHERE l.order_id = o.id),"
        " (SELECT count(*) FROM codes c WHERE c.order_id = o.id)"
        " FROM orders o WHERE o.kind = 'INSTANT'",
    )
    expected = {
        "PROCESSING": (1, 0, 1, 0),
        "COMPLETED": (1, 0, 1, 1),
        "CANCELLED": (1, 1, 2, 0),
    }
    for order_id, status, _, debits, refunds, ledger_rows, codes in rows:
        assert (debits, refunds, ledger_rows, codes) == expected[status], (order_id, status)
    codes_sold_twice = one(
        database,
        "SELECT count(*) FROM (SELECT sku, fingerprint FROM codes WHERE order_id IS NOT NULL"
        " GROUP BY sku, fingerprint HAVING count(*) > 1) AS twice",
    )
    assert codes_sold_twice == 0, "a code was sold on two orders"


def assert_bulk_consistent(database: str) -> None:
    """Each bulk order: one debit of its lines' total; one refund of exactly its
    cancelled units' price, recorded as refunded_minor, if any; a code per
    delivered unit, on the unit's own stockId; PROCESSING while a unit waits,
    else COMPLETED if one was delivered, else CANCELLED."""
    rows = query(
        database,
        "SELECT o.id, o.status, o.refunded_minor,"
        " (SELECT sum(n.quantity * n.unit_price_minor) FROM order_lines n"
        "  WHERE n.order_id = o.id),"
        " (SELECT sum(n.cancelled * n.unit_price_minor) FROM order_lines n"
        "  WHERE n.order_id = o.id),"
        " (SELECT sum(n.delivered) FROM order_lines n WHERE n.order_id = o.id),"
        " (SELECT sum(n.quantity - n.delivered - n.cancelled) FROM order_lines n"
        "  WHERE n.order_id = o.id),"
        " (SELECT count(*) FROM codes c JOIN order_lines n ON n.order_id = c.order_id"
        "  AND c.stock_id >= n.first_stock_id AND c.stock_id < n.first_stock_id + n.delivered"
        "  AND n.sku = c.sku WHERE c.order_id = o.id),"
        " (SELECT count(*) FROM codes c WHERE c.order_id = o.id),"
        " (SELECT coalesce(sum(-l.amount_minor), 0) FROM ledger l WHERE l.order_id = o.id"
        "  AND l.kind = 'ORDER'),"
        " (SELECT coalesce(sum(l.amount_minor), 0) FROM ledger l WHERE l.order_id = o.id"
        "  AND l.kind = 'REFUND')"
        " FROM orders o WHERE o.kind = 'BULK'",
    )
    for row in rows:
        order_id, status, refunded, total, cancelled_price, delivered, waiting = row[:7]
        codes_in_place, codes, debited, refunded_in_ledger = row[7:]
        assert debited == total, (order_id, debited, total)
        assert refunded == refunded_in_ledger == cancelled_price, (order_id, refunded)
        assert codes == codes_in_place == delivered, (order_id, codes, delivered)
        expected = "PROCESSING" if waiting else "COMPLETED" if delivered else "CANCELLED"
        assert status == expected, (order_id, status, expected)


def stored_codes(database: str) -> list[tuple[str | None, str, str | None]]:
    """(transaction id of the order it went to, redeem code, PIN) of every code, opened
    with the key file, in the order they were stocked."""
    cipher = CodeCipher(key_file(database))
    rows = query(
        database,
        "SELECT o.transaction_id, c.id, c.key_id, c.redeem_code, c.pin_code"
        " FROM codes c LEFT JOIN orders o ON o.id = c.order_id ORDER BY c.id",
    )
    return [
        (
            transaction_id,
            cipher.open(code_id, "redeemCode", key_id, redeem),
            None if pin is None else cipher.open(code_id, "pinCode", key_id, pin),
        )
        for transaction_id, code_id, key_id, redeem, pin in rows
    ]


def sold_codes(database: str) -> dict[str, str]:
    """transaction id -> the redeem code it got."""
    return {tx: code for tx, code, _ in stored_codes(database) if tx is not None}


async def acme_signed_in(
    database: str, top_up: Money | None = None, codes: Sequence[NewCode] = ()
) -> tuple[int, dict[str, str]]:
    """Loads the tests' dataset, then tops acme up and stocks `codes` if given;
    returns acme's account id and bearer headers (for a server on this database)."""
    store = await open_store(database)
    try:
        (acme, _) = await admin.load_dataset(store, copy.deepcopy(DATASET), utc_now())
        if top_up is not None:
            await store.top_up(acme.account_id, top_up, utc_now())
        await store.add_codes(codes, utc_now())
        tokens = InstantOrdersService(store, signing_key(database), timedelta(hours=1))
        token = await tokens.issue_token("client_credentials", acme.api_key, acme.api_secret)
    finally:
        await store.close()
    headers = {"x-api-key": acme.api_key, "Authorization": f"Bearer {token.access_token}"}
    return acme.account_id, headers
