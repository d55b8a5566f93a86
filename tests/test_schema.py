"""One schema for both backends: databases of the previous release open and keep
working, and PostgreSQL's routines follow the statements they are made of."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from server.domain.errors import ApiError
from server.domain.models import CodesFilter, InstantOrderRequest
from server.domain.money import MAX_BALANCE_MINOR
from server.domain.service import InstantOrdersService
from server.settings import is_postgres
from server.store.schema import ROUTINES, SCHEMA_VERSION
from tests.databases import one, query
from tests.helpers import assert_fulfillment_consistent, open_store, signing_key

STEAM = "8PX-UF-Y5U"


def make_it_version_7(database: str) -> None:
    """Schema version 7: no bulk orders (no order lines, kinds, refunds, tiers), and
    a code's order alone unique (no stockId)."""
    for statement in (
        "DROP INDEX waiting_lines",
        "DROP TABLE order_lines",
        "DROP INDEX waiting_orders",
        "CREATE INDEX waiting_orders ON orders (sku, id) WHERE status = 'PROCESSING'",
        "ALTER TABLE orders DROP COLUMN kind",
        "ALTER TABLE orders DROP COLUMN refunded_minor",
        "ALTER TABLE products DROP COLUMN price_tiers",
        "DROP INDEX codes_by_key",
    ):
        query(database, statement)
    if is_postgres(database):
        query(database, "ALTER TABLE codes DROP CONSTRAINT codes_one_per_unit")
        query(database, "ALTER TABLE codes DROP COLUMN stock_id")
        query(database, "ALTER TABLE codes ADD CONSTRAINT codes_order_key UNIQUE (order_id)")
        query(database, "UPDATE schema_version SET version = 7")
        return
    for statement in (
        "CREATE TABLE old_codes (id INTEGER PRIMARY KEY, sku TEXT NOT NULL REFERENCES"
        " products(sku), fingerprint BLOB NOT NULL, redeem_code BLOB NOT NULL, pin_code BLOB,"
        " key_id INTEGER NOT NULL, order_id INTEGER UNIQUE REFERENCES orders(id),"
        " added_at_us INTEGER NOT NULL, UNIQUE (sku, fingerprint))",
        "INSERT INTO old_codes SELECT id, sku, fingerprint, redeem_code, pin_code, key_id,"
        " order_id, added_at_us FROM codes",
        "DROP TABLE codes",
        "ALTER TABLE old_codes RENAME TO codes",
        "CREATE INDEX unsold_codes ON codes (sku, id) WHERE order_id IS NULL",
        "PRAGMA user_version = 7",
    ):
        query(database, statement)


def make_it_version_6(database: str) -> None:
    """Schema version 6: no client_request_id in the audit, no maximum on balances."""
    make_it_version_7(database)
    query(database, "ALTER TABLE audit DROP COLUMN client_request_id")
    if is_postgres(database):
        query(database, "ALTER TABLE balances DROP CONSTRAINT balances_at_most_max")
        query(database, "UPDATE schema_version SET version = 6")
        return
    for statement in (
        "CREATE TABLE unbounded (account_id INTEGER NOT NULL REFERENCES accounts(id),"
        " currency TEXT NOT NULL, amount_minor INTEGER NOT NULL CHECK (amount_minor >= 0),"
        " PRIMARY KEY (account_id, currency)) WITHOUT ROWID",
        "INSERT INTO unbounded SELECT account_id, currency, amount_minor FROM balances",
        "DROP TABLE balances",
        "ALTER TABLE unbounded RENAME TO balances",
        "PRAGMA user_version = 6",
    ):
        query(database, statement)


def make_it_the_previous_release(database: str) -> None:
    """An earlier release's schema: SQLite at version 4, without the tables of
    clientOrderNumbers and idempotency keys; PostgreSQL numbered 1 (version 5
    here), without idempotency keys, its order function an older one."""
    make_it_version_6(database)
    query(database, "DROP TABLE idempotency_keys")
    if not is_postgres(database):
        query(database, "DROP TABLE client_order_numbers")
        query(database, "PRAGMA user_version = 4")
        return
    query(database, "UPDATE schema_version SET version = 1")
    query(database, "DROP TABLE schema_routines")
    stale = re.sub(
        r"BEGIN\n.*END \$\$;",
        "BEGIN RAISE EXCEPTION 'the old function'; END $$;",
        ROUTINES["place_instant_order"].definition.replace(
            "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"
        ),
        flags=re.DOTALL,
    )
    query(database, stale)


async def test_a_database_of_the_previous_release_opens_and_keeps_its_orders_exact(
    database, service, accounts, store
):
    acme = accounts["acme"]
    caller = await service.authenticate(acme.api_key, f"Bearer {acme.token}", "")
    first = await service.create_instant_order(caller, InstantOrderRequest(STEAM, "po-1"))
    await service.create_instant_order(caller, InstantOrderRequest(STEAM, "po-1"))  # no check
    make_it_the_previous_release(database)

    reopened = await open_store(database)
    try:
        assert reopened.found_schema_version == (5 if is_postgres(database) else 4)
        assert reopened.schema_version == SCHEMA_VERSION
        migrated = InstantOrdersService(reopened, signing_key(database), timedelta(hours=1))
        with pytest.raises(ApiError) as duplicate:
            await migrated.create_instant_order(caller, InstantOrderRequest(STEAM, "po-1", True))
        # The first order of the number holds it, as before the migration.
        assert duplicate.value.metadata["transactionId"] == first.transaction_id
        # On PostgreSQL, through the order function made anew: the old one raises.
        placed = await migrated.create_instant_order(caller, InstantOrderRequest(STEAM, "po-2"))
        assert placed.status.value == "PROCESSING"  # the two codes went to the first two
    finally:
        await reopened.close()
    assert one(database, "SELECT count(*) FROM client_order_numbers") == 2


async def test_version_7_keeps_its_orders_and_codes_and_gains_bulk_orders(
    api, database, accounts, store
):
    """Step 8 numbers each sold code's unit (stockId 1 of its instant order) where the
    order alone was unique (a rebuilt table on SQLite), and records the refund of
    every order cancelled before: codes still open, money still adds up."""
    acme = accounts["acme"]
    sold = (await api.call("CreateInstantOrder", {"sku": STEAM}, acme)).expect_ok()
    await api.call("CreateInstantOrder", {"sku": STEAM}, acme)  # the second code
    waiting = (await api.call("CreateInstantOrder", {"sku": STEAM}, acme)).expect_ok()
    (await api.call("CancelOrder", {"transactionId": waiting["transactionId"]}, acme)).expect_ok()
    before = await api.call("GetCodes", {"transactionId": sold["transactionId"]}, acme)
    await store.close()
    make_it_version_7(database)

    reopened = await open_store(database)
    try:
        assert reopened.found_schema_version == 7
        migrated = InstantOrdersService(reopened, signing_key(database), timedelta(hours=1))
        caller = await migrated.authenticate(acme.api_key, f"Bearer {acme.token}", "")
        codes = await migrated.get_codes(caller, sold["transactionId"], CodesFilter())
        cancelled = await migrated.get_order(caller, waiting["transactionId"])
    finally:
        await reopened.close()
    (unit,) = codes[0].codes
    assert (unit.stock_id, unit.redeem_code) == (1, before.expect_ok()[0]["codes"][0]["redeemCode"])
    assert cancelled.refunded_minor == cancelled.unit_price.minor > 0
    units = query(database, "SELECT stock_id FROM codes WHERE order_id IS NOT NULL")
    assert units == [(1,), (1,)]
    assert_fulfillment_consistent(database)


async def test_version_6_keeps_its_balances_and_audit_and_gains_their_bounds(
    database, service, accounts, store
):
    """Step 7 adds the client's request id beside ours in the audit, and the maximum
    balance (a rebuilt table on SQLite): every row stays as it was."""
    acme = accounts["acme"]
    caller = await service.authenticate(acme.api_key, f"Bearer {acme.token}", "ours", "theirs")
    await service.create_instant_order(caller, InstantOrderRequest(STEAM, "po-1"))
    balances = query(database, "SELECT * FROM balances ORDER BY 1, 2")
    audit = query(database, "SELECT id, event, request_id FROM audit ORDER BY id")
    make_it_version_6(database)

    reopened = await open_store(database)
    try:
        assert reopened.found_schema_version == 6
        assert reopened.schema_version == SCHEMA_VERSION
    finally:
        await reopened.close()
    assert query(database, "SELECT * FROM balances ORDER BY 1, 2") == balances
    assert query(database, "SELECT id, event, request_id FROM audit ORDER BY id") == audit
    assert one(database, "SELECT count(client_request_id) FROM audit") == 0
    with pytest.raises(Exception, match=r"(?i)check constraint"):
        query(database, "UPDATE balances SET amount_minor = ?", (MAX_BALANCE_MINOR + 1,))
