"""`make bench-scaleout`: REST order throughput on one SQLite replica, and on one
and two PostgreSQL replicas, measured in one run.

Each setup gets a fresh database (a SQLite file, or a PostgreSQL schema), the
same account, product and stock, and N replicas: `instant-orders server`
processes, each behind its own `instant-orders gateway`, as the README's
"Scaling out" runs them. wrk sends in-stock POST /v2/orders/instant, CONCURRENCY
connections split evenly over the gateways (a load balancer's job), for RUNS runs
after a warm-up; a setup's figure is the median of the runs' summed throughput.
Every answered order is checked to exist in the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
from instantorders.v2 import auth_pb2, auth_pb2_grpc

from bench.load import CONCURRENCY, Load, median, require_tools, wrk_http
from bench.processes import Process, free_port, start, wait_for_grpc, wait_for_http
from server.domain.admin import load_dataset
from server.domain.models import OrderFilter
from server.domain.ports import NewCode, Store
from server.keys import CodeCipher
from server.store.backends import open_store

RESULTS = Path(__file__).resolve().parent / "results" / "scaleout.json"
POSTGRES = os.environ.get("INSTANT_ORDERS_BENCH_POSTGRES", "postgresql://127.0.0.1:5432/test")
SKU = "BENCH-IN"
#: In-stock codes per setup: more than the fastest setup sells in its seconds of load.
STOCK = 40_000
ORDER = json.dumps({"sku": SKU, "clientOrderNumber": "bench"}).encode()
DATASET = {
    "accounts": [{"name": "bench", "balances": {"USD": "100000000000.00"}}],
    "products": [{"sku": SKU, "name": "Bench", "brand": "Bench", "currency": "USD",
                  "price": "1.00", "faceValue": "1.00", "instantDeliverySupported": True}],
}  # fmt: skip


@dataclass(frozen=True)
class Setup:
    name: str
    backend: str  # "sqlite" or "postgresql"
    replicas: int


SETUPS = (
    Setup("SQLite, 1 replica", "sqlite", 1),
    Setup("PostgreSQL, 1 replica", "postgresql", 1),
    Setup("PostgreSQL, 2 replicas", "postgresql", 2),
)


@dataclass
class Result:
    setup: str
    runs: list[dict[str, float]]
    retried_transactions: int

    @property
    def throughput(self) -> float:
        return median([run["throughput"] for run in self.runs])

    @property
    def p99_ms(self) -> float:
        return median([run["p99_ms"] for run in self.runs])


class Deployment:
    """One setup's database and replicas."""

    def __init__(self, setup: Setup, workdir: Path) -> None:
        self.setup = setup
        self.workdir = workdir
        self.key_file = str(workdir / "bench.key")
        self.schema = f"bench_{uuid.uuid4().hex[:12]}"
        if setup.backend == "sqlite":
            self.database = str(workdir / f"{setup.replicas}.db")
        else:
            self.database = f"{POSTGRES}?search_path={self.schema}"
        self.processes: list[Process] = []
        self.gateways: list[str] = []
        self.headers: dict[str, str] = {}
        self._account_id = 0
        self._credentials = ("", "")

    async def prepare(self) -> None:
        if self.setup.backend == "postgresql":
            connection = await asyncpg.connect(POSTGRES)
            await connection.execute(f"CREATE SCHEMA {self.schema}")
            await connection.close()
        store = await self._store()
        try:
            (account,) = await load_dataset(store, DATASET, datetime.now(UTC))
            codes = [NewCode(SKU, f"CODE-{n}", f"{n % 10000:04d}") for n in range(STOCK)]
            await store.add_codes(codes, datetime.now(UTC))
        finally:
            await store.close()
        self._account_id = account.account_id
        self._credentials = (account.api_key, account.api_secret)

    def start(self) -> None:
        database = ["--database", self.database, "--secret-key-file", self.key_file]
        for n in range(self.setup.replicas):
            grpc_target, http_base = f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
            server = start(
                f"{self.schema}-server-{n}", self.workdir, "-m", "server.cli", "server",
                *database, "--grpc-listen", grpc_target,
                "--rate-limit-orders", "0", "--rate-limit-reads", "0",
            )  # fmt: skip
            self.processes.append(server)
            wait_for_grpc(server, grpc_target)
            gateway = start(
                f"{self.schema}-gateway-{n}", self.workdir, "-m", "server.cli", "gateway",
                "--upstream", grpc_target, "--http-listen", http_base.removeprefix("http://"),
            )  # fmt: skip
            self.processes.append(gateway)
            wait_for_http(gateway, f"{http_base}/healthz")
            self.gateways.append(http_base)
        self.headers = self._sign_in(grpc_target)

    def load(self, seconds: float) -> Load:
        """wrk on every gateway at once, the connections split between them."""
        share = CONCURRENCY // len(self.gateways)
        headers = {**self.headers, "content-type": "application/json"}
        with ThreadPoolExecutor(len(self.gateways)) as pool:
            loads = list(
                pool.map(
                    lambda base: wrk_http(
                        f"{base}/v2/orders/instant", "POST", ORDER, headers, seconds, share
                    ),
                    self.gateways,
                )
            )
        return Load(
            requests=sum(load.requests for load in loads),
            seconds=max(load.seconds for load in loads),
            failures=sum(load.failures for load in loads),
            p50_ms=max(load.p50_ms for load in loads),
            p99_ms=max(load.p99_ms for load in loads),
            p999_ms=max(load.p999_ms for load in loads),
        )

    async def orders(self) -> int:
        store = await self._store()
        try:
            page = await store.list_orders(self._account_id, OrderFilter(), 1, 1)
        finally:
            await store.close()
        return page.total

    def retried_transactions(self) -> int:
        """Transactions PostgreSQL aborted (deadlock, serialization) that the servers
        ran again, from their logs: the measure of retry storms."""
        return sum(
            process.log.read_text().count("transaction aborted by PostgreSQL")
            for process in self.processes
        )

    async def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.setup.backend == "postgresql":
            connection = await asyncpg.connect(POSTGRES)
            await connection.execute(f"DROP SCHEMA {self.schema} CASCADE")
            await connection.close()

    async def _store(self) -> Store:
        return await open_store(self.database, CodeCipher(self.key_file))

    def _sign_in(self, grpc_target: str) -> dict[str, str]:
        api_key, api_secret = self._credentials
        with grpc.insecure_channel(grpc_target) as channel:
            token = auth_pb2_grpc.AuthServiceStub(channel).IssueToken(
                auth_pb2.IssueTokenRequest(
                    grant_type="client_credentials", client_id=api_key, client_secret=api_secret
                )
            )
        return {"x-api-key": api_key, "authorization": f"Bearer {token.access_token}"}


def measure(setup: Setup, workdir: Path, runs: int, seconds: int, warmup: int) -> Result:
    deployment = Deployment(setup, workdir)
    asyncio.run(deployment.prepare())
    try:
        deployment.start()
        deployment.load(warmup)
        results = []
        for _ in range(runs):
            before = asyncio.run(deployment.orders())
            load = deployment.load(seconds)
            written = asyncio.run(deployment.orders()) - before
            # Orders in flight when a load ends are written but never answered: up to
            # one per connection at the end of this run and at the end of the last.
            if load.failures or not load.requests <= written <= load.requests + 2 * CONCURRENCY:
                raise RuntimeError(
                    f"{setup.name}: {load.requests} answered, {load.failures} failed, "
                    f"{written} written"
                )
            results.append({**asdict(load), "throughput": load.throughput})
        retried = deployment.retried_transactions()
    finally:
        asyncio.run(deployment.stop())
    result = Result(setup.name, results, retried)
    print(f"{setup.name:<24} {result.throughput:8.0f} orders/s   p99 {result.p99_ms:6.1f} ms"
          f"   transactions retried: {retried}", flush=True)  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    require_tools()
    with tempfile.TemporaryDirectory(prefix="instant-orders-scaleout-") as workdir:
        results = [
            measure(setup, Path(workdir), args.runs, args.seconds, args.warmup) for setup in SETUPS
        ]
    RESULTS.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "cores": os.cpu_count(),
                "concurrency": CONCURRENCY,
                "results": [
                    {**asdict(result), "throughput": result.throughput, "p99_ms": result.p99_ms}
                    for result in results
                ],
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
