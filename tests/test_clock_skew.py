"""Clock skew: tokens from a replica whose clock is ahead, and steps of the wall
clock under the fulfiller's deadlines. Every clock here moves only when told."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from server.domain.auth import CLOCK_LEEWAY
from server.domain.clock import utc_now
from server.domain.limits import Limits
from server.domain.models import Caller, InstantOrderRequest, OrderStatus
from server.domain.money import Money
from server.domain.ports import Store
from server.domain.service import InstantOrdersService
from server.metrics import PrometheusObserver
from tests.api import Account
from tests.helpers import assert_fulfillment_consistent, make_fulfiller, signing_key

TOKEN_LIFETIME = timedelta(hours=1)
FULFILLMENT_TIMEOUT = timedelta(minutes=5)
#: No stock, so that its orders wait.
SKU = "JPY-NT-1000"


class Clocks:
    """A wall clock and a monotonic clock that move only when told."""

    def __init__(self, wall: datetime) -> None:
        self._wall = wall
        self._monotonic = 1000.0

    def wall(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, elapsed: timedelta) -> None:
        """Time passes: both clocks move alike."""
        self._wall += elapsed
        self._monotonic += elapsed.total_seconds()

    def step(self, offset: timedelta) -> None:
        """The wall clock is set (as NTP or an operator may do); no time passes."""
        self._wall += offset


@pytest.fixture
def clocks() -> Clocks:
    # On a whole second, as a token's times are, so that each bound is exact; the next
    # one, close to the system clock, against which a token's iat was once checked.
    return Clocks(utc_now().replace(microsecond=0) + timedelta(seconds=1))


@pytest.fixture
async def service(
    store: Store, database: str, limits: Limits, clocks: Clocks
) -> InstantOrdersService:
    """The service under test (overrides conftest's): its clock is `clocks.wall`."""
    return InstantOrdersService(
        store,
        signing_key(database),
        TOKEN_LIFETIME,
        clock=clocks.wall,
        limits=limits,
        observer=PrometheusObserver(),
    )


# --- tokens -------------------------------------------------------------------------


async def issued_by_a_replica(
    store: Store, database: str, account: Account, replica_time: datetime
) -> Account:
    """`account` with a token issued by another replica whose clock reads `replica_time`."""
    replica = InstantOrdersService(
        store, signing_key(database), TOKEN_LIFETIME, clock=lambda: replica_time
    )
    token = await replica.issue_token("client_credentials", account.api_key, account.api_secret)
    return dataclasses.replace(account, token=token.access_token)


@pytest.mark.parametrize(
    ("replica_ahead", "accepted"),
    [(1, True), (29, True), (30, True), (31, False)],
    ids=["1s-ahead", "29s-ahead", "30s-ahead", "31s-ahead"],
)
async def test_a_token_from_a_clock_up_to_the_leeway_ahead_is_accepted(
    api, accounts, store, database, clocks, replica_ahead, accepted
):
    assert CLOCK_LEEWAY.total_seconds() == 30  # as docs/security.md says
    replica_time = clocks.wall() + timedelta(seconds=replica_ahead)
    acme = await issued_by_a_replica(store, database, accounts["acme"], replica_time)

    reply = await api.call("GetBalances", {}, acme)

    if accepted:
        reply.expect_ok()
    else:
        reply.expect_error("UNAUTHENTICATED", 401)


async def test_a_token_expired_a_second_ago_is_refused(api, accounts, store, database, clocks):
    issued_at = clocks.wall() - TOKEN_LIFETIME - timedelta(seconds=1)
    acme = await issued_by_a_replica(store, database, accounts["acme"], issued_at)

    reply = await api.call("GetBalances", {}, acme)

    reply.expect_error("UNAUTHENTICATED", 401)


async def test_a_remembered_token_expires_at_its_exp_by_this_clock(
    api, accounts, store, database, clocks
):
    """A token from a clock 29 s ahead works here until its own `exp` by this
    process's clock, remembered or not, and not a moment longer: no leeway on exp."""
    ahead = timedelta(seconds=29)
    acme = await issued_by_a_replica(store, database, accounts["acme"], clocks.wall() + ahead)
    (await api.call("GetBalances", {}, acme)).expect_ok()  # verified, now remembered

    clocks.advance(ahead + TOKEN_LIFETIME - timedelta(milliseconds=1))
    (await api.call("GetBalances", {}, acme)).expect_ok()
    clocks.advance(timedelta(milliseconds=1))
    (await api.call("GetBalances", {}, acme)).expect_error("UNAUTHENTICATED", 401)


# --- fulfilment deadlines ------------------------------------------------------------


async def place_waiting(service: InstantOrdersService, caller: Caller) -> str:
    request = InstantOrderRequest(sku=SKU, pay_with_currency="JPY")
    order = await service.create_instant_order(caller, request)
    assert order.status is OrderStatus.PROCESSING
    return order.transaction_id


async def statuses(store: Store, caller: Caller, *transaction_ids: str) -> list[str]:
    orders = [await store.get_order(caller.account_id, tx) for tx in transaction_ids]
    return [order.status.value if order else "MISSING" for order in orders]


@pytest.fixture
async def acme(store: Store, accounts, clocks: Clocks) -> Caller:
    account = accounts["acme"]
    await store.top_up(account.account_id, Money.parse("10000", "JPY"), clocks.wall())
    return Caller(account.account_id, account.api_key)


async def test_a_forward_step_of_the_wall_clock_cancels_no_order_early(
    service, acme, store, database, clocks
):
    fulfiller = make_fulfiller(
        store, timeout=FULFILLMENT_TIMEOUT, clock=clocks.wall, monotonic=clocks.monotonic
    )
    older = await place_waiting(service, acme)
    assert await fulfiller.run_once() == 0
    clocks.advance(timedelta(minutes=4))
    newer = await place_waiting(service, acme)
    assert await fulfiller.run_once() == 0

    clocks.step(timedelta(days=1))  # far more than the timeout...
    clocks.advance(timedelta(seconds=1))  # ...while a second passes
    assert await fulfiller.run_once() == 0
    after_step = await place_waiting(service, acme)  # created_at by the stepped clock

    # Each is cancelled once it has really waited the timeout, as the monotonic clock tells.
    clocks.advance(timedelta(minutes=1))
    assert await fulfiller.run_once() == 1
    assert await statuses(store, acme, older, newer) == ["CANCELLED", "PROCESSING"]
    clocks.advance(timedelta(minutes=4))
    assert await fulfiller.run_once() == 1
    assert await statuses(store, acme, newer, after_step) == ["CANCELLED", "PROCESSING"]
    # The step is settled now: the wall clock rules again, and the order placed after
    # the step is due when it has waited the timeout, not a day later.
    clocks.advance(timedelta(seconds=1))
    assert await fulfiller.run_once() == 1
    assert await statuses(store, acme, after_step) == ["CANCELLED"]
    assert_fulfillment_consistent(database)


async def test_a_backward_step_of_the_wall_clock_cancels_no_order_early(
    service, acme, store, database, clocks
):
    """Orders placed before the step wait longer (the safe side); those placed
    after it are cancelled when their own timeout is up."""
    fulfiller = make_fulfiller(
        store, timeout=FULFILLMENT_TIMEOUT, clock=clocks.wall, monotonic=clocks.monotonic
    )
    before_step = await place_waiting(service, acme)
    assert await fulfiller.run_once() == 0

    clocks.step(-timedelta(days=1))
    assert await fulfiller.run_once() == 0
    after_step = await place_waiting(service, acme)
    clocks.advance(FULFILLMENT_TIMEOUT - timedelta(seconds=1))
    assert await fulfiller.run_once() == 0
    clocks.advance(timedelta(seconds=2))
    assert await fulfiller.run_once() == 1

    assert await statuses(store, acme, before_step, after_step) == ["PROCESSING", "CANCELLED"]
    assert_fulfillment_consistent(database)
