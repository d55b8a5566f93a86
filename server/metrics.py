"""Prometheus metrics: the names of the ecosystem, labels bounded.

The gRPC metrics are those of the grpc-ecosystem Prometheus interceptors; the
HTTP ones follow OpenTelemetry's semantic conventions; the business ones are
ours. No label holds an account, a key, a transaction id or a code: only
methods, route templates, statuses, reasons, budgets, backends, operations and
SKUs (the catalogue is bounded).

Everything registers in prometheus_client's default registry: `serve` shows
the gateway's and the server's at the gateway's /metrics; a `server` or
`worker` alone shows its own at --metrics-listen. The layers record through
the functions below, which do nothing once `switch_off()` ran (the setting
`metrics = off`, to measure what the metrics cost).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

#: Latency buckets in seconds, from a cached read to a slow transaction.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _State:
    on = True


# --- gRPC server (grpc-ecosystem/go-grpc-prometheus names) --------------------------
GRPC_STARTED = Counter(
    "grpc_server_started",
    "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
GRPC_HANDLED = Counter(
    "grpc_server_handled",
    "RPCs completed on the server, whatever their status.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
GRPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC, until the application answered.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=_SECONDS,
)

# --- REST gateway ---------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "http_server_requests",
    "HTTP requests answered by the gateway.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "http_server_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["method", "route"],
    buckets=_SECONDS,
)

# --- the business -----------------------------------------------------------------------
ORDERS = Counter(
    "instant_orders_orders",
    "Orders answered: placed (outcome: completed, processing), refused (outcome: the"
    " reason) or replayed for their Idempotency-Key.",
    ["kind", "outcome"],
)
FULFILLED = Counter("instant_orders_fulfilled", "Waiting orders completed by the fulfiller.")
CANCELLED = Counter(
    "instant_orders_cancelled",
    "Orders cancelled and refunded (cause: deadline, customer).",
    ["cause"],
)
BACKLOG_UNITS = Gauge("instant_orders_backlog_units", "Units of stock waiting orders wait for.")
BACKLOG_OLDEST_AGE = Gauge(
    "instant_orders_backlog_oldest_age_seconds", "How long the oldest waiting order has waited."
)
STOCK_UNITS = Gauge("instant_orders_stock_units", "Unsold codes in stock.", ["sku"])
RATE_LIMITED = Counter("instant_orders_rate_limited", "Calls refused for a rate limit.", ["budget"])
DB_SECONDS = Histogram(
    "instant_orders_db_transaction_seconds",
    "Time of a database transaction, from asking to its result.",
    ["backend", "operation"],
    buckets=_SECONDS,
)
WRITE_BATCH = Histogram(
    "instant_orders_write_batch_size",
    "Writes committed together (SQLite's group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


def switch_off() -> None:
    """Records nothing from now on (the metrics stay, at their values)."""
    _State.on = False


#: Labelled children by their labels: prometheus_client's labels() takes a lock and
#: builds its key on every call; a dictionary lookup here costs a fraction of it.
_CHILDREN: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (metric, *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def db_transaction(backend: str, operation: str, seconds: float) -> None:
    if _State.on:
        _child(DB_SECONDS, backend, operation).observe(seconds)


def write_batch(size: int) -> None:
    if _State.on:
        WRITE_BATCH.observe(size)


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    if _State.on:
        _child(HTTP_SECONDS, method, route).observe(seconds)
        _child(HTTP_REQUESTS, method, route, str(status)).inc()


def rate_limited(budget: str) -> None:
    if _State.on:
        RATE_LIMITED.labels(budget).inc()


class RpcMethod:
    """One gRPC method's series, made once (a labelled child costs a lookup)."""

    def __init__(self, kind: str, service: str, method: str) -> None:
        self._labels = (kind, service, method)
        self._started = GRPC_STARTED.labels(*self._labels)
        self._seconds = GRPC_SECONDS.labels(*self._labels)

    def started(self) -> None:
        if _State.on:
            self._started.inc()

    def handled(self, code: str, seconds: float) -> None:
        if _State.on:
            self._seconds.observe(seconds)
            _child(GRPC_HANDLED, *self._labels, code).inc()


def stock(levels: list[tuple[str, int, int]], oldest_wait_seconds: float) -> None:
    """(sku, unsold, waiting) of each product, and the oldest waiting order's age."""
    if not _State.on:
        return
    for sku, unsold, _ in levels:
        STOCK_UNITS.labels(sku).set(unsold)
    BACKLOG_UNITS.set(sum(waiting for _, _, waiting in levels))
    BACKLOG_OLDEST_AGE.set(oldest_wait_seconds)


class PrometheusObserver:
    """The domain's events as counters."""

    def order_answered(self, kind: str, outcome: str) -> None:
        if _State.on:
            _child(ORDERS, kind, outcome).inc()

    def orders_completed(self, count: int) -> None:
        if _State.on:
            FULFILLED.inc(count)

    def orders_cancelled(self, cause: str, count: int) -> None:
        if _State.on:
            CANCELLED.labels(cause).inc(count)


def serve_metrics(listen: str) -> None:
    """Serves /metrics on `listen` ("host:port") from a thread of its own."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1")
