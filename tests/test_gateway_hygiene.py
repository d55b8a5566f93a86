"""The gateway's HTTP hygiene: undecodable bodies, response headers, size limits
aligned with the gRPC server's, and timeouts for reading a request (real sockets)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from instantorders.v2 import orders_pb2, orders_pb2_grpc

from gateway.app import MAX_BODY_BYTES, GatewaySettings, start_gateway
from server.rpc.app import MAX_MESSAGE_BYTES
from tests.api import ROUTES

TOKEN_PATH = "/v2/auth/token"
ORDERS = "/v2/orders/instant"
FORM = "application/x-www-form-urlencoded"


# Finding 3: every undecodable or unparsable body is a 400 with the JSON error body.


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"grant_type=client_credentials&client_id=\xff", FORM),
        (b"grant_type=client_credentials&client_id=%ff&client_secret=sk_x", FORM),
        (b"grant_type=client_credentials", f"{FORM}; charset=no-such-charset"),
        (b"grant_type=client_credentials", f"{FORM}; charset=base64"),  # not a text encoding
        (b"grant_type=\xff\xfe", f"{FORM}; charset=utf-16"),  # an odd number of bytes
        (b'{"grant_type": "\xff"}', "application/json"),
        (b'{"grant_type": ', "application/json"),
    ],
    ids=["raw-byte", "escaped-byte", "unknown-charset", "binary-codec", "utf-16", "json-byte",
         "json-truncated"],
)  # fmt: skip
async def test_an_undecodable_token_request_is_400_invalid_request_without_a_traceback(
    http, caplog, raw, content_type
):
    caplog.set_level(logging.INFO)

    response = await http.post(TOKEN_PATH, data=raw, headers={"Content-Type": content_type})

    assert response.status == 400
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["error"] == "invalid_request", body
    assert body["message"] and body["requestId"] == response.headers["X-Request-Id"]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


# Finding 4: no-store, nosniff and a Server header without versions, on every response.


def assert_hygienic_headers(response, what: str) -> None:
    headers = response.headers
    assert headers.get("Cache-Control") == "no-store", what
    assert headers.get("X-Content-Type-Options") == "nosniff", what
    assert_no_server_version(headers.get("Server", ""), what)


def assert_no_server_version(server: str, what: str) -> None:
    assert not any(ch.isdigit() for ch in server), f"{what}: Server: {server}"
    assert "aiohttp" not in server.lower() and "python" not in server.lower(), what


async def test_codes_tokens_and_errors_are_not_stored_nor_sniffed(http, accounts):
    acme = accounts["acme"]
    form = {"grant_type": "client_credentials", "client_id": acme.api_key,
            "client_secret": acme.api_secret}  # fmt: skip
    order = await http.post(ORDERS, json={"sku": "8PX-UF-Y5U"}, headers=acme.headers())
    transaction_id = (await order.json())["data"]["transactionId"]
    codes_path = ROUTES["GetCodes"].path.replace("{transactionId}", transaction_id)
    responses = {
        "token": await http.post(TOKEN_PATH, data=form),
        "token refused": await http.post(TOKEN_PATH, data={**form, "client_secret": "sk_x"}),
        "order": order,
        "codes": await http.get(codes_path, headers=acme.headers()),
        "codes of no order": await http.get("/v2/orders/nothing/codes", headers=acme.headers()),
        "codes unauthenticated": await http.get(codes_path),
        "no route": await http.get("/v2/nothing-here"),
        "openapi": await http.get("/openapi.json"),
    }
    assert responses["codes"].status == 200 and responses["token"].status == 200
    for what, response in responses.items():
        assert_hygienic_headers(response, what)


async def test_a_request_the_http_parser_refuses_names_no_server_version(http):
    reader, writer = await asyncio.open_connection("127.0.0.1", http.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nBad\x00Header: 1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    finally:
        writer.close()
    assert head.split(b" ")[1] == b"400", head
    servers = [line for line in head.decode().split("\r\n") if line.lower().startswith("server:")]
    for line in servers:
        assert_no_server_version(line, "parser refusal")


# Finding 5: a request too large for the gRPC server is 413 over REST, never 429.


def test_the_gateway_accepts_no_body_the_grpc_server_would_refuse_for_size():
    assert MAX_BODY_BYTES <= MAX_MESSAGE_BYTES


async def test_a_20_kib_body_is_413_payload_too_large(http, accounts):
    raw = json.dumps({"sku": "8PX-UF-Y5U", "clientOrderNumber": "x" * 20 * 1024})
    headers = {**accounts["acme"].headers(), "Content-Type": "application/json"}

    response = await http.post(ORDERS, data=raw, headers=headers)

    assert response.status == 413
    assert (await response.json())["error"] == "PAYLOAD_TOO_LARGE"
    assert "Retry-After" not in response.headers


async def test_a_message_over_the_grpc_limit_is_413_never_a_rate_limit(http, accounts):
    """A body under the gateway's cap whose message, with the Idempotency-Key, is
    over the gRPC server's: the server refuses it for size, the client gets 413."""
    raw = json.dumps({"sku": "8PX-UF-Y5U", "clientOrderNumber": "x" * (MAX_BODY_BYTES - 1000)})
    headers = {**accounts["acme"].headers(), "Idempotency-Key": "k" * 4000,
               "Content-Type": "application/json"}  # fmt: skip

    response = await http.post(ORDERS, data=raw, headers=headers)

    assert response.status == 413, await response.text()
    assert (await response.json())["error"] == "PAYLOAD_TOO_LARGE"
    assert "Retry-After" not in response.headers


async def test_over_grpc_an_oversized_message_is_grpcs_own_resource_exhausted(channel, accounts):
    stub = orders_pb2_grpc.OrdersServiceStub(channel)
    request = orders_pb2.CreateInstantOrderRequest(
        sku="8PX-UF-Y5U", client_order_number="x" * 20 * 1024
    )
    metadata = [(k.lower(), v) for k, v in accounts["acme"].headers().items()]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateInstantOrder(request, metadata=metadata)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# Finding 6: a request must arrive in time; idle connections are closed.

HEAD_TIMEOUT = 0.5
BODY_TIMEOUT = 0.5
#: How long past a timeout a test waits for the close before it fails.
SLACK = 4.0


@pytest.fixture
async def gateway_port() -> AsyncIterator[int]:
    """The gateway as it runs in production (start_gateway), with short read timeouts;
    no gRPC server behind it: these requests never reach one."""
    settings = GatewaySettings(
        upstream="127.0.0.1:1",
        http_listen="127.0.0.1:0",
        request_head_timeout_seconds=HEAD_TIMEOUT,
        request_body_timeout_seconds=BODY_TIMEOUT,
    )
    runner, port, channel = await start_gateway(settings)
    try:
        yield port
    finally:
        await runner.cleanup()
        await channel.close()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the gateway sends until it closes (a reset, when it closes with our
    bytes unread, is a close too); fails if it has not closed by then."""
    try:
        return await asyncio.wait_for(reader.read(), timeout=seconds)
    except ConnectionResetError:
        return b""


async def test_a_connection_that_sends_half_a_request_head_is_closed(gateway_port):
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
    started = time.monotonic()
    writer.write(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n")  # no blank line: never complete
    try:
        await closed_within(reader, HEAD_TIMEOUT + SLACK)
    finally:
        writer.close()
    assert time.monotonic() - started >= HEAD_TIMEOUT * 0.9


async def test_a_request_head_sent_a_byte_at_a_time_is_closed_at_the_deadline(gateway_port):
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
    head = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 4000

    async def drip() -> None:
        for byte in head:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.02)

    dripping = asyncio.create_task(drip())
    try:
        await closed_within(reader, HEAD_TIMEOUT + SLACK)
        assert not dripping.done(), "the head must not have been complete"
    finally:
        dripping.cancel()
        writer.close()


async def test_a_stalled_body_is_408_and_the_connection_closed(gateway_port):
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
    writer.write(
        f"POST {TOKEN_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM}\r\n"
        "Content-Length: 100\r\n\r\ngrant_type=".encode()
    )
    try:
        answer = await closed_within(reader, BODY_TIMEOUT + SLACK)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(body)["error"] == "REQUEST_TIMEOUT"


async def test_an_idle_keep_alive_connection_is_closed(gateway_port):
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port)
    writer.write(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        assert head.startswith(b"HTTP/1.1 200")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )  # fmt: skip
        await reader.readexactly(length)
        assert await closed_within(reader, HEAD_TIMEOUT + SLACK) == b""
    finally:
        writer.close()
