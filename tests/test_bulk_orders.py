"""Bulk orders (POST /v2/orders, CreateBulkOrder): price tiers, one product currency,
FX as for instant orders, the whole total debited at once, units delivered first
come first served across both kinds of order, and partial cancellation refunded
unit by unit. Both backends, REST and gRPC."""

from __future__ import annotations

import copy
import random
from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import pytest

from server.domain import admin
from server.domain.bulk import BulkPlan, LinePlan
from server.domain.clock import utc_now
from server.domain.fulfillment import Fulfiller, InventorySource
from server.domain.idempotency import Remembered, key_for, order_record
from server.domain.models import BulkLineRequest, BulkOrderRequest, Caller
from server.domain.money import Money
from server.domain.orders import BalanceSpent, NewBulkOrder
from server.domain.ports import NewCode, Store
from server.metrics import PrometheusObserver
from tests.api import RestApi
from tests.databases import one, query
from tests.helpers import assert_fulfillment_consistent, balance, make_fulfiller
from tests.metrics import moved, scrape
from tests.test_watch import next_event

BULK = "CreateBulkOrder"
#: USD, three tiers: 9.50 for 1-9, 9.00 for 10-49, 8.75 from 50; not instant.
TIERED = "TIER-USD-10"
STEAM = "8PX-UF-Y5U"  # USD 9.75, two codes in stock
PLAY = "TTR-WI-YWN"  # EUR 9.70, one code in stock
XBOX = "ELX-BF-85S"  # GBP 24.10, not instant

TIERED_PRODUCT = {
    "sku": TIERED, "name": "Tiered USD 10", "brand": "Tiers", "currency": "USD",
    "faceValue": "10.00", "instantDeliverySupported": False,
    "prices": [
        {"price": "9.50", "fromQuantity": 1, "toQuantity": 9},
        {"price": "9.00", "fromQuantity": 10, "toQuantity": 49},
        {"price": "8.75", "fromQuantity": 50},
    ],
}  # fmt: skip


@pytest.fixture
async def tiered(store: Store, accounts: dict[str, Any]) -> str:
    """The tiered product in the catalogue, and acme's USD balance raised to 1000.00."""
    await admin.load_dataset(store, {"products": [copy.deepcopy(TIERED_PRODUCT)]}, utc_now())
    await store.top_up(accounts["acme"].account_id, _usd("900.00"), utc_now())
    return TIERED


def _usd(amount: str) -> Money:
    return Money.parse(amount, "USD")


def lines(*pairs: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"sku": sku, "quantity": quantity} for sku, quantity in pairs]


async def restock(store: Store, sku: str, count: int, prefix: str = "R") -> None:
    codes = [NewCode(sku, f"{prefix}-{sku}-{n:05}", f"{n:04}") for n in range(count)]
    await store.add_codes(codes, utc_now())


async def units(api, account, transaction_id: str, **query: Any) -> list[dict[str, Any]]:
    """Every unit GetCodes shows (one page), with its SKU."""
    reply = await api.call("GetCodes", {"transactionId": transaction_id, **query}, account)
    return [{"sku": p["sku"], **code} for p in reply.expect_ok() for code in p["codes"]]


# --- placing -----------------------------------------------------------------------


async def test_a_bulk_order_debits_its_grand_total_at_once_and_answers_processing(
    api, accounts, tiered, database
):
    acme = accounts["acme"]
    before = balance(database, acme.account_id, "USD")

    body = {"products": lines((STEAM, 3), (TIERED, 10)), "clientOrderNumber": "po-1"}
    order = (await api.call(BULK, body, acme)).expect_ok()

    assert order["status"] == "PROCESSING"
    assert order["clientOrderNumber"] == "po-1"
    assert order["payWithCurrency"] == "USD"
    assert [
        (p["sku"], p["quantity"], p["unitPrice"]["amount"], p["totalPrice"]["amount"], p["status"])
        for p in order["products"]
    ] == [
        (STEAM, 3, "9.75", "29.25", "PROCESSING"),
        (TIERED, 10, "9.00", "90.00", "PROCESSING"),
    ]
    assert order["grandTotal"] == {"amount": "119.25", "currency": "USD"}
    assert "fxSummary" not in order and "unitPriceOriginal" not in order["products"][0]
    assert "refundedTotal" not in order
    assert balance(database, acme.account_id, "USD") == before - Decimal("119.25")
    # Every unit shows, numbered within the order, waiting: even with STEAM in stock.
    shown = await units(api, acme, order["transactionId"])
    assert [(u["sku"], u["stockId"], u["status"]) for u in shown] == [
        *((STEAM, n, "PROCESSING") for n in (1, 2, 3)),
        *((TIERED, n, "PROCESSING") for n in range(4, 14)),
    ]
    assert all(u.get("redeemCode") is None and u.get("pinCode") is None for u in shown)
    fetched = await api.call("GetOrder", {"transactionId": order["transactionId"]}, acme)
    assert fetched.expect_ok()["products"] == order["products"]
    assert_fulfillment_consistent(database)


@pytest.mark.parametrize(
    ("quantity", "unit_price"),
    [(1, "9.50"), (9, "9.50"), (10, "9.00"), (49, "9.00"), (50, "8.75"), (10_000, "8.75")],
)
async def test_a_line_is_priced_by_the_tier_its_quantity_falls_in(
    service, accounts, tiered, quantity, unit_price, store
):
    acme = accounts["acme"]
    await store.top_up(acme.account_id, _usd("90000.00"), utc_now())
    order = await service.create_bulk_order(_caller(acme), _request((TIERED, quantity)))
    (line,) = order.lines
    assert str(line.unit_price.amount) == unit_price
    assert line.total_price.amount == Decimal(unit_price) * quantity


async def test_paid_in_another_currency_each_unit_is_converted_and_rounded_up(
    api, accounts, database
):
    acme = accounts["acme"]
    order = (
        await api.call(BULK, {"products": lines((PLAY, 2)), "payWithCurrency": "USD"}, acme)
    ).expect_ok()

    (line,) = order["products"]
    # 9.70 EUR x 1.1829 = 11.47413 USD, rounded up per unit to 11.48.
    assert line["unitPriceOriginal"] == {"amount": "9.70", "currency": "EUR"}
    assert line["unitPrice"] == {"amount": "11.48", "currency": "USD"}
    assert line["totalPrice"] == {"amount": "22.96", "currency": "USD"}
    assert order["grandTotal"] == {"amount": "22.96", "currency": "USD"}
    assert order["fxSummary"] == [{"pair": "EUR/USD", "rate": 1.1829, "asOfDate": "2025-10-06"}]
    assert balance(database, acme.account_id, "USD") == Decimal("100.00") - Decimal("22.96")


async def test_products_of_two_currencies_are_refused_and_nothing_changes(api, accounts, database):
    acme = accounts["acme"]
    reply = await api.call(BULK, {"products": lines((STEAM, 1), (PLAY, 1))}, acme)

    error = reply.expect_error("MIXED_PRODUCT_CURRENCIES", 422)
    assert "EUR, USD" in error["message"]
    assert balance(database, acme.account_id, "USD") == Decimal("100.00")
    assert one(database, "SELECT count(*) FROM orders") == 0


@pytest.mark.parametrize(
    ("products", "field"),
    [
        ([], "products"),
        (lines(*((f"SKU-{n}", 1) for n in range(101))), "products"),
        (lines((STEAM, 0)), "products[0].quantity"),
        (lines((STEAM, 1), (PLAY, 10_001)), "products[1].quantity"),
        (lines((STEAM, 1), (STEAM, 2)), "products[1].sku"),
        ([{"quantity": 1}], "products[0].sku"),
    ],
)
async def test_malformed_lines_are_refused_naming_the_line(
    api, accounts, database, products, field
):
    acme = accounts["acme"]
    reply = await api.call(BULK, {"products": products}, acme)

    error = reply.expect_error("INVALID_REQUEST", 400)
    assert error["field"] == field, error
    assert one(database, "SELECT count(*) FROM orders") == 0


async def test_an_unknown_sku_is_404_naming_it(api, accounts):
    reply = await api.call(BULK, {"products": lines((STEAM, 1), ("NOPE-1", 2))}, accounts["acme"])
    error = reply.expect_error("PRODUCT_NOT_FOUND", 404)
    assert error["sku"] == "NOPE-1"


async def test_a_product_not_delivered_instantly_can_be_bulk_ordered(api, accounts, tiered):
    reply = await api.call(BULK, {"products": lines((TIERED, 2))}, accounts["acme"])
    assert reply.expect_ok()["status"] == "PROCESSING"


async def test_a_total_the_balance_does_not_cover_is_refused_and_nothing_changes(
    api, accounts, database
):
    acme = accounts["acme"]
    reply = await api.call(BULK, {"products": lines((STEAM, 11))}, acme)  # 107.25 > 100.00

    error = reply.expect_error("INSUFFICIENT_BALANCE", 422)
    assert (error["currency"], error["requiredAmount"]) == ("USD", "107.25")
    assert balance(database, acme.account_id, "USD") == Decimal("100.00")
    assert one(database, "SELECT count(*) FROM ledger WHERE kind = 'ORDER'") == 0


async def test_the_duplicate_check_and_the_idempotency_key_work_as_on_instant_orders(
    api, accounts, database
):
    acme = accounts["acme"]
    body = {"products": lines((STEAM, 2)), "clientOrderNumber": "po-dup",
            "enableClientOrderNumberDupCheck": True}  # fmt: skip
    first = (await api.call(BULK, body, acme)).expect_ok()

    again_numbered = await api.call(BULK, body, acme)
    duplicate = again_numbered.expect_error("CLIENT_ORDER_NUMBER_DUPLICATE", 409)
    assert duplicate["transactionId"] == first["transactionId"]

    keyed = {"products": lines((STEAM, 1))}
    placed = (await api.call(BULK, keyed, acme, key="bulk-key-1")).expect_ok()
    again = await api.call(BULK, keyed, acme, key="bulk-key-1")
    assert again.expect_ok()["transactionId"] == placed["transactionId"]
    assert again.replayed
    assert balance(database, acme.account_id, "USD") == Decimal("100.00") - 3 * Decimal("9.75")


# --- fulfilling ---------------------------------------------------------------------


async def test_units_are_delivered_oldest_order_first_across_both_kinds(
    api, accounts, store, database
):
    """Instant and bulk orders for one SKU, restocked in small batches: no unit
    overtakes an older order's."""
    acme = accounts["acme"]
    await store.top_up(acme.account_id, _usd("500.00"), utc_now())
    fulfiller = make_fulfiller(store)
    await fulfiller.run_once()  # the two STEAM codes in stock are nobody's yet
    instant_first = (await api.call("CreateInstantOrder", {"sku": STEAM}, acme)).expect_ok()
    instant_second = (await api.call("CreateInstantOrder", {"sku": STEAM}, acme)).expect_ok()
    assert [instant_first["status"], instant_second["status"]] == ["COMPLETED", "COMPLETED"]
    bulk = (await api.call(BULK, {"products": lines((STEAM, 5))}, acme)).expect_ok()
    await restock(store, STEAM, 3, "A")
    late_instant = (await api.call("CreateInstantOrder", {"sku": STEAM}, acme)).expect_ok()
    assert late_instant["status"] == "PROCESSING"  # codes in stock, but the bulk units wait
    bulk_tx, late_tx = bulk["transactionId"], late_instant["transactionId"]

    await fulfiller.run_once()
    shown = await units(api, acme, bulk_tx)
    assert [u["status"] for u in shown] == ["COMPLETED"] * 3 + ["PROCESSING"] * 2
    assert [u["redeemCode"] for u in shown[:3]] == [f"A-{STEAM}-{n:05}" for n in range(3)]
    assert (await api.call("GetOrder", {"transactionId": late_tx}, acme)).expect_ok()[
        "status"
    ] == "PROCESSING"

    await restock(store, STEAM, 3, "B")
    await fulfiller.run_once()
    order = (await api.call("GetOrder", {"transactionId": bulk_tx}, acme)).expect_ok()
    assert order["status"] == order["products"][0]["status"] == "COMPLETED"
    late = (await api.call("GetOrder", {"transactionId": late_tx}, acme)).expect_ok()
    assert late["status"] == "COMPLETED"
    codes = [u["redeemCode"] for u in await units(api, acme, bulk_tx)]
    assert codes[3:] == [f"B-{STEAM}-00000", f"B-{STEAM}-00001"]
    assert_fulfillment_consistent(database)


async def test_codes_are_read_a_page_at_a_time_after_a_stock_id(api, accounts, store, tiered):
    acme = accounts["acme"]
    order = (await api.call(BULK, {"products": lines((TIERED, 30))}, acme)).expect_ok()
    await restock(store, TIERED, 30)
    await make_fulfiller(store).run_once()
    tx = order["transactionId"]

    first = await units(api, acme, tx, limit=12)
    second = await units(api, acme, tx, limit=12, afterStockId=first[-1]["stockId"])
    rest = await units(api, acme, tx, afterStockId=second[-1]["stockId"])
    chosen = await units(api, acme, tx, stockIds=[29, 3, 31], sku=TIERED)
    whole = await units(api, acme, tx)

    assert [u["stockId"] for u in first + second + rest] == list(range(1, 31))
    assert all(u["status"] == "COMPLETED" and u["redeemCode"] for u in first + second + rest)
    assert [u["stockId"] for u in chosen] == [3, 29]
    assert whole == first + second + rest  # no limit: the whole order (up to 10,000 units)
    assert await units(api, acme, tx, afterStockId=30) == []
    too_many = await api.call("GetCodes", {"transactionId": tx, "limit": 10_001}, acme)
    too_many.expect_error("INVALID_REQUEST", 400)


async def test_an_instant_orders_code_is_paged_by_after_stock_id_too(api, accounts):
    acme = accounts["acme"]
    order = (await api.call("CreateInstantOrder", {"sku": STEAM}, acme)).expect_ok()
    tx = order["transactionId"]

    assert [u["stockId"] for u in await units(api, acme, tx)] == [1]
    assert await units(api, acme, tx, afterStockId=1) == []


# --- cancelling ---------------------------------------------------------------------


@pytest.mark.parametrize("by", ["customer", "deadline"])
async def test_cancelling_a_partly_delivered_order_refunds_exactly_the_units_not_delivered(
    api, accounts, store, service, database, tiered, by
):
    acme = accounts["acme"]
    order = (
        await api.call(BULK, {"products": lines((TIERED, 12), (STEAM, 4))}, acme)
    ).expect_ok()  # 12 x 9.00 + 4 x 9.75 = 147.00
    tx = order["transactionId"]
    await restock(store, TIERED, 5)
    await make_fulfiller(store).run_once()  # and STEAM's two codes in stock
    before = balance(database, acme.account_id, "USD")

    if by == "customer":
        cancelled = (await api.call("CancelOrder", {"transactionId": tx}, acme)).expect_ok()
    else:
        overdue = make_fulfiller(store, timeout=timedelta(seconds=0))
        await overdue.run_once()
        cancelled = (await api.call("GetOrder", {"transactionId": tx}, acme)).expect_ok()

    # 7 x 9.00 + 2 x 9.75 = 82.50 back; 5 + 2 units stay delivered.
    assert balance(database, acme.account_id, "USD") == before + Decimal("82.50")
    assert cancelled["refundedTotal"] == {"amount": "82.50", "currency": "USD"}
    assert cancelled["status"] == "COMPLETED"  # some units were delivered
    assert [p["status"] for p in cancelled["products"]] == ["COMPLETED", "COMPLETED"]
    # The delivered units, with their codes; the cancelled ones are not shown (the
    # reference's units are PROCESSING or COMPLETED), as for a cancelled instant order.
    shown = await units(api, acme, tx)
    assert [(u["stockId"], u["status"]) for u in shown] == [
        *((n, "COMPLETED") for n in (1, 2, 3, 4, 5, 13, 14))
    ]
    await restock(store, TIERED, 10, "LATE")
    await make_fulfiller(store).run_once()  # nothing more is delivered to it
    assert await units(api, acme, tx) == shown
    retried = (await api.call("CancelOrder", {"transactionId": tx}, acme)).expect_ok()
    assert retried == cancelled  # a retry changes nothing and is no error
    assert balance(database, acme.account_id, "USD") == before + Decimal("82.50")
    assert_fulfillment_consistent(database)


async def test_an_order_none_of_whose_units_came_is_cancelled_whole(
    api, accounts, database, tiered
):
    acme = accounts["acme"]
    order = (await api.call(BULK, {"products": lines((TIERED, 3))}, acme)).expect_ok()
    before = balance(database, acme.account_id, "USD")

    cancelled = (
        await api.call("CancelOrder", {"transactionId": order["transactionId"]}, acme)
    ).expect_ok()

    assert cancelled["status"] == cancelled["products"][0]["status"] == "CANCELLED"
    assert cancelled["refundedTotal"] == {"amount": "28.50", "currency": "USD"}
    assert balance(database, acme.account_id, "USD") == before + Decimal("28.50")
    assert_fulfillment_consistent(database)


# --- catalogue ----------------------------------------------------------------------


async def test_the_catalogue_shows_the_tiers(api, accounts, tiered):
    reply = await api.call("ListProducts", {"sku": [TIERED, STEAM]}, accounts["acme"])
    products = {p["sku"]: p for p in reply.expect_ok()["items"]}
    assert products[TIERED]["prices"] == [
        {"price": "9.50", "fromQuantity": 1, "toQuantity": 9},
        {"price": "9.00", "fromQuantity": 10, "toQuantity": 49},
        {"price": "8.75", "fromQuantity": 50},
    ]
    assert products[STEAM]["prices"] == [{"price": "9.75", "fromQuantity": 1}]


def _caller(account: Any) -> Caller:
    return Caller(account.account_id, account.api_key)


def _request(*pairs: tuple[str, int]) -> BulkOrderRequest:
    return BulkOrderRequest(tuple(BulkLineRequest(sku, quantity) for sku, quantity in pairs))


# --- watching -----------------------------------------------------------------------


async def test_watchers_see_each_delivery_of_a_bulk_order(
    http, accounts, store, tiered, fulfilling
):
    acme = accounts["acme"]
    order = (await http.post("/v2/orders", json={"products": lines((TIERED, 5))},
                             headers=acme.headers()))  # fmt: skip
    tx = (await order.json())["data"]["transactionId"]
    response = await http.get(f"/v2/orders/{tx}/events", headers=acme.headers())

    _, first = await next_event(response)
    assert first["data"]["status"] == "PROCESSING"
    await restock(store, TIERED, 2, "W1")
    _, partly = await next_event(response)
    assert partly["data"]["status"] == "PROCESSING"  # 2 of 5 delivered: a change all the same
    shown = await units(RestApi(http), acme, tx)
    assert [u["status"] for u in shown] == ["COMPLETED"] * 2 + ["PROCESSING"] * 3
    await restock(store, TIERED, 3, "W2")
    _, last = await next_event(response)
    assert last["data"]["status"] == last["data"]["products"][0]["status"] == "COMPLETED"
    assert await next_event(response) == ("end", None)


# --- fairness under interleaving ----------------------------------------------------


async def test_interleaved_orders_and_small_restocks_deliver_in_order_time_order(
    api, accounts, store, database, tiered
):
    """Instant and bulk orders for one SKU, placed in turn and restocked one to three
    codes at a time: every code goes to the oldest unit still waiting."""
    acme = accounts["acme"]
    rng = random.Random(7)
    fulfiller = make_fulfiller(store)
    await fulfiller.run_once()  # STEAM's two codes in stock go to the first orders below
    for _ in range(12):
        if rng.random() < 0.5:
            await api.call("CreateInstantOrder", {"sku": STEAM}, acme)
        else:
            await api.call(BULK, {"products": lines((STEAM, rng.randint(1, 4)))}, acme)
    for batch in range(12):
        await restock(store, STEAM, rng.randint(1, 3), f"I{batch}")
        await fulfiller.run_once()
        # Units in order-time order: (order id, stockId) of the codes as they were stocked.
        units_by_stocking = query(
            database,
            "SELECT c.order_id, c.stock_id FROM codes c WHERE c.order_id IS NOT NULL ORDER BY c.id",
        )
        assert units_by_stocking == sorted(units_by_stocking), "a unit overtook an older one"
    assert_fulfillment_consistent(database)


# --- catalogue tiers at load ---------------------------------------------------------


@pytest.mark.parametrize(
    ("prices", "reason"),
    [
        ([{"price": "9.00", "fromQuantity": 2}], "must be 1"),
        ([{"price": "9.00", "fromQuantity": 1, "toQuantity": 9},
          {"price": "8.00", "fromQuantity": 11}], "must be 10"),  # a gap
        ([{"price": "9.00", "fromQuantity": 1, "toQuantity": 9},
          {"price": "8.00", "fromQuantity": 9}], "must be 10"),  # an overlap
        ([{"price": "9.00", "fromQuantity": 1}, {"price": "8.00", "fromQuantity": 2}],
         "no toQuantity but is not the last"),
        ([{"price": "9.00", "fromQuantity": 1, "toQuantity": 9}], "the last tier must have no"),
        ([{"price": "9.00", "fromQuantity": 1, "toQuantity": 0}], "toQuantity must be"),
        ([{"price": "9.00", "fromQuantity": 1, "toQuantity": 2**31},
          {"price": "8.00", "fromQuantity": 2**31 + 1}], "whole number from 1 to"),
        ([{"price": "0.00", "fromQuantity": 1}], "must be positive"),
        ([], "at least one tier"),
    ],
)  # fmt: skip
async def test_a_load_with_bad_tiers_fails_with_the_reason_and_applies_nothing(
    store, prices, reason
):
    product = {**TIERED_PRODUCT, "prices": prices}
    with pytest.raises(admin.InvalidInput) as refused:
        await admin.load_dataset(store, {"products": [product]}, utc_now())
    assert reason in str(refused.value)
    assert "products[0].prices" in str(refused.value)
    assert (await store.list_products([TIERED], 1, 10)).total == 0


async def test_a_product_has_price_or_prices_not_both(store):
    product = {**TIERED_PRODUCT, "price": "9.50"}
    with pytest.raises(admin.InvalidInput, match="price or prices"):
        await admin.load_dataset(store, {"products": [product]}, utc_now())


# --- scale ----------------------------------------------------------------------------


async def test_an_order_of_ten_thousand_units_is_placed_fulfilled_and_read_page_by_page(
    api, accounts, store, database, tiered
):
    acme = accounts["acme"]
    await store.top_up(acme.account_id, _usd("100000.00"), utc_now())
    order = (await api.call(BULK, {"products": lines((TIERED, 10_000))}, acme)).expect_ok()
    assert order["grandTotal"] == {"amount": "87500.00", "currency": "USD"}
    await restock(store, TIERED, 10_000)

    assert await make_fulfiller(store).run_once() == 1  # one pass, one transaction
    tx = order["transactionId"]
    assert (await api.call("GetOrder", {"transactionId": tx}, acme)).expect_ok()[
        "status"
    ] == "COMPLETED"
    seen, after = 0, 0
    while page := await units(api, acme, tx, afterStockId=after, limit=1000):
        assert len(page) <= 1000
        assert [u["stockId"] for u in page] == list(range(after + 1, after + 1 + len(page)))
        assert all(u["redeemCode"] for u in page)
        seen, after = seen + len(page), page[-1]["stockId"]
    assert seen == 10_000
    assert_fulfillment_consistent(database)


async def test_the_fulfilled_counter_counts_a_bulk_order_once_when_its_last_unit_comes(
    http, accounts, store, tiered
):
    acme = accounts["acme"]
    fulfiller = Fulfiller(
        store, InventorySource(store), timedelta(days=1), utc_now, observer=PrometheusObserver()
    )
    response = await http.post(
        "/v2/orders", json={"products": lines((TIERED, 4))}, headers=acme.headers()
    )
    assert response.status == 200
    before, _ = await scrape(http)

    await restock(store, TIERED, 3)
    await fulfiller.run_once()
    partly, _ = await scrape(http)
    await restock(store, TIERED, 1, "LAST")
    await fulfiller.run_once()
    after, _ = await scrape(http)

    assert moved(before, partly, "instant_orders_fulfilled_total") == 0
    assert moved(partly, after, "instant_orders_fulfilled_total") == 1


async def test_a_balance_spent_between_the_facts_and_the_debit_is_remembered_with_the_key(
    store, accounts
):
    """On PostgreSQL another transaction may spend the balance after the facts were
    read: the debit then finds too little and the order rolls back. Its refusal is
    stored with the key all the same, so that a retry gets the same answer."""
    acme = accounts["acme"]
    request = _request((STEAM, 1))
    price = _usd("1000.00")  # more than acme holds: what a spent balance looks like
    stale_plan = BulkPlan((LinePlan(STEAM, 1, price, price, 1),), None)
    key = key_for("bulk-spent-1", "req-1", partial(order_record, request), BULK, lines=[STEAM])
    order = NewBulkOrder(_caller(acme), request, "tx-spent-1", utc_now())

    first = await store.place_bulk_order(order, lambda facts: stale_plan, key)
    again = await store.place_bulk_order(order, lambda facts: stale_plan, key)

    assert isinstance(first, BalanceSpent)
    assert isinstance(again, Remembered) and again.record.refusal is not None
