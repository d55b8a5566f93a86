"""The gateway when its gRPC server fails: a JSON 503 (or 504) within the call's
deadline, never a 500 or a hang, and service again, by itself, once the server is
back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator

import aiohttp
import grpc
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import GatewaySettings, create_app
from tests.api import ROUTES
from tests.processes import eventually, healthy, log_of, run_cli, start, stop, unused_port

RPC_TIMEOUT = 1.0
#: Bodies the gateway accepts, so that the call reaches the server.
VALID_BODIES = {
    "CreateInstantOrder": {"sku": "X"},
    "IssueToken": {"grant_type": "client_credentials", "client_id": "k", "client_secret": "s"},
}


async def test_a_killed_server_is_a_json_503_and_the_gateway_recovers_by_itself(tmp_path):
    database = str(tmp_path / "orders.db")
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"accounts": [{"name": "acme", "balances": {"USD": "10.00"}}]}))
    acme = json.loads(run_cli("admin", "--database", database, "load", str(dataset)).stdout)
    key, secret = acme["accounts"][0]["apiKey"], acme["accounts"][0]["apiSecret"]
    grpc_listen, http_port = f"127.0.0.1:{unused_port()}", unused_port()
    url = f"http://127.0.0.1:{http_port}"

    def start_server():
        return start("server", "--database", database, "--grpc-listen", grpc_listen)

    server = start_server()
    gateway = start("gateway", "--upstream", grpc_listen, "--http-listen", f"127.0.0.1:{http_port}")
    try:
        await eventually(lambda: healthy(f"{url}/healthz"))
        timeout = aiohttp.ClientTimeout(total=15)  # the gateway's own deadline is 10 s
        async with aiohttp.ClientSession(url, timeout=timeout) as session:
            form = {"grant_type": "client_credentials", "client_id": key, "client_secret": secret}
            token = await (await session.post("/v2/auth/token", data=form)).json()
            headers = {"x-api-key": key, "Authorization": f"Bearer {token['access_token']}"}
            assert (await session.get("/v2/balances", headers=headers)).status == 200

            server.send_signal(signal.SIGKILL)
            await asyncio.to_thread(server.wait, 10)
            for _ in range(3):
                response = await session.get("/v2/balances", headers=headers)
                assert response.status == 503
                body = await response.json()
                assert body["error"] == "UNAVAILABLE" and body["message"]
                assert response.headers["Retry-After"]
            assert not await healthy(f"{url}/healthz")

            server = start_server()

            async def serving_again() -> bool:
                return (await session.get("/v2/balances", headers=headers)).status == 200

            await eventually(serving_again, timeout=20)
    finally:
        stop(server)
        assert stop(gateway) == 0
    assert "Traceback" not in log_of(gateway)


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[int]:
    """A port that accepts connections and never answers a byte."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.transport.abort()
        server.close()


async def test_a_server_that_never_answers_costs_each_route_its_deadline_not_a_hang():
    """Every unary route calls with a deadline: each answers a JSON 5xx in time."""
    async with black_hole() as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        app = create_app(channel, GatewaySettings(rpc_timeout_seconds=RPC_TIMEOUT))
        async with TestClient(TestServer(app)) as http:
            for route in ROUTES.values():
                if route.server_streaming:
                    continue  # a watch is bounded by its stream deadline instead
                path = route.path.replace("{transactionId}", "0" * 32)
                body = VALID_BODIES.get(route.rpc.name) if route.body else None
                response = await asyncio.wait_for(
                    http.request(route.http_method, path, json=body), timeout=RPC_TIMEOUT + 10
                )
                assert response.status in (503, 504), (route.path, await response.text())
                assert (await response.json())["error"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
