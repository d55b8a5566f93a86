"""Fulfillment in one process: first come first served, deadlines, refunds, and what reads show."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

from server.domain.clock import utc_now
from server.domain.models import AuditEvent, Caller, InstantOrderRequest, OrderStatus
from server.domain.money import Money
from server.domain.ports import NewCode, Store
from tests.databases import one, query
from tests.helpers import (
    assert_fulfillment_consistent,
    balance,
    make_fulfiller,
    open_store,
    sold_codes,
)
from tests.processes import eventually

ORDER = "CreateInstantOrder"
#: In stock: one code (PLAY-0001). Costs acme 11.48 USD.
SKU = "TTR-WI-YWN"


async def place_waiting(api, account, count: int) -> list[str]:
    """Places `count` orders that find no stock; returns their transaction ids, oldest first."""
    ids = []
    for _ in range(count):
        order = (await api.call(ORDER, {"sku": SKU, "payWithCurrency": "USD"}, account)).expect_ok()
        if order["status"] == "COMPLETED":  # the one code in stock
            continue
        assert order["status"] == "PROCESSING"
        ids.append(order["transactionId"])
    return ids


async def restock(store: Store, *codes: str) -> None:
    await store.add_codes([NewCode(SKU, code, None) for code in codes], utc_now())


async def code_of(api, account, transaction_id: str) -> str | None:
    reply = await api.call("GetCodes", {"transactionId": transaction_id}, account)
    codes = reply.expect_ok()[0]["codes"]
    return codes[0].get("redeemCode") if codes else None


async def test_restock_completes_waiting_orders_first_come_first_served(
    api, accounts, store, database
):
    acme = accounts["acme"]
    waiting = await place_waiting(api, acme, 4)
    assert len(waiting) == 3

    await restock(store, "PLAY-0002", "PLAY-0003")
    assert await make_fulfiller(store).run_once() == 2

    assert [await code_of(api, acme, tx) for tx in waiting] == ["PLAY-0002", "PLAY-0003", None]
    trail = await store.audit_trail(acme.account_id, since=utc_now() - timedelta(hours=1))
    completed_later = [
        r.transaction_id
        for r in trail
        if r.event is AuditEvent.ORDER_COMPLETED and r.details == {"by": "fulfiller"}
    ]
    assert completed_later == waiting[:2]
    for tx, status in zip(waiting, ["COMPLETED", "COMPLETED", "PROCESSING"], strict=True):
        order = (await api.call("GetOrder", {"transactionId": tx}, acme)).expect_ok()
        assert (order["status"], order["products"][0]["status"]) == (status, status)
    assert_fulfillment_consistent(database)


async def test_a_new_order_does_not_overtake_waiting_ones(api, accounts, store, database):
    acme = accounts["acme"]
    first_waiting, second_waiting = await place_waiting(api, acme, 3)
    await restock(store, "PLAY-0002")

    newcomer = (await api.call(ORDER, {"sku": SKU, "payWithCurrency": "USD"}, acme)).expect_ok()
    assert newcomer["status"] == "PROCESSING"  # the new code is promised to the oldest order

    await make_fulfiller(store).run_once()
    assert await code_of(api, acme, first_waiting) == "PLAY-0002"
    assert await code_of(api, acme, second_waiting) is None
    assert await code_of(api, acme, newcomer["transactionId"]) is None
    assert_fulfillment_consistent(database)


async def test_deadline_cancels_and_refunds_exactly_once(api, accounts, store, database):
    acme = accounts["acme"]
    (waiting,) = await place_waiting(api, acme, 2)
    before = balance(database, acme.account_id, "USD")
    timeout = timedelta(minutes=5)

    not_yet_due = make_fulfiller(store, timeout=timeout, clock=lambda: utc_now() + timeout / 2)
    assert await not_yet_due.run_once() == 0
    overdue = make_fulfiller(store, timeout=timeout, clock=lambda: utc_now() + 2 * timeout)
    assert await overdue.run_once() == 1
    assert await overdue.run_once() == 0  # a second pass refunds nothing more

    assert balance(database, acme.account_id, "USD") == before + Decimal("11.48")
    assert one(database, "SELECT count(*) FROM ledger WHERE kind = 'REFUND'") == 1

    await restock(store, "PLAY-0002")  # a cancelled order never gets a code afterwards
    assert await make_fulfiller(store).run_once() == 0
    assert await code_of(api, acme, waiting) is None
    assert_fulfillment_consistent(database)
    trail = await store.audit_trail(acme.account_id, since=utc_now() - timedelta(hours=1))
    cancellations = [r for r in trail if r.event is AuditEvent.ORDER_CANCELLED]
    assert [(r.transaction_id, r.details) for r in cancellations] == [
        (waiting, {"by": "fulfiller"})
    ]


async def test_reads_show_a_cancelled_order(api, accounts, store):
    acme = accounts["acme"]
    (waiting,) = await place_waiting(api, acme, 2)
    overdue = make_fulfiller(
        store, timeout=timedelta(seconds=1), clock=lambda: utc_now() + timedelta(seconds=2)
    )
    await overdue.run_once()

    order = (await api.call("GetOrder", {"transactionId": waiting}, acme)).expect_ok()
    assert order["status"] == "CANCELLED"
    assert order["products"][0]["status"] == "CANCELLED"
    listed = (await api.call("ListOrders", {"transactionId": waiting}, acme)).expect_ok()
    assert listed["items"][0]["status"] == "CANCELLED"
    assert listed["items"][0]["products"][0]["status"] == "CANCELLED"
    codes = (await api.call("GetCodes", {"transactionId": waiting}, acme)).expect_ok()
    assert codes == [{"sku": SKU, "quantity": 1, "codes": []}]


async def test_running_fulfiller_completes_an_order_as_stock_arrives(
    api, accounts, store, fulfilling
):
    acme = accounts["acme"]
    (waiting,) = await place_waiting(api, acme, 2)
    await restock(store, "PLAY-0002")

    async def completed() -> bool:
        return await code_of(api, acme, waiting) == "PLAY-0002"

    await eventually(completed, timeout=1.0)


async def test_concurrent_fulfillers_never_complete_an_order_twice(
    service, accounts, store, database
):
    """Two fulfillers on two connections (as a server and a worker would be) share one
    backlog: every code goes to one order, every order gets at most one code."""
    acme = accounts["acme"]
    await store.top_up(acme.account_id, Money.parse("200000", "JPY"), utc_now())
    caller = Caller(acme.account_id, acme.api_key)
    request = InstantOrderRequest(sku="JPY-NT-1000", pay_with_currency="JPY")
    for _ in range(120):
        order = await service.create_instant_order(caller, request)
        assert order.status is OrderStatus.PROCESSING
    codes = [NewCode("JPY-NT-1000", f"NIN-{n:04}", None) for n in range(100)]
    await store.add_codes(codes, utc_now())

    other_store = await open_store(database)
    try:
        # Many small batches, so that the two interleave.
        fulfillers = [make_fulfiller(s, batch_size=7) for s in (store, other_store)]
        while sum(await asyncio.gather(*(f.run_once() for f in fulfillers))):
            pass
    finally:
        await other_store.close()

    statuses = dict(query(database, "SELECT status, count(*) FROM orders GROUP BY 1"))
    oldest = [tx for (tx,) in query(database, "SELECT transaction_id FROM orders ORDER BY id")]
    sold = sold_codes(database)
    assert statuses == {"COMPLETED": 100, "PROCESSING": 20}
    # First come, first served: the 100 oldest got the codes, in order.
    in_order = [sold[tx] for tx in oldest if tx in sold]
    assert in_order == [f"NIN-{n:04}" for n in range(100)]
    assert_fulfillment_consistent(database)


async def test_an_order_past_its_deadline_is_never_completed_even_a_batch_at_a_time(
    api, accounts, store, database
):
    """With batches of one order, a pass cancels one overdue order and then delivers:
    the other overdue orders, the oldest waiting, must not get the codes."""
    acme = accounts["acme"]
    overdue = await place_waiting(api, acme, 3)  # the first takes the code in stock
    deadline = utc_now()
    (fresh,) = await place_waiting(api, acme, 1)
    await restock(store, "PLAY-0002", "PLAY-0003", "PLAY-0004")
    timeout = timedelta(hours=1)
    fulfiller = make_fulfiller(store, timeout=timeout, clock=lambda: deadline + timeout,
                               batch_size=1)  # fmt: skip

    while await fulfiller.run_once():
        pass

    statuses = [
        (await api.call("GetOrder", {"transactionId": tx}, acme)).expect_ok()["status"]
        for tx in [*overdue, fresh]
    ]
    assert statuses == ["CANCELLED", "CANCELLED", "COMPLETED"]
    assert_fulfillment_consistent(database)


async def test_an_order_cancelled_meanwhile_is_not_completed_from_a_stale_read(
    api, accounts, store, database
):
    """One fulfiller reads the waiting orders, another cancels one of them, then the
    first delivers from its stale list: the cancelled order must not get a code."""
    acme = accounts["acme"]
    (waiting,) = await place_waiting(api, acme, 2)
    stale = await store.waiting_units([SKU], utc_now() - timedelta(days=1), limit=10)
    await restock(store, "PLAY-0002")

    cancelled = await store.cancel_overdue(utc_now() + timedelta(seconds=1), utc_now(), 10)
    assert cancelled == [waiting]
    assert (await store.complete_from_stock(stale, utc_now(), max_units=10)).changed == []

    assert await code_of(api, acme, waiting) is None
    assert_fulfillment_consistent(database)
