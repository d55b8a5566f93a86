"""Running `instant-orders` as a real process, and waiting on conditions with a deadline."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
_LOGS: dict[int, IO[str]] = {}
#: The processes the running test started, released after it (see `release_all`).
_STARTED: list[subprocess.Popen[str]] = []


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "server.cli", *args]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Starts `instant-orders ARGS`. Its stdout is a pipe; its log (stderr) goes to a
    temporary file, so that a chatty process never blocks on a pipe nobody reads
    (see `log_of`)."""
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        command(*args),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    _LOGS[process.pid] = log
    _STARTED.append(process)
    return process


def release_all() -> None:
    """Kills what the test left running and closes every pipe and log it opened."""
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()
        _LOGS.pop(process.pid).close()


def log_of(process: subprocess.Popen[str]) -> str:
    """Everything the process wrote to stderr so far."""
    log = _LOGS[process.pid]
    log.seek(0)
    return log.read()


#: Ports for the processes a test starts: below Linux's ephemeral range (32768 up),
#: where no client socket of this or another test lands between the choice of a
#: port and its use, and a block of its own for each pytest-xdist worker.
_PORTS_PER_WORKER = 4000
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_next_port = itertools.count(
    10_000 + _WORKER * _PORTS_PER_WORKER + random.randrange(_PORTS_PER_WORKER // 2)
)


def unused_port() -> int:
    """A port nothing listens on, not handed out before in this session."""
    while True:
        port = next(_next_port)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Waits until `check()` is true; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


def stop(process: subprocess.Popen[str], timeout: float = 15.0) -> int:
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(timeout)
    finally:
        if process.poll() is None:
            process.kill()


async def healthy(url: str) -> bool:
    """Whether the gateway at `url` (its /healthz) answers 200."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def start_service(
    database_args: list[str], *options: str, timeout: float = 30
) -> tuple[subprocess.Popen[str], str]:
    """`instant-orders serve` on free ports with the per-key rate limits off; waits until
    its gateway reports the gRPC server healthy. Returns it and its REST base URL."""
    http_port = unused_port()
    process = start(
        "serve", *database_args,
        "--http-listen", f"127.0.0.1:{http_port}", "--grpc-listen", f"127.0.0.1:{unused_port()}",
        "--rate-limit-orders", "0", "--rate-limit-reads", "0", *options,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    await eventually(lambda: healthy(f"{url}/healthz"), timeout=timeout)
    return process, url


#: Each command that opens the database: its words before and after the database options.
COMMANDS_OPENING_THE_DATABASE = {
    "serve": (["serve", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"], []),
    "server": (["server", "--grpc-listen", "127.0.0.1:0"], []),
    "worker": (["worker"], []),
    "admin report": (["admin"], ["report"]),
    "admin migrate": (["admin"], ["migrate"]),
}


def serve_loaded(
    tmp_path: Path, dataset: dict[str, Any], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str, dict[str, Any]]:
    """`serve` on free ports over a new database loaded with `dataset`: the process,
    its REST address, and the first account as `admin load` printed it."""
    database, dataset_file = tmp_path / "orders.db", tmp_path / "dataset.json"
    dataset_file.write_text(json.dumps(dataset))
    loaded = run_cli("admin", "--database", str(database), "load", str(dataset_file))
    http_port = unused_port()
    process = start(
        "serve", "--database", str(database), "--http-listen", f"127.0.0.1:{http_port}",
        "--grpc-listen", f"127.0.0.1:{unused_port()}", env=env,
    )  # fmt: skip
    return process, f"http://127.0.0.1:{http_port}", json.loads(loaded.stdout)["accounts"][0]
