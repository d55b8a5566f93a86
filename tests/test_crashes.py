"""Crash and restart: the server is killed with SIGKILL ten times at random moments
under load, on each backend. Every order a client got a 200 for survives with the
same data, money and codes stay consistent, and waiting orders still complete."""

from __future__ import annotations

import asyncio
import random
import signal
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from server.domain.money import Money
from server.domain.ports import NewCode
from server.settings import is_postgres
from tests.databases import query
from tests.helpers import (
    acme_signed_in,
    assert_fulfillment_consistent,
    database_args,
)
from tests.processes import eventually, log_of, run_cli, start_service, stop

SKU, PRICE = "JPY-NT-1000", 950
CRASHES = 10
CLIENTS = 16


@dataclass
class Load:
    """Clients placing orders against whichever server is up; what was acknowledged."""

    headers: dict[str, str]
    url: str = ""
    acknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)  # by transactionId
    running: bool = True

    async def client(self, session: aiohttp.ClientSession, number: int) -> None:
        sent = 0
        while self.running:
            sent += 1
            body = {"sku": SKU, "payWithCurrency": "JPY", "clientOrderNumber": f"C{number}-{sent}"}
            try:
                async with session.post(
                    f"{self.url}/v2/orders/instant", json=body, headers=self.headers
                ) as response:
                    if response.status == 200:
                        order = (await response.json())["data"]
                        self.acknowledged[order["transactionId"]] = order
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.02)  # the server is down: its outcome is unknown


async def prepare(database: str) -> dict[str, str]:
    """acme with yen for a million orders and 100 codes in stock; its headers."""
    funds = Money.parse(str(10**6 * PRICE), "JPY")
    codes = [NewCode(SKU, f"FIRST-{n}", None) for n in range(100)]
    _, headers = await acme_signed_in(database, funds, codes)
    return headers


async def test_ten_sigkills_under_load_lose_no_acknowledged_order(database, tmp_path):
    load = Load(await prepare(database))
    rng = random.Random(11)
    process, load.url = await start_service(database_args(database))
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        clients = [asyncio.create_task(load.client(session, n)) for n in range(CLIENTS)]
        try:
            for _ in range(CRASHES):
                before = len(load.acknowledged)

                async def serving(before: int = before) -> bool:
                    return len(load.acknowledged) > before

                await eventually(serving, timeout=20)
                await asyncio.sleep(rng.uniform(0, 0.3))  # a random moment of the load
                process.send_signal(signal.SIGKILL)
                assert await asyncio.to_thread(process.wait, 10) == -signal.SIGKILL
                process, load.url = await start_service(database_args(database))
        finally:
            load.running = False
            await asyncio.gather(*clients)
    assert len(load.acknowledged) > CRASHES

    stored = {row[0]: row for row in query(
        database,
        "SELECT o.transaction_id, o.client_order_number, o.sku, o.pay_currency,"
        " o.unit_price_minor, o.status, c.id FROM orders o LEFT JOIN codes c ON c.order_id = o.id",
    )}  # fmt: skip
    for transaction_id, order in load.acknowledged.items():
        assert transaction_id in stored, f"acknowledged order {transaction_id} was lost"
        _, number, sku, currency, minor, status, code_id = stored[transaction_id]
        assert (number, sku, currency, minor) == (order["clientOrderNumber"], SKU, "JPY", PRICE)
        if order["status"] == "COMPLETED":
            assert status == "COMPLETED" and code_id is not None
    assert_fulfillment_consistent(database)
    if not is_postgres(database):
        assert query(database, "PRAGMA integrity_check") == [("ok",)]

    waiting = len([row for row in stored.values() if row[5] == "PROCESSING"])
    assert waiting, "the load should have outrun the stock"
    codes = tmp_path / "restock.csv"
    codes.write_text("redeemCode,pinCode\n" + "".join(f"MORE-{n},\n" for n in range(waiting)))
    added = run_cli("admin", *database_args(database), "add-codes", "--sku", SKU,
                    "--file", str(codes))  # fmt: skip
    assert added.returncode == 0, added.stderr

    async def none_waiting() -> bool:
        rows = query(database, "SELECT count(*) FROM orders WHERE status = 'PROCESSING'")
        return rows == [(0,)]

    try:
        await eventually(none_waiting, timeout=15)
    finally:
        assert stop(process) == 0
    assert "Traceback" not in log_of(process)
    assert_fulfillment_consistent(database)


async def test_a_retry_after_a_sigkill_at_the_commit_replays_the_order_its_key_placed(database):
    """The server is killed as soon as a keyed order is committed, whether or not its
    answer went out; the client retries with the same key after the restart and gets
    that order, not a second one."""
    headers = await prepare(database)
    process, url = await start_service(database_args(database))
    body = {"sku": SKU, "payWithCurrency": "JPY"}
    async with aiohttp.ClientSession() as session:
        keyed = {**headers, "Idempotency-Key": "killed", "X-Request-Id": "before-the-kill"}
        first = asyncio.create_task(
            session.post(f"{url}/v2/orders/instant", json=body, headers=keyed)
        )

        async def committed() -> bool:
            return query(database, "SELECT count(*) FROM idempotency_keys") == [(1,)]

        await eventually(committed, timeout=10)
        process.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(process.wait, 10) == -signal.SIGKILL
        (answered,) = await asyncio.gather(first, return_exceptions=True)  # or not: unknown
        if isinstance(answered, aiohttp.ClientResponse):
            answered.release()

        process, url = await start_service(database_args(database))
        try:
            retry = {**headers, "Idempotency-Key": "killed"}
            async with session.post(
                f"{url}/v2/orders/instant", json=body, headers=retry
            ) as retried:
                assert retried.status == 200
                assert retried.headers["Idempotent-Replayed"] == "true"
                answer = await retried.json()
        finally:
            assert stop(process) == 0
    assert answer["requestId"] == "before-the-kill"
    assert query(database, "SELECT transaction_id FROM orders") == [
        (answer["data"]["transactionId"],)
    ]
    assert_fulfillment_consistent(database)
