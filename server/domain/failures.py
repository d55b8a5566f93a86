"""Failures the stores report, in the domain's words (the stores build no API errors)."""

from __future__ import annotations


class StorageUnavailable(Exception):
    """The database cannot serve now (down, restarting, out of connections, a
    statement over its timeout): nothing was changed, and a retry may succeed."""


class StorageFailing(StorageUnavailable):
    """The database's storage fails (disk full, I/O error, read-only file system):
    nothing was changed, and writes fail until an operator repairs it. The store
    logs such a failure itself, once per burst, so callers need not."""


class OutcomeUnknown(StorageUnavailable):
    """The database stopped answering after the commit was sent: the change may
    or may not have been made, and only a later look (or a retry with the same
    Idempotency-Key) can tell."""


class DataConflict(Exception):
    """An admin change contradicts what is stored (a name taken, an unknown SKU, ...)."""
