"""Group commit: concurrent writes share a transaction, yet each stays on its own."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from decimal import Decimal

import aiosqlite
import pytest

from server.domain.errors import ApiError
from server.domain.models import InstantOrderRequest
from server.domain.service import InstantOrdersService
from tests.api import Account
from tests.helpers import assert_invariants, balance

pytestmark = pytest.mark.sqlite_only  # group commit is the SQLite store's


@pytest.fixture
async def commits(store) -> AsyncIterator[list[str]]:
    """Every COMMIT the store's writer runs, as the test goes."""
    seen: list[str] = []
    writer: aiosqlite.Connection = store._writer

    def trace(statement: str) -> None:
        if statement.strip().upper() == "COMMIT":
            seen.append(statement)

    await writer.set_trace_callback(trace)
    yield seen
    await writer.set_trace_callback(None)  # type: ignore[arg-type] # None: tracing off


async def test_concurrent_orders_share_commits_and_a_refused_one_spoils_no_neighbour(
    service: InstantOrdersService, accounts: dict[str, Account], database, commits
):
    # acme has 100.00 USD: 10 orders of 9.75 fit, 20 are placed at once.
    acme = accounts["acme"]
    caller = await service.authenticate(acme.api_key, f"Bearer {acme.token}", "")
    request = InstantOrderRequest(sku="8PX-UF-Y5U")

    outcomes = await asyncio.gather(
        *(service.create_instant_order(caller, request) for _ in range(20)),
        return_exceptions=True,
    )

    refused = [o for o in outcomes if isinstance(o, ApiError)]
    placed = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(placed) == 10 and len(refused) == 10
    assert {error.reason.name for error in refused} == {"INSUFFICIENT_BALANCE"}
    assert len(commits) < 20  # shared transactions: fewer fsyncs than orders
    assert balance(database, acme.account_id, "USD") == Decimal("2.50")
    assert_invariants(database)


@pytest.fixture
def notes(store, database) -> None:
    """A table of the tests' own, for writes that stand for any."""
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE notes (note TEXT NOT NULL)")


async def _batch_of(store, *works):
    """Runs the works as one batch: all queued before the batcher's task runs."""
    return await asyncio.gather(
        *(store._writes.run(work) for work in works), return_exceptions=True
    )


def _note(text: str):
    def work(db: sqlite3.Connection) -> str:
        db.execute("INSERT INTO notes (note) VALUES (?)", (text,))
        return text

    return work


def _failing(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO notes (note) VALUES ('failing')")
    raise ValueError("this write fails its checks")


def _losing_the_transaction(db: sqlite3.Connection) -> None:
    # What SQLite does on a disk-full or I/O error: the whole transaction ends.
    db.execute("ROLLBACK")
    raise sqlite3.OperationalError("disk I/O error")


def _notes(database: str) -> set[str]:
    with sqlite3.connect(database) as db:
        return {note for (note,) in db.execute("SELECT note FROM notes")}


async def test_a_failing_write_rolls_back_alone_and_its_batch_commits(
    store, database, commits, notes
):
    first, failed, last = await _batch_of(store, _note("first"), _failing, _note("last"))

    assert (first, last) == ("first", "last")
    assert isinstance(failed, ValueError)
    assert len(commits) == 1
    assert {"first", "last"} <= _notes(database)
    assert "failing" not in _notes(database)


async def test_a_lost_transaction_fails_every_write_of_its_batch(store, database, notes):
    outcomes = await _batch_of(store, _note("before"), _losing_the_transaction, _note("after"))

    assert all(isinstance(outcome, sqlite3.Error) for outcome in outcomes)
    assert not {"before", "after"} & _notes(database)
    assert await store._writes.run(_note("later")) == "later"  # the store carries on
