"""Cost of one rate-limit check (docs/scaling.md): this process's buckets vs the
buckets shared in PostgreSQL. `python -m bench.shared_limits [POSTGRES_URL]`"""

from __future__ import annotations

import asyncio
import resource
import statistics
import sys
import time

from server.domain.limits import Budget, Limiter, Limits, Rate
from server.store.rate_limits import PostgresBuckets

CHECKS = 10_000
LIMITS = Limits(orders=Rate(1e9, 1_000_000_000))  # never refuses: every check is a full one


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(name: str, limiter: Limiter, concurrency: int) -> None:
    latencies: list[float] = []

    async def caller(n: int) -> None:
        for i in range(CHECKS // concurrency):
            started = time.perf_counter()
            await limiter.spend(f"ak_{(n + i) % 50}", Budget.ORDERS)
            latencies.append(time.perf_counter() - started)

    cpu = _cpu()
    await asyncio.gather(*(caller(n) for n in range(concurrency)))
    cpu = (_cpu() - cpu) / CHECKS
    p50, p99 = (statistics.quantiles(latencies, n=100)[q] * 1e6 for q in (49, 98))
    print(f"{name:28} concurrency {concurrency:3}: CPU {cpu * 1e6:5.0f} us/check,"
          f" latency p50 {p50:6.0f} us, p99 {p99:6.0f} us")  # fmt: skip


async def main(url: str) -> None:
    shared = await PostgresBuckets.open(url)
    try:
        for concurrency in (1, 16):
            await _measure("in-process buckets", Limiter(LIMITS), concurrency)
            await _measure(
                "shared buckets (PostgreSQL)", Limiter(LIMITS, shared=shared), concurrency
            )
    finally:
        await shared.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://127.0.0.1:5432/test"))
