"""Idempotency-Key (gRPC: request_id): a retry gets the first answer and changes nothing."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import pytest

from server.domain.clock import utc_now
from server.domain.money import Money
from tests.databases import one
from tests.helpers import balance, make_fulfiller, snapshot

ORDER = "CreateInstantOrder"
STEAM = {"sku": "8PX-UF-Y5U"}  # 9.75 USD, two codes in stock; acme holds 100.00 USD


def orders(database: str) -> int:
    return int(one(database, "SELECT count(*) FROM orders"))


async def test_the_same_key_twice_makes_one_order_and_answers_it_twice(api, accounts, database):
    acme = accounts["acme"]
    first = await api.call(ORDER, STEAM, acme, key="order-1", request_id="first-request")
    after_first = snapshot(database)
    again = await api.call(ORDER, STEAM, acme, key="order-1", request_id="second-request")

    assert first.ok and not first.replayed
    assert again.ok and again.replayed
    assert again.body == first.body  # the same transactionId, status and requestId
    assert again.request_id == first.request_id == "first-request"
    assert snapshot(database) == after_first  # nothing changed
    assert orders(database) == 1
    assert balance(database, acme.account_id, "USD") == Decimal("90.25")


async def test_the_same_data_spelt_otherwise_is_the_same_request(http, accounts, database):
    headers = {**accounts["acme"].headers(), "Idempotency-Key": "spelling"}
    first = await http.post("/v2/orders/instant", data='{"sku":"8PX-UF-Y5U"}', headers={
        **headers, "Content-Type": "application/json"})  # fmt: skip
    again = await http.post(
        "/v2/orders/instant",
        json={"payWithCurrency": "", "enableClientOrderNumberDupCheck": False, **STEAM},
        headers=headers,
    )
    assert first.status == again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()
    assert orders(database) == 1


async def test_a_different_request_with_the_same_key_is_refused_and_changes_nothing(
    api, accounts, database
):
    acme = accounts["acme"]
    await api.call(ORDER, STEAM, acme, key="order-2")
    before = snapshot(database)

    other = await api.call(ORDER, {"sku": "TTR-WI-YWN", "payWithCurrency": "USD"}, acme,
                           key="order-2")  # fmt: skip
    other.expect_error("IDEMPOTENCY_KEY_MISMATCH", 422)
    cancel = await api.call("CancelOrder", {"transactionId": "f" * 32}, acme, key="order-2")
    cancel.expect_error("IDEMPOTENCY_KEY_MISMATCH", 422)  # another route is another request
    assert snapshot(database) == before


@pytest.mark.parametrize("bad", ["k" * 256, "tab\there", "naïve"])
async def test_a_malformed_key_is_refused_and_stores_nothing(api, accounts, database, bad):
    acme = accounts["acme"]
    if api.transport == "rest" and not bad.isascii():
        pytest.skip("HTTP headers carry bytes: this one is refused by the HTTP client itself")
    refused = await api.call(ORDER, STEAM, acme, key=bad)
    refused.expect_error("INVALID_REQUEST", 400)
    assert orders(database) == 0
    assert one(database, "SELECT count(*) FROM idempotency_keys") == 0


async def test_an_empty_or_repeated_key_header_is_refused(http, accounts, database):
    headers = accounts["acme"].headers()
    empty = await http.post("/v2/orders/instant", json=STEAM,
                            headers={**headers, "Idempotency-Key": ""})  # fmt: skip
    assert empty.status == 400
    assert (await empty.json())["error"] == "INVALID_REQUEST"
    twice = await http.post(
        "/v2/orders/instant",
        json=STEAM,
        headers=[*headers.items(), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    )
    assert twice.status == 400
    assert orders(database) == 0


async def test_a_key_belongs_to_its_account(api, accounts, database):
    mine = await api.call(ORDER, STEAM, accounts["acme"], key="shared-key")
    theirs = await api.call(ORDER, STEAM, accounts["globex"], key="shared-key")
    assert mine.ok and theirs.ok and not theirs.replayed
    assert mine.data["transactionId"] != theirs.data["transactionId"]
    assert orders(database) == 2


async def test_a_refusal_by_the_rules_is_replayed_even_after_the_facts_change(
    api, accounts, store, database
):
    acme = accounts["acme"]
    refused = await api.call(ORDER, {"sku": "TTR-WI-YWN"}, acme, key="broke")
    refused.expect_error("UNSUPPORTED_CURRENCY", 422)  # acme holds no EUR
    await store.top_up(acme.account_id, Money.parse("100.00", "EUR"), utc_now())

    again = await api.call(ORDER, {"sku": "TTR-WI-YWN"}, acme, key="broke")
    again.expect_error("UNSUPPORTED_CURRENCY", 422)
    assert again.replayed and again.body == refused.body
    fresh = await api.call(ORDER, {"sku": "TTR-WI-YWN"}, acme, key="broke-2")
    assert fresh.ok


async def test_insufficient_balance_stays_a_422_after_a_top_up(api, accounts, store, database):
    acme = accounts["acme"]
    jpy = {"sku": "JPY-NT-1000", "payWithCurrency": "JPY"}
    await store.top_up(acme.account_id, Money.parse("900", "JPY"), utc_now())  # 950 needed
    refused = await api.call(ORDER, jpy, acme, key="short")
    refused.expect_error("INSUFFICIENT_BALANCE", 422)
    await store.top_up(acme.account_id, Money.parse("100", "JPY"), utc_now())

    again = await api.call(ORDER, jpy, acme, key="short")
    again.expect_error("INSUFFICIENT_BALANCE", 422)
    assert again.replayed and again.body == refused.body
    assert orders(database) == 0
    assert (await api.call(ORDER, jpy, acme, key="short-2")).ok


async def test_a_request_refused_before_the_rules_may_be_retried_with_its_key(
    api, accounts, database
):
    acme = accounts["acme"]
    stranger = type(acme)("x", acme.account_id, acme.api_key, "", token="not-a-token")
    (await api.call(ORDER, STEAM, stranger, key="fixed")).expect_error("UNAUTHENTICATED", 401)
    (await api.call(ORDER, {"sku": ""}, acme, key="fixed")).expect_error("INVALID_REQUEST", 400)

    placed = await api.call(ORDER, STEAM, acme, key="fixed")
    assert placed.ok and not placed.replayed


async def test_twenty_at_once_with_one_key_make_one_order(api, accounts, database):
    acme = accounts["acme"]
    answers = await asyncio.gather(
        *(api.call(ORDER, STEAM, acme, key="burst", request_id=f"r{n}") for n in range(20))
    )

    placed = {answer.data["transactionId"] for answer in answers if answer.ok}
    assert len(placed) == 1
    for answer in answers:
        if not answer.ok:
            answer.expect_error("IDEMPOTENCY_KEY_IN_USE", 409)
            if api.transport == "rest":
                assert answer.headers["Retry-After"] == "1"
    assert orders(database) == 1
    assert balance(database, accounts["acme"].account_id, "USD") == Decimal("90.25")


async def test_keys_are_forgotten_after_the_retention(api, accounts, store, database):
    acme = accounts["acme"]
    first = await api.call(ORDER, STEAM, acme, key="old-key")
    later = utc_now() + timedelta(days=91)
    fulfiller = make_fulfiller(store, clock=lambda: later)  # retention: 90 days by default

    assert await make_fulfiller(store).forget_expired_keys() == 0  # not yet
    assert await fulfiller.forget_expired_keys() == 1
    again = await api.call(ORDER, STEAM, acme, key="old-key")
    assert again.ok and not again.replayed
    assert again.data["transactionId"] != first.data["transactionId"]
    assert orders(database) == 2
