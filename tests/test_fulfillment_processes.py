"""Fulfillment across processes: restock by `admin add-codes`, SIGKILL and restart, the worker."""

from __future__ import annotations

import asyncio
import copy
import json
import random
import signal
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import grpc

from server.domain import admin
from server.domain.clock import utc_now
from server.domain.models import Caller, InstantOrderRequest, OrderStatus
from server.domain.money import Money
from server.domain.service import InstantOrdersService
from server.settings import is_postgres
from tests.databases import query
from tests.helpers import (
    DATASET,
    assert_fulfillment_consistent,
    database_args,
    open_store,
    order_statuses,
    signing_key,
    sold_codes,
)
from tests.processes import eventually, healthy, log_of, run_cli, start, stop, unused_port
from tests.test_watch import next_event

SKU = "JPY-NT-1000"  # no stock in the dataset


@dataclass
class Prepared:
    database: str
    headers: dict[str, str]
    waiting: list[str]  # transaction ids, oldest first
    overdue: list[str]


async def prepare(database: str, waiting: int, overdue: int = 0) -> Prepared:
    """The database with `waiting` PROCESSING orders for SKU, and `overdue` ones placed
    two hours ago; acme's bearer headers for the API."""
    store = await open_store(database)
    try:
        (acme, _) = await admin.load_dataset(store, copy.deepcopy(DATASET), utc_now())
        await store.top_up(acme.account_id, Money.parse("100000000", "JPY"), utc_now())
        service = InstantOrdersService(store, signing_key(database), timedelta(hours=1))
        token = await service.issue_token("client_credentials", acme.api_key, acme.api_secret)
        caller = Caller(acme.account_id, acme.api_key)
        request = InstantOrderRequest(sku=SKU, pay_with_currency="JPY")
        two_hours_ago = InstantOrdersService(
            store,
            signing_key(database),
            timedelta(hours=1),
            clock=lambda: utc_now() - timedelta(hours=2),
        )
        old = [await two_hours_ago.create_instant_order(caller, request) for _ in range(overdue)]
        new = [await service.create_instant_order(caller, request) for _ in range(waiting)]
    finally:
        await store.close()
    assert all(order.status is OrderStatus.PROCESSING for order in (*old, *new))
    headers = {"x-api-key": acme.api_key, "Authorization": f"Bearer {token.access_token}"}
    return Prepared(
        database, headers, [o.transaction_id for o in new], [o.transaction_id for o in old]
    )


def codes_file(tmp_path: Path, count: int, first: int = 0) -> str:
    path = tmp_path / f"codes-{first}.csv"
    numbers = range(first, first + count)
    path.write_text("redeemCode,pinCode\n" + "".join(f"NIN-{n:05},{n:04}\n" for n in numbers))
    return str(path)


async def test_codes_added_by_another_process_complete_waiting_orders_within_a_second(
    tmp_path, database
):
    prepared = await prepare(database, waiting=5)
    http_port = unused_port()
    process = start(
        "serve", *database_args(prepared.database),
        "--http-listen", f"127.0.0.1:{http_port}", "--grpc-listen", f"127.0.0.1:{unused_port()}",
    )  # fmt: skip
    api = f"http://127.0.0.1:{http_port}"
    try:
        await eventually(lambda: healthy(f"{api}/healthz"))
        async with aiohttp.ClientSession(api) as session:
            watched = prepared.waiting[0]
            events = await session.get(f"/v2/orders/{watched}/events", headers=prepared.headers)
            assert (await next_event(events))[1]["data"]["status"] == "PROCESSING"

            added = await asyncio.to_thread(
                run_cli, "admin", *database_args(prepared.database),
                "add-codes", "--sku", SKU, "--file", codes_file(tmp_path, 3),
            )  # fmt: skip
            assert added.returncode == 0, added.stderr

            async def three_completed() -> bool:
                return order_statuses(prepared.database).get("COMPLETED") == 3

            await eventually(three_completed, timeout=1.0)
            name, pushed = await asyncio.wait_for(next_event(events), timeout=5)
            assert (name, pushed["data"]["status"]) == ("message", "COMPLETED")

            dataset = tmp_path / "more-codes.json"  # `admin load` restocks as well
            more = [{"sku": SKU, "redeemCode": f"NIN-{n:05}"} for n in (3, 4)]
            dataset.write_text(json.dumps({"codes": more}))
            loaded = await asyncio.to_thread(
                run_cli, "admin", *database_args(prepared.database), "load", str(dataset)
            )
            assert loaded.returncode == 0, loaded.stderr

            async def all_completed() -> bool:
                return order_statuses(prepared.database) == {"COMPLETED": 5}

            await eventually(all_completed, timeout=1.0)
    finally:
        assert stop(process) == 0
    # First come, first served: the oldest first, in order.
    expected = dict(zip(prepared.waiting, [f"NIN-{n:05}" for n in range(5)], strict=True))
    assert sold_codes(prepared.database) == expected
    assert_fulfillment_consistent(prepared.database)


async def test_sigkill_during_fulfillment_then_restart_keeps_every_invariant(tmp_path, database):
    prepared = await prepare(database, waiting=1200, overdue=200)
    rng = random.Random(3)
    kills: list[int] = []  # how many of the round's 250 codes were sold when killed

    async def start_server() -> subprocess.Popen[str]:
        port = unused_port()
        process = start(
            "server", *database_args(prepared.database), "--fulfillment-timeout", "3600",
            "--grpc-listen", f"127.0.0.1:{port}",
            # A transaction per completion: a burst long enough to be cut in the middle.
            env={"INSTANT_ORDERS_FULFILLMENT_BATCH": "1"},
        )  # fmt: skip
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=20)
        return process

    for round_number in range(4):  # each round: restock 250, kill the server mid-way
        process = await start_server()
        try:
            before = order_statuses(prepared.database).get("COMPLETED", 0)
            added = await asyncio.to_thread(
                run_cli, "admin", *database_args(prepared.database),
                "add-codes", "--sku", SKU, "--file", codes_file(tmp_path, 250, 250 * round_number),
            )  # fmt: skip
            assert added.returncode == 0, added.stderr

            async def completing(before: int = before) -> bool:
                return order_statuses(prepared.database).get("COMPLETED", 0) > before

            await eventually(completing, timeout=10)
            await asyncio.sleep(rng.uniform(0, 0.1))  # a random moment of the burst
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        kills.append(order_statuses(prepared.database)["COMPLETED"] - before)
        assert_fulfillment_consistent(prepared.database)

    assert any(0 < sold < 250 for sold in kills), f"no kill landed mid-burst: {kills}"
    process = await start_server()
    try:

        async def all_settled() -> bool:
            return order_statuses(prepared.database) == {
                "COMPLETED": 1000, "PROCESSING": 200, "CANCELLED": 200,
            }  # fmt: skip

        await eventually(all_settled, timeout=60)
    finally:
        assert stop(process) == 0
    assert "Traceback" not in log_of(process)
    sold = sold_codes(prepared.database)
    assert set(sold) == set(prepared.waiting[:1000]), "not first come, first served"
    assert len(set(sold.values())) == 1000
    assert_fulfillment_consistent(prepared.database)
    if not is_postgres(prepared.database):
        assert query(prepared.database, "PRAGMA integrity_check") == [("ok",)]


async def test_worker_alone_cancels_overdue_orders_and_stops_on_sigterm(database):
    prepared = await prepare(database, waiting=2, overdue=3)
    worker = start("worker", *database_args(prepared.database), "--fulfillment-timeout", "60")
    try:

        async def overdue_cancelled() -> bool:
            return order_statuses(prepared.database) == {"CANCELLED": 3, "PROCESSING": 2}

        await eventually(overdue_cancelled)
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 15) == 0
    finally:
        stop(worker)
    assert "Traceback" not in log_of(worker)
    assert_fulfillment_consistent(prepared.database)
    rows = query(prepared.database, "SELECT transaction_id FROM orders WHERE status = 'CANCELLED'")
    cancelled = {tx for (tx,) in rows}
    assert cancelled == set(prepared.overdue)


def test_fulfillment_timeout_must_be_positive(tmp_path):
    result = run_cli("worker", "--database", str(tmp_path / "o.db"), "--fulfillment-timeout", "0")
    assert result.returncode == 2
    assert "fulfillment timeout" in result.stderr
