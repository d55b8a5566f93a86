"""Polling orders, fetching codes, and reading balances, products and rates, over REST and gRPC."""

from __future__ import annotations

import pytest

from server.domain.clock import utc_now
from server.domain.ports import NewCode
from tests.databases import one
from tests.helpers import make_fulfiller

ORDER = "CreateInstantOrder"


async def place(api, account, sku="8PX-UF-Y5U", **fields):
    return (await api.call(ORDER, {"sku": sku, **fields}, account)).expect_ok()


async def test_get_order_returns_the_full_instant_order_shape(api, accounts):
    placed = await place(api, accounts["acme"], "TTR-WI-YWN", payWithCurrency="USD")

    order = (
        await api.call("GetOrder", {"transactionId": placed["transactionId"]}, accounts["acme"])
    ).expect_ok()

    assert order == placed


async def test_another_accounts_order_is_not_found_like_a_missing_one(api, accounts):
    placed = await place(api, accounts["acme"])
    other = accounts["globex"]

    foreign = await api.call("GetOrder", {"transactionId": placed["transactionId"]}, other)
    missing = await api.call("GetOrder", {"transactionId": "0" * 32}, other)

    foreign_error = foreign.expect_error("ORDER_NOT_FOUND", 404)
    missing_error = missing.expect_error("ORDER_NOT_FOUND", 404)
    assert foreign_error.keys() == missing_error.keys()
    assert (
        foreign_error["message"].replace(placed["transactionId"], "0" * 32)
        == missing_error["message"]
    )
    codes = await api.call("GetCodes", {"transactionId": placed["transactionId"]}, other)
    codes.expect_error("ORDER_NOT_FOUND", 404)
    listed = await api.call("ListOrders", {"transactionId": placed["transactionId"]}, other)
    assert listed.expect_ok()["items"] == []


async def test_list_orders_pages_newest_first(api, accounts):
    acme = accounts["acme"]
    placed = [await place(api, acme, clientOrderNumber=f"po-{i}") for i in range(3)]

    first = (await api.call("ListOrders", {"limit": 2}, acme)).expect_ok()
    second = (await api.call("ListOrders", {"limit": 2, "page": 2}, acme)).expect_ok()

    assert (first["total"], first["page"], first["pageSize"], first["totalPage"]) == (3, 1, 2, 2)
    assert [o["clientOrderNumber"] for o in first["items"]] == ["po-2", "po-1"]
    assert [o["transactionId"] for o in second["items"]] == [placed[0]["transactionId"]]


async def test_list_orders_defaults_to_ten_per_page(api, accounts):
    page = (await api.call("ListOrders", {}, accounts["acme"])).expect_ok()
    assert (page["total"], page["page"], page["pageSize"], page["totalPage"], page["items"]) == (
        0,
        1,
        10,
        0,
        [],
    )


async def test_list_orders_filters_by_transaction_id_and_client_order_number(api, accounts):
    acme = accounts["acme"]
    first = await place(api, acme, clientOrderNumber="a")
    await place(api, acme, clientOrderNumber="b")
    await place(api, acme, clientOrderNumber="a")

    by_id = (
        await api.call("ListOrders", {"transactionId": first["transactionId"]}, acme)
    ).expect_ok()
    by_number = (await api.call("ListOrders", {"clientOrderNumber": "a"}, acme)).expect_ok()

    assert [o["transactionId"] for o in by_id["items"]] == [first["transactionId"]]
    assert by_id["items"][0]["status"] == "COMPLETED"
    assert by_number["total"] == 2


@pytest.mark.parametrize("fields", [{"limit": 101}, {"limit": -1}, {"page": -2}])
async def test_list_orders_rejects_out_of_range_paging(api, accounts, fields):
    (await api.call("ListOrders", fields, accounts["acme"])).expect_error("INVALID_REQUEST", 400)


async def test_codes_of_a_completed_order(api, accounts):
    acme = accounts["acme"]
    order = await place(api, acme)

    codes = (
        await api.call("GetCodes", {"transactionId": order["transactionId"]}, acme)
    ).expect_ok()

    assert len(codes) == 1
    assert codes[0]["sku"] == "8PX-UF-Y5U"
    assert codes[0]["quantity"] == 1
    (code,) = codes[0]["codes"]
    assert code["status"] == "COMPLETED"
    assert code["redeemCode"] == "STEAM-0001"
    assert code["pinCode"] == "0042"  # a string: the leading zero survives
    assert code["stockId"] == 1


async def test_codes_of_a_processing_order_have_no_code_yet(api, accounts):
    acme = accounts["acme"]
    await place(api, acme, "TTR-WI-YWN", payWithCurrency="USD")  # takes the only code
    order = await place(api, acme, "TTR-WI-YWN", payWithCurrency="USD")

    codes = (
        await api.call("GetCodes", {"transactionId": order["transactionId"]}, acme)
    ).expect_ok()

    (code,) = codes[0]["codes"]
    assert code["status"] == "PROCESSING"
    assert code["stockId"] == 1
    assert code.get("redeemCode") is None
    assert code.get("pinCode") is None


async def test_codes_filter_by_sku_and_stock_ids(api, accounts):
    acme = accounts["acme"]
    await place(api, accounts["globex"])  # an order that holds a lower orders.id
    tx = (await place(api, acme))["transactionId"]

    other_sku = await api.call("GetCodes", {"transactionId": tx, "sku": "TTR-WI-YWN"}, acme)
    other_stock = await api.call("GetCodes", {"transactionId": tx, "stockIds": [2]}, acme)
    same_stock = await api.call("GetCodes", {"transactionId": tx, "stockIds": [1, 2]}, acme)

    assert other_sku.expect_ok() == []
    assert other_stock.expect_ok()[0]["codes"] == []
    assert [c["stockId"] for c in same_stock.expect_ok()[0]["codes"]] == [1]


async def test_stock_ids_number_units_within_their_order_not_all_orders(
    api, accounts, store, database
):
    """stockId 1 for each account's order, waiting or completed: never the global
    order number, which would tell one customer how many orders the others place."""
    acme, globex = accounts["acme"], accounts["globex"]
    waiting = [
        (await place(api, account, "TTR-WI-YWN", payWithCurrency="USD"))["transactionId"]
        for account in (acme, globex, acme)  # the first takes the only code
    ]
    assert one(database, "SELECT max(id) FROM orders") == 3

    async def stock_ids(account, tx):
        reply = await api.call("GetCodes", {"transactionId": tx}, account)
        return [(c["stockId"], c["status"]) for c in reply.expect_ok()[0]["codes"]]

    owners = (acme, globex, acme)
    before = [await stock_ids(account, tx) for account, tx in zip(owners, waiting, strict=True)]
    await store.add_codes([NewCode("TTR-WI-YWN", f"PLAY-100{n}", None) for n in (1, 2)], utc_now())
    assert await make_fulfiller(store).run_once() == 2
    after = [await stock_ids(account, tx) for account, tx in zip(owners, waiting, strict=True)]

    assert before == [[(1, "COMPLETED")], [(1, "PROCESSING")], [(1, "PROCESSING")]]
    assert after == [[(1, "COMPLETED")]] * 3


async def test_balances_and_currency_filter(api, accounts):
    globex = accounts["globex"]

    every = (await api.call("GetBalances", {}, globex)).expect_ok()
    euro = (await api.call("GetBalances", {"currency": "EUR"}, globex)).expect_ok()

    assert every == [
        {"balance": "20.00", "currency": "EUR"},
        {"balance": "50.00", "currency": "USD"},
    ]
    assert euro == [{"balance": "20.00", "currency": "EUR"}]
    bad = await api.call("GetBalances", {"currency": "EURO"}, globex)
    bad.expect_error("INVALID_REQUEST", 400)


async def test_products_page_and_sku_list(api, accounts):
    acme = accounts["acme"]

    everything = (await api.call("ListProducts", {}, acme)).expect_ok()
    two = (
        await api.call("ListProducts", {"sku": ["8PX-UF-Y5U", "TTR-WI-YWN"], "limit": 1}, acme)
    ).expect_ok()

    assert everything["total"] == 4
    assert everything["pageSize"] == 1000
    assert (two["total"], two["totalPage"], len(two["items"])) == (2, 2, 1)
    steam = next(p for p in everything["items"] if p["sku"] == "8PX-UF-Y5U")
    assert steam["currency"] == "USD"
    assert steam["faceValue"] == "10.00"
    assert steam["percentageOffFaceValue"] == "2.50"
    assert steam["isInstantDeliverySupported"] is True
    assert steam["prices"] == [{"price": "9.75", "fromQuantity": 1}]
    xbox = next(p for p in everything["items"] if p["sku"] == "ELX-BF-85S")
    assert xbox["isInstantDeliverySupported"] is False


async def test_exchange_rates_filters(api, accounts):
    acme = accounts["acme"]

    every = (await api.call("GetExchangeRates", {}, acme)).expect_ok()
    by_pair = (await api.call("GetExchangeRates", {"pairs": ["USDCAD"]}, acme)).expect_ok()
    by_base = (await api.call("GetExchangeRates", {"base": "EUR"}, acme)).expect_ok()

    assert every["rates"] == [
        {"pair": "EURUSD", "base": "EUR", "quote": "USD", "rate": "1.1829"},
        {"pair": "USDCAD", "base": "USD", "quote": "CAD", "rate": "1.4102"},
    ]
    assert every["productCurrencies"] == ["EUR", "GBP", "JPY", "USD"]
    assert every["updatedAt"].endswith("Z")
    assert [r["pair"] for r in by_pair["rates"]] == ["USDCAD"]
    assert [r["pair"] for r in by_base["rates"]] == ["EURUSD"]
    bad = await api.call("GetExchangeRates", {"pairs": ["USD-CAD"]}, acme)
    bad.expect_error("INVALID_REQUEST", 400)
