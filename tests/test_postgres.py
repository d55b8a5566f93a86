"""What only PostgreSQL has to prove: several processes on one database (each with its
own pool, as replicas have), wake-ups across processes, and connection trouble.

The service under test reaches PostgreSQL through a proxy that a test can cut, so
that "PostgreSQL is down" is real to the service without stopping the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import psycopg
import pytest

from server.domain.clock import utc_now
from server.domain.errors import ApiError
from server.domain.fulfillment import Fulfiller, InventorySource
from server.domain.models import Caller, InstantOrderRequest, Order
from server.domain.money import Money
from server.domain.ports import NewCode
from server.domain.service import InstantOrdersService
from server.keys import CodeCipher
from server.runtime import watch_readiness
from server.store.postgres import PoolSettings, PostgresStore
from tests.api import Account
from tests.databases import key_file, one, query
from tests.helpers import assert_fulfillment_consistent, database_args, signing_key, snapshot
from tests.processes import eventually, run_cli
from tests.proxy import TcpProxy

pytestmark = pytest.mark.postgres_only

#: Short, so that the tests of timeouts are quick; not shorter, so that a commit on a
#: machine busy with the other test worker is not mistaken for an outage.
STATEMENT_TIMEOUT = 2.0
NO_STOCK = "JPY-NT-1000"  # the dataset has no code for it
IN_STOCK = "8PX-UF-Y5U"


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def open_replica_store(
    database: str, port: int = 5432, timeout: float = STATEMENT_TIMEOUT
) -> PostgresStore:
    """A store with a pool of its own, as another replica of the service has."""
    url = database.replace(":5432/", f":{port}/")
    settings = PoolSettings(size=4, statement_timeout_seconds=timeout)
    return await PostgresStore.open(url, CodeCipher(key_file(database)), settings)


@pytest.fixture
async def store(database: str, proxy: TcpProxy) -> AsyncIterator[PostgresStore]:
    """The service's store, connected through the proxy, with a short statement timeout."""
    store = await open_replica_store(database, proxy.port)
    yield store
    await store.close()


async def order(api, account: Account, sku: str = IN_STOCK, key: str | None = None, request_id=""):
    return await api.call(
        "CreateInstantOrder", {"sku": sku}, account, key=key, request_id=request_id
    )


async def test_while_postgres_is_down_calls_fail_unavailable_then_recover(
    api, accounts, database, proxy
):
    acme = accounts["acme"]
    (await order(api, acme)).expect_ok()
    before = snapshot(database)

    await proxy.stop()
    for rpc, fields in (("CreateInstantOrder", {"sku": IN_STOCK}), ("GetBalances", {})):
        reply = await api.call(rpc, fields, acme)
        error = reply.expect_error("UNAVAILABLE", 503)
        assert "database" in error["message"].lower()
        assert "5432" not in str(error) and "Traceback" not in str(error)
    assert snapshot(database) == before

    await proxy.start()

    async def serving_again() -> bool:
        return (await order(api, acme)).ok

    await eventually(serving_again, timeout=10)
    assert one(database, "SELECT count(*) FROM orders") == before["orders"] + 1


async def test_a_statement_over_its_timeout_fails_unavailable_and_changes_nothing(
    api, accounts, database
):
    acme = accounts["acme"]
    before = snapshot(database)
    base, _, schema = database.partition("?search_path=")
    with psycopg.connect(base, options=f"-c search_path={schema}") as blocker:
        # Another transaction holds acme's balance row: the order's debit waits.
        blocker.execute("SELECT * FROM balances WHERE account_id = %s FOR UPDATE", (1,))
        started = time.monotonic()
        reply = await order(api, acme)
        waited = time.monotonic() - started
    reply.expect_error("UNAVAILABLE", 503)
    assert waited < STATEMENT_TIMEOUT + 0.9  # bounded by the timeout, not by the lock holder
    assert snapshot(database) == before
    (await order(api, acme)).expect_ok()


async def test_a_write_held_until_after_the_timeout_is_rolled_back_by_postgresql(
    api, accounts, database, proxy, caplog
):
    """The order's write reaches PostgreSQL only after the call gave up: the call
    answered 503 within the timeout, and the late write never commits."""
    acme = accounts["acme"]
    (await order(api, acme)).expect_ok()  # the pool's connection has its statements ready
    before = snapshot(database)

    proxy.hold_from(b"held-write")  # the write's parameters, sent after the facts were read
    started = time.monotonic()
    reply = await order(api, acme, key="k-late-write", request_id="held-write")
    waited = time.monotonic() - started
    reply.expect_error("UNAVAILABLE", 503)
    assert proxy.holding.is_set()
    assert waited < STATEMENT_TIMEOUT + 0.9  # the whole call, not waiting on a cancellation

    proxy.release()  # PostgreSQL runs the write now, then reads the end of the connection
    await eventually(lambda: _held_session_ended(database, proxy), timeout=10)
    assert snapshot(database) == before
    gc.collect()  # reports tasks whose exception nobody retrieved
    assert "Traceback" not in caplog.text and "never retrieved" not in caplog.text

    placed = (await order(api, acme, key="k-late-write")).expect_ok()
    assert one(database, "SELECT count(*) FROM orders") == before["orders"] + 1
    assert placed["status"] == "COMPLETED"
    assert_fulfillment_consistent(database)


async def test_a_commit_left_unanswered_is_outcome_unknown_and_never_ordered_twice(
    api, accounts, database, proxy
):
    """COMMIT was sent and not answered: the client is told the order may exist; a
    retry with its Idempotency-Key waits for the first transaction, then replays
    it (or places it, if PostgreSQL rolled the first back): one order either way."""
    acme = accounts["acme"]
    (await order(api, acme)).expect_ok()
    before = snapshot(database)

    proxy.hold_from(b"COMMIT\x00")
    reply = await order(api, acme, key="k-unanswered")
    error = reply.expect_error("OUTCOME_UNKNOWN", 503)
    assert "Idempotency-Key" in error["message"] and "clientOrderNumber" in error["message"]
    while_undecided = await order(api, acme, key="k-unanswered")
    while_undecided.expect_error("IDEMPOTENCY_KEY_IN_USE", 409)

    proxy.release()
    await eventually(lambda: _held_session_ended(database, proxy), timeout=10)
    (await order(api, acme, key="k-unanswered")).expect_ok()
    (await order(api, acme, key="k-unanswered")).expect_ok()
    assert one(database, "SELECT count(*) FROM orders") == before["orders"] + 1
    assert_fulfillment_consistent(database)


async def test_an_order_whose_client_goes_away_mid_write_is_still_placed_once(
    api, accounts, database, proxy
):
    """A client that disconnects cancels its call while the write is on its way:
    the order it began is finished, not abandoned, and a retry with its key
    replays it."""
    acme = accounts["acme"]
    (await order(api, acme)).expect_ok()
    before = snapshot(database)

    proxy.hold_from(b"walked-away")  # the write's parameters
    call = asyncio.create_task(order(api, acme, key="k-walk-away", request_id="walked-away"))
    await proxy.holding.wait()
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    proxy.release()

    async def placed() -> bool:
        return bool(one(database, "SELECT count(*) FROM orders") == before["orders"] + 1)

    await eventually(placed, timeout=10)
    (await order(api, acme, key="k-walk-away")).expect_ok()
    assert one(database, "SELECT count(*) FROM orders") == before["orders"] + 1
    assert_fulfillment_consistent(database)


async def test_an_outage_in_the_middle_of_calls_is_answered_and_logged_as_an_outage(
    api, accounts, store, database, proxy, caplog
):
    """PostgreSQL lost while calls are in flight: each is answered (placed, 503
    UNAVAILABLE or OUTCOME_UNKNOWN, never 500), and the log says so in warning
    lines, with no traceback and no task left with an unretrieved exception."""
    acme = accounts["acme"]
    await store.top_up(acme.account_id, Money.parse("1000", "USD"), utc_now())
    await asyncio.gather(*(order(api, acme) for _ in range(4)))  # a pool of connections
    calls = [asyncio.create_task(order(api, acme, key=f"k-cut-{n}")) for n in range(20)]
    await asyncio.to_thread(
        query,
        database,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE client_port = ANY(?)",
        (sorted(proxy.server_ports),),
    )  # as a restart of PostgreSQL ends every session
    replies = await asyncio.gather(*calls)
    gc.collect()  # reports tasks whose exception nobody retrieved
    errors = {reply.error.get("error") for reply in replies if not reply.ok}
    assert errors <= {"UNAVAILABLE", "OUTCOME_UNKNOWN"}, errors
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text and "never retrieved" not in caplog.text
    assert_fulfillment_consistent(database)


async def _held_session_ended(database: str, proxy: TcpProxy) -> bool:
    """Whether PostgreSQL has ended the session of the held connection: what it
    sent is decided (the service dropped that connection when it gave up)."""
    alive = one(database, "SELECT count(*) FROM pg_stat_activity WHERE client_port = ?",
                (proxy.held_port,))  # fmt: skip
    return bool(alive == 0)


def fulfiller_waiting_for_notifications(store: PostgresStore) -> Fulfiller:
    """A fulfiller that polls once a minute: only a notification can wake it in time."""
    return Fulfiller(store, InventorySource(store), timedelta(days=1), utc_now, poll_interval=60)


@contextlib.asynccontextmanager
async def running(fulfiller: Fulfiller) -> AsyncIterator[None]:
    task = asyncio.create_task(fulfiller.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_restock_by_another_process_wakes_the_fulfiller_even_after_a_reconnect(
    api, accounts, store, database, proxy, tmp_path
):
    acme = accounts["acme"]
    await store.top_up(acme.account_id, Money.parse("10000", "JPY"), utc_now())
    waiting = [(await order(api, acme, NO_STOCK)).expect_ok()["transactionId"] for _ in range(3)]

    async def completed() -> int:
        return int(one(database, "SELECT count(*) FROM orders WHERE status = 'COMPLETED'"))

    def restock(name: str) -> None:
        codes = tmp_path / f"{name}.csv"
        codes.write_text(f"redeemCode,pinCode\n{name},\n")
        added = run_cli("admin", *database_args(database), "add-codes", "--sku", NO_STOCK,
                        "--file", str(codes))  # fmt: skip
        assert added.returncode == 0, added.stderr

    async with running(fulfiller_waiting_for_notifications(store)):
        await asyncio.sleep(0.2)  # its first pass is done; it waits for news
        await asyncio.to_thread(restock, "NIN-A")
        await eventually(lambda: _equals(completed, 1), timeout=1.0)

        await proxy.stop()  # the LISTEN connection is lost...
        await eventually(lambda: _true(not store.listening), timeout=5)
        await asyncio.to_thread(restock, "NIN-B")  # ...so this restock goes unheard
        await proxy.start()  # it comes back by itself, and looks for what it missed
        await eventually(lambda: _true(store.listening), timeout=10)
        await eventually(lambda: _equals(completed, 2), timeout=1.0)

        await asyncio.to_thread(restock, "NIN-C")  # and hears restocks again
        await eventually(lambda: _equals(completed, 3), timeout=1.0)
    done = query(database, "SELECT transaction_id FROM orders WHERE status = 'COMPLETED'")
    assert {tx for (tx,) in done} == set(waiting)
    assert_fulfillment_consistent(database)


async def _equals(read, expected: int) -> bool:
    return bool(await read() == expected)


async def _true(value: bool) -> bool:
    return value


async def test_orders_racing_on_two_replicas_spend_each_unit_of_money_and_stock_once(
    accounts, database
):
    """100 orders at once through two pools, for 60 orders' worth of funds and 25 codes.
    Each call may take the default timeout: 50 calls share a pool of 4 connections."""
    acme = accounts["acme"]
    store = await open_replica_store(database, timeout=PoolSettings.statement_timeout_seconds)
    other = await open_replica_store(database, timeout=PoolSettings.statement_timeout_seconds)
    try:
        price = Money.parse("950", "JPY")
        await store.top_up(acme.account_id, Money.parse(str(60 * 950), "JPY"), utc_now())
        codes = [f"NIN-{n:03}" for n in range(25)]
        await store.add_codes([NewCode(NO_STOCK, code, None) for code in codes], utc_now())
        services = [_service(s, database) for s in (store, other)]
        caller = Caller(acme.account_id, acme.api_key)
        request = InstantOrderRequest(sku=NO_STOCK, pay_with_currency="JPY")
        outcomes = await asyncio.gather(
            *(services[n % 2].create_instant_order(caller, request) for n in range(100)),
            return_exceptions=True,
        )
        duplicates = await _same_number_on_both(services, caller)
    finally:
        await store.close()
        await other.close()

    kinds = Counter(_kind(outcome) for outcome in outcomes)
    assert kinds == {"COMPLETED": 25, "PROCESSING": 35, "INSUFFICIENT_BALANCE": 40}
    assert one(
        database, "SELECT amount_minor FROM balances WHERE account_id = ? AND currency = 'JPY'",
        (acme.account_id,),
    ) == 0  # fmt: skip
    assert price.minor * 60 == -one(
        database, "SELECT sum(amount_minor) FROM ledger WHERE kind = 'ORDER' AND currency = 'JPY'"
    )
    (created,) = [d for d in duplicates if not isinstance(d, BaseException)]
    refusals = [d for d in duplicates if isinstance(d, ApiError)]
    assert len(refusals) == 19
    assert all(
        r.reason.name == "CLIENT_ORDER_NUMBER_DUPLICATE"
        and r.metadata["transactionId"] == created.transaction_id
        for r in refusals
    )
    assert store.retried == other.retried == 0, "no transaction had to be retried"
    assert_fulfillment_consistent(database)


async def _same_number_on_both(services, caller):
    request = InstantOrderRequest(sku=IN_STOCK, client_order_number="PO-7", dup_check=True)
    return await asyncio.gather(
        *(services[n % 2].create_instant_order(caller, request) for n in range(20)),
        return_exceptions=True,
    )


def _service(store: PostgresStore, database: str) -> InstantOrdersService:
    return InstantOrdersService(store, signing_key(database), timedelta(hours=1))


async def test_replicas_starting_together_migrate_the_schema_once(database):
    stores = await asyncio.gather(*(open_replica_store(database) for _ in range(4)))
    for opened in stores:
        await opened.close()
    assert sorted(s.found_schema_version for s in stores) == [0] + [stores[0].schema_version] * 3
    assert one(database, "SELECT count(*) FROM schema_version") == 1


def _kind(outcome: Order | BaseException) -> str:
    """An order's status, or the reason it was refused."""
    if isinstance(outcome, ApiError):
        return outcome.reason.name
    assert isinstance(outcome, Order), outcome
    return outcome.status.value


async def test_readiness_fails_while_postgres_is_down_and_liveness_holds(
    http, store, grpc_server, proxy
):
    async def probe(path: str) -> tuple[int, dict[str, str]]:
        response = await http.get(path)
        return response.status, await response.json()

    watcher = asyncio.create_task(watch_readiness(store, grpc_server))
    try:
        assert (await probe("/readyz"))[0] == 200
        await proxy.stop()

        async def not_ready() -> bool:
            return (await probe("/readyz"))[0] == 503

        await eventually(not_ready, timeout=10)
        status, body = await probe("/readyz")
        assert (status, body["reason"]) == (503, "the database does not answer")
        assert (await probe("/healthz"))[0] == 200  # alive: only not ready
        await proxy.start()

        async def ready() -> bool:
            return (await probe("/readyz"))[0] == 200

        await eventually(ready, timeout=10)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
