"""The REST gateway's own duties: strict input, error bodies, limits, health, faults."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import GatewaySettings, create_app
from tests.helpers import snapshot
from tests.processes import unused_port

ORDERS = "/v2/orders/instant"


async def post_order(http, account, raw: bytes | str, content_type="application/json"):
    headers = {**account.headers(), "Content-Type": content_type}
    return await http.post(ORDERS, data=raw, headers=headers)


async def assert_error(response, status: int, reason: str) -> dict[str, Any]:
    assert response.status == status
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["error"] == reason
    assert body["message"]
    assert body["requestId"] == response.headers["X-Request-Id"]
    return body


@pytest.mark.parametrize(
    "raw",
    [
        '{"sku": "8PX-UF-Y5U", "payWithCurency": "USD"}',  # a typo must not settle in USD
        '{"sku": 123}',
        '{"sku": "8PX-UF-Y5U", "enableClientOrderNumberDupCheck": "yes"}',
        '{"sku": "8PX-UF-Y5U"',
        "not json",
        '["8PX-UF-Y5U"]',
        '{"sku": "8PX-UF-Y5U", "sku": "TTR-WI-YWN"}',
        '{"sku": "8PX-UF-Y5U", "clientOrderNumber": NaN}',
        '{"sku": "8PX-UF-Y5U", "clientOrderNumber": 1e999}',
        '{"sku": {"nested": [1, 2, 3]}}',
    ],
    ids=[
        "unknown-field", "wrong-type", "bool-as-string", "truncated", "not-json", "array",
        "duplicate-key", "nan", "huge-number", "object-for-string",
    ],
)  # fmt: skip
async def test_malformed_bodies_are_400_and_change_nothing(http, accounts, database, raw):
    before = snapshot(database)

    response = await post_order(http, accounts["acme"], raw)

    body = await assert_error(response, 400, "INVALID_REQUEST")
    assert snapshot(database) == before
    for internal in ("instantorders", "Message type", "Request"):  # the API's terms only
        assert internal not in body["message"], body["message"]


async def test_an_unknown_field_is_named_with_the_fields_expected(http, accounts):
    raw = '{"sku": "8PX-UF-Y5U", "payWithCurency": "USD"}'
    body = await assert_error(await post_order(http, accounts["acme"], raw), 400, "INVALID_REQUEST")
    assert body["field"] == "payWithCurency"
    assert "payWithCurrency" in body["message"]


async def test_unknown_query_parameter_is_400(http, accounts):
    response = await http.get("/v2/orders?transactionID=abc", headers=accounts["acme"].headers())
    body = await assert_error(response, 400, "INVALID_REQUEST")
    assert body["parameter"] == "transactionID"


async def test_repeated_single_valued_query_parameter_is_400(http, accounts):
    response = await http.get("/v2/orders?page=1&page=2", headers=accounts["acme"].headers())
    await assert_error(response, 400, "INVALID_REQUEST")


async def test_non_integer_query_parameter_is_400(http, accounts):
    response = await http.get("/v2/orders?limit=ten", headers=accounts["acme"].headers())
    await assert_error(response, 400, "INVALID_REQUEST")


async def test_body_over_64_kib_is_413(http, accounts, database):
    before = snapshot(database)
    raw = '{"sku": "8PX-UF-Y5U", "clientOrderNumber": "' + "x" * 70_000 + '"}'

    response = await post_order(http, accounts["acme"], raw)

    await assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert snapshot(database) == before


async def test_unknown_route_and_wrong_method_answer_json(http, accounts):
    await assert_error(await http.get("/v2/nothing-here"), 404, "NOT_FOUND")
    await assert_error(await http.delete("/v2/balances"), 405, "METHOD_NOT_ALLOWED")


async def test_client_request_id_is_kept_and_forwarded(http, accounts):
    headers = {**accounts["acme"].headers(), "X-Request-Id": "trace-42"}
    response = await http.get("/v2/balances", headers=headers)
    assert response.headers["X-Request-Id"] == "trace-42"
    assert (await response.json())["requestId"] == "trace-42"


async def test_healthz_reports_the_grpc_server(http):
    response = await http.get("/healthz")
    assert response.status == 200
    assert (await response.json())["status"] == "SERVING"


async def test_unreachable_grpc_server_is_503_with_json_body(accounts):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{unused_port()}") as channel:
        app = create_app(channel, GatewaySettings(rpc_timeout_seconds=2))
        async with TestClient(TestServer(app)) as http:
            response = await http.get("/v2/balances", headers=accounts["acme"].headers())
            await assert_error(response, 503, "UNAVAILABLE")
            assert response.headers["Retry-After"] == "1"
            health = await http.get("/healthz")
            assert health.status == 503
