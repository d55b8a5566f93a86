"""Fixtures: a real database (a SQLite file, or a PostgreSQL schema: every test that
takes `database` runs on both unless marked sqlite_only), the real gRPC server
in-process on port 0, the real gateway."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import HTTP_LIMITS, GatewaySettings, create_app
from server.domain import admin, auth
from server.domain import limits as limits_module
from server.domain.clients import TrustedProxies
from server.domain.clock import utc_now
from server.domain.fulfillment import Fulfiller
from server.domain.limits import DEFAULT_LIMITS, Limits, SharedBuckets
from server.domain.ports import Store
from server.domain.service import InstantOrdersService
from server.metrics import PrometheusObserver
from server.rpc.app import RunningServer, start_server
from server.rpc.interceptors import ClientAddresses
from server.store import rate_limits
from tests.api import Account, GrpcApi, RestApi
from tests.databases import (
    drop_postgres_schema,
    new_postgres_schema,
    postgres_unreachable,
)
from tests.helpers import DATASET, make_fulfiller, open_store, signing_key
from tests.processes import release_all

BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Runs every test that uses the database on each backend."""
    if "backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker
        if marker("sqlite_only"):
            metafunc.parametrize("backend", ["sqlite"])
        elif marker("postgres_only"):
            metafunc.parametrize("backend", ["postgresql"])
        else:
            metafunc.parametrize("backend", BACKENDS)


def pytest_report_header() -> str:
    reason = postgres_unreachable()
    if reason:
        return f"PostgreSQL half: SKIPPED ({reason})"
    return "PostgreSQL half: runs (a fresh schema per test)"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    reason = postgres_unreachable()
    if reason:
        terminalreporter.write_line(f"PostgreSQL half SKIPPED: {reason}", yellow=True, bold=True)


@pytest.fixture(autouse=True)
def _processes_released() -> Iterator[None]:
    """Every process a test starts is gone after it, with its pipes and log closed."""
    yield
    release_all()


@pytest.fixture
def database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file path or a PostgreSQL URL."""
    if backend == "sqlite":
        yield str(tmp_path / "orders.db")
        return
    reason = postgres_unreachable()
    if reason:
        pytest.skip(reason)
    url = new_postgres_schema(tmp_path)
    yield url
    drop_postgres_schema(url)


@pytest.fixture
async def store(database: str) -> AsyncIterator[Store]:
    store = await open_store(database)
    yield store
    await store.close()


@pytest.fixture
def limits() -> Limits:
    """The abuse limits of the service under test; a test module may override it."""
    return DEFAULT_LIMITS


@pytest.fixture
async def shared_limits(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SharedBuckets | None]:
    """The rate-limit buckets the replicas share, as `serve` opens them: PostgreSQL only.
    A check waits up to 1 s for them, not 50 ms: on a machine busy with the other test
    worker a slow answer would fail open to the process's own buckets, which only the
    tests of tests/test_shared_limits.py are about (with buckets of their own)."""
    monkeypatch.setattr(limits_module, "SHARED_TIMEOUT_SECONDS", 1.0)
    shared = await rate_limits.open_shared(database)
    yield shared
    if shared is not None:
        await shared.close()


@pytest.fixture
async def service(
    store: Store, database: str, limits: Limits, shared_limits: SharedBuckets | None
) -> InstantOrdersService:
    return InstantOrdersService(
        store,
        signing_key(database),
        timedelta(hours=1),
        limits=limits,
        observer=PrometheusObserver(),
        shared_limits=shared_limits,
    )


@pytest.fixture
async def accounts(
    store: Store, service: InstantOrdersService, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Account]:
    """The dataset's accounts, each with a fresh bearer token."""
    with _secrets_of_the_session(monkeypatch):
        created = await admin.load_dataset(store, copy.deepcopy(DATASET), utc_now())
    result = {}
    for item in created:
        token = await service.issue_token("client_credentials", item.api_key, item.api_secret)
        result[item.name] = Account(
            item.name, item.account_id, item.api_key, item.api_secret, token.access_token
        )
    return result


#: The dataset's API secrets and their hashes, made once per session: scrypt
#: costs ~50 ms each time, and every test on the API signs its accounts in.
_SESSION_SECRETS: list[str] = []
_SESSION_HASHES: dict[str, str] = {}
_REAL_SCRYPT = auth._scrypt


@functools.cache
def _remembered_scrypt(secret: str, salt: bytes) -> bytes:
    return _REAL_SCRYPT(secret, salt)


@contextlib.contextmanager
def _secrets_of_the_session(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Within it, the n-th secret admin makes is the session's n-th, with the same
    hash (the real scrypt's, remembered); signing in with it reuses the result.
    Tests of secrets and tokens themselves make their own keys and pay in full."""
    made = iter(range(len(DATASET["accounts"]) * 4))

    def session_secret() -> str:
        n = next(made)
        while len(_SESSION_SECRETS) <= n:
            _SESSION_SECRETS.append(auth.new_api_secret())
        return _SESSION_SECRETS[n]

    def remembered_hash(secret: str) -> str:
        if secret not in _SESSION_HASHES:
            _SESSION_HASHES[secret] = auth.hash_secret(secret)
        return _SESSION_HASHES[secret]

    monkeypatch.setattr(auth, "_scrypt", _remembered_scrypt)
    with monkeypatch.context() as during:
        during.setattr(admin, "new_api_secret", session_secret)
        during.setattr(admin, "hash_secret", remembered_hash)
        yield


@pytest.fixture
def trusted_proxies() -> TrustedProxies:
    """--trusted-proxies of the server and gateway under test (none); a test may override it."""
    return TrustedProxies()


#: Wires the gateway and the server under test as `serve` does: the server believes
#: the client address its in-process gateway names, and no other loopback peer's.
IN_PROCESS_TOKEN = "in-process-token-of-the-tests"


@pytest.fixture
async def grpc_server(
    service: InstantOrdersService, trusted_proxies: TrustedProxies
) -> AsyncIterator[RunningServer]:
    addresses = ClientAddresses(trusted_proxies, IN_PROCESS_TOKEN)
    server = await start_server(service, "127.0.0.1:0", addresses)
    yield server
    await server.stop(grace=1)


@pytest.fixture
def grpc_port(grpc_server: RunningServer) -> int:
    return grpc_server.port


@pytest.fixture
async def channel(grpc_port: int) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        yield channel


@pytest.fixture
async def http(
    channel: grpc.aio.Channel, trusted_proxies: TrustedProxies
) -> AsyncIterator[TestClient[Any, Any]]:
    settings = GatewaySettings(
        rpc_timeout_seconds=5, trusted_proxies=trusted_proxies, in_process_token=IN_PROCESS_TOKEN
    )
    server = TestServer(create_app(channel, settings))
    await server.start_server(**HTTP_LIMITS)  # the production parser limits
    async with TestClient(server) as client:
        yield client


@pytest.fixture(params=["rest", "grpc"])
def api(request: pytest.FixtureRequest, http: TestClient[Any, Any], channel: grpc.aio.Channel):
    """The API over each transport in turn."""
    return RestApi(http) if request.param == "rest" else GrpcApi(channel)


@pytest.fixture
async def fulfilling(store: Store, service: InstantOrdersService) -> AsyncIterator[Fulfiller]:
    """The fulfiller and the watchers' poller running in the background, as in the server."""
    fulfiller = make_fulfiller(store, service)
    tasks = [asyncio.create_task(fulfiller.run()), asyncio.create_task(service.updates.run())]
    yield fulfiller
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
