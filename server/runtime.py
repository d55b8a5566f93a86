"""Running the processes: the gRPC server, the gateway, or both, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from grpc_health.v1 import health_pb2

from gateway import probes
from gateway.app import GatewaySettings, start_gateway
from server import metrics, tls, tracing
from server.domain.clock import utc_now
from server.domain.errors import log_retried_failure
from server.domain.failures import StorageFailing
from server.domain.fulfillment import Fulfiller, InventorySource
from server.domain.ports import Store
from server.domain.service import InstantOrdersService
from server.keys import CodeCipher, load_or_create
from server.metrics import PrometheusObserver, serve_metrics
from server.rpc.app import RunningServer, start_server
from server.rpc.interceptors import ClientAddresses
from server.settings import Settings
from server.store import backends, rate_limits
from server.store.postgres import PoolSettings

log = logging.getLogger("instant_orders")
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def serve(
    settings: Settings,
    *,
    grpc: bool = True,
    gateway: bool = True,
    on_ready: Callable[[dict[str, int]], None] | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT, then stops gracefully.

    The gateway stops first (no new HTTP requests; those in flight finish),
    then the gRPC server (health NOT_SERVING, in-flight calls finish within
    the grace period), then the database closes.
    """
    if grpc and gateway:  # the gateway calls its own server over loopback, in plaintext
        tls.refuse_in_one_process(settings)
    stop = _stop_on_signals()
    _observability(settings, "instant-orders")
    if settings.metrics_listen and not gateway:  # with a gateway, its /metrics shows all
        serve_metrics(settings.metrics_listen)
    # Proves to the server that a call comes from this process's gateway.
    in_process_token = secrets.token_urlsafe(32) if grpc and gateway else ""
    async with contextlib.AsyncExitStack() as stack:
        ports: dict[str, int] = {}
        upstream = settings.upstream
        server = app = None
        if grpc:
            server = await stack.enter_async_context(_grpc_server(settings, in_process_token))
            ports["grpc"] = server.port
            upstream = f"{local_host(settings.grpc_listen)}:{server.port}"
            log.info("gRPC server listening on %s", _address(settings.grpc_listen, server.port))
        if gateway:
            http_port, app = await stack.enter_async_context(
                _gateway(settings, upstream, in_process_token)
            )
            ports["http"] = http_port
            log.info("REST gateway listening on %s", _address(settings.http_listen, http_port))
        if on_ready:
            on_ready(ports)
        await stop.wait()
        await _drain(settings, server, app)
        log.info("stopping: finishing the requests in flight")
    log.info("stopped")


def _observability(settings: Settings, service_name: str) -> None:
    if settings.metrics == "off":
        metrics.switch_off()
    tracing.configure(settings.otlp_endpoint, service_name)


async def _drain(settings: Settings, server: RunningServer | None, app: Any) -> None:
    """Fails readiness for the drain period while still serving, so that load
    balancers stop sending traffic before the listeners close."""
    if settings.shutdown_drain_seconds <= 0:
        return
    log.info("draining for %s s: readiness fails, requests are still served",
             settings.shutdown_drain_seconds)  # fmt: skip
    if app is not None:
        app[probes.DRAINING] = True
    if server is not None:
        server.draining = True
        await server.set_ready(False)
    await asyncio.sleep(settings.shutdown_drain_seconds)


async def work(settings: Settings) -> None:
    """Runs the fulfiller alone (`instant-orders worker`) until SIGTERM or SIGINT."""
    stop = _stop_on_signals()
    _observability(settings, "instant-orders-worker")
    if settings.metrics_listen:
        serve_metrics(settings.metrics_listen)
    store = await open_store(settings)
    try:
        async with _background(_fulfiller(settings, store).run(), _stock_gauges(store)):
            log.info("fulfilling orders from %s", backends.shown(settings.database))
            await stop.wait()
    finally:
        await store.close()
    log.info("stopped")


@contextlib.asynccontextmanager
async def _grpc_server(settings: Settings, in_process_token: str) -> AsyncIterator[RunningServer]:
    credentials = tls.server_credentials(settings)  # a bad file stops us before the database
    store = await open_store(settings)
    shared_limits = None
    try:
        shared_limits = await rate_limits.open_shared(settings.database)
        signing_key = load_or_create(settings.key_file).token_signing_key
        service = InstantOrdersService(
            store,
            signing_key,
            settings.token_lifetime,
            limits=settings.limits,
            observer=PrometheusObserver(),
            shared_limits=shared_limits,
        )
        fulfiller = _fulfiller(settings, store, on_change=service.updates.notify)
        addresses = ClientAddresses(settings.proxies, in_process_token)
        server = await start_server(service, settings.grpc_listen, addresses, credentials)
        jobs = (
            fulfiller.run(),
            service.updates.run(),
            _stock_gauges(store),
            watch_readiness(store, server),
        )
        async with _background(*jobs):
            try:
                yield server
            finally:
                # Open WatchOrder streams end now (UNAVAILABLE: watch again),
                # instead of holding the stop for the whole grace period.
                service.updates.close()
                await server.stop(settings.shutdown_grace_seconds)
    finally:
        if shared_limits is not None:
            await shared_limits.close()
        await store.close()


async def open_store(settings: Settings) -> Store:
    """The database, its codes sealed with the data keys of the key file."""
    pool = PoolSettings(settings.database_pool_size, settings.database_statement_timeout_seconds)
    return await backends.open_store(settings.database, CodeCipher(settings.key_file), pool)


def _fulfiller(
    settings: Settings, store: Store, on_change: Callable[[list[str]], None] | None = None
) -> Fulfiller:
    return Fulfiller(
        store,
        InventorySource(store),
        settings.fulfillment_timeout,
        utc_now,
        on_change,
        batch_size=settings.fulfillment_batch,
        key_retention=settings.idempotency_retention,
        observer=PrometheusObserver(),
    )


#: How often the stock and backlog gauges are read from the database.
GAUGES_INTERVAL_SECONDS = 15.0
#: How often readiness asks the database, and how long it may take to answer.
READINESS_INTERVAL_SECONDS = 1.0


async def _stock_gauges(store: Store) -> None:
    """Keeps instant_orders_stock_units and the backlog gauges current."""
    while True:
        try:
            await refresh_stock_gauges(store)
        except Exception as error:
            log_retried_failure(log, "reading the stock levels failed", error)
        await asyncio.sleep(GAUGES_INTERVAL_SECONDS)


async def refresh_stock_gauges(store: Store) -> None:
    levels = await store.stock_levels()
    now = utc_now()
    oldest = [level.oldest_waiting_since for level in levels if level.oldest_waiting_since]
    metrics.stock(
        [(level.sku, level.unsold, level.waiting) for level in levels],
        (now - min(oldest)).total_seconds() if oldest else 0.0,
    )


#: What readiness finds the database doing.
_READY, _STORAGE_FAILING, _NOT_ANSWERING = "ready", "storage failing", "not answering"


async def watch_readiness(store: Store, server: RunningServer) -> None:
    """Reports the API's services SERVING only while the database answers within the
    interval, and probes.STORAGE_SERVICE NOT_SERVING while its storage fails (a full
    disk): the gateway's /readyz reads both."""
    state = _READY
    while not server.draining:
        found = await _database_state(store)
        if found != state and not server.draining:
            _log_readiness(state, found)
            state = found
            await server.set_ready(state == _READY)
            storage = _NOT_SERVING if state == _STORAGE_FAILING else _SERVING
            await server.health.set(probes.STORAGE_SERVICE, storage)
        await asyncio.sleep(READINESS_INTERVAL_SECONDS)


async def _database_state(store: Store) -> str:
    try:
        await asyncio.wait_for(store.ping(), READINESS_INTERVAL_SECONDS)
    except StorageFailing:
        return _STORAGE_FAILING
    except Exception:  # down, hung: not ready, whatever the cause
        return _NOT_ANSWERING
    return _READY


def _log_readiness(was: str, now: str) -> None:
    """A failing storage is not logged here: the store logs it, once per burst."""
    if now == _NOT_ANSWERING:
        log.warning("database not answering: readiness fails")
    elif was == _NOT_ANSWERING and now == _READY:
        log.warning("database back: readiness restored")


@contextlib.asynccontextmanager
async def _background(*jobs: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Runs the jobs as tasks while the block runs; cancels them after it."""
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def _gateway(
    settings: Settings, upstream: str, in_process_token: str
) -> AsyncIterator[tuple[int, Any]]:
    runner, port, channel = await start_gateway(
        GatewaySettings(
            upstream=upstream,
            http_listen=settings.http_listen,
            shutdown_grace_seconds=settings.shutdown_grace_seconds,
            trusted_proxies=settings.proxies,
            in_process_token=in_process_token,
            upstream_credentials=tls.upstream_credentials(settings),
        )
    )
    try:
        yield port, runner.app
    finally:
        await runner.cleanup()
        await channel.close()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def local_host(listen: str) -> str:
    """The host to reach a listener on from this machine."""
    host = listen.rpartition(":")[0]
    return "127.0.0.1" if host in ("", "0.0.0.0", "[::]") else host  # noqa: S104


def _address(listen: str, port: int) -> str:
    return f"{listen.rpartition(':')[0]}:{port}"
