"""Storage faults an operator can fix (a full disk, an I/O error, a read-only file
system): how the SQLite store tells them from defects, and how it logs them.

Such a fault fails every write until someone acts, and a busy service writes
hundreds of times a second. Each call it fails is answered 503 (StorageFailing
is a StorageUnavailable) and only counted here: the log gets one line when a
burst of failures begins, one a minute while it lasts, and one when it ends,
saying how many calls failed; never a traceback. While it lasts, a probe
writes once a second, so its end is seen at no cost to the calls that succeed,
and readiness (`check`) fails until then.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable

from server.domain.failures import StorageFailing

log = logging.getLogger(__name__)

#: SQLite's primary result codes of a storage fault; an extended code (such as
#: SQLITE_IOERR_WRITE) holds its primary one in its low byte.
SQLITE_FAULTS = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY})
#: The file system's: no space (or quota) left, read-only, I/O error.
OS_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
#: How often a probe write asks whether the storage works again.
PROBE_INTERVAL_SECONDS = 1.0
#: How often a lasting burst is logged again, with the calls it failed so far.
REPORT_INTERVAL_SECONDS = 60.0


def storage_fault(error: BaseException) -> str | None:
    """Why the storage failed, if `error` says it did; None for any other error."""
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)  # None: raised by Python, not SQLite
        return str(error) if code is not None and code & 0xFF in SQLITE_FAULTS else None
    if isinstance(error, OSError) and error.errno in OS_FAULTS:
        return error.strerror or str(error)
    return None


def touch(db: sqlite3.Connection) -> None:
    """A write that changes nothing (the schema version, as it is) but needs the disk."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    db.execute(f"PRAGMA user_version = {int(version)}")


class StorageHealth:
    """Whether the storage works, as the calls that failed and the probes since tell."""

    def __init__(self, probe: Callable[[], Awaitable[object]]) -> None:
        self._probe = probe
        #: Why the storage fails; None while it works.
        self._reason: str | None = None
        self._failed_calls = 0
        self._began = self._reported = 0.0
        self._prober: asyncio.Task[None] | None = None

    def failed(self, error: BaseException) -> StorageFailing | None:
        """What a call that failed with `error` raises instead, counted in the burst;
        None when `error` is no storage fault."""
        reason = storage_fault(error)
        if reason is None:
            return None
        if self._reason is None:
            self._begin(reason)
        self._failed_calls += 1
        if time.monotonic() - self._reported >= REPORT_INTERVAL_SECONDS:
            self._reported = time.monotonic()
            log.warning("database storage still failing: %s (%d calls failed in %.0f s)",
                        self._reason, self._failed_calls, self._reported - self._began)  # fmt: skip
        return StorageFailing(reason)

    def check(self) -> None:
        """Raises StorageFailing while the storage fails (readiness asks)."""
        if self._reason is not None:
            raise StorageFailing(self._reason)

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)

    def _begin(self, reason: str) -> None:
        log.warning("database storage failing: %s", reason)
        self._reason, self._failed_calls = reason, 0
        self._began = self._reported = time.monotonic()
        self._prober = asyncio.create_task(self._probe_until_it_works(), name="storage probe")

    async def _probe_until_it_works(self) -> None:
        while not await self._probe_succeeds():
            pass
        log.warning("database storage works again after %.1f s: %d calls failed",
                    time.monotonic() - self._began, self._failed_calls)  # fmt: skip
        self._reason, self._prober = None, None

    async def _probe_succeeds(self) -> bool:
        await asyncio.sleep(PROBE_INTERVAL_SECONDS)
        try:
            await self._probe()
        except Exception:  # still failing: the calls that fail are what is counted
            return False
        return True
