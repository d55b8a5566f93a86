"""Order history for the cost-growth scenario: many completed orders, fast.

Placing 700,000 orders through the service takes minutes even in-process
(its own order path is what the other scenarios measure). These rows are
written by SQL instead, shaped like the service's own: each order COMPLETED
with its ORDER ledger row (the balance lowered to match), its two audit rows
and its sold code, so every table and index grows as in production. The
codes' sealed bytes are random: nobody reads history codes in the bench.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

#: Orders written per transaction.
CHUNK = 100_000
PRICE_MINOR = 100


def add_history(database: Path, account_id: int, sku: str, count: int) -> None:
    with sqlite3.connect(database, isolation_level=None) as db:
        db.execute("PRAGMA busy_timeout = 30000")
        (key_id,) = db.execute("SELECT coalesce(max(key_id), 1) FROM codes").fetchone()
        for start in range(0, count, CHUNK):
            size = min(CHUNK, count - start)
            db.execute("BEGIN IMMEDIATE")
            _add_chunk(db, account_id, sku, size, key_id, time.time_ns() // 1000)
            db.execute("COMMIT")


def _add_chunk(
    db: sqlite3.Connection, account_id: int, sku: str, size: int, key_id: int, now_us: int
) -> None:
    (first_id,) = db.execute("SELECT coalesce(max(id), 0) + 1 FROM orders").fetchone()
    db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)"
        " INSERT INTO orders (id, transaction_id, account_id, client_order_number, sku, status,"
        " pay_currency, unit_price_minor, original_currency, unit_price_original_minor,"
        " created_at_us, finished_at_us)"
        " SELECT ? + i, lower(hex(randomblob(16))), ?, 'history-' || i, ?, 'COMPLETED',"
        " 'USD', ?, 'USD', ?, ? + i, ? + i FROM n",
        (size, first_id, account_id, sku, PRICE_MINOR, PRICE_MINOR, now_us, now_us),
    )
    new_orders = "FROM orders WHERE id >= ?"
    db.execute(
        "INSERT INTO ledger (account_id, currency, amount_minor, kind, order_id, created_at_us)"
        f" SELECT account_id, 'USD', -unit_price_minor, 'ORDER', id, created_at_us {new_orders}",
        (first_id,),
    )
    db.execute(
        "UPDATE balances SET amount_minor = amount_minor - ? WHERE account_id = ? AND"
        " currency = 'USD'",
        (size * PRICE_MINOR, account_id),
    )
    for event, details in (("ORDER_CREATED", '{"status": "COMPLETED"}'), ("ORDER_COMPLETED", "{}")):
        db.execute(
            "INSERT INTO audit (at_us, event, account_id, api_key, request_id, transaction_id,"
            f" details) SELECT created_at_us, ?, account_id, NULL, NULL, transaction_id, ?"
            f" {new_orders}",
            (event, details, first_id),
        )
    db.execute(
        "INSERT INTO codes (sku, fingerprint, redeem_code, pin_code, key_id, order_id,"
        f" added_at_us) SELECT sku, randomblob(32), randomblob(40), NULL, ?, id, created_at_us"
        f" {new_orders}",
        (key_id, first_id),
    )
