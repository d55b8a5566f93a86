"""A full disk, and the storage faults like it an operator can fix (SQLite only:
PostgreSQL's disk is its server's business).

The main test puts the database on a 2 MiB tmpfs it mounts, fills the rest
with a file, and orders over REST from a real `serve`: every order is 503
UNAVAILABLE with Retry-After and changes nothing, the burst is logged in one
line without a traceback, readiness fails while liveness holds; deleting the
file is all it takes for orders to succeed again. It is skipped where mounting
is not permitted.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.probes import STORAGE_FAILING
from server.domain.errors import log_retried_failure
from server.domain.failures import StorageFailing
from server.store import storage_faults
from server.store.batches import write_batch
from server.store.storage_faults import StorageHealth, storage_fault
from tests.helpers import acme_signed_in, assert_invariants, database_args, snapshot
from tests.processes import eventually, log_of, release_all, start_service, stop

STEAM = "8PX-UF-Y5U"  # in the tests' dataset: 9.75 USD, two codes; acme holds 100.00 USD
#: Large enough for the database, its WAL and key file; small enough to fill at once.
DISK_SIZE = "2m"
ORDERS_ON_A_FULL_DISK = 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs mounted for the test, and unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is made on a tmpfs this test mounts, which needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    refused = _mount_tmpfs(disk)
    if refused:
        pytest.skip(f"mounting a tmpfs is not permitted here: {refused}")
    try:
        yield disk
    finally:
        release_all()  # the server holds files on it
        if subprocess.run(["umount", str(disk)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(disk)], check=False)


def _mount_tmpfs(disk: Path) -> str:
    """Why the tmpfs could not be mounted; "" when it was."""
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(disk)],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as error:  # no mount command
        return str(error)
    if mounted.returncode == 0:
        return ""
    return " ".join(mounted.stderr.split()) or f"exit status {mounted.returncode}"


def fill(disk: Path) -> Path:
    """Takes every free block of the disk with a file; returns the file."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(descriptor, bytes(64 * 1024))
    except OSError as error:
        assert error.errno == errno.ENOSPC, error
    finally:
        os.close(descriptor)
    return filler


async def order(http: aiohttp.ClientSession, headers: dict[str, str]) -> tuple[int, Any, Any]:
    """Places an order for STEAM; its status, headers and JSON body."""
    async with http.post("/v2/orders/instant", json={"sku": STEAM}, headers=headers) as response:
        return response.status, response.headers, await response.json()


async def probe(http: aiohttp.ClientSession, path: str) -> tuple[int, dict[str, str]]:
    async with http.get(path) as response:
        return response.status, await response.json()


def log_lines(process: subprocess.Popen[str]) -> list[dict[str, str]]:
    return [json.loads(line) for line in log_of(process).splitlines()]


async def test_a_full_disk_is_503_logged_once_and_over_once_space_is_freed(small_disk):
    database = str(small_disk / "orders.db")
    _, headers = await acme_signed_in(database)
    process, url = await start_service(database_args(database))
    try:
        async with aiohttp.ClientSession(url) as http:
            assert (await order(http, headers))[0] == 200
            assert (await probe(http, "/readyz"))[0] == 200
            logged_before = len(log_lines(process))
            filler = fill(small_disk)
            before = snapshot(database)

            answers = await asyncio.gather(
                *(order(http, headers) for _ in range(ORDERS_ON_A_FULL_DISK))
            )  # concurrent: group-committed batches fail whole

            for status, response_headers, body in answers:
                assert status == 503, body
                assert response_headers["Retry-After"] == "1"
                assert body["error"] == "UNAVAILABLE"
                assert body["message"] == "The database is unavailable. Retry shortly."
                assert body["requestId"] == response_headers["X-Request-Id"]
            assert snapshot(database) == before
            assert_invariants(database)  # every balance equals its ledger

            async def not_ready() -> bool:
                return (await probe(http, "/readyz"))[0] == 503

            await eventually(not_ready, timeout=10)
            assert (await probe(http, "/readyz"))[1]["reason"] == STORAGE_FAILING
            assert (await probe(http, "/healthz"))[0] == 200  # alive: only not ready
            assert (await order(http, headers))[0] == 503  # still failing, still counted
            logged = [line["message"] for line in log_lines(process)[logged_before:]]
            assert logged == ["database storage failing: database or disk is full"]

            filler.unlink()
            for _ in range(3):
                assert (await order(http, headers))[0] == 200  # no restart, no wait

            async def ready() -> bool:
                return (await probe(http, "/readyz"))[0] == 200

            await eventually(ready, timeout=10)
    finally:
        assert stop(process) == 0
    assert_invariants(database)
    assert snapshot(database)["orders"] == before["orders"] + 3
    log = log_of(process)
    assert "Traceback" not in log
    burst = [line for line in log_lines(process)[logged_before:] if line["level"] != "INFO"]
    assert [line["level"] for line in burst] == ["WARNING", "WARNING"], burst
    over = re.fullmatch(r"database storage works again after [\d.]+ s: (\d+) calls failed",
                        burst[1]["message"])  # fmt: skip
    assert over is not None, burst[1]
    assert int(over.group(1)) >= ORDERS_ON_A_FULL_DISK + 1


def _sqlite_error(code: int, message: str) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code
    return error


def test_storage_faults_are_told_from_defects(tmp_path):
    database = tmp_path / "orders.db"
    sqlite3.connect(database).execute("CREATE TABLE t (x)").connection.close()
    read_only = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as refused:
        read_only.execute("INSERT INTO t VALUES (1)")
    read_only.close()
    assert storage_fault(refused.value) == "attempt to write a readonly database"
    full = _sqlite_error(sqlite3.SQLITE_FULL, "database or disk is full")
    assert storage_fault(full) == "database or disk is full"
    assert storage_fault(_sqlite_error(sqlite3.SQLITE_IOERR_WRITE, "disk I/O error"))
    assert storage_fault(OSError(errno.ENOSPC, "No space left on device"))
    assert storage_fault(OSError(errno.EROFS, "Read-only file system"))
    assert storage_fault(OSError(errno.EIO, "Input/output error"))
    # Defects stay defects (answered INTERNAL, logged with their traceback):
    assert storage_fault(_sqlite_error(sqlite3.SQLITE_ERROR, "no such table: t")) is None
    assert storage_fault(sqlite3.ProgrammingError("Cannot operate on a closed database.")) is None
    assert storage_fault(OSError(errno.ENOENT, "No such file or directory")) is None


async def test_a_burst_is_logged_when_it_begins_while_it_lasts_and_when_it_ends(
    caplog, monkeypatch
):
    monkeypatch.setattr(storage_faults, "PROBE_INTERVAL_SECONDS", 0.01)
    monkeypatch.setattr(storage_faults, "REPORT_INTERVAL_SECONDS", 0.2)
    disk_full = asyncio.Event()
    disk_full.set()

    async def probe_write() -> None:
        if disk_full.is_set():
            raise _sqlite_error(sqlite3.SQLITE_FULL, "database or disk is full")

    health = StorageHealth(probe_write)
    caplog.set_level(logging.INFO, logger=storage_faults.__name__)
    full = _sqlite_error(sqlite3.SQLITE_FULL, "database or disk is full")
    try:
        assert health.failed(_sqlite_error(sqlite3.SQLITE_ERROR, "a defect")) is None
        health.check()  # a defect says nothing about the storage
        for _ in range(50):
            failing = health.failed(full)
            assert isinstance(failing, StorageFailing)
        await asyncio.sleep(0.3)  # the probes fail meanwhile, silently
        assert [r.getMessage() for r in caplog.records] == [
            "database storage failing: database or disk is full"
        ]
        with pytest.raises(StorageFailing):
            health.check()
        health.failed(full)  # the first failure after the interval: a line with the count
        assert re.fullmatch(
            r"database storage still failing: database or disk is full \(51 calls failed in \d s\)",
            caplog.records[-1].getMessage(),
        )
        disk_full.clear()  # space freed: the next probe succeeds

        async def over() -> bool:
            return len(caplog.records) == 3

        await eventually(over, timeout=5)
        assert re.fullmatch(r"database storage works again after [\d.]+ s: 51 calls failed",
                            caplog.records[-1].getMessage())  # fmt: skip
        health.check()  # ready again
        assert all(record.exc_info is None for record in caplog.records)
    finally:
        await health.close()


def test_a_write_batch_rolls_back_a_transaction_a_failed_rollback_left_open(tmp_path):
    db = sqlite3.connect(tmp_path / "orders.db", isolation_level=None)
    db.execute("CREATE TABLE t (x)")
    db.execute("BEGIN IMMEDIATE")  # as a batch whose ROLLBACK failed leaves it
    db.execute("INSERT INTO t VALUES ('lost')")

    outcomes = write_batch(db, [lambda db: db.execute("INSERT INTO t VALUES ('next')")])

    assert [outcome.error for outcome in outcomes] == [None]
    assert db.execute("SELECT x FROM t").fetchall() == [("next",)]
    assert not db.in_transaction
    db.close()


def test_background_jobs_leave_a_failing_storage_to_the_store_to_log(caplog):
    job_log = logging.getLogger("tests.fulfiller")
    caplog.set_level(logging.INFO, logger=job_log.name)

    log_retried_failure(job_log, "fulfillment pass failed", StorageFailing("disk full"))

    assert caplog.records == []  # a pass every 0.2 s would otherwise log 5 lines a second
