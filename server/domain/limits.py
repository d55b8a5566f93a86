"""Abuse limits: token buckets per API key (and per client address for failed logins).

Each process keeps its own buckets: with N replicas behind a load balancer a
key gets up to N times the budget. Memory is bounded: the least recently
used buckets are forgotten beyond `max_keys` (a forgotten bucket is full).
Given SharedBuckets (PostgreSQL: server/store/rate_limits.py), every budget but
open streams (a count of this process's own connections) is shared by every
replica instead; while that store fails, each process falls back on its own
buckets (fail open, with a warning).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from server.domain.clients import limited_as
from server.domain.errors import ApiError, Reason
from server.domain.failures import StorageUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rate:
    """`per_second` tokens added per second, up to `burst`; per_second 0 means no limit."""

    per_second: float
    burst: int

    @property
    def unlimited(self) -> bool:
        return self.per_second == 0

    @classmethod
    def parse(cls, text: str) -> Rate:
        """ "RATE:BURST" (e.g. "50:100"); "0" turns the limit off."""
        rate_text, _, burst_text = text.partition(":")
        try:
            per_second = float(rate_text)
            burst = int(burst_text) if burst_text else max(1, math.ceil(per_second))
        except ValueError:
            raise ValueError(f"{text!r} is not RATE:BURST, e.g. 50:100") from None
        if per_second < 0 or (per_second > 0 and burst < 1) or not math.isfinite(per_second):
            raise ValueError(f"{text!r}: the rate must be 0 or more and the burst 1 or more")
        return cls(per_second, burst)

    def __str__(self) -> str:
        return "0" if self.unlimited else f"{self.per_second:g}:{self.burst}"


class TokenBuckets:
    def __init__(
        self,
        name: str,
        rate: Rate,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.name = name
        self.rate = rate
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, key: str) -> None:
        """Spends one token of `key`'s bucket, or raises RATE_LIMITED."""
        wait = self.try_take(key)
        if wait:
            raise self.limited(wait)

    async def spend(self, key: str) -> None:
        """`take`, as shared buckets do it: they ask their store."""
        wait = await self._wait(key, count=1)
        if wait:
            raise self.limited(wait)

    async def seconds_short(self, key: str) -> float:
        """`exhausted`, as shared buckets do it: looks without spending."""
        return await self._wait(key, count=0)

    async def spend_if_any(self, key: str) -> None:
        """`try_take`, as shared buckets do it: spends a token if there is one."""
        await self._wait(key, count=1)

    async def _wait(self, key: str, count: int) -> float:
        """Spends `count` tokens (0: only looks) if one is there and returns 0, or
        returns the seconds until one is: the one method shared buckets override."""
        return self.try_take(key) if count else self.exhausted(key)

    def try_take(self, key: str) -> float:
        """Spends a token and returns 0, or returns the seconds until one is available."""
        if self.rate.unlimited:
            return 0.0
        tokens = self._tokens(key)
        if tokens < 1:
            return (1 - tokens) / self.rate.per_second
        self._store(key, tokens - 1)
        return 0.0

    def exhausted(self, key: str) -> float:
        """The seconds until `key` has a token again; 0 if it has one now."""
        if self.rate.unlimited:
            return 0.0
        tokens = self._tokens(key)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate.per_second

    def limited(self, wait: float) -> ApiError:
        window = math.ceil(self.rate.burst / self.rate.per_second)
        return ApiError(
            Reason.RATE_LIMITED,
            budget=self.name,
            retryAfterSeconds=str(max(1, math.ceil(wait))),
            quota=str(self.rate.burst),
            windowSeconds=str(window),
        )

    def _tokens(self, key: str) -> float:
        now = self._clock()
        tokens, at = self._buckets.get(key, (float(self.rate.burst), now))
        return min(float(self.rate.burst), tokens + (now - at) * self.rate.per_second)

    def _store(self, key: str, tokens: float) -> None:
        self._buckets[key] = (tokens, self._clock())
        self._buckets.move_to_end(key)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)


#: The longest a call waits for the shared buckets before it goes on without them.
SHARED_TIMEOUT_SECONDS = 0.05
#: After the shared buckets failed, calls use this process's own for this long
#: before they ask them again: an outage costs no time per call.
SHARED_RETRY_SECONDS = 1.0


class SharedBuckets(Protocol):
    """Token buckets that every replica shares, named by budget and key."""

    async def take(self, budget: str, key: str, rate: Rate, count: int = 1) -> float:
        """Spends `count` tokens (0: only looks) if one is there and returns 0, or returns
        the seconds until one is. Raises StorageUnavailable when the store cannot answer."""
        ...


class FailingOpen:
    """Asks the shared buckets within a bounded time; while they fail, answers None
    (the caller uses its own buckets) and says so once per outage, not per call."""

    def __init__(self, shared: SharedBuckets, clock: Callable[[], float] = time.monotonic):
        self._shared = shared
        self._clock = clock
        self._retry_at = 0.0
        self._failing_since: float | None = None
        self._calls_without = 0

    async def take(self, budget: str, key: str, rate: Rate, count: int = 1) -> float | None:
        if self._failing_since is not None and self._clock() < self._retry_at:
            self._calls_without += 1
            return None
        try:
            async with asyncio.timeout(SHARED_TIMEOUT_SECONDS):
                wait = await self._shared.take(budget, key, rate, count)
        except (StorageUnavailable, TimeoutError) as error:
            self._failed(error)
            return None
        if self._failing_since is not None and self._clock() >= self._retry_at:  # not a straggler
            log.warning("rate limits: shared buckets answer again after %.1f s"
                        " (%d calls limited per process meanwhile)",
                        self._clock() - self._failing_since, self._calls_without)  # fmt: skip
            self._failing_since = None
        return wait

    def _failed(self, error: Exception) -> None:
        self._calls_without += 1
        self._retry_at = self._clock() + SHARED_RETRY_SECONDS
        if self._failing_since is None:
            self._failing_since, self._calls_without = self._clock(), 1
            why = str(error) or f"no answer within {SHARED_TIMEOUT_SECONDS:g} s"
            log.warning("rate limits: shared buckets unavailable (%s): each process"
                        " applies its own limits until they answer", why)  # fmt: skip


class SharedTokenBuckets(TokenBuckets):
    """Buckets that every replica shares through `shared`; this process's own stand
    in while the shared store fails. A key the shared buckets refused is refused
    here, without asking, until its next token is due: a flood costs no round trips."""

    def __init__(
        self,
        name: str,
        rate: Rate,
        shared: FailingOpen,
        clock: Callable[[], float] = time.monotonic,
        shared_as: str = "",
    ) -> None:
        super().__init__(name, rate, clock)
        self._shared = shared
        self._shared_as = shared_as or name
        self._refused_until: OrderedDict[str, float] = OrderedDict()

    async def _wait(self, key: str, count: int) -> float:
        if self.rate.unlimited:
            return 0.0
        refused_for = self._refused_until.get(key, 0.0) - self._clock()
        if refused_for > 0:
            return refused_for
        wait = await self._shared.take(self._shared_as, key, self.rate, count)
        if wait is None:  # failing open: this process's own bucket
            return await super()._wait(key, count)
        if wait:
            self._refuse(key, wait)
        return wait

    def _refuse(self, key: str, wait: float) -> None:
        self._refused_until[key] = self._clock() + wait
        self._refused_until.move_to_end(key)
        if len(self._refused_until) > self._max_keys:
            self._refused_until.popitem(last=False)


class Budget(enum.Enum):
    ORDERS = "orders"
    READS = "reads"


@dataclass(frozen=True)
class Limits:
    """The service's abuse limits; see the README for the defaults."""

    orders: Rate = Rate(50, 100)
    reads: Rate = Rate(100, 200)
    #: Open WatchOrder streams per API key.
    streams_per_key: int = 10
    #: Failed client-credential attempts, per API key and client address, and per
    #: client address: never per key alone, or anyone could lock its owner out.
    failed_logins_per_key_and_address: Rate = Rate(0.1, 5)
    failed_logins_per_address: Rate = Rate(0.5, 20)
    #: Tokens issued per API key: each costs a scrypt (about 30 ms and 16 MiB).
    token_requests: Rate = Rate(10 / 60, 20)


DEFAULT_LIMITS = Limits()


class Limiter:
    """The buckets of one process, for every kind of limit."""

    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedBuckets | None = None,
    ) -> None:
        self.limits = limits
        self._shared = FailingOpen(shared) if shared else None
        self._budgets = {
            Budget.ORDERS: self._shareable("orders", limits.orders, clock),
            Budget.READS: self._shareable("reads", limits.reads, clock),
        }
        # Both failure budgets answer as "failed logins"; they are kept apart when shared.
        self._failed_by_key_and_address = self._shareable(
            "failed logins", limits.failed_logins_per_key_and_address, clock,
            shared_as="failed logins by key and address",
        )  # fmt: skip
        self._failed_by_address = self._shareable(
            "failed logins", limits.failed_logins_per_address, clock,
            shared_as="failed logins by address",
        )  # fmt: skip
        self._tokens_issued = self._shareable("token requests", limits.token_requests, clock)
        self._open_streams: dict[str, int] = {}

    async def spend(self, api_key: str, budget: Budget) -> None:
        await self._budgets[budget].spend(api_key)

    def _shareable(
        self, name: str, rate: Rate, clock: Callable[[], float], shared_as: str = ""
    ) -> TokenBuckets:
        """Buckets shared by the replicas if there are shared buckets, else this process's."""
        if self._shared is None:
            return TokenBuckets(name, rate, clock)
        return SharedTokenBuckets(name, rate, self._shared, clock, shared_as)

    async def check_login(self, api_key: str, address: str) -> None:
        """Refuses a token request before its secret is checked (no answer about the
        secret, no scrypt) while the key failed too often from this address, the
        address failed too often, or the key was issued too many tokens."""
        checked = self._login_buckets(api_key, address)
        waits = await asyncio.gather(*(buckets.seconds_short(key) for buckets, key in checked))
        for (buckets, _), wait in zip(checked, waits, strict=True):
            if wait:
                raise buckets.limited(wait)

    async def login_failed(self, api_key: str, address: str) -> None:
        counted = [
            buckets.spend_if_any(key)
            for buckets, key in self._login_buckets(api_key, address)
            if buckets is not self._tokens_issued  # a stranger's failure never counts there
        ]
        await asyncio.gather(*counted)

    async def token_issued(self, api_key: str) -> None:
        await self._tokens_issued.spend_if_any(api_key)

    def _login_buckets(self, api_key: str, address: str) -> list[tuple[TokenBuckets, str]]:
        counted_as = limited_as(address)
        return [
            (self._failed_by_key_and_address, f"{counted_as}|{api_key}"),
            (self._failed_by_address, counted_as),
            (self._tokens_issued, api_key),
        ]

    @contextlib.contextmanager
    def stream(self, api_key: str) -> Iterator[None]:
        """Holds one of the key's stream slots while the block runs."""
        if self._open_streams.get(api_key, 0) >= self.limits.streams_per_key:
            raise ApiError(
                Reason.RATE_LIMITED,
                budget=f"open streams (at most {self.limits.streams_per_key})",
                retryAfterSeconds="1",
            )
        self._open_streams[api_key] = self._open_streams.get(api_key, 0) + 1
        try:
            yield
        finally:
            self._open_streams[api_key] -= 1
            if not self._open_streams[api_key]:
                del self._open_streams[api_key]
