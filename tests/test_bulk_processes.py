"""Bulk orders across processes: a SIGKILL in the middle of fulfilling a large one,
and the 10,000-unit order placed in one request and fulfilled from one restock."""

from __future__ import annotations

import asyncio
import copy
import random
import signal
import subprocess
from datetime import timedelta

import grpc

from server.domain import admin
from server.domain.clock import utc_now
from server.domain.models import BulkLineRequest, BulkOrderRequest, Caller, OrderStatus
from server.domain.money import Money
from server.domain.service import InstantOrdersService
from server.settings import is_postgres
from tests.databases import one, query
from tests.helpers import (
    DATASET,
    assert_fulfillment_consistent,
    database_args,
    open_store,
    signing_key,
)
from tests.processes import eventually, log_of, run_cli, start, stop, unused_port
from tests.test_fulfillment_processes import codes_file

SKU = "JPY-NT-1000"  # no stock in the dataset
#: Units of the order, and codes added per round: 100 transactions of 20 per round.
UNITS, ROUND = 6000, 2000


async def place_bulk(database: str, quantity: int) -> str:
    """A bulk order of `quantity` units of SKU for acme; its transaction id."""
    store = await open_store(database)
    try:
        (acme, _) = await admin.load_dataset(store, copy.deepcopy(DATASET), utc_now())
        await store.top_up(acme.account_id, Money.parse("100000000", "JPY"), utc_now())
        service = InstantOrdersService(store, signing_key(database), timedelta(hours=1))
        request = BulkOrderRequest((BulkLineRequest(SKU, quantity),))
        order = await service.create_bulk_order(Caller(acme.account_id, acme.api_key), request)
    finally:
        await store.close()
    assert order.status is OrderStatus.PROCESSING
    return order.transaction_id


def delivered(database: str) -> int:
    return int(one(database, "SELECT coalesce(sum(delivered), 0) FROM order_lines"))


async def test_sigkill_while_fulfilling_a_large_bulk_order_then_restart_keeps_every_invariant(
    tmp_path, database
):
    await place_bulk(database, UNITS)
    rng = random.Random(5)
    kills: list[int] = []  # how many of the round's codes were delivered when killed

    async def start_server() -> subprocess.Popen[str]:
        port = unused_port()
        process = start(
            "server", *database_args(database), "--grpc-listen", f"127.0.0.1:{port}",
            # 20 units per transaction: a round's delivery is long enough to be cut mid-way.
            env={"INSTANT_ORDERS_FULFILLMENT_BATCH": "1"},
        )  # fmt: skip
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=20)
        return process

    for round_number in range(3):  # each round: restock a third, kill the server mid-way
        process = await start_server()
        try:
            before = delivered(database)
            added = await asyncio.to_thread(
                run_cli, "admin", *database_args(database), "add-codes", "--sku", SKU,
                "--file", codes_file(tmp_path, ROUND, ROUND * round_number),
            )  # fmt: skip
            assert added.returncode == 0, added.stderr

            async def delivering(before: int = before) -> bool:
                return delivered(database) > before

            await eventually(delivering, timeout=10)
            await asyncio.sleep(rng.uniform(0, 0.1))  # a random moment of the delivery
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        kills.append(delivered(database) - before)
        assert_fulfillment_consistent(database)

    assert any(0 < units < ROUND for units in kills), f"no kill landed mid-delivery: {kills}"
    process = await start_server()
    try:

        async def completed() -> bool:
            return one(database, "SELECT status FROM orders") == "COMPLETED"

        await eventually(completed, timeout=30)
    finally:
        assert stop(process) == 0
    assert "Traceback" not in log_of(process)
    sold = query(database, "SELECT stock_id FROM codes WHERE sku = ? ORDER BY id", (SKU,))
    stock_ids = [stock_id for (stock_id,) in sold]
    assert stock_ids == list(range(1, UNITS + 1)), "units not delivered in order, or twice"
    assert_fulfillment_consistent(database)
    if not is_postgres(database):
        assert query(database, "PRAGMA integrity_check") == [("ok",)]
