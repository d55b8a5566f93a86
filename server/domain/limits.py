"""Abuse limits: token buckets per API key (and per client address for failed logins).

Each process keeps its own buckets: with N replicas behind a load balancer a
key gets up to N times the budget. Memory is bounded: the least recently
used buckets are forgotten beyond `max_keys` (a forgotten bucket is full).
"""

from __future__ import annotations

import contextlib
import enum
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from server.domain.errors import ApiError, Reason


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
    #: Failed client-credential attempts, per API key and per client address.
    failed_logins_per_key: Rate = Rate(0.1, 5)
    failed_logins_per_address: Rate = Rate(0.5, 20)


DEFAULT_LIMITS = Limits()


class Limiter:
    """The buckets of one process, for every kind of limit."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._budgets = {
            Budget.ORDERS: TokenBuckets("orders", limits.orders, clock),
            Budget.READS: TokenBuckets("reads", limits.reads, clock),
        }
        self._failed_by_key = TokenBuckets("failed logins", limits.failed_logins_per_key, clock)
        self._failed_by_address = TokenBuckets(
            "failed logins", limits.failed_logins_per_address, clock
        )
        self._open_streams: dict[str, int] = {}

    def spend(self, api_key: str, budget: Budget) -> None:
        self._budgets[budget].take(api_key)

    def check_login(self, api_key: str, address: str) -> None:
        """Refuses a login attempt while the key or the address failed too often."""
        for buckets, key in ((self._failed_by_key, api_key), (self._failed_by_address, address)):
            wait = buckets.exhausted(key)
            if wait:
                raise buckets.limited(wait)

    def login_failed(self, api_key: str, address: str) -> None:
        self._failed_by_key.try_take(api_key)
        self._failed_by_address.try_take(address)

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
