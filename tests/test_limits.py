"""Abuse limits: rate limits per API key, open streams, failed logins, message and header sizes."""

from __future__ import annotations

import grpc
import pytest

from server.domain import service as service_module
from server.domain.clients import TrustedProxies
from server.domain.errors import ApiError, Reason
from server.domain.limits import DEFAULT_LIMITS, Limiter, Limits, Rate, TokenBuckets
from tests.api import login
from tests.metrics import moved, scrape
from tests.processes import run_cli

ORDER = "CreateInstantOrder"


@pytest.fixture
def limits() -> Limits:
    return Limits(
        orders=Rate(0.01, 3),
        reads=Rate(0.01, 5),
        streams_per_key=2,
        # The default bursts, refilled too slowly for the test's own pace to matter.
        failed_logins_per_key_and_address=Rate(0.01, 5),
        failed_logins_per_address=Rate(0.01, 20),
        token_requests=Rate(0.01, 3),
    )


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


async def test_failed_logins_are_limited_per_key_and_address_and_never_say_what_was_wrong(
    http, accounts
):
    acme, globex = accounts["acme"], accounts["globex"]
    answers = []
    for credentials in [login(acme, "wrong")] * 4 + [login("ak_unknown")]:
        response = await http.post("/v2/auth/token", data=credentials)
        body = await response.json()
        answers.append((response.status, body["error"], body["message"]))
    assert len(set(answers)) == 1, "a wrong key and a wrong secret must look alike"
    assert answers[0][:2] == (401, "invalid_client")
    await http.post("/v2/auth/token", data=login(acme, "wrong"))  # the fifth from this address

    limited = await http.post("/v2/auth/token", data=login(acme))  # even the right secret

    assert limited.status == 429
    assert (await limited.json())["error"] == "RATE_LIMITED"
    assert int(limited.headers["Retry-After"]) >= 1
    assert (await http.post("/v2/auth/token", data=login(globex))).status == 200


#: The test client and gateway are on loopback: trusted, they may name any address.
BEHIND_A_PROXY = pytest.mark.parametrize(
    "trusted_proxies", [TrustedProxies.parse("127.0.0.0/8")], ids=["behind-a-proxy"]
)
ATTACKER, OWNER = "198.51.100.7", "203.0.113.20"


def from_address(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


@BEHIND_A_PROXY
async def test_failed_logins_from_one_address_never_lock_out_the_owner_at_another(api, accounts):
    acme = accounts["acme"]
    answers = []
    for _ in range(8):
        reply = await api.call("IssueToken", login(acme, "wrong"), headers=from_address(ATTACKER))
        answers.append(reply.error["error"])
    assert answers == ["invalid_client"] * 5 + ["RATE_LIMITED"] * 3
    there = await api.call("IssueToken", login(acme), headers=from_address(ATTACKER))
    there.expect_error("RATE_LIMITED", 429)  # even the right secret, from there

    (await api.call("IssueToken", login(acme), headers=from_address(OWNER))).expect_ok()


@BEHIND_A_PROXY
async def test_failed_logins_are_limited_per_client_address(api, accounts):
    for attempt in range(20):  # a different key each time: only the address repeats
        reply = await api.call(
            "IssueToken", login(f"ak_guess_{attempt}"), headers=from_address(ATTACKER)
        )
        reply.expect_error("invalid_client", 401)
    globex = accounts["globex"]

    there = await api.call("IssueToken", login(globex), headers=from_address(ATTACKER))

    there.expect_error("RATE_LIMITED", 429)
    (await api.call("IssueToken", login(globex), headers=from_address(OWNER))).expect_ok()


async def test_a_throttled_token_request_is_refused_before_its_secret_is_checked(
    service, accounts, monkeypatch
):
    acme = accounts["acme"]
    for _ in range(5):
        with pytest.raises(ApiError):
            await service.issue_token("client_credentials", acme.api_key, "wrong", ATTACKER)
    checked = []
    monkeypatch.setattr(service_module, "verify_secret", lambda *args: checked.append(args))

    for secret in ("wrong", acme.api_secret):  # no oracle: the same refusal for both
        with pytest.raises(ApiError) as refused:
            await service.issue_token("client_credentials", acme.api_key, secret, ATTACKER)
        assert refused.value.reason is Reason.RATE_LIMITED
    assert checked == [], "a throttled attempt must cost no scrypt"


async def test_token_requests_beyond_the_burst_are_429_even_with_the_right_secret(api, accounts):
    acme, globex = accounts["acme"], accounts["globex"]
    for _ in range(2):  # the accounts fixture had the first of the burst of 3
        (await api.call("IssueToken", login(acme))).expect_ok()

    refused = await api.call("IssueToken", login(acme))

    error = refused.expect_error("RATE_LIMITED", 429)
    assert error["budget"] == "token requests"
    if api.transport == "rest":
        assert refused.headers["RateLimit-Policy"] == '"token requests";q=3;w=300'
        assert int(refused.headers["Retry-After"]) >= 1
    (await api.call("IssueToken", login(globex))).expect_ok()  # each key has its own


async def test_tokens_are_issued_10_a_minute_per_key_with_a_burst_of_20():
    now = [0.0]
    limiter = Limiter(DEFAULT_LIMITS, clock=lambda: now[0])
    for _ in range(20):
        await limiter.check_login("ak_busy", "192.0.2.1")
        await limiter.token_issued("ak_busy")
    with pytest.raises(ApiError) as refused:
        await limiter.check_login("ak_busy", "192.0.2.2")  # from anywhere
    assert refused.value.metadata["budget"] == "token requests"
    await limiter.check_login("ak_other", "192.0.2.1")
    for _ in range(5):
        await limiter.login_failed("ak_busy", "192.0.2.3")  # a stranger's failures spend none
    now[0] = 6.0  # one more every 6 s

    await limiter.check_login("ak_busy", "192.0.2.1")


async def test_ipv6_clients_are_counted_per_64():
    limiter = Limiter(DEFAULT_LIMITS)
    for host in range(1, 21):
        await limiter.login_failed(f"ak_guess_{host}", f"2001:db8:1:2::{host:x}")
    with pytest.raises(ApiError):
        await limiter.check_login("ak_owner", "2001:db8:1:2:ffff::1")  # the same /64
    await limiter.check_login("ak_owner", "2001:db8:1:3::1")


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
