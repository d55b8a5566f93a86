"""Two replicas of the service (two `server` processes, each behind its own `gateway`)
on one PostgreSQL database keep every guarantee of one process, even when one of
them is killed with SIGKILL in the middle of the load.

All 200 orders are in flight at once. The client behaves as a careful client
of this API does: every order carries its own clientOrderNumber with the
duplicate check on, and an order whose outcome is unknown (503, a dropped
connection) is sent again to the other replica. The retry either places the
order or learns its transactionId from the 409, so each order is placed
exactly once, whichever replica answered.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from server.domain.money import Money
from server.domain.ports import NewCode
from tests.databases import one, query
from tests.helpers import (
    acme_signed_in,
    assert_fulfillment_consistent,
    database_args,
    order_statuses,
)
from tests.processes import eventually, healthy, log_of, run_cli, start, stop, unused_port

pytestmark = pytest.mark.postgres_only

ORDERS, FUNDED_FOR, IN_STOCK = 200, 120, 50
SKU, PRICE_JPY = "JPY-NT-1000", 950  # no stock in the dataset
KILL_AFTER = 90  # orders settled when the first replica is killed
RACE_SKU, RACERS = "8PX-UF-Y5U", 20


@dataclass
class Replica:
    server: subprocess.Popen[str]
    gateway: subprocess.Popen[str]
    url: str


async def start_replica(database: str) -> Replica:
    grpc_port, http_port = unused_port(), unused_port()
    server = start(
        "server", *database_args(database), "--grpc-listen", f"127.0.0.1:{grpc_port}",
        "--rate-limit-orders", "0", "--rate-limit-reads", "0",
    )  # fmt: skip
    gateway = start(
        "gateway", "--upstream", f"127.0.0.1:{grpc_port}", "--http-listen", f"127.0.0.1:{http_port}"
    )
    url = f"http://127.0.0.1:{http_port}"
    await eventually(lambda: healthy(f"{url}/healthz"), timeout=30)
    return Replica(server, gateway, url)


async def prepare(database: str) -> dict[str, str]:
    """acme with JPY for exactly FUNDED_FOR orders and IN_STOCK codes; its headers."""
    funds = Money.parse(str(FUNDED_FOR * PRICE_JPY), "JPY")
    codes = [NewCode(SKU, f"NIN-{n:04}", None) for n in range(IN_STOCK)]
    _, headers = await acme_signed_in(database, funds, codes)
    return headers


class Client:
    """Places orders through the replicas, retrying unknown outcomes on the other one."""

    def __init__(self, session: aiohttp.ClientSession, replicas: list[Replica], headers):
        self._session = session
        self._replicas = replicas
        self._headers = headers
        #: Per order number: (the replica that acknowledged it, its answer).
        self.settled: dict[str, tuple[int, dict[str, Any]]] = {}

    async def place(self, number: str, first: int, fields: dict[str, Any]) -> None:
        body = {**fields, "clientOrderNumber": number, "enableClientOrderNumberDupCheck": True}
        for attempt in range(6):
            replica = (first + attempt) % len(self._replicas)
            answer = await self.post(replica, body)
            if answer is not None:
                self.settled[number] = (replica, answer)
                return
        raise AssertionError(f"order {number} got no answer from any replica")

    async def post(self, replica: int, body: dict[str, Any]) -> dict[str, Any] | None:
        """The answer: (status, body), or None when the outcome is unknown."""
        url = f"{self._replicas[replica].url}/v2/orders/instant"
        try:
            async with self._session.post(url, json=body, headers=self._headers) as response:
                if response.status in (502, 503, 504):
                    return None
                return {"status": response.status, **await response.json()}
        except (aiohttp.ClientError, TimeoutError):
            return None


@pytest.mark.parametrize("run", [1, 2, 3])  # three times in a row, every time
async def test_two_replicas_keep_every_guarantee_when_one_is_killed(database, run, tmp_path):
    headers = await prepare(database)
    replicas = [await start_replica(database), await start_replica(database)]
    killed = replicas[0]
    try:
        timeout = aiohttp.ClientTimeout(total=15)
        unlimited = aiohttp.TCPConnector(limit=0)  # all ORDERS in flight at once
        async with aiohttp.ClientSession(timeout=timeout, connector=unlimited) as session:
            client = Client(session, replicas, headers)
            race = await asyncio.gather(
                *(client.post(n % 2, _racing_order()) for n in range(RACERS))
            )
            keyed = Client(session, replicas, {**headers, "Idempotency-Key": "RACE-KEY"})
            key_race = await asyncio.gather(
                *(keyed.post(n % 2, {"sku": RACE_SKU}) for n in range(RACERS))
            )
            await _load_with_a_kill(client, killed)
            assert (await session.get(f"{replicas[1].url}/v2/balances", headers=headers)).ok

        _check_the_race(race, database)
        _check_the_key_race(key_race, database)
        accepted = _check_money_and_stock(client, database)
        _check_nothing_acknowledged_was_lost(accepted, database)
        # Orders the dead replica took and left PROCESSING are completed by the live one.
        from_the_dead = [tx for tx, (replica, status) in accepted.items()
                         if replica == 0 and status == "PROCESSING"]  # fmt: skip
        assert from_the_dead, "the killed replica had taken no waiting order"
        codes = tmp_path / "restock.csv"
        codes.write_text("redeemCode,pinCode\n" + "".join(f"MORE-{n:04},\n" for n in range(100)))
        added = run_cli("admin", *database_args(database), "add-codes", "--sku", SKU,
                        "--file", str(codes))  # fmt: skip
        assert added.returncode == 0, added.stderr

        async def all_completed() -> bool:  # and the two racing orders
            return order_statuses(database) == {"COMPLETED": FUNDED_FOR + 2}

        await eventually(all_completed, timeout=10)
    finally:
        for replica in replicas:
            stop(replica.gateway)
            if replica is not killed:
                assert stop(replica.server) == 0, log_of(replica.server)
    for process in (replicas[1].server, *(r.gateway for r in replicas)):
        assert "Traceback" not in log_of(process)
    # No transaction was aborted for a deadlock or a serialization conflict.
    assert "transaction aborted by PostgreSQL" not in log_of(replicas[1].server)
    assert_fulfillment_consistent(database)


def _racing_order() -> dict[str, Any]:
    return {"sku": RACE_SKU, "clientOrderNumber": "RACE-1", "enableClientOrderNumberDupCheck": True}


async def _load_with_a_kill(client: Client, victim: Replica) -> None:
    """ORDERS orders at once, alternating replicas; SIGKILL the first replica once
    KILL_AFTER have settled."""
    pending = asyncio.Queue[int]()
    for n in range(ORDERS):
        pending.put_nowait(n)

    async def worker() -> None:
        while not pending.empty():
            n = pending.get_nowait()
            await client.place(f"PO-{n:04}", n % 2, {"sku": SKU, "payWithCurrency": "JPY"})
            if len(client.settled) >= KILL_AFTER and victim.server.poll() is None:
                victim.server.send_signal(signal.SIGKILL)

    await asyncio.gather(*(worker() for _ in range(ORDERS)))
    assert victim.server.wait(10) == -signal.SIGKILL


def _check_the_race(race: list[dict[str, Any] | None], database: str) -> None:
    """RACERS orders with one clientOrderNumber, across both replicas: exactly one."""
    created = [answer for answer in race if answer and answer["status"] == 200]
    refused = [answer for answer in race if answer and answer["status"] == 409]
    assert len(created) == 1 and len(refused) == RACERS - 1, race
    transaction_id = created[0]["data"]["transactionId"]
    assert all(answer["transactionId"] == transaction_id for answer in refused)
    assert one(database, "SELECT count(*) FROM orders WHERE client_order_number = 'RACE-1'") == 1


def _check_the_key_race(race: list[dict[str, Any] | None], database: str) -> None:
    """RACERS orders with one Idempotency-Key, across both replicas: exactly one order;
    every other answer is it again, or IDEMPOTENCY_KEY_IN_USE while it was placed."""
    placed = {
        answer["data"]["transactionId"] for answer in race if answer and answer["status"] == 200
    }
    assert len(placed) == 1, race
    in_use = [answer for answer in race if answer and answer["status"] == 409]
    assert all(answer["error"] == "IDEMPOTENCY_KEY_IN_USE" for answer in in_use)
    assert len(in_use) + sum(1 for a in race if a and a["status"] == 200) == RACERS
    assert one(database, "SELECT count(*) FROM orders WHERE sku = ?", (RACE_SKU,)) == 2


def _check_money_and_stock(client: Client, database: str) -> dict[str, tuple[int, str]]:
    """Exactly the funded orders are placed, each once; returns the acknowledged
    ones: transactionId -> (replica, status it was acknowledged with)."""
    assert len(client.settled) == ORDERS
    outcomes = Counter(answer["status"] for _, answer in client.settled.values())
    placed = outcomes[200] + outcomes[409]  # a 409: placed by an earlier attempt
    assert placed == FUNDED_FOR, outcomes
    refused = [answer for _, answer in client.settled.values() if answer["status"] == 422]
    assert len(refused) == ORDERS - FUNDED_FOR
    assert all(answer["error"] == "INSUFFICIENT_BALANCE" for answer in refused)
    assert one(database, "SELECT count(*) FROM orders WHERE sku = ?", (SKU,)) == FUNDED_FOR
    assert order_statuses(database, SKU) == {
        "COMPLETED": IN_STOCK,
        "PROCESSING": FUNDED_FOR - IN_STOCK,
    }
    jpy = query(database, "SELECT amount_minor FROM balances WHERE currency = 'JPY'")
    assert jpy == [(0,)]
    return {
        answer["data"]["transactionId"]: (replica, answer["data"]["status"])
        for replica, answer in client.settled.values()
        if answer["status"] == 200
    }


def _check_nothing_acknowledged_was_lost(
    accepted: dict[str, tuple[int, str]], database: str
) -> None:
    stored = dict(
        query(database, "SELECT transaction_id, status FROM orders WHERE sku = ?", (SKU,))
    )
    for transaction_id, (_, status) in accepted.items():
        assert transaction_id in stored, "an acknowledged order is missing"
        if status == "COMPLETED":
            assert stored[transaction_id] == "COMPLETED"
