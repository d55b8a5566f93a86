"""Hostile and broken input, over REST and over gRPC alike: a 4xx with the error
body, and nothing written. (Broken JSON itself is in test_gateway.py.)"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from instantorders.v2 import orders_pb2

from tests.api import ROUTES, error_reason
from tests.helpers import snapshot

ORDER = "CreateInstantOrder"
TEN_KB = "A" * 10_240

HOSTILE_FIELDS = {
    "control-char-in-sku": {"sku": "8PX-UF-Y5U\x00"},
    "newline-in-sku": {"sku": "8PX-UF-Y5U\n"},
    "escape-in-number": {"sku": "8PX-UF-Y5U", "clientOrderNumber": "po-\x1b[31m-1"},
    "10kb-sku": {"sku": TEN_KB},
    "10kb-number": {"sku": "8PX-UF-Y5U", "clientOrderNumber": TEN_KB},
    "lowercase-currency": {"sku": "8PX-UF-Y5U", "payWithCurrency": "usd"},
    "short-currency": {"sku": "8PX-UF-Y5U", "payWithCurrency": "US"},
    "symbol-currency": {"sku": "8PX-UF-Y5U", "payWithCurrency": "U$D"},
    "long-currency": {"sku": "8PX-UF-Y5U", "payWithCurrency": "USDOLLAR"},
    "10kb-currency": {"sku": "8PX-UF-Y5U", "payWithCurrency": TEN_KB},
    "empty-sku": {"sku": ""},
}


@pytest.mark.parametrize("fields", HOSTILE_FIELDS.values(), ids=HOSTILE_FIELDS.keys())
async def test_hostile_order_fields_are_a_4xx_and_write_nothing(api, accounts, database, fields):
    before = snapshot(database)

    reply = await api.call(ORDER, fields, accounts["acme"])

    assert not reply.ok
    assert reply.error["error"] in ("INVALID_REQUEST", "UNSUPPORTED_CURRENCY"), reply.error
    if api.transport == "rest":
        assert 400 <= reply.status < 500
    assert TEN_KB not in str(reply.error), "the answer must not echo 10 KB back"
    assert snapshot(database) == before


@pytest.mark.parametrize("rpc", ["GetOrder", "GetCodes", "ListOrders"])
async def test_hostile_lookups_are_a_4xx(api, accounts, rpc):
    fields = {"transactionId": "\x00" + TEN_KB}
    reply = await api.call(rpc, fields, accounts["acme"])
    assert not reply.ok and reply.error["error"] == "INVALID_REQUEST", reply.error


async def test_huge_integers_in_query_parameters_are_400(http, accounts):
    for query in ("limit=99999999999999999999", "page=-1", "limit=1e3", "page=%00"):
        response = await http.get(f"/v2/orders?{query}", headers=accounts["acme"].headers())
        assert response.status == 400, query
        assert (await response.json())["error"] == "INVALID_REQUEST"


async def test_missing_and_duplicated_auth_headers_are_401_over_rest(http, accounts, database):
    acme, globex = accounts["acme"], accounts["globex"]
    before = snapshot(database)
    body = {"sku": "8PX-UF-Y5U"}
    variants = {
        "no headers": [],
        "no token": [("x-api-key", acme.api_key)],
        "no key": [("Authorization", f"Bearer {acme.token}")],
        "two keys": [*acme.headers().items(), ("x-api-key", globex.api_key)],
        "two tokens": [*acme.headers().items(), ("Authorization", f"Bearer {globex.token}")],
        "same key twice": [*acme.headers().items(), ("x-api-key", acme.api_key)],
        "not bearer": [("x-api-key", acme.api_key), ("Authorization", f"Basic {acme.token}")],
    }
    for name, headers in variants.items():
        response = await http.post("/v2/orders/instant", json=body, headers=headers)
        assert response.status in (400, 401), name
        assert (await response.json())["error"] in ("INVALID_REQUEST", "UNAUTHENTICATED"), name
    assert snapshot(database) == before


async def test_missing_and_duplicated_auth_metadata_are_unauthenticated_over_grpc(
    channel, accounts, database
):
    acme, globex = accounts["acme"], accounts["globex"]
    before = snapshot(database)
    route = ROUTES[ORDER]
    call = channel.unary_unary(
        route.rpc_path,
        request_serializer=route.request_type.SerializeToString,
        response_deserializer=route.response_type.FromString,
    )
    key, token = ("x-api-key", acme.api_key), ("authorization", f"Bearer {acme.token}")
    variants = {
        "none": [],
        "no token": [key],
        "no key": [token],
        "two keys": [key, token, ("x-api-key", globex.api_key)],
        "two tokens": [key, token, ("authorization", f"Bearer {globex.token}")],
    }
    for name, metadata in variants.items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(orders_pb2.CreateInstantOrderRequest(sku="8PX-UF-Y5U"),
                       metadata=metadata, timeout=10)  # fmt: skip
        assert refused.value.code() in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.INVALID_ARGUMENT,
        ), name
        assert error_reason(refused.value) in ("UNAUTHENTICATED", "INVALID_REQUEST"), name
    assert snapshot(database) == before


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x1a\x05ab", b"\x0a\xff\xff\xff\xff\x0f"])
@pytest.mark.parametrize("rpc", [ORDER, "WatchOrder"])
async def test_bytes_that_are_no_message_are_invalid_argument_not_unknown(
    channel, accounts, database, rpc, payload
):
    before = snapshot(database)
    metadata = [(k.lower(), v) for k, v in accounts["acme"].headers().items()]
    route = ROUTES[rpc]
    if route.server_streaming:
        call: Any = channel.unary_stream(route.rpc_path)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in call(payload, metadata=metadata, timeout=10):
                pass
    else:
        call = channel.unary_unary(route.rpc_path)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(payload, metadata=metadata, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(refused.value) == "INVALID_REQUEST"
    assert "DecodeError" not in (refused.value.details() or "")
    assert snapshot(database) == before


@pytest.mark.parametrize("fields", [{"limit": -1}, {"limit": 2**31 - 1}, {"page": -5}])
async def test_out_of_range_numbers_are_invalid_request(api, accounts, fields):
    reply = await api.call("ListOrders", fields, accounts["acme"])
    assert not reply.ok and reply.error["error"] == "INVALID_REQUEST", reply.error
