"""Telling the watchers of orders that their order changed.

An instant order changes once: from PROCESSING to COMPLETED or CANCELLED; a
bulk order also each time units of it are delivered. A change made in this
process (by its fulfiller) wakes the watchers at once. A change made elsewhere
(a separate worker, another replica) is found by one query per poll interval
covering every watched order, and only while someone watches; a watcher that
leaves costs nothing more. A wake that finds no change costs the watcher one
read and sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator

from server.domain.errors import log_retried_failure
from server.domain.ports import Store

log = logging.getLogger(__name__)

POLL_INTERVAL_SECONDS = 0.5


class OrderUpdates:
    def __init__(self, store: Store, poll_interval: float = POLL_INTERVAL_SECONDS) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._someone_watches = asyncio.Event()
        self._closed = False
        #: Each watched order's progress at the last poll.
        self._last_seen: dict[str, str] = {}

    @property
    def watcher_count(self) -> int:
        return sum(len(events) for events in self._watchers.values())

    @property
    def closed(self) -> bool:
        return self._closed

    @contextlib.contextmanager
    def watching(self, transaction_id: str) -> Iterator[asyncio.Event]:
        """An event set when the order may have changed, or when watching ends
        because the process stops (see `closed`). Enter it before reading the
        order, so that no change falls between the read and the watch."""
        changed = asyncio.Event()
        if self._closed:
            changed.set()
        self._watchers.setdefault(transaction_id, set()).add(changed)
        self._someone_watches.set()
        try:
            yield changed
        finally:
            events = self._watchers[transaction_id]
            events.discard(changed)
            if not events:
                del self._watchers[transaction_id]

    def notify(self, transaction_ids: Iterable[str]) -> None:
        """The orders changed: wake their watchers."""
        for transaction_id in transaction_ids:
            for changed in self._watchers.get(transaction_id, ()):
                changed.set()

    def _changed(self, progress: dict[str, str]) -> list[str]:
        """The orders whose progress differs from the last poll's (or that are new to
        the poll: a watcher may have read them before a change it did not see)."""
        changed = [tx for tx, now in progress.items() if self._last_seen.get(tx) != now]
        self._last_seen = progress
        return changed

    def close(self) -> None:
        """Wakes every watcher for good: the process is stopping."""
        self._closed = True
        for events in self._watchers.values():
            for changed in events:
                changed.set()

    async def run(self) -> None:
        """Polls for changes made by other processes, while anyone watches."""
        while True:
            if not self._watchers:
                self._someone_watches.clear()
                await self._someone_watches.wait()
            await asyncio.sleep(self._poll_interval)
            try:
                self.notify(self._changed(await self._store.progress_among(list(self._watchers))))
            except Exception as error:
                log_retried_failure(log, "polling watched orders failed", error)
