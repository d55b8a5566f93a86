"""The rules of CreateInstantOrder, each checked over REST and over gRPC."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.api import Account
from tests.helpers import assert_invariants, balance, snapshot

ORDER = "CreateInstantOrder"


async def test_in_stock_order_completes_debits_and_reserves_a_code(api, accounts, database):
    acme = accounts["acme"]
    order = (
        await api.call(ORDER, {"sku": "8PX-UF-Y5U", "clientOrderNumber": "po-1"}, acme)
    ).expect_ok()

    assert order["status"] == "COMPLETED"
    assert order["clientOrderNumber"] == "po-1"
    assert order["payWithCurrency"] == "USD"
    assert order["grandTotal"] == {"amount": "9.75", "currency": "USD"}
    assert order["products"] == [
        {
            "sku": "8PX-UF-Y5U",
            "quantity": 1,
            "unitPrice": {"amount": "9.75", "currency": "USD"},
            "totalPrice": {"amount": "9.75", "currency": "USD"},
            "status": "COMPLETED",
        }
    ]
    assert "fxSummary" not in order
    assert balance(database, acme.account_id, "USD") == Decimal("90.25")
    assert snapshot(database)["sold"] == 1
    assert_invariants(database)


async def test_out_of_stock_order_is_processing_and_still_debited(api, accounts, database):
    acme = accounts["acme"]
    reply = await api.call(ORDER, {"sku": "TTR-WI-YWN", "payWithCurrency": "USD"}, acme)
    assert reply.expect_ok()["status"] == "COMPLETED"  # the one code in stock

    order = (
        await api.call(ORDER, {"sku": "TTR-WI-YWN", "payWithCurrency": "USD"}, acme)
    ).expect_ok()

    assert order["status"] == "PROCESSING"
    assert order["products"][0]["status"] == "PROCESSING"
    assert balance(database, acme.account_id, "USD") == Decimal("100.00") - 2 * Decimal("11.48")
    assert_invariants(database)


async def test_cross_currency_order_rounds_up_to_minor_unit(api, accounts):
    """The reference's example: 9.70 EUR at EUR/USD 1.1829 is 11.47413, charged 11.48 USD."""
    order = (
        await api.call(ORDER, {"sku": "TTR-WI-YWN", "payWithCurrency": "USD"}, accounts["acme"])
    ).expect_ok()

    product = order["products"][0]
    assert product["unitPriceOriginal"] == {"amount": "9.70", "currency": "EUR"}
    assert product["unitPrice"] == {"amount": "11.48", "currency": "USD"}
    assert product["totalPrice"] == {"amount": "11.48", "currency": "USD"}
    assert order["grandTotal"] == {"amount": "11.48", "currency": "USD"}
    assert order["payWithCurrency"] == "USD"
    assert order["fxSummary"] == [{"pair": "EUR/USD", "rate": 1.1829, "asOfDate": "2025-10-06"}]


async def test_product_currency_in_balances_is_the_default(api, accounts, database):
    globex = accounts["globex"]  # holds USD and EUR
    order = (await api.call(ORDER, {"sku": "TTR-WI-YWN"}, globex)).expect_ok()

    assert order["payWithCurrency"] == "EUR"
    assert order["grandTotal"] == {"amount": "9.70", "currency": "EUR"}
    assert "unitPriceOriginal" not in order["products"][0]
    assert "fxSummary" not in order
    assert balance(database, globex.account_id, "EUR") == Decimal("10.30")


async def test_pay_with_currency_overrides_the_default(api, accounts, database):
    globex = accounts["globex"]
    order = (
        await api.call(ORDER, {"sku": "TTR-WI-YWN", "payWithCurrency": "USD"}, globex)
    ).expect_ok()

    assert order["grandTotal"] == {"amount": "11.48", "currency": "USD"}
    assert balance(database, globex.account_id, "EUR") == Decimal("20.00")


async def test_missing_client_order_number_is_returned_empty(api, accounts):
    order = (await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, accounts["acme"])).expect_ok()
    assert order["clientOrderNumber"] == ""


async def test_transaction_id_is_unguessable_and_created_at_is_rfc3339_utc(api, accounts):
    before = datetime.now(UTC)
    order = (await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, accounts["acme"])).expect_ok()

    assert re.fullmatch(r"[0-9a-f]{32}", order["transactionId"])
    assert order["createdAt"].endswith("Z")
    created = datetime.fromisoformat(order["createdAt"].replace("Z", "+00:00"))
    assert before <= created <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("fields", "reason", "status"),
    [
        ({}, "INVALID_REQUEST", 400),
        ({"clientOrderNumber": "po-1"}, "INVALID_REQUEST", 400),
        ({"sku": "NO-SUCH-SKU"}, "PRODUCT_NOT_FOUND", 404),
        ({"sku": "ELX-BF-85S", "payWithCurrency": "USD"}, "INSTANT_DELIVERY_NOT_SUPPORTED", 422),
        # EUR product, account holds only USD, payWithCurrency omitted
        ({"sku": "TTR-WI-YWN"}, "UNSUPPORTED_CURRENCY", 422),
        # a currency the account holds no balance in
        ({"sku": "8PX-UF-Y5U", "payWithCurrency": "EUR"}, "UNSUPPORTED_CURRENCY", 422),
        ({"sku": "8PX-UF-Y5U", "payWithCurrency": "usd"}, "UNSUPPORTED_CURRENCY", 422),
        ({"sku": "8PX-UF-Y5U", "payWithCurrency": "XYZ"}, "UNSUPPORTED_CURRENCY", 422),
        ({"sku": "8PX-UF-Y5U", "payWithCurrency": "USDX"}, "UNSUPPORTED_CURRENCY", 422),
        ({"sku": "8PX-UF-Y5U", "payWithCurrency": "U" * 1000}, "INVALID_REQUEST", 400),
        # no JPY/USD rate
        ({"sku": "JPY-NT-1000", "payWithCurrency": "USD"}, "UNSUPPORTED_CURRENCY", 422),
        ({"sku": "x" * 65}, "INVALID_REQUEST", 400),
        ({"sku": "8PX-UF-Y5U", "clientOrderNumber": "po\n1"}, "INVALID_REQUEST", 400),
        ({"sku": "8PX-UF-Y5U", "clientOrderNumber": "c" * 10_000}, "INVALID_REQUEST", 400),
    ],
)
async def test_refused_order_changes_nothing(api, accounts, database, fields, reason, status):
    before = snapshot(database)

    reply = await api.call(ORDER, fields, accounts["acme"])

    reply.expect_error(reason, status)
    assert snapshot(database) == before


async def test_unsupported_currency_has_the_reference_message(api, accounts):
    reply = await api.call(ORDER, {"sku": "TTR-WI-YWN"}, accounts["acme"])
    error = reply.expect_error("UNSUPPORTED_CURRENCY", 422)
    assert error["message"] == "payWithCurrency is required or not supported for this account."


async def test_insufficient_balance_is_refused_and_nothing_changes(api, accounts, database):
    globex = accounts["globex"]  # 50.00 USD
    for _ in range(5):  # 5 x 9.75 = 48.75
        (await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, globex)).expect_ok()
    before = snapshot(database)

    reply = await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, globex)

    error = reply.expect_error("INSUFFICIENT_BALANCE", 422)
    assert error["currency"] == "USD"
    assert error["requiredAmount"] == "9.75"
    assert snapshot(database) == before
    assert balance(database, globex.account_id, "USD") == Decimal("1.25")
    assert_invariants(database)


async def test_duplicate_client_order_number_is_refused_with_the_existing_order(api, accounts):
    acme = accounts["acme"]
    first = (
        await api.call(ORDER, {"sku": "8PX-UF-Y5U", "clientOrderNumber": "1234"}, acme)
    ).expect_ok()

    reply = await api.call(
        ORDER,
        {"sku": "8PX-UF-Y5U", "clientOrderNumber": "1234", "enableClientOrderNumberDupCheck": True},
        acme,
    )

    error = reply.expect_error("CLIENT_ORDER_NUMBER_DUPLICATE", 409)
    assert error["clientOrderNumber"] == "1234"
    assert error["transactionId"] == first["transactionId"]


async def test_duplicates_are_allowed_without_the_check(api, accounts):
    acme = accounts["acme"]
    for _ in range(2):
        (
            await api.call(ORDER, {"sku": "8PX-UF-Y5U", "clientOrderNumber": "1234"}, acme)
        ).expect_ok()


async def test_duplicate_check_is_per_account(api, accounts):
    fields = {
        "sku": "8PX-UF-Y5U",
        "clientOrderNumber": "1234",
        "enableClientOrderNumberDupCheck": True,
    }
    (await api.call(ORDER, fields, accounts["acme"])).expect_ok()
    (await api.call(ORDER, fields, accounts["globex"])).expect_ok()


async def test_concurrent_duplicates_yield_one_order(api, accounts, database):
    acme = accounts["acme"]
    fields = {
        "sku": "8PX-UF-Y5U",
        "clientOrderNumber": "race",
        "enableClientOrderNumberDupCheck": True,
    }

    replies = await asyncio.gather(*(api.call(ORDER, fields, acme) for _ in range(20)))

    winners = [reply.data for reply in replies if reply.ok]
    assert len(winners) == 1
    for reply in replies:
        if not reply.ok:
            error = reply.expect_error("CLIENT_ORDER_NUMBER_DUPLICATE", 409)
            assert error["transactionId"] == winners[0]["transactionId"]
    assert snapshot(database)["orders"] == 1
    assert_invariants(database)


async def test_orders_in_yen_use_whole_units(api, store, accounts, database):
    from server.domain.clock import utc_now
    from server.domain.money import Money

    acme: Account = accounts["acme"]
    await store.top_up(acme.account_id, Money(Decimal(5000), "JPY"), utc_now())

    order = (await api.call(ORDER, {"sku": "JPY-NT-1000"}, acme)).expect_ok()

    assert order["grandTotal"] == {"amount": "950", "currency": "JPY"}
    assert balance(database, acme.account_id, "JPY") == Decimal(4050)
