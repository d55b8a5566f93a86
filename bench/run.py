"""`make bench`: the service beside the framework's ceiling, measured in one run.

Every scenario runs RUNS times after a warm-up; each figure is the median of
the runs and, where a ceiling applies, a ratio to the ceiling measured the
same way in the same run. See bench/ceiling.py for what a ceiling is.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from instantorders.v2 import auth_pb2, auth_pb2_grpc, orders_pb2, orders_pb2_grpc

from bench import report
from bench.history import add_history
from bench.load import CONCURRENCY, Load, h2load_grpc, median, require_tools, wrk_http
from bench.processes import (
    Meter,
    Process,
    free_port,
    rss_mib,
    start,
    wait_for_grpc,
    wait_for_http,
)
from bench.report import Scenario
from server.domain.admin import load_dataset
from server.domain.ports import NewCode
from server.keys import CodeCipher
from server.store.sqlite import SqliteStore

T = TypeVar("T")

RESULTS = Path(__file__).resolve().parent / "results"
ORDERS = "/instantorders.v2.OrdersService/CreateInstantOrder"
LIST_ORDERS = "/instantorders.v2.OrdersService/ListOrders"
GET_CODES = "/instantorders.v2.OrdersService/GetCodes"
IN_STOCK, OUT_OF_STOCK, HISTORY = "BENCH-IN", "BENCH-OUT", "BENCH-HISTORY"
#: Codes added before a phase of in-stock orders, per second of load in it.
STOCK_PER_SECOND = 2_500
BACKLOG_ORDERS = 10_000
BULK_UNITS = 10_000
PRODUCTS = [
    {"sku": sku, "name": f"Bench {sku}", "brand": "Bench", "currency": "USD", "price": "1.00",
     "faceValue": "1.00", "instantDeliverySupported": True}
    for sku in (IN_STOCK, OUT_OF_STOCK, HISTORY, *(f"BENCH-BACKLOG-{n}" for n in range(1, 10)),
                *(f"BENCH-BULK-{n}" for n in range(1, 10)))
]  # fmt: skip


@dataclass(frozen=True)
class Options:
    runs: int
    seconds: int
    warmup_seconds: int
    stored_orders: int
    memory_orders: int


class Bench:
    def __init__(self, workdir: Path, options: Options) -> None:
        self.workdir = workdir
        self.options = options
        self.database = workdir / "bench.db"
        self.grpc_target = f"127.0.0.1:{free_port()}"
        self.http_base = f"http://127.0.0.1:{free_port()}"
        self.ceiling_target = f"127.0.0.1:{free_port()}"
        self.ceiling_http_base = f"http://127.0.0.1:{free_port()}"
        self.forwarder_http_base = f"http://127.0.0.1:{free_port()}"
        self.processes: list[Process] = []
        self.scenarios: dict[str, Scenario] = {}
        self.headers: dict[str, str] = {}
        self.account_id = 0
        self.api_key = ""
        self.api_secret = ""
        self.transaction_id = ""  # an in-stock order's, for polling and GetCodes

    # --- setting up -----------------------------------------------------------------

    def prepare(self) -> None:
        """A fresh database with a funded account and the bench products."""
        document = {
            "accounts": [{"name": "bench", "balances": {"USD": "100000000000.00"}}],
            "products": PRODUCTS,
        }

        (account,) = asyncio.run(
            self._with_store(lambda store: load_dataset(store, document, datetime.now(UTC)))
        )
        self.account_id = account.account_id
        self.api_key, self.api_secret = account.api_key, account.api_secret

    @property
    def _key_file(self) -> str:
        return f"{self.database}.key"

    def start_service(self) -> tuple[Process, Process]:
        """`instant-orders server` and `instant-orders gateway`, as production runs
        them (separate processes), with the per-key rate limits off."""
        server = self.start_server()
        gateway = self._start_gateway("gateway", self.grpc_target, self.http_base)
        self.processes.append(gateway)
        return server, gateway

    def start_server(self, env: dict[str, str] | None = None) -> Process:
        server = start(
            "server", self.workdir, "-m", "server.cli", "server",
            "--database", str(self.database), "--grpc-listen", self.grpc_target,
            "--rate-limit-orders", "0", "--rate-limit-reads", "0", env=env,
        )  # fmt: skip
        wait_for_grpc(server, self.grpc_target)
        self.processes.append(server)
        return server

    def start_ceiling(self, replies: dict[str, bytes]) -> tuple[Process, Process, Process]:
        """The ceiling's echo, the production gateway in front of it, and the bare
        forwarder in front of it."""
        replies_file = self.workdir / "replies.json"
        replies_file.write_text(
            json.dumps({path: base64.b64encode(reply).decode() for path, reply in replies.items()})
        )
        stub = start(
            "ceiling", self.workdir, "-m", "bench.ceiling",
            "--listen", self.ceiling_target, "--replies", str(replies_file),
        )  # fmt: skip
        wait_for_grpc(stub, self.ceiling_target)
        gateway = self._start_gateway(
            "ceiling-gateway", self.ceiling_target, self.ceiling_http_base
        )
        forwarder = start(
            "forwarder", self.workdir, "-m", "bench.forwarder",
            "--listen", self.forwarder_http_base.removeprefix("http://"),
            "--upstream", self.ceiling_target,
        )  # fmt: skip
        wait_for_http(forwarder, f"{self.forwarder_http_base}/healthz")
        self.processes += [stub, gateway, forwarder]
        return stub, gateway, forwarder

    def _start_gateway(
        self, name: str, upstream: str, base: str, env: dict[str, str] | None = None
    ) -> Process:
        gateway = start(
            name, self.workdir, "-m", "server.cli", "gateway",
            "--upstream", upstream, "--http-listen", base.removeprefix("http://"), env=env,
        )  # fmt: skip
        wait_for_http(gateway, f"{base}/healthz")
        return gateway

    def sign_in(self) -> None:
        with grpc.insecure_channel(self.grpc_target) as channel:
            token = auth_pb2_grpc.AuthServiceStub(channel).IssueToken(
                auth_pb2.IssueTokenRequest(
                    grant_type="client_credentials",
                    client_id=self.api_key,
                    client_secret=self.api_secret,
                )
            )
        self.headers = {"x-api-key": self.api_key, "authorization": f"Bearer {token.access_token}"}

    def record_replies(self) -> dict[str, bytes]:
        """One real reply per RPC, for the ceiling to send back."""
        with grpc.insecure_channel(self.grpc_target) as channel:
            orders = orders_pb2_grpc.OrdersServiceStub(channel)
            metadata = list(self.headers.items())
            order = orders.CreateInstantOrder(_order_request(IN_STOCK), metadata=metadata)
            self.transaction_id = order.transaction_id
            listed = orders.ListOrders(
                orders_pb2.ListOrdersRequest(transaction_id=order.transaction_id),
                metadata=metadata,
            )
            codes = orders.GetCodes(
                orders_pb2.GetCodesRequest(transaction_id=order.transaction_id),
                metadata=metadata,
            )
        assert order.status == orders_pb2.COMPLETED, "the bench SKU must be in stock"
        return {
            ORDERS: order.SerializeToString(),
            LIST_ORDERS: listed.SerializeToString(),
            GET_CODES: codes.SerializeToString(),
        }

    def add_codes(self, sku: str, count: int) -> None:
        """Stock, committed when this returns (as `admin add-codes` would commit it)."""
        prefix = f"{sku}-{time.time_ns()}"
        codes = [NewCode(sku, f"{prefix}-{n}", f"{n % 10000:04d}") for n in range(count)]
        asyncio.run(self._with_store(lambda store: store.add_codes(codes, datetime.now(UTC))))

    async def _with_store(self, work: Callable[[SqliteStore], Awaitable[T]]) -> T:
        store = await SqliteStore.open(self.database, CodeCipher(self._key_file))
        try:
            return await work(store)
        finally:
            await store.close()

    def ensure_stock(self, seconds_of_load: float, orders: int = 0) -> None:
        """Enough in-stock codes for that much load at up to STOCK_PER_SECOND."""
        needed = int(seconds_of_load * STOCK_PER_SECOND) + orders
        unsold = self.unsold_codes(IN_STOCK)
        if unsold < needed:
            self.add_codes(IN_STOCK, needed - unsold)

    def restart_server(self, server: Process) -> Process:
        """A fresh server process on the same port (the gateway reconnects)."""
        server.stop()
        self.processes.remove(server)
        return self.start_server()

    def restart_service(
        self, server: Process, gateway: Process, env: dict[str, str]
    ) -> tuple[Process, Process]:
        """Both service processes anew, on the same ports, with `env`."""
        for process in (gateway, server):
            process.stop()
            self.processes.remove(process)
        server = self.start_server(env)
        gateway = self._start_gateway("gateway", self.grpc_target, self.http_base, env)
        self.processes.append(gateway)
        return server, gateway

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    # --- database facts (read-only, beside the running service) ----------------------

    def count(self, sql: str, *parameters: object) -> int:
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as db:
            db.execute("PRAGMA busy_timeout = 5000")
            (value,) = db.execute(sql, parameters).fetchone()
        return int(value)

    def orders_of(self, sku: str, status: str | None = None) -> int:
        if status is None:
            return self.count("SELECT count(*) FROM orders WHERE sku = ?", sku)
        return self.count("SELECT count(*) FROM orders WHERE sku = ? AND status = ?", sku, status)

    def unsold_codes(self, sku: str) -> int:
        return self.count("SELECT count(*) FROM codes WHERE sku = ? AND order_id IS NULL", sku)

    # --- measuring ------------------------------------------------------------------

    def measure(
        self,
        name: str,
        ceiling: str | None,
        meter: Meter,
        load: Callable[[float], Load],
        check: Callable[[], Callable[[Load], None]] | None = None,
    ) -> Scenario:
        """Warms up, then runs the load RUNS times. `check()`, called before each
        run, returns what verifies the run's effects."""
        load(self.options.warmup_seconds)
        runs = []
        for _ in range(self.options.runs):
            verify = check() if check else None
            with meter.measuring() as cost:
                result = load(self.options.seconds)
            if result.failures:
                raise RuntimeError(f"{name}: {result.failures} requests failed")
            if verify:
                verify(result)
            per_request = 1e6 / max(result.requests, 1)
            runs.append(
                {**asdict(result), "throughput": result.throughput, **asdict(cost),
                 "cpu_percent": 100 * cost.cpu_seconds / result.seconds,
                 "gateway_cpu_us": cost.gateway_cpu_seconds * per_request,
                 "server_cpu_us": cost.server_cpu_seconds * per_request}
            )  # fmt: skip
        scenario = Scenario(name, ceiling, runs)
        self.scenarios[name] = scenario
        print(report.line(scenario, self.scenarios.get(ceiling or "")), flush=True)
        return scenario

    def grpc_load(self, target: str, rpc: str, message: bytes) -> Callable[[float], Load]:
        return lambda seconds: h2load_grpc(target, rpc, message, self.headers, seconds)

    def http_load(
        self, base: str, method: str, path: str, body: bytes = b"", unique_header: str = ""
    ) -> Callable[[float], Load]:
        headers = {**self.headers, "content-type": "application/json"} if body else self.headers
        return lambda seconds: wrk_http(
            base + path, method, body, headers, seconds, unique_header=unique_header
        )

    def orders_written(self, sku: str) -> Callable[[], Callable[[Load], None]]:
        """Every answered order exists (h2load cannot see grpc-status: a failed call
        would show here as a missing order), and in-stock orders never ran out of
        stock. Calls in flight when the previous run or the warm-up ended, and when
        this run ends, may add up to one order per connection each."""

        def begin() -> Callable[[Load], None]:
            before = self.orders_of(sku)

            def verify(load: Load) -> None:
                written = self.orders_of(sku) - before
                if not load.requests <= written <= load.requests + 2 * CONCURRENCY:
                    raise RuntimeError(f"{load.requests} orders answered but {written} written")
                if sku == IN_STOCK and not self.unsold_codes(sku):
                    raise RuntimeError("the in-stock SKU ran out of stock: add more codes")

            return verify

        return begin


def _order_request(sku: str) -> orders_pb2.CreateInstantOrderRequest:
    return orders_pb2.CreateInstantOrderRequest(sku=sku, client_order_number="bench")


def _order_json(sku: str) -> bytes:
    return json.dumps({"sku": sku, "clientOrderNumber": "bench"}).encode()


# --- the phases ----------------------------------------------------------------------


def request_scenarios(bench: Bench, service: Meter, server: Meter, ceiling: Meter,
                      ceiling_grpc: Meter, forwarder: Meter) -> None:  # fmt: skip
    """Each request path beside its ceiling: the same RPC answered by the stub."""
    in_stock, out_of_stock = _order_request(IN_STOCK), _order_request(OUT_OF_STOCK)
    grpc_ceiling = bench.measure(
        "gRPC ceiling: CreateInstantOrder", None, ceiling_grpc,
        bench.grpc_load(bench.ceiling_target, ORDERS, in_stock.SerializeToString()),
    )  # fmt: skip
    for label, request in (("in stock", in_stock), ("out of stock", out_of_stock)):
        bench.measure(
            f"gRPC CreateInstantOrder, {label}", grpc_ceiling.name, server,
            bench.grpc_load(bench.grpc_target, ORDERS, request.SerializeToString()),
            bench.orders_written(request.sku),
        )  # fmt: skip
    bench.measure(
        report.FORWARDER, None, forwarder,
        bench.http_load(bench.forwarder_http_base, "POST", "/v2/orders/instant",
                        _order_json(IN_STOCK)),
    )  # fmt: skip
    rest_ceiling = bench.measure(
        "REST ceiling: POST /v2/orders/instant", None, ceiling,
        bench.http_load(bench.ceiling_http_base, "POST", "/v2/orders/instant",
                        _order_json(IN_STOCK)),
    )  # fmt: skip
    for label, sku in (("in stock", IN_STOCK), ("out of stock", OUT_OF_STOCK)):
        bench.measure(
            f"REST POST /v2/orders/instant, {label}", rest_ceiling.name, service,
            bench.http_load(bench.http_base, "POST", "/v2/orders/instant", _order_json(sku)),
            bench.orders_written(sku),
        )  # fmt: skip
    bench.measure(
        "REST POST /v2/orders/instant, in stock, Idempotency-Key", rest_ceiling.name, service,
        bench.http_load(bench.http_base, "POST", "/v2/orders/instant", _order_json(IN_STOCK),
                        unique_header="Idempotency-Key"),
        bench.orders_written(IN_STOCK),
    )  # fmt: skip
    poll = f"/v2/orders?transactionId={bench.transaction_id}"
    poll_ceiling = bench.measure(
        "REST ceiling: GET /v2/orders?transactionId=", None, ceiling,
        bench.http_load(bench.ceiling_http_base, "GET", poll),
    )  # fmt: skip
    bench.measure(
        "REST GET /v2/orders?transactionId=", poll_ceiling.name, service,
        bench.http_load(bench.http_base, "GET", poll),
    )  # fmt: skip
    codes = orders_pb2.GetCodesRequest(transaction_id=bench.transaction_id).SerializeToString()
    codes_ceiling = bench.measure(
        "gRPC ceiling: GetCodes", None, ceiling_grpc,
        bench.grpc_load(bench.ceiling_target, GET_CODES, codes),
    )  # fmt: skip
    bench.measure(
        "gRPC GetCodes", codes_ceiling.name, server,
        bench.grpc_load(bench.grpc_target, GET_CODES, codes),
    )  # fmt: skip


def metrics_cost(bench: Bench, server: Process, gateway: Process) -> tuple[Process, Process]:
    """In-stock orders again with the metrics switched off (INSTANT_ORDERS_METRICS=off),
    beside the rows above that count and time every call; then back on."""
    server, gateway = bench.restart_service(server, gateway, {"INSTANT_ORDERS_METRICS": "off"})
    bench.measure(
        "REST POST /v2/orders/instant, in stock, metrics off",
        "REST POST /v2/orders/instant, in stock", Meter([server, gateway]),
        bench.http_load(bench.http_base, "POST", "/v2/orders/instant", _order_json(IN_STOCK)),
        bench.orders_written(IN_STOCK),
    )  # fmt: skip
    bench.measure(
        "gRPC CreateInstantOrder, in stock, metrics off",
        "gRPC CreateInstantOrder, in stock", Meter([server]),
        bench.grpc_load(bench.grpc_target, ORDERS, _order_request(IN_STOCK).SerializeToString()),
        bench.orders_written(IN_STOCK),
    )  # fmt: skip
    return bench.restart_service(server, gateway, {})


def backlog(bench: Bench) -> dict[str, Any]:
    """10,000 PROCESSING orders, one restock of 10,000 codes: seconds from the
    restock's commit until the last of them is COMPLETED."""
    seconds = []
    for run in range(1, bench.options.runs + 1):
        sku = f"BENCH-BACKLOG-{run}"
        request = _order_request(sku).SerializeToString()
        h2load_grpc(bench.grpc_target, ORDERS, request, bench.headers, requests=BACKLOG_ORDERS)
        if bench.orders_of(sku, "PROCESSING") != BACKLOG_ORDERS:
            raise RuntimeError(f"expected {BACKLOG_ORDERS} waiting orders of {sku}")
        bench.add_codes(sku, BACKLOG_ORDERS)
        restocked = time.monotonic()
        while bench.orders_of(sku, "PROCESSING"):
            if time.monotonic() - restocked > 120:
                raise RuntimeError("the backlog was not cleared within 120 s")
            time.sleep(0.01)
        seconds.append(time.monotonic() - restocked)
        if bench.orders_of(sku, "COMPLETED") != BACKLOG_ORDERS:
            raise RuntimeError(f"not all {BACKLOG_ORDERS} orders of {sku} completed")
    result = {"orders": BACKLOG_ORDERS, "seconds": seconds, "median_seconds": median(seconds)}
    print(f"backlog of {BACKLOG_ORDERS:,} cleared in {result['median_seconds']:.2f} s "
          f"(runs: {', '.join(f'{s:.2f}' for s in seconds)})", flush=True)  # fmt: skip
    return result


def bulk_order(bench: Bench) -> dict[str, Any]:
    """One bulk order of 10,000 units: seconds to place it (one gRPC call), and seconds
    from the commit of one restock of 10,000 codes until it is COMPLETED."""
    placed, fulfilled = [], []
    for run in range(1, bench.options.runs + 1):
        sku = f"BENCH-BULK-{run}"
        request = orders_pb2.CreateBulkOrderRequest(
            products=[orders_pb2.BulkOrderLine(sku=sku, quantity=BULK_UNITS)]
        )
        with grpc.insecure_channel(bench.grpc_target) as channel:
            orders = orders_pb2_grpc.OrdersServiceStub(channel)
            started = time.monotonic()
            order = orders.CreateBulkOrder(request, metadata=list(bench.headers.items()))
            placed.append(time.monotonic() - started)
        bench.add_codes(sku, BULK_UNITS)
        restocked = time.monotonic()
        while bench.count(
            "SELECT count(*) FROM orders WHERE transaction_id = ? AND status = 'COMPLETED'",
            order.transaction_id,
        ) == 0:  # fmt: skip
            if time.monotonic() - restocked > 120:
                raise RuntimeError("the bulk order was not fulfilled within 120 s")
            time.sleep(0.01)
        fulfilled.append(time.monotonic() - restocked)
    result = {
        "units": BULK_UNITS,
        "place_seconds": placed,
        "fulfil_seconds": fulfilled,
        "median_place_seconds": median(placed),
        "median_fulfil_seconds": median(fulfilled),
    }
    runs = ", ".join(f"{p:.3f}/{f:.2f}" for p, f in zip(placed, fulfilled, strict=True))
    print(f"bulk order of {BULK_UNITS:,} units placed in {result['median_place_seconds']:.3f} s,"
          f" fulfilled {result['median_fulfil_seconds']:.2f} s after the restock (runs: {runs})",
          flush=True)  # fmt: skip
    return result


def memory(bench: Bench, server: Process) -> dict[str, Any]:
    """The server's RSS after 100,000 and after 200,000 orders placed (in stock)."""
    request = _order_request(IN_STOCK).SerializeToString()
    placed, rss = 0, {}  # orders placed -> RSS in MiB
    for _ in range(2):
        h2load_grpc(bench.grpc_target, ORDERS, request, bench.headers,
                    requests=bench.options.memory_orders)  # fmt: skip
        placed += bench.options.memory_orders
        rss[placed] = rss_mib(server.pid)
    first, second = rss.values()
    growth = second / first - 1
    print(f"server RSS: {first:.0f} MiB after {min(rss):,} orders, {second:.0f} MiB after "
          f"{max(rss):,} ({100 * growth:+.1f}%)", flush=True)  # fmt: skip
    return {"rss_mib_by_orders_placed": rss, "growth": growth}


def fill_orders(bench: Bench, total: int) -> int:
    """Adds completed orders (see bench/history.py) until the database holds `total`."""
    missing = total - bench.count("SELECT count(*) FROM orders")
    if missing > 0:
        started = time.monotonic()
        add_history(bench.database, bench.account_id, HISTORY, missing)
        print(f"stored {missing:,} more orders in {time.monotonic() - started:.0f} s", flush=True)
    return bench.count("SELECT count(*) FROM orders")


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark instant-orders against its ceilings.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6, help="length of each run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds before the runs")
    parser.add_argument("--stored-orders", type=int, default=1_000_000)
    parser.add_argument("--memory-orders", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 short run each")
    args = parser.parse_args()
    options = (
        Options(runs=1, seconds=2, warmup_seconds=1, stored_orders=20_000, memory_orders=5_000)
        if args.quick
        else Options(args.runs, args.seconds, args.warmup, args.stored_orders, args.memory_orders)
    )
    require_tools()
    with tempfile.TemporaryDirectory(prefix="instant-orders-bench-") as workdir:
        bench = Bench(Path(workdir), options)
        try:
            results = run(bench)
        finally:
            bench.stop()
    report.save(results, bench.scenarios, RESULTS)


def run(bench: Bench) -> dict[str, Any]:
    options = bench.options
    per_scenario = options.warmup_seconds + options.runs * options.seconds
    bench.prepare()
    bench.ensure_stock(1)
    server, gateway = bench.start_service()
    bench.sign_in()
    stub, stub_gateway, forwarder = bench.start_ceiling(bench.record_replies())
    bench.ensure_stock(5 * per_scenario)  # five in-stock order scenarios
    request_scenarios(
        bench, Meter([server, gateway]), Meter([server]), Meter([stub, stub_gateway]),
        Meter([stub]), Meter([stub, forwarder]),
    )  # fmt: skip
    server, gateway = metrics_cost(bench, server, gateway)
    backlog_result = backlog(bench)
    bulk_result = bulk_order(bench)
    bench.ensure_stock(0, orders=2 * options.memory_orders)
    server = bench.restart_server(server)
    memory_result = memory(bench, server)
    stored = fill_orders(bench, options.stored_orders)
    bench.ensure_stock(per_scenario)
    empty = "gRPC CreateInstantOrder, in stock"
    bench.measure(
        f"{empty}, {stored:,} orders stored", empty, Meter([server]),
        bench.grpc_load(bench.grpc_target, ORDERS, _order_request(IN_STOCK).SerializeToString()),
        bench.orders_written(IN_STOCK),
    )  # fmt: skip
    return {
        "machine": _machine(),
        "options": asdict(options),
        "concurrency": CONCURRENCY,
        "scenarios": [asdict(scenario) for scenario in bench.scenarios.values()],
        "backlog": backlog_result,
        "bulk_order": bulk_result,
        "memory": memory_result,
        "stored_orders": stored,
    }


def _machine() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()
