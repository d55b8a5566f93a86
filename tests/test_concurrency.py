"""Money and stock under concurrent load, over REST against a real `serve` process,
on each backend: every order placed is paid for exactly once, no code goes to two
orders, nothing is created or destroyed."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from server.domain.clock import utc_now
from server.domain.money import Money
from server.domain.ports import NewCode
from tests.databases import one, query
from tests.helpers import (
    acme_signed_in,
    assert_fulfillment_consistent,
    database_args,
    open_store,
    order_statuses,
)
from tests.processes import log_of, start_service, stop

YEN_SKU, YEN_PRICE = "JPY-NT-1000", 950  # no code in the dataset
EURO_SKU, EURO_PRICE_IN_USD = "TTR-WI-YWN", "11.48"  # 9.70 EUR at EUR/USD 1.1829, rounded up


@dataclass
class Service:
    url: str
    headers: dict[str, str]
    account_id: int
    session: aiohttp.ClientSession

    async def order(self, **fields: Any) -> tuple[int, dict[str, Any]]:
        async with self.session.post(
            f"{self.url}/v2/orders/instant", json=fields, headers=self.headers
        ) as response:
            return response.status, await response.json()


@pytest.fixture
async def service(database: str) -> AsyncIterator[Service]:
    """A real server process on the dataset; acme's headers. Its log must stay clean."""
    account_id, headers = await acme_signed_in(database)
    process, url = await start_service(database_args(database))
    try:
        connector = aiohttp.TCPConnector(limit=0)  # every order in flight at once
        async with aiohttp.ClientSession(connector=connector) as session:
            yield Service(url, headers, account_id, session)
    finally:
        assert stop(process) == 0
    assert "Traceback" not in log_of(process)


async def stock_and_fund(database: str, account_id: int, codes: dict[str, int], **funds: str):
    store = await open_store(database)
    try:
        for sku, count in codes.items():
            await store.add_codes(
                [NewCode(sku, f"{sku}-{n}", None) for n in range(count)], utc_now()
            )
        for currency, amount in funds.items():
            await store.top_up(account_id, Money.parse(amount, currency), utc_now())
    finally:
        await store.close()


def outcome(answer: tuple[int, dict[str, Any]]) -> str:
    status, body = answer
    return body["data"]["status"] if status == 200 else f"{status} {body['error']}"


async def test_200_orders_for_50_codes_and_funds_for_120(service, database):
    await stock_and_fund(database, service.account_id, {YEN_SKU: 50}, JPY=str(120 * YEN_PRICE))

    answers = await asyncio.gather(
        *(service.order(sku=YEN_SKU, payWithCurrency="JPY") for _ in range(200))
    )

    outcomes = Counter(outcome(answer) for answer in answers)
    assert outcomes == {"COMPLETED": 50, "PROCESSING": 70, "422 INSUFFICIENT_BALANCE": 80}
    assert order_statuses(database, YEN_SKU) == {"COMPLETED": 50, "PROCESSING": 70}
    assert one(database, "SELECT amount_minor FROM balances WHERE currency = 'JPY'") == 0
    assert_fulfillment_consistent(database)


async def test_two_skus_in_two_currencies_one_converted_interleaved(service, database):
    # acme holds 100.00 USD: top it up to exactly 40 orders of the EUR product in USD.
    usd_for_40 = Money.parse(EURO_PRICE_IN_USD, "USD").amount * 40
    await stock_and_fund(
        database, service.account_id, {YEN_SKU: 25, EURO_SKU: 14},  # + PLAY-0001: 15
        JPY=str(60 * YEN_PRICE), USD=str(usd_for_40 - 100),
    )  # fmt: skip
    orders = [(YEN_SKU, "JPY")] * 100 + [(EURO_SKU, "USD")] * 100
    random.Random(7).shuffle(orders)

    answers = await asyncio.gather(
        *(service.order(sku=sku, payWithCurrency=currency) for sku, currency in orders)
    )

    by_sku: dict[str, Counter[str]] = {YEN_SKU: Counter(), EURO_SKU: Counter()}
    for (sku, _), answer in zip(orders, answers, strict=True):
        by_sku[sku][outcome(answer)] += 1
    assert by_sku == {
        YEN_SKU: {"COMPLETED": 25, "PROCESSING": 35, "422 INSUFFICIENT_BALANCE": 40},
        EURO_SKU: {"COMPLETED": 15, "PROCESSING": 25, "422 INSUFFICIENT_BALANCE": 60},
    }
    assert order_statuses(database, YEN_SKU) == {"COMPLETED": 25, "PROCESSING": 35}
    assert order_statuses(database, EURO_SKU) == {"COMPLETED": 15, "PROCESSING": 25}
    converted = [body["data"] for status, body in answers if status == 200
                 and body["data"]["payWithCurrency"] == "USD"]  # fmt: skip
    assert {order["grandTotal"]["amount"] for order in converted} == {EURO_PRICE_IN_USD}
    balances = dict(query(database, "SELECT currency, amount_minor FROM balances"
                                    " WHERE account_id = ?", (service.account_id,)))  # fmt: skip
    assert balances == {"JPY": 0, "USD": 0}
    assert_fulfillment_consistent(database)


async def test_50_racing_orders_with_one_client_order_number_make_one(service, database):
    fields = {"sku": EURO_SKU, "payWithCurrency": "USD", "clientOrderNumber": "PO-RACE",
              "enableClientOrderNumberDupCheck": True}  # fmt: skip

    answers = await asyncio.gather(*(service.order(**fields) for _ in range(50)))

    created = [body for status, body in answers if status == 200]
    refused = [body for status, body in answers if status == 409]
    assert len(created) == 1 and len(refused) == 49, Counter(status for status, _ in answers)
    transaction_id = created[0]["data"]["transactionId"]
    assert {body["error"] for body in refused} == {"CLIENT_ORDER_NUMBER_DUPLICATE"}
    assert {body["transactionId"] for body in refused} == {transaction_id}
    assert one(database, "SELECT count(*) FROM orders") == 1
    assert_fulfillment_consistent(database)
