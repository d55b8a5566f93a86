"""Abuse limits: rate limits per API key, open streams, failed logins, message and header sizes."""

from __future__ import annotations

import grpc
import pytest

from server.domain.errors import ApiError
from server.domain.limits import Limits, Rate, TokenBuckets
from tests.metrics import moved, scrape
from tests.processes import run_cli

ORDER = "CreateInstantOrder"


@pytest.fixture
def limits() -> Limits:
    return Limits(orders=Rate(0.01, 3), reads=Rate(0.01, 5), streams_per_key=2)


async def test_orders_beyond_the_burst_are_429_with_retry_and_ratelimit_headers(api, accounts):
    acme, globex = accounts["acme"], accounts["globex"]
    for _ in range(3):
        (await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, acme)).expect_ok()

    refused = await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, acme)

    error = refused.expect_error("RATE_LIMITED", 429)
    assert error["budget"] == "orders"
    if api.transport == "rest":
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["RateLimit-Policy"] == '"orders";q=3;w=300'
        assert refused.headers["RateLimit"].startswith('"orders";r=0;t=')
    assert (await api.call("GetBalances", {}, acme)).ok  # reads have their own budget
    assert (await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, globex)).ok  # and keys their own


async def test_reads_beyond_the_burst_are_429(api, accounts):
    acme = accounts["acme"]
    for _ in range(5):
        (await api.call("GetBalances", {}, acme)).expect_ok()
    error = (await api.call("ListOrders", {}, acme)).expect_error("RATE_LIMITED", 429)
    assert error["budget"] == "reads"


async def test_open_streams_per_key_are_capped(http, accounts):
    acme = accounts["acme"]
    order = await http.post(
        "/v2/orders/instant",
        json={"sku": "JPY-NT-1000", "payWithCurrency": "USD"},
        headers=acme.headers(),
    )
    assert order.status == 422  # no JPY/USD rate: use a waiting EUR order instead
    for _ in range(2):
        placed = await http.post(
            "/v2/orders/instant", json={"sku": "TTR-WI-YWN", "payWithCurrency": "USD"},
            headers=acme.headers(),
        )  # fmt: skip
    transaction_id = (await placed.json())["data"]["transactionId"]
    url = f"/v2/orders/{transaction_id}/events"
    streams = [await http.get(url, headers=acme.headers()) for _ in range(2)]
    assert [stream.status for stream in streams] == [200, 200]
    for stream in streams:
        await stream.content.readline()  # the first event: the stream is open

    third = await http.get(url, headers=acme.headers())

    assert third.status == 429
    assert (await third.json())["error"] == "RATE_LIMITED"
    streams[0].close()


def test_token_buckets_refill_at_their_rate_and_zero_means_unlimited():
    now = [0.0]
    buckets = TokenBuckets("orders", Rate(2, 4), clock=lambda: now[0])
    assert [buckets.try_take("k") for _ in range(4)] == [0, 0, 0, 0]
    assert buckets.try_take("k") == pytest.approx(0.5)
    now[0] = 1.0  # two tokens back
    assert [buckets.try_take("k") for _ in range(3)] == [0, 0, pytest.approx(0.5)]
    with pytest.raises(ApiError):
        buckets.take("k")
    assert buckets.try_take("other") == 0

    unlimited = TokenBuckets("reads", Rate.parse("0"))
    assert all(unlimited.try_take("k") == 0 for _ in range(10_000))


@pytest.mark.parametrize("text", ["abc", "50:0", "-1:5", "50:x", "inf:3"])
def test_a_malformed_rate_limit_option_is_refused(text, tmp_path):
    result = run_cli("server", "--database", str(tmp_path / "o.db"), "--rate-limit-orders", text)
    assert result.returncode == 2
    assert "RATE:BURST" in result.stderr or "rate" in result.stderr


def login(account, secret=None):
    return {
        "grant_type": "client_credentials",
        "client_id": account if isinstance(account, str) else account.api_key,
        "client_secret": secret or ("x" if isinstance(account, str) else account.api_secret),
    }


async def test_failed_logins_are_limited_per_key_and_never_say_what_was_wrong(http, accounts):
    acme, globex = accounts["acme"], accounts["globex"]
    answers = []
    for credentials in [login(acme, "wrong")] * 4 + [login("ak_unknown")]:
        response = await http.post("/v2/auth/token", data=credentials)
        body = await response.json()
        answers.append((response.status, body["error"], body["message"]))
    assert len(set(answers)) == 1, "a wrong key and a wrong secret must look alike"
    assert answers[0][:2] == (401, "invalid_client")
    await http.post("/v2/auth/token", data=login(acme, "wrong"))  # the fifth failure of the key

    limited = await http.post("/v2/auth/token", data=login(acme))  # even the right secret

    assert limited.status == 429
    assert (await limited.json())["error"] == "RATE_LIMITED"
    assert int(limited.headers["Retry-After"]) >= 1
    assert (await http.post("/v2/auth/token", data=login(globex))).status == 200


async def test_failed_logins_are_limited_per_client_address(http, accounts):
    for attempt in range(20):  # a different key each time: only the address repeats
        response = await http.post("/v2/auth/token", data=login(f"ak_guess_{attempt}"))
        assert response.status == 401
    limited = await http.post("/v2/auth/token", data=login(accounts["globex"]))
    assert limited.status == 429


async def test_oversized_headers_and_messages_are_refused(http, channel, accounts):
    acme = accounts["acme"]
    huge = {**acme.headers(), "X-Padding": "x" * 10_000}
    response = await http.get("/v2/balances", headers=huge)
    assert 400 <= response.status < 500

    call = channel.unary_unary("/instantorders.v2.OrdersService/CreateInstantOrder")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(b"\x1a" + b"\xff\xff\x01" + b"x" * 32_767, timeout=5)  # sku of 32 KiB
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_refusal_for_a_rate_limit_is_counted_by_its_budget(http, accounts):
    acme = accounts["acme"]
    before, _ = await scrape(http)
    statuses = [(await http.get("/v2/balances", headers=acme.headers())).status for _ in range(6)]
    after, _ = await scrape(http)
    assert statuses.count(429) == 1  # the burst is 5
    assert moved(before, after, "instant_orders_rate_limited_total", budget="reads") == 1
