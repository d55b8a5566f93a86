"""Customer cancellation: a waiting order is cancelled and refunded once, whatever races it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from datetime import timedelta
from decimal import Decimal
from typing import Any

from server.domain.clock import utc_now
from server.domain.errors import ApiError
from server.domain.limits import Budget
from server.domain.models import AuditEvent, Caller, InstantOrderRequest, OrderStatus
from server.domain.money import Money
from server.domain.ports import NewCode
from server.rpc.app import BUDGETS
from tests.databases import one
from tests.helpers import assert_fulfillment_consistent, balance

CANCEL = "CancelOrder"
SKU = "TTR-WI-YWN"  # one code in stock; 11.48 USD for acme


async def waiting(api, account) -> str:
    """An order that found no stock: its transaction id."""
    for _ in range(2):
        order = (await api.call("CreateInstantOrder", {"sku": SKU, "payWithCurrency": "USD"},
                                account)).expect_ok()  # fmt: skip
    assert order["status"] == "PROCESSING"
    return str(order["transactionId"])


def refunds(database: str) -> int:
    return int(one(database, "SELECT count(*) FROM ledger WHERE kind = 'REFUND'"))


async def test_a_waiting_order_is_cancelled_and_refunded_in_one_step(
    api, accounts, store, database
):
    acme = accounts["acme"]
    tx = await waiting(api, acme)
    before = balance(database, acme.account_id, "USD")

    cancelled = (await api.call(CANCEL, {"transactionId": tx}, acme)).expect_ok()

    assert cancelled["transactionId"] == tx
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["products"][0]["status"] == "CANCELLED"
    assert balance(database, acme.account_id, "USD") == before + Decimal("11.48")
    assert refunds(database) == 1
    trail = await store.audit_trail(acme.account_id, since=utc_now() - timedelta(hours=1))
    (audit,) = [r for r in trail if r.event is AuditEvent.ORDER_CANCELLED]
    assert (audit.transaction_id, audit.api_key, audit.details) == (
        tx, acme.api_key, {"by": "customer"},
    )  # fmt: skip
    assert_fulfillment_consistent(database)


async def test_cancelling_a_cancelled_order_answers_it_unchanged(api, accounts, database):
    acme = accounts["acme"]
    tx = await waiting(api, acme)
    first = (await api.call(CANCEL, {"transactionId": tx}, acme)).expect_ok()
    again = (await api.call(CANCEL, {"transactionId": tx}, acme)).expect_ok()
    assert again == first
    assert refunds(database) == 1


async def test_a_completed_order_cannot_be_cancelled(api, accounts, database):
    acme = accounts["acme"]
    done = (await api.call("CreateInstantOrder", {"sku": "8PX-UF-Y5U"}, acme)).expect_ok()
    refused = await api.call(CANCEL, {"transactionId": done["transactionId"]}, acme)
    body = refused.expect_error("ORDER_NOT_CANCELLABLE", 409)
    assert (body["transactionId"], body["status"]) == (done["transactionId"], "COMPLETED")
    assert refunds(database) == 0


async def test_another_accounts_order_or_none_is_not_found(api, accounts, database):
    tx = await waiting(api, accounts["acme"])
    for transaction_id in (tx, "f" * 32):
        refused = await api.call(CANCEL, {"transactionId": transaction_id}, accounts["globex"])
        refused.expect_error("ORDER_NOT_FOUND", 404)
    assert refunds(database) == 0


async def test_a_retried_cancellation_with_its_key_replays_the_first_answer(
    api, accounts, database
):
    acme = accounts["acme"]
    tx = await waiting(api, acme)
    first = await api.call(CANCEL, {"transactionId": tx}, acme, key="cancel-1", request_id="c1")
    again = await api.call(CANCEL, {"transactionId": tx}, acme, key="cancel-1", request_id="c2")
    assert first.ok and again.ok and again.replayed
    assert again.body == first.body and again.request_id == "c1"
    assert refunds(database) == 1


async def test_cancelling_spends_the_orders_budget():
    assert BUDGETS["/instantorders.v2.OrdersService/CancelOrder"] is Budget.ORDERS


async def test_a_watcher_sees_the_cancellation_at_once(accounts, service, http):
    """No poller runs: the cancellation itself wakes the watcher."""
    acme = accounts["acme"]
    caller = await service.authenticate(acme.api_key, f"Bearer {acme.token}", "")
    request = InstantOrderRequest(SKU, pay_with_currency="USD")
    await service.create_instant_order(caller, request)  # takes the one code
    order = await service.create_instant_order(caller, request)

    async def statuses() -> list[str]:
        return [o.status.value async for o in service.watch_order(caller, order.transaction_id)]

    watch = asyncio.create_task(asyncio.wait_for(statuses(), timeout=5))
    while not service.updates.watcher_count:
        await asyncio.sleep(0.01)
    await service.cancel_order(caller, order.transaction_id)
    assert await watch == ["PROCESSING", "CANCELLED"]


async def test_racing_a_restock_or_the_deadline_ends_in_exactly_one_outcome(
    service, accounts, store, database
):
    """Many rounds: a waiting order, its code arriving, and then, in an order that
    varies by round, the fulfiller delivering it (from a list read before), the
    customer cancelling it, and (every other round) its deadline passing. Each
    round ends either COMPLETED with its code or CANCELLED with one refund."""
    acme = accounts["acme"]
    caller = Caller(acme.account_id, acme.api_key)
    await store.top_up(acme.account_id, Money.parse("100000", "JPY"), utc_now())
    request = InstantOrderRequest("JPY-NT-1000", pay_with_currency="JPY")
    turns = random.Random(11)
    outcomes = {"COMPLETED": 0, "CANCELLED": 0}
    for round_ in range(40):
        order = await service.create_instant_order(caller, request)
        if order.status is OrderStatus.COMPLETED:  # the code a cancelled round left
            order = await service.create_instant_order(caller, request)
        assert order.status is OrderStatus.PROCESSING
        await store.add_codes([NewCode("JPY-NT-1000", f"RACE-{round_}", None)], utc_now())
        stale = await store.waiting_units(["JPY-NT-1000"], utc_now() - timedelta(days=1), 10)
        racers = [
            store.complete_from_stock(stale, utc_now(), max_units=10),
            service.cancel_order(caller, order.transaction_id),
        ]
        if round_ % 2:
            racers.append(store.cancel_overdue(utc_now() + timedelta(seconds=1), utc_now(), 10))
        results = await asyncio.gather(
            *(after(turns.randrange(4), racer) for racer in racers), return_exceptions=True
        )
        for result in results:  # the customer may find the order completed first
            if isinstance(result, BaseException):
                assert isinstance(result, ApiError), result
                assert result.reason.name == "ORDER_NOT_CANCELLABLE"
        final = await service.get_order(caller, order.transaction_id)
        outcomes[final.status.value] += 1
        assert_fulfillment_consistent(database)  # never both a code and a refund
    assert sum(outcomes.values()) == 40
    cancelled = one(database, "SELECT count(*) FROM orders WHERE status = 'CANCELLED'")
    assert refunds(database) == cancelled == outcomes["CANCELLED"]
    assert outcomes["COMPLETED"] and outcomes["CANCELLED"], outcomes  # both sides won some


async def after(yields: int, racer: Awaitable[Any]) -> Any:
    """`racer`, started after the event loop ran `yields` other steps."""
    for _ in range(yields):
        await asyncio.sleep(0)
    return await racer


async def test_two_cancellations_at_once_refund_once(api, accounts, database):
    acme = accounts["acme"]
    tx = await waiting(api, acme)
    answers = await asyncio.gather(
        *(api.call(CANCEL, {"transactionId": tx}, acme) for _ in range(5))
    )
    assert all(answer.expect_ok()["status"] == "CANCELLED" for answer in answers)
    assert refunds(database) == 1
    assert_fulfillment_consistent(database)
