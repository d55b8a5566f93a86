"""The client address of the failed-login limits: a peer's own, unless the peer is a
trusted proxy (--trusted-proxies), in the gateway and in the gRPC server alike."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import grpc
import pytest

from server.domain.clients import TrustedProxies
from server.domain.limits import Limits, Rate
from server.rpc.interceptors import peer_host
from tests.api import GrpcApi, login
from tests.processes import eventually, healthy, run_cli, start, stop, unused_port


@pytest.fixture
def limits() -> Limits:
    """Small bursts that do not refill during a test."""
    return Limits(
        failed_logins_per_key_and_address=Rate(0.01, 2), failed_logins_per_address=Rate(0.01, 3)
    )


PROXIES = TrustedProxies.parse("10.0.0.0/8, 192.0.2.1")


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "forwarded", "client"),
    [
        ("198.51.100.1", ["203.0.113.5"], ["for=203.0.113.5"], "198.51.100.1"),  # untrusted peer
        ("10.0.0.1", [], [], "10.0.0.1"),
        ("10.0.0.1", ["203.0.113.5"], [], "203.0.113.5"),
        ("10.0.0.1", ["6.6.6.6, 203.0.113.5, 10.0.0.9"], [], "203.0.113.5"),
        ("10.0.0.1", ["6.6.6.6", "203.0.113.5, 192.0.2.1"], [], "203.0.113.5"),  # two lines
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], [], "10.0.0.3"),  # all proxies: the left-most
        ("10.0.0.1", ["6.6.6.6, unknown"], [], "10.0.0.1"),  # not an address: its writer
        ("10.0.0.1", ["junk, 10.0.0.5"], [], "10.0.0.5"),
        ("10.0.0.1", ["[2001:db8::1]:443"], [], "2001:db8::1"),
        ("10.0.0.1", ["203.0.113.5:8443"], [], "203.0.113.5"),
        ("::ffff:10.0.0.1", ["::ffff:203.0.113.5"], [], "203.0.113.5"),
        ("10.0.0.1", [], ['for=6.6.6.6, for="[2001:db8::7]:4711";proto=https, For=10.0.0.4'],
         "2001:db8::7"),
        ("10.0.0.1", [], ["for=6.6.6.6, by=10.0.0.1"], "10.0.0.1"),  # a hop without for=
        ("10.0.0.1", [], ["for=_hidden"], "10.0.0.1"),
        ("10.0.0.1", ["203.0.113.5"], ["for=203.0.113.5"], "203.0.113.5"),
        ("10.0.0.1", ["203.0.113.5"], ["for=6.6.6.6"], "10.0.0.1"),  # they disagree: neither
    ],
)  # fmt: skip
def test_the_client_is_the_right_most_address_no_trusted_proxy_wrote(
    peer, forwarded_for, forwarded, client
):
    assert PROXIES.client_address(peer, forwarded_for, forwarded) == client


def test_without_trusted_proxies_the_peer_is_the_client_unless_it_proved_itself():
    nobody = TrustedProxies.parse("")
    assert nobody.client_address("127.0.0.1", ["203.0.113.5"]) == "127.0.0.1"
    assert nobody.client_address("127.0.0.1", ["203.0.113.5"], peer_trusted=True) == "203.0.113.5"


@pytest.mark.parametrize(
    ("peer", "host"),
    [("ipv4:127.0.0.1:5678", "127.0.0.1"), ("ipv6:[::1]:5678", "::1"),
     ("ipv6:%5B::1%5D:5678", "::1"), ("unix:", "")],
)  # fmt: skip
def test_the_host_of_a_grpc_peer(peer, host):
    assert peer_host(peer) == host


@pytest.mark.parametrize("text", ["10.0.0.0/33", "localhost", "10.0.0.0/8;10.1.0.0/16"])
def test_a_malformed_trusted_proxies_option_is_refused(text, tmp_path):
    result = run_cli("server", "--database", str(tmp_path / "o.db"), "--trusted-proxies", text)
    assert result.returncode == 2
    assert "CIDR" in result.stderr


async def post_token_from(http, source: str, form: dict[str, str]) -> int:
    """The token request's status, sent from the loopback address `source`."""
    return await post_token_to(str(http.make_url("")), source, form)


async def post_token_to(url: str, source: str, form: dict[str, str]) -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"{url.rstrip('/')}/v2/auth/token", data=form) as response,
    ):
        return response.status


async def test_out_of_the_box_the_gateway_names_each_client_and_its_server_believes_it(
    http, accounts
):
    """No --trusted-proxies: the gateway's peers are the clients, and the server
    believes its in-process gateway (not every loopback peer, see below)."""
    acme = accounts["acme"]
    statuses = [await post_token_from(http, "127.0.0.2", login(acme, "wrong")) for _ in range(3)]
    assert statuses == [401, 401, 429]

    assert await post_token_from(http, "127.0.0.3", login(acme)) == 200


def named(address: str, header: str) -> dict[str, str]:
    return {header: f"for={address}" if header == "Forwarded" else address}


def chain(spoofed: str, header: str) -> dict[str, str]:
    """A header as the proxy at 10.0.0.2 passes it on from the client at 198.51.100.7,
    who wrote `spoofed` into it."""
    if header == "Forwarded":
        return {header: f'for={spoofed}, for="198.51.100.7:4711";proto=https, for=10.0.0.2'}
    return {header: f"{spoofed}, 198.51.100.7, 10.0.0.2"}


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded"])
@pytest.mark.parametrize(
    "trusted_proxies", [TrustedProxies.parse("127.0.0.0/8,10.0.0.0/8")], ids=["proxies"]
)
async def test_a_trusted_proxy_names_the_client_the_right_most_untrusted_address(
    api, accounts, header
):
    for attempt in range(3):  # each time a new spoofed address, and a new key
        spoofed = f"203.0.113.{attempt + 1}"
        reply = await api.call(
            "IssueToken", login(f"ak_guess_{attempt}"), headers=chain(spoofed, header)
        )
        reply.expect_error("invalid_client", 401)
    globex = accounts["globex"]

    client = await api.call("IssueToken", login(globex), headers=named("198.51.100.7", header))
    spoofed = await api.call("IssueToken", login(globex), headers=named("203.0.113.1", header))

    client.expect_error("RATE_LIMITED", 429)  # every failure counted against 198.51.100.7
    spoofed.expect_ok()  # and none against the addresses the client wrote


async def test_an_untrusted_peer_cannot_name_the_client(api, accounts):
    """A loopback peer is not trusted either: over gRPC, metadata naming the client
    (with a guessed in-process token) is ignored; over REST, the headers are."""
    for attempt in range(3):
        spoofed = {
            "X-Forwarded-For": f"203.0.113.{attempt + 1}",
            "Forwarded": f"for=203.0.113.{attempt + 1}",
            "X-In-Process-Gateway": "in-process-token-guessed",
        }
        reply = await api.call("IssueToken", login(f"ak_guess_{attempt}"), headers=spoofed)
        reply.expect_error("invalid_client", 401)

    fresh = {"X-Forwarded-For": "203.0.113.99", "Forwarded": "for=203.0.113.99"}
    refused = await api.call("IssueToken", login(accounts["globex"]), headers=fresh)

    refused.expect_error("RATE_LIMITED", 429)  # all counted against the peer itself


async def failures_until_refused(send: Callable[[int], Awaitable[int]]) -> int:
    """Sends failing token requests until one is refused (429); returns how many."""
    for attempt in range(1, 41):
        if await send(attempt) == 429:
            return attempt
    raise AssertionError("40 failures and no refusal")


async def test_serve_believes_its_own_gateway_and_no_other_loopback_peer(tmp_path):
    """`serve` as it runs: each REST client is counted at its own address, while a
    gRPC client on loopback naming other addresses is counted at its own."""
    grpc_port, http_port = unused_port(), unused_port()
    process = start(
        "serve", "--database", str(tmp_path / "o.db"),
        "--grpc-listen", f"127.0.0.1:{grpc_port}", "--http-listen", f"127.0.0.1:{http_port}",
    )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    await eventually(lambda: healthy(f"{url}/healthz"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        grpc_api = GrpcApi(channel)

        async def spoofing(attempt: int) -> int:
            named = {"x-forwarded-for": f"203.0.113.{attempt}"}
            reply = await grpc_api.call("IssueToken", login(f"ak_{attempt}"), headers=named)
            return 429 if reply.status == grpc.StatusCode.RESOURCE_EXHAUSTED else 401

        assert await failures_until_refused(spoofing) > 1
    refused_at = await failures_until_refused(
        lambda attempt: post_token_to(url, "127.0.0.2", login(f"ak_{attempt}"))
    )
    assert refused_at > 1  # not refused at once: the gRPC client's failures were its own
    assert await post_token_to(url, "127.0.0.3", login("ak_other")) == 401
    assert stop(process) == 0
