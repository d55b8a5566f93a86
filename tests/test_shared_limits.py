"""Rate limits shared by the replicas on one PostgreSQL database (issue 19, finding 13):
a budget allows its rate once in all, not once per replica, and an outage of the
buckets' store lets orders through, limited per process, with one warning."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from server.domain import limits as limits_module
from server.domain.errors import ApiError
from server.domain.limits import SHARED_TIMEOUT_SECONDS, Budget, Limiter, Limits, Rate
from server.store.rate_limits import PostgresBuckets
from tests.proxy import TcpProxy

pytestmark = pytest.mark.postgres_only

ORDER = "CreateInstantOrder"
SHARED = Rate(20, 10)  # 20 a second, a burst of 10
BURST_SECONDS = 2.0


@pytest.fixture
def limits() -> Limits:
    return Limits(orders=Rate(0.01, 3), reads=SHARED)


@pytest.fixture
async def proxy(database: str) -> AsyncIterator[TcpProxy]:
    url = urlsplit(database)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def shared_limits(database: str, proxy: TcpProxy) -> AsyncIterator[PostgresBuckets]:
    """The service's shared buckets reach PostgreSQL through a proxy a test can cut."""
    url = urlsplit(database)
    proxied = urlunsplit(url._replace(netloc=f"{url.hostname}:{proxy.port}"))
    shared = await PostgresBuckets.open(proxied)
    yield shared
    await shared.close()


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checks wait up to 5 s for the shared buckets instead of 50 ms: on a machine busy
    with other tests a slow answer would fail open to each process's own buckets,
    which is not what these tests are about."""
    monkeypatch.setattr(limits_module, "SHARED_TIMEOUT_SECONDS", 5.0)


async def _spent_during(limiter: Limiter, key: str, until: float) -> int:
    """Calls spent on `limiter` until the monotonic time `until`, as fast as refused."""
    allowed = 0
    while time.monotonic() < until:
        try:
            await limiter.spend(key, Budget.READS)
            allowed += 1
        except ApiError:
            await asyncio.sleep(0.002)
    return allowed


async def test_two_replicas_share_one_budget_within_ten_percent(database, limits, patient):
    replicas = [await PostgresBuckets.open(database) for _ in range(2)]
    try:
        limiters = [Limiter(limits, shared=replica) for replica in replicas]
        started = time.monotonic()
        until = started + BURST_SECONDS
        callers = [_spent_during(limiter, "ak_shared", until) for limiter in limiters for _ in "ab"]
        per_caller = await asyncio.gather(*callers)
        elapsed = time.monotonic() - started
    finally:
        for replica in replicas:
            await replica.close()

    budget = SHARED.burst + SHARED.per_second * elapsed  # once, not once per replica
    assert sum(per_caller[:2]) > 0 and sum(per_caller[2:]) > 0, "both replicas served"
    assert 0.9 * budget <= sum(per_caller) <= 1.1 * budget, (per_caller, budget)


async def test_failed_logins_and_tokens_issued_are_counted_once_across_replicas(database, patient):
    """Five failures of a key from one address, or twenty tokens of a key, in all:
    an attacker who alternates replicas gets no more guesses, a client no more scrypts."""
    limits = Limits(failed_logins_per_key_and_address=Rate(0.01, 5), token_requests=Rate(0.01, 4))
    replicas = [await PostgresBuckets.open(database) for _ in range(2)]
    try:
        first, second = (Limiter(limits, shared=replica) for replica in replicas)
        for attempt in range(5):
            await (first, second)[attempt % 2].login_failed("ak_guessed", "192.0.2.7")
        for issued in range(4):
            await (first, second)[issued % 2].token_issued("ak_busy")

        for limiter in (first, second):
            with pytest.raises(ApiError) as guessing:
                await limiter.check_login("ak_guessed", "192.0.2.7")
            assert guessing.value.metadata["budget"] == "failed logins"
            with pytest.raises(ApiError) as busy:
                await limiter.check_login("ak_busy", "192.0.2.8")
            assert busy.value.metadata["budget"] == "token requests"
        await second.check_login("ak_guessed", "192.0.2.99")  # the owner, elsewhere
    finally:
        for replica in replicas:
            await replica.close()


async def test_an_outage_of_the_shared_buckets_lets_orders_through_with_one_warning(
    api, accounts, proxy, caplog
):
    acme = accounts["acme"]
    await proxy.stop()  # the buckets' connections drop; the store's own stay up
    caplog.set_level(logging.INFO)

    started = time.monotonic()
    placed = [await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, acme) for _ in range(3)]
    balances = [await api.call("GetBalances", {}, acme) for _ in range(5)]
    took = time.monotonic() - started

    assert all(reply.ok for reply in placed + balances)
    warnings = [r.getMessage() for r in caplog.records if "shared buckets" in r.getMessage()]
    assert len(warnings) == 1 and "unavailable" in warnings[0], warnings
    assert took < 8 * 0.25, "each call waited on the unavailable store"
    # Meanwhile each process applies its own buckets: the fourth order is refused.
    (await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, acme)).expect_error("RATE_LIMITED", 429)


async def test_a_store_that_does_not_answer_delays_a_call_by_the_timeout_at_most(
    service, accounts, proxy, caplog
):
    acme = accounts["acme"]
    proxy.hold_from(acme.api_key.encode())  # the check's bytes, held as by a dead network
    caplog.set_level(logging.INFO)

    started = time.monotonic()
    await service.limiter.spend(acme.api_key, Budget.READS)
    took = time.monotonic() - started

    assert took < SHARED_TIMEOUT_SECONDS + 0.1
    warnings = [r.getMessage() for r in caplog.records if "shared buckets" in r.getMessage()]
    assert len(warnings) == 1 and "no answer within" in warnings[0], warnings
    proxy.release()
