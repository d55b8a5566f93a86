"""Fulfillment: PROCESSING orders become COMPLETED when a code can be had, or
CANCELLED (and refunded) when none came before their deadline.

All of its state is in the database: a PROCESSING order is a promise, and each
pass of the fulfiller reads the promises afresh. A process killed at any moment
loses nothing; the next pass, in any process, carries on. Several fulfillers
(the server's own, a separate `worker`, other replicas) may run at once: every
step is guarded by the order still being PROCESSING, so none is done twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from server.domain.clock import StepGuardedClock
from server.domain.errors import log_retried_failure
from server.domain.idempotency import RETENTION
from server.domain.observer import UNOBSERVED, Observer
from server.domain.ports import Delivery, Store, WaitingUnits

log = logging.getLogger(__name__)

#: How often the fulfiller looks for new stock and overdue orders when idle.
#: A restock the store can tell of wakes it at once (through this process; on
#: PostgreSQL, through any process); any other is seen within this.
POLL_INTERVAL_SECONDS = 0.2
#: Orders completed or cancelled per database transaction.
BATCH_SIZE = 500
#: Codes handed out per transaction, per order of the batch: 10,000 by default,
#: so that a pass is bounded however large the bulk orders that wait.
UNITS_PER_BATCHED_ORDER = 20
#: How often the fulfiller purges expired idempotency keys, and how many at most
#: per transaction.
HOUSEKEEPING_INTERVAL_SECONDS = 60.0
KEYS_PER_PURGE = 1000


class CodeSource(Protocol):
    """Where the codes for waiting orders come from.

    The local inventory today; an upstream supplier can be another source.
    The fulfiller knows no more of a source than this.
    """

    async def available(self, skus: Collection[str]) -> set[str]:
        """The SKUs among `skus` it may be able to deliver a code for now."""
        ...

    async def deliver(
        self, waiting: Sequence[WaitingUnits], now: datetime, max_units: int
    ) -> Delivery:
        """Delivers what it can of the waiting units (`max_units` at most), in the order
        given, atomically (each code recorded with its unit; an order COMPLETED once no
        unit of it waits). The rest wait."""
        ...


class InventorySource:
    """Codes from the local inventory: the `codes` table, oldest first."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def available(self, skus: Collection[str]) -> set[str]:
        return await self._store.skus_in_stock(skus)

    async def deliver(
        self, waiting: Sequence[WaitingUnits], now: datetime, max_units: int
    ) -> Delivery:
        return await self._store.complete_from_stock(waiting, now, max_units)


class Fulfiller:
    """Completes waiting orders first come, first served, and cancels overdue ones.

    Deadlines are measured on the wall clock (`created_at`), guarded against its
    steps by the monotonic clock: a forward step cancels no order early (see
    StepGuardedClock)."""

    def __init__(
        self,
        store: Store,
        source: CodeSource,
        timeout: timedelta,
        clock: Callable[[], datetime],
        on_change: Callable[[list[str]], None] | None = None,
        poll_interval: float = POLL_INTERVAL_SECONDS,
        batch_size: int = BATCH_SIZE,
        key_retention: timedelta = RETENTION,
        observer: Observer = UNOBSERVED,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._source = source
        self._timeout = timeout
        self._clock = clock
        self._deadline_clock = StepGuardedClock(monotonic, settle=timeout)
        self._on_change = on_change
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._key_retention = key_retention
        self._observer = observer
        self._next_housekeeping = 0.0  # time.monotonic()

    async def run(self) -> None:
        """Runs passes until cancelled: back to back while there is work, then one
        per poll interval; and the housekeeping once a minute. A failing pass is
        logged and retried."""
        while True:
            try:
                changed = await self.run_once()
                await self._housekeeping()
            except Exception as error:
                log_retried_failure(log, "fulfillment pass failed", error)
                changed = 0
            if not changed:
                await self._store.wait_for_restock(self._poll_interval)

    async def _housekeeping(self) -> None:
        if time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL_SECONDS
        await self.forget_expired_keys()

    async def forget_expired_keys(self) -> int:
        """Purges the idempotency keys older than the retention, a bounded batch per
        transaction so that no purge holds the database for long; returns how many."""
        before = self._clock() - self._key_retention
        forgotten = 0
        while True:
            count = await self._store.forget_keys(before, KEYS_PER_PURGE)
            forgotten += count
            if count < KEYS_PER_PURGE:
                return forgotten

    async def run_once(self) -> int:
        """One pass: cancel what is overdue, then complete what stock allows.

        Cancelling first means an order past its deadline is never completed,
        even when stock arrives at the same moment. Returns how many orders
        changed."""
        now = self._clock()
        created_before = self._deadline_clock.guard(now) - self._timeout
        cancelled = await self._store.cancel_overdue(created_before, now, self._batch_size)
        delivery = await self._complete(now, not_before=created_before)
        changed = [*cancelled, *delivery.changed]
        if cancelled:
            self._observer.orders_cancelled("deadline", len(cancelled))
        if delivery.completed:
            self._observer.orders_completed(len(delivery.completed))
        if changed:
            log.debug("fulfillment: %d completed, %d partly delivered, %d cancelled",
                      len(delivery.completed), len(delivery.partly), len(cancelled))  # fmt: skip
            if self._on_change:
                self._on_change(changed)
        return len(changed)

    async def _complete(self, now: datetime, not_before: datetime) -> Delivery:
        """Delivers to orders placed since `not_before`: the older ones are past their
        deadline, and cancelled by this pass or the next ones (a pass cancels a batch),
        never completed."""
        skus = await self._store.waiting_skus()
        if not skus:
            return Delivery()
        ready = await self._source.available(skus)
        if not ready:
            return Delivery()
        waiting = await self._store.waiting_units(sorted(ready), not_before, self._batch_size)
        max_units = self._batch_size * UNITS_PER_BATCHED_ORDER
        return await self._source.deliver(waiting, now, max_units)
