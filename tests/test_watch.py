"""WatchOrder over gRPC and as Server-Sent Events: changes pushed, errors, heartbeats, exits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, cast

import aiohttp
import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer
from instantorders.v2 import orders_pb2, orders_pb2_grpc

from gateway.app import GatewaySettings, create_app, start_gateway
from server.domain.clock import utc_now
from server.domain.models import Order
from server.domain.ports import NewCode, Store
from server.domain.service import InstantOrdersService
from tests.helpers import make_fulfiller, open_store, signing_key
from tests.processes import eventually

SKU = "TTR-WI-YWN"  # one code in stock


async def waiting_order(http, account) -> str:
    """The transaction id of an order that found no stock."""
    for _ in range(2):
        response = await http.post(
            "/v2/orders/instant",
            json={"sku": SKU, "payWithCurrency": "USD"},
            headers=account.headers(),
        )
        order = (await response.json())["data"]
    assert order["status"] == "PROCESSING"
    return str(order["transactionId"])


async def restock(store: Store) -> None:
    await store.add_codes([NewCode(SKU, "PLAY-0002", None)], utc_now())


def metadata(account) -> list[tuple[str, str]]:
    return [(key.lower(), value) for key, value in account.headers().items()]


async def next_event(response: aiohttp.ClientResponse) -> tuple[str, Any]:
    """The next event of a text/event-stream: ("message" or its event name, data), or
    ("heartbeat", None) for a comment line."""
    name = "message"
    while True:
        line = (await response.content.readline()).decode()
        if line == "":
            return "end", None
        if line.startswith(":"):
            await response.content.readline()  # the blank line after it
            return "heartbeat", None
        if line.startswith("event: "):
            name = line.removeprefix("event: ").strip()
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
            assert await response.content.readline() == b"\n"
            return name, data


async def test_grpc_watch_sends_processing_then_completed_on_restock(
    http, channel, accounts, store, fulfilling
):
    acme = accounts["acme"]
    transaction_id = await waiting_order(http, acme)
    stub = orders_pb2_grpc.OrdersServiceStub(channel)
    call = stub.WatchOrder(
        orders_pb2.WatchOrderRequest(transaction_id=transaction_id),
        metadata=metadata(acme),
        timeout=10,
    )

    first = await call.read()
    assert first.status == orders_pb2.PROCESSING
    await restock(store)
    second = await call.read()
    assert second.status == orders_pb2.COMPLETED
    assert second.products[0].status == orders_pb2.COMPLETED
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_event_stream_sends_processing_then_completed_on_restock(
    http, accounts, store, fulfilling
):
    acme = accounts["acme"]
    transaction_id = await waiting_order(http, acme)

    response = await http.get(f"/v2/orders/{transaction_id}/events", headers=acme.headers())
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    request_id = response.headers["X-Request-Id"]

    name, first = await next_event(response)
    assert (name, first["requestId"]) == ("message", request_id)
    assert first["data"]["transactionId"] == transaction_id
    assert first["data"]["status"] == "PROCESSING"
    await restock(store)
    name, second = await next_event(response)
    assert (name, second["data"]["status"]) == ("message", "COMPLETED")
    assert second["data"]["products"][0]["status"] == "COMPLETED"
    assert await next_event(response) == ("end", None)


async def test_watching_a_final_order_sends_it_once_and_ends(http, accounts):
    acme = accounts["acme"]
    response = await http.post("/v2/orders/instant", json={"sku": SKU}, headers=acme.headers())
    response = await http.post(
        "/v2/orders/instant", json={"sku": "8PX-UF-Y5U"}, headers=acme.headers()
    )
    transaction_id = (await response.json())["data"]["transactionId"]

    events = await http.get(f"/v2/orders/{transaction_id}/events", headers=acme.headers())
    name, order = await next_event(events)
    assert (name, order["data"]["status"]) == ("message", "COMPLETED")
    assert await next_event(events) == ("end", None)


async def test_watching_another_accounts_order_is_not_found_like_a_missing_one(
    http, channel, accounts
):
    transaction_id = await waiting_order(http, accounts["acme"])
    globex = accounts["globex"]
    bodies = []
    for target in (transaction_id, "0" * 32):
        response = await http.get(f"/v2/orders/{target}/events", headers=globex.headers())
        assert (response.status, response.content_type) == (404, "application/json")
        body = await response.json()
        bodies.append({key: value for key, value in body.items() if key != "requestId"})
        assert body["error"] == "ORDER_NOT_FOUND"
    assert bodies[0] == {
        **bodies[1],
        "transactionId": transaction_id,
        "message": bodies[0]["message"],
    }

    stub = orders_pb2_grpc.OrdersServiceStub(channel)
    call = stub.WatchOrder(
        orders_pb2.WatchOrderRequest(transaction_id=transaction_id), metadata=metadata(globex)
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watching_needs_authentication(http, channel, accounts):
    transaction_id = await waiting_order(http, accounts["acme"])
    response = await http.get(f"/v2/orders/{transaction_id}/events")
    assert response.status == 401
    assert (await response.json())["error"] == "UNAUTHENTICATED"

    stub = orders_pb2_grpc.OrdersServiceStub(channel)
    call = stub.WatchOrder(orders_pb2.WatchOrderRequest(transaction_id=transaction_id))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_quiet_event_stream_sends_heartbeats(channel, accounts):
    app = create_app(channel, GatewaySettings(sse_heartbeat_seconds=0.05))
    async with TestClient(TestServer(app)) as http:
        acme = accounts["acme"]
        transaction_id = await waiting_order(http, acme)
        response = await http.get(f"/v2/orders/{transaction_id}/events", headers=acme.headers())
        assert (await next_event(response))[0] == "message"
        assert await next_event(response) == ("heartbeat", None)
        assert await next_event(response) == ("heartbeat", None)


async def test_a_client_that_leaves_costs_the_server_nothing_further(
    grpc_port, channel, service, accounts
):
    """Through the gateway as it runs in production (start_gateway), and over gRPC."""
    runner, port, gateway_channel = await start_gateway(
        GatewaySettings(upstream=f"127.0.0.1:{grpc_port}", http_listen="127.0.0.1:0")
    )
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            acme = accounts["acme"]
            transaction_id = await waiting_order(http, acme)
            response = await http.get(f"/v2/orders/{transaction_id}/events", headers=acme.headers())
            assert (await next_event(response))[0] == "message"
            assert service.updates.watcher_count == 1
            response.close()  # the client goes away

            async def no_watchers() -> bool:
                return service.updates.watcher_count == 0

            await eventually(no_watchers, timeout=5)

            stub = orders_pb2_grpc.OrdersServiceStub(channel)
            call = stub.WatchOrder(
                orders_pb2.WatchOrderRequest(transaction_id=transaction_id),
                metadata=metadata(acme),
            )
            await call.read()
            assert service.updates.watcher_count == 1
            call.cancel()
            await eventually(no_watchers, timeout=5)
    finally:
        await runner.cleanup()
        await gateway_channel.close()


async def test_a_change_made_by_another_process_reaches_the_watcher(
    http, accounts, store, service, database
):
    """No fulfiller in this process: a second connection (as a separate worker would)
    completes the order, and the watchers' poller notices."""
    poller = asyncio.create_task(service.updates.run())
    try:
        acme = accounts["acme"]
        transaction_id = await waiting_order(http, acme)
        response = await http.get(f"/v2/orders/{transaction_id}/events", headers=acme.headers())
        assert (await next_event(response))[1]["data"]["status"] == "PROCESSING"

        worker_store = await open_store(database)
        try:
            await restock(worker_store)
            assert await make_fulfiller(worker_store).run_once() == 1
        finally:
            await worker_store.close()
        name, order = await asyncio.wait_for(next_event(response), timeout=5)
        assert (name, order["data"]["status"]) == ("message", "COMPLETED")
    finally:
        poller.cancel()


class CompletingAfterRead:
    """The store, except that the first read of an order is followed, before its
    answer arrives, by the order's completion in this process: a change that
    falls between a watcher's first read and the start of its watch."""

    def __init__(self, store: Store, complete: Callable[[], Awaitable[object]]) -> None:
        self._store = store
        self._complete = complete
        self._completed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def get_order(self, account_id: int, transaction_id: str) -> Order | None:
        order = await self._store.get_order(account_id, transaction_id)
        if not self._completed:
            self._completed = True
            await self._complete()
        return order


async def test_a_change_right_after_the_first_read_reaches_the_watcher_at_once(
    http, accounts, store, database
):
    """No poller runs: only the fulfiller's notice can wake the watcher, so the watch
    must have started before the order was first read."""
    acme = accounts["acme"]
    transaction_id = await waiting_order(http, acme)

    async def complete() -> None:
        await restock(store)
        assert await make_fulfiller(store, service).run_once() == 1

    wrapped = cast(Store, CompletingAfterRead(store, complete))
    service = InstantOrdersService(wrapped, signing_key(database), timedelta(hours=1))
    caller = await service.authenticate(acme.api_key, f"Bearer {acme.token}", "")

    async def statuses() -> list[str]:
        return [order.status.value async for order in service.watch_order(caller, transaction_id)]

    assert await asyncio.wait_for(statuses(), timeout=5) == ["PROCESSING", "COMPLETED"]


async def test_a_stopping_server_ends_watches_with_unavailable(http, channel, accounts, service):
    acme = accounts["acme"]
    transaction_id = await waiting_order(http, acme)
    response = await http.get(f"/v2/orders/{transaction_id}/events", headers=acme.headers())
    assert (await next_event(response))[0] == "message"
    stub = orders_pb2_grpc.OrdersServiceStub(channel)
    call = stub.WatchOrder(
        orders_pb2.WatchOrderRequest(transaction_id=transaction_id), metadata=metadata(acme)
    )
    await call.read()

    service.updates.close()

    name, error = await next_event(response)
    assert (name, error["error"]) == ("error", "UNAVAILABLE")
    assert error["requestId"] == response.headers["X-Request-Id"]
    assert await next_event(response) == ("end", None)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
