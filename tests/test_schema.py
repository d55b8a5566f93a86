"""One schema for both backends: databases of the previous release open and keep
working, and PostgreSQL's routines follow the statements they are made of."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from server.domain.errors import ApiError
from server.domain.models import InstantOrderRequest
from server.domain.money import MAX_BALANCE_MINOR
from server.domain.service import InstantOrdersService
from server.settings import is_postgres
from server.store.schema import ROUTINES, SCHEMA_VERSION
from tests.databases import one, query
from tests.helpers import open_store, signing_key

STEAM = "8PX-UF-Y5U"


def make_it_version_6(database: str) -> None:
    """Schema version 6: no client_request_id in the audit, no maximum on balances."""
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
        assert reopened.schema_version == SCHEMA_VERSION == 7
    finally:
        await reopened.close()
    assert query(database, "SELECT * FROM balances ORDER BY 1, 2") == balances
    assert query(database, "SELECT id, event, request_id FROM audit ORDER BY id") == audit
    assert one(database, "SELECT count(client_request_id) FROM audit") == 0
    with pytest.raises(Exception, match=r"(?i)check constraint"):
        query(database, "UPDATE balances SET amount_minor = ?", (MAX_BALANCE_MINOR + 1,))
