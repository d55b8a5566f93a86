"""/metrics: the ecosystem's names, counters that move by exactly what happened, and
no identifier in any label."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from server.domain.clock import utc_now
from server.domain.ports import NewCode
from server.runtime import refresh_stock_gauges
from tests.metrics import moved, scrape, value

ORDER = "CreateInstantOrder"


async def test_three_orders_and_a_refusal_move_each_counter_by_exactly_that(
    http, api, accounts, database, backend
):
    acme = accounts["acme"]
    before, _ = await scrape(http)
    placed = [
        await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, acme),  # in stock: two codes
        await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, acme),
        await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, acme),  # none left: waits
    ]
    refused = await api.call(ORDER, {"sku": "NO-SUCH-SKU"}, acme)
    after, families = await scrape(http)

    assert [answer.data["status"] for answer in placed] == ["COMPLETED", "COMPLETED", "PROCESSING"]
    refused.expect_error("PRODUCT_NOT_FOUND", 404)
    orders = "instant_orders_orders_total"
    assert moved(before, after, orders, kind="instant", outcome="completed") == 2
    assert moved(before, after, orders, kind="instant", outcome="processing") == 1
    assert moved(before, after, orders, kind="instant", outcome="PRODUCT_NOT_FOUND") == 1
    rpc = {"grpc_type": "unary", "grpc_service": "instantorders.v2.OrdersService",
           "grpc_method": ORDER}  # fmt: skip
    assert moved(before, after, "grpc_server_started_total", **rpc) == 4
    assert moved(before, after, "grpc_server_handled_total", **rpc, grpc_code="OK") == 3
    assert moved(before, after, "grpc_server_handled_total", **rpc, grpc_code="NOT_FOUND") == 1
    assert moved(before, after, "grpc_server_handling_seconds_count", **rpc) == 4
    if api.transport == "rest":
        route = {"method": "POST", "route": "/v2/orders/instant"}
        assert moved(before, after, "http_server_requests_total", **route, status="200") == 3
        assert moved(before, after, "http_server_requests_total", **route, status="404") == 1
        assert moved(before, after, "http_server_request_duration_seconds_count", **route) == 4
    transactions = "instant_orders_db_transaction_seconds_count"
    operation = {"backend": backend, "operation": "place_instant_order"}
    assert moved(before, after, transactions, **operation) == 4
    if backend == "sqlite":  # group commit
        assert moved(before, after, "instant_orders_write_batch_size_count") >= 1

    buckets = {s.name for f in families if f.type == "histogram" for s in f.samples}
    assert {"grpc_server_handling_seconds_bucket", "instant_orders_db_transaction_seconds_bucket",
            "http_server_request_duration_seconds_bucket"} <= buckets  # fmt: skip
    identifiers = [acme.api_key, str(acme.account_id) + "-", "STEAM-000"]
    identifiers += [answer.data["transactionId"] for answer in placed]
    assert_no_label_holds(families, identifiers)


async def test_stock_and_backlog_are_gauges_of_the_database(http, api, accounts, store):
    acme = accounts["acme"]
    for _ in range(3):  # two take the codes, one waits
        await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, acme)
    await store.add_codes([NewCode("TTR-WI-YWN", "PLAY-0009", None)], utc_now())

    await refresh_stock_gauges(store)
    samples, _ = await scrape(http)

    assert value(samples, "instant_orders_stock_units", sku="8PX-UF-Y5U") == 0
    assert value(samples, "instant_orders_stock_units", sku="TTR-WI-YWN") == 2
    assert value(samples, "instant_orders_backlog_units") == 1
    assert value(samples, "instant_orders_backlog_oldest_age_seconds") >= 0


def assert_no_label_holds(families: Iterable[Any], identifiers: list[str]) -> None:
    """No label value is an id of an order, an account, a key or a code."""
    hexadecimal_id = re.compile(r"^[0-9a-f]{32}$")
    for family in families:
        for sample in family.samples:
            for name, label in sample.labels.items():
                assert not hexadecimal_id.match(label), (sample.name, name, label)
                assert not any(i in label for i in identifiers), (sample.name, name, label)
