"""The operator's tools: the report, backups that restore, progress of long jobs, and a
configuration reference that is current."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import termios
from pathlib import Path

import aiohttp
import pytest

from server.cli import configuration_reference
from tests.databases import key_file, one, query
from tests.helpers import DATASET, assert_fulfillment_consistent, database_args
from tests.processes import ROOT, command, run_cli, start_service, stop

ORDER = "CreateInstantOrder"


async def test_the_report_shows_stock_backlog_balances_and_recent_orders(api, accounts, database):
    acme = accounts["acme"]
    for _ in range(3):  # two codes in stock: the third waits
        await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, acme)

    result = run_cli("admin", *database_args(database), "report", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    stock = {row["sku"]: row for row in report["stock"]}
    assert (stock["8PX-UF-Y5U"]["unsold"], stock["8PX-UF-Y5U"]["waiting"]) == (0, 1)
    assert stock["8PX-UF-Y5U"]["oldestWaitSeconds"] >= 0
    assert (stock["TTR-WI-YWN"]["unsold"], stock["TTR-WI-YWN"]["waiting"]) == (1, 0)
    balances = {(row["account"], row["currency"]): row["balance"] for row in report["balances"]}
    assert balances[("acme", "USD")] == "70.75"
    assert report["ordersLastHour"] == report["ordersLastDay"] == {"COMPLETED": 2, "PROCESSING": 1}
    tables = run_cli("admin", *database_args(database), "report").stdout
    assert "oldest wait s" in tables and "8PX-UF-Y5U" in tables and "70.75" in tables


@pytest.mark.sqlite_only
async def test_a_backup_taken_under_load_restores_with_every_invariant(database, tmp_path):
    loaded = run_cli("admin", *database_args(database), "load", _dataset(tmp_path))
    acme = json.loads(loaded.stdout)["accounts"][0]
    process, url = await start_service(database_args(database))
    backup = tmp_path / "backup.db"
    try:
        async with aiohttp.ClientSession() as session:
            headers = await _headers(session, url, acme)
            load = asyncio.create_task(_orders_until(session, url, headers, backup))
            await asyncio.sleep(0)  # the load starts before the backup
            taken = await asyncio.to_thread(
                run_cli, "admin", *database_args(database), "backup", "--to", str(backup)
            )
            placed_during = await load
    finally:
        assert stop(process) == 0
    assert taken.returncode == 0, taken.stderr
    assert json.loads(taken.stdout)["keyFile"] == key_file(database)
    assert placed_during > 0
    assert backup.stat().st_mode & 0o777 == 0o600

    restored = tmp_path / "restored" / "orders.db"  # a restore: the copy and its key file
    restored.parent.mkdir()
    shutil.copy(backup, restored)
    shutil.copy(key_file(database), key_file(str(restored)))
    assert query(str(restored), "PRAGMA integrity_check") == [("ok",)]
    assert one(str(restored), "SELECT count(*) FROM orders") > 0
    assert_fulfillment_consistent(str(restored))
    opened = run_cli("admin", "--database", str(restored), "report", "--json")
    assert opened.returncode == 0, opened.stderr  # its codes open with the key file


@pytest.mark.postgres_only
def test_a_postgresql_database_is_backed_up_with_pg_dump(database, tmp_path):
    refused = run_cli("admin", *database_args(database), "backup", "--to", str(tmp_path / "b"))
    assert refused.returncode == 1
    assert "pg_dump" in refused.stderr


@pytest.mark.sqlite_only
def test_long_jobs_show_progress_on_a_terminal_and_print_only_json_elsewhere(database, tmp_path):
    run_cli("admin", *database_args(database), "load", _dataset(tmp_path))
    codes = tmp_path / "codes.csv"
    codes.write_text("redeemCode,pinCode\n" + "".join(f"BULK-{n},\n" for n in range(5000)))
    add = ["admin", *database_args(database), "add-codes", "--sku", "8PX-UF-Y5U"]

    on_terminal = _with_a_terminal_for_stderr([*add, "--file", str(codes)])
    assert on_terminal.returncode == 0
    assert json.loads(on_terminal.stdout) == {"added": 5000}
    # A bar of the 5000 codes (how far it got before the end depends on the machine).
    assert "codes/s" in on_terminal.stderr and "/5000 [" in on_terminal.stderr

    codes.write_text("redeemCode,pinCode\n" + "".join(f"MORE-{n},\n" for n in range(5000)))
    piped = run_cli(*add, "--file", str(codes))
    assert piped.returncode == 0
    assert (json.loads(piped.stdout), piped.stderr) == ({"added": 5000}, "")


def test_the_configuration_reference_is_current():
    written = (ROOT / "docs" / "configuration.md").read_text()
    assert written == configuration_reference(), (
        "docs/configuration.md is stale: instant-orders configuration > docs/configuration.md"
    )


def _with_a_terminal_for_stderr(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Runs the command with stderr on a pseudo-terminal (stdout a pipe); what each got."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 wide
    try:
        process = subprocess.Popen(command(*args), cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=terminal, text=True)  # fmt: skip
        os.close(terminal)
        written = bytearray()
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal's other side closed: the process ended
                break
            if not chunk:
                break
            written += chunk
        stdout = process.stdout.read() if process.stdout else ""
        process.wait(60)
        if process.stdout:
            process.stdout.close()
    finally:
        os.close(controller)
    return subprocess.CompletedProcess(args, process.returncode, stdout, written.decode())


async def _orders_until(session, url: str, headers: dict[str, str], backup: Path) -> int:
    """Places orders one after another until the backup exists and is complete."""
    placed = 0
    body = {"sku": "JPY-NT-1000", "payWithCurrency": "JPY"}
    while not (backup.exists() and backup.stat().st_size > 0) or placed < 5:
        async with session.post(f"{url}/v2/orders/instant", json=body, headers=headers) as answer:
            placed += answer.status == 200
    return placed


async def _headers(session, url: str, account: dict[str, str]) -> dict[str, str]:
    form = {"grant_type": "client_credentials", "client_id": account["apiKey"],
            "client_secret": account["apiSecret"]}  # fmt: skip
    async with session.post(f"{url}/v2/auth/token", data=form) as response:
        token = (await response.json())["access_token"]
    return {"x-api-key": account["apiKey"], "Authorization": f"Bearer {token}"}


def _dataset(tmp_path: Path) -> str:
    path = tmp_path / "dataset.json"
    accounts = [{"name": "acme", "balances": {"USD": "100.00", "JPY": "10000000"}}]
    path.write_text(json.dumps({**DATASET, "accounts": accounts}))
    return str(path)
