"""The real `instant-orders` processes: the demo's curl session, and a graceful stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.demo import SESSION_MARKER
from tests.databases import query
from tests.helpers import DATASET, database_args
from tests.processes import (
    eventually,
    healthy,
    log_of,
    run_cli,
    serve_loaded,
    start,
    stop,
    unused_port,
)


def read_session(process: subprocess.Popen[str]) -> str:
    """The demo's printed lines from the session marker to its last line."""
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("# Stop the server"):
            break
    text = "".join(lines)
    assert SESSION_MARKER in text, text
    return text[text.index(SESSION_MARKER) :]


async def test_demo_prints_a_curl_session_that_works(tmp_path):
    http_port, grpc_port = unused_port(), unused_port()
    process = start(
        "demo",
        "--database", str(tmp_path / "demo.db"),
        "--http-listen", f"127.0.0.1:{http_port}",
        "--grpc-listen", f"127.0.0.1:{grpc_port}",
    )  # fmt: skip
    try:
        session = await asyncio.wait_for(asyncio.to_thread(read_session, process), timeout=30)
        result = await asyncio.to_thread(
            subprocess.run, ["bash", "-euo", "pipefail"], input=session, capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
    finally:
        assert stop(process) == 0
    assert result.returncode == 0, result.stderr
    order, replayed, polled, codes, balances = [
        json.loads(line) for line in result.stdout.splitlines()
    ]
    assert order["data"]["status"] == "COMPLETED"
    assert replayed == order
    assert "idempotent-replayed: true" in result.stderr.lower()
    assert order["data"]["grandTotal"] == {"amount": "11.48", "currency": "USD"}
    assert polled["data"]["items"][0]["transactionId"] == order["data"]["transactionId"]
    assert codes["data"][0]["codes"][0]["redeemCode"]
    assert balances["data"] == [{"balance": "988.52", "currency": "USD"}]


GRACE_SECONDS = 5


async def test_sigterm_answers_every_accepted_request_refuses_new_ones_and_exits_0(
    database, tmp_path
):
    loaded = run_cli("admin", *database_args(database), "load", _dataset_file(tmp_path))
    acme = json.loads(loaded.stdout)["accounts"][0]
    http_port, grpc_port = unused_port(), unused_port()
    process = start(
        "serve", *database_args(database),
        "--http-listen", f"127.0.0.1:{http_port}", "--grpc-listen", f"127.0.0.1:{grpc_port}",
        env={"INSTANT_ORDERS_SHUTDOWN_GRACE": str(GRACE_SECONDS)},
    )  # fmt: skip
    api = f"http://127.0.0.1:{http_port}"
    try:
        await eventually(lambda: healthy(f"{api}/healthz"))
        # A connection per request, so that each is either accepted or refused.
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            headers = await _auth_headers(session, api, acme)
            orders = [
                asyncio.create_task(_order(session, api, headers, f"po-{n}")) for n in range(100)
            ]
            # Signal once the server is busy answering: the rest are in flight.
            first_done = next(asyncio.as_completed(orders))
            await first_done
            process.send_signal(signal.SIGTERM)
            outcomes = await asyncio.gather(*orders, return_exceptions=True)
            await eventually(lambda: _refused(session, api), timeout=GRACE_SECONDS)
        answered = [o for o in outcomes if not isinstance(o, BaseException)]
        never_connected = [o for o in outcomes if isinstance(o, aiohttp.ClientConnectorError)]
        assert len(answered) + len(never_connected) == len(outcomes), [
            o for o in outcomes if isinstance(o, BaseException)
            and not isinstance(o, aiohttp.ClientConnectorError)
        ]  # fmt: skip
        assert all(status == 200 for status, _ in answered), answered
        assert len(answered) >= 2
        exit_code = await asyncio.to_thread(process.wait, GRACE_SECONDS + 5)
    finally:
        stop(process)
    assert exit_code == 0
    assert "Traceback" not in log_of(process)
    stored = {number for (number,) in query(database, "SELECT client_order_number FROM orders")}
    assert {number for _, number in answered} <= stored, "an acknowledged order was lost"


async def _refused(session: aiohttp.ClientSession, api: str) -> bool:
    """Whether a new connection to the gateway is refused."""
    try:
        async with session.get(f"{api}/healthz"):
            return False
    except aiohttp.ClientConnectorError:
        return True


async def test_sigterm_turns_health_not_serving_before_stopping(tmp_path):
    grpc_port = unused_port()
    settings = {  # the environment variables instead of flags
        "INSTANT_ORDERS_DATABASE": str(tmp_path / "o.db"),
        "INSTANT_ORDERS_GRPC_LISTEN": f"127.0.0.1:{grpc_port}",
    }
    process = start("server", env=settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=20)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            statuses = []
            async for answer in watch:
                statuses.append(answer.status)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    process.send_signal(signal.SIGTERM)
                if answer.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
        assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await asyncio.to_thread(process.wait, 20) == 0
        assert (tmp_path / "o.db").exists()
    finally:
        stop(process)


async def test_sigterm_fails_readiness_first_while_requests_are_still_served(tmp_path):
    """With a drain period, readiness says 503 "draining" at once, orders are still
    answered meanwhile, and then the process stops gracefully."""
    process, api, acme = serve_loaded(
        tmp_path, _FUNDED_DATASET, env={"INSTANT_ORDERS_SHUTDOWN_DRAIN": "3"}
    )
    try:
        await eventually(lambda: healthy(f"{api}/readyz"))
        async with aiohttp.ClientSession() as session:
            headers = await _auth_headers(session, api, acme)
            process.send_signal(signal.SIGTERM)

            async def draining() -> bool:
                async with session.get(f"{api}/readyz") as response:
                    return (
                        response.status == 503 and "draining" in (await response.json())["reason"]
                    )

            await eventually(draining, timeout=3)
            status, _ = await _order(session, api, headers, "while-draining")
            assert status == 200
        assert await asyncio.to_thread(process.wait, 20) == 0
    finally:
        stop(process)


async def _order(session, api: str, headers: dict[str, str], number: str) -> tuple[int, str]:
    body = {"sku": "8PX-UF-Y5U", "clientOrderNumber": number}
    async with session.post(f"{api}/v2/orders/instant", json=body, headers=headers) as response:
        return response.status, number


_FUNDED_DATASET = {**DATASET, "accounts": [{"name": "acme", "balances": {"USD": "1000.00"}}]}


def _dataset_file(tmp_path) -> str:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(_FUNDED_DATASET))
    return str(path)


async def _auth_headers(
    session: aiohttp.ClientSession, api: str, account: dict[str, str]
) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_id": account["apiKey"],
        "client_secret": account["apiSecret"],
    }
    async with session.post(f"{api}/v2/auth/token", data=form) as response:
        token = (await response.json())["access_token"]
    return {"x-api-key": account["apiKey"], "Authorization": f"Bearer {token}"}


async def test_a_server_alone_serves_its_metrics_where_it_is_told(tmp_path):
    metrics_port = unused_port()
    process = start(
        "server", "--database", str(tmp_path / "o.db"), "--grpc-listen",
        f"127.0.0.1:{unused_port()}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
    )  # fmt: skip
    try:

        async def scraped() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response,
                ):
                    return "instant_orders_db_transaction_seconds" in await response.text()
            except aiohttp.ClientError:
                return False

        await eventually(scraped, timeout=20)
    finally:
        assert stop(process) == 0
