"""Failures the stores report, in the domain's words (the stores build no API errors)."""

from __future__ import annotations


class StorageUnavailable(Exception):
    """The database cannot serve now (down, restarting, out of connections, a
    statement over its timeout): nothing was changed, and a retry may succeed."""


class DataConflict(Exception):
    """An admin change contradicts what is stored (a name taken, an unknown SKU, ...)."""
