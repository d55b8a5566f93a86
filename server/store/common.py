"""What both backends share beside their transactions: the restock signal, and the
refusal to open a schema newer than this service knows."""

from __future__ import annotations

import asyncio
import contextlib


class SchemaTooNew(RuntimeError):
    """The database was written by a newer version of the service."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"the database has schema version {found}; this service knows {known} at most"
        )


class RestockSignal:
    """Wakes the fulfiller of this process when stock may have arrived."""

    def __init__(self) -> None:
        self._restocked = asyncio.Event()

    def set(self) -> None:
        self._restocked.set()

    async def wait(self, max_seconds: float) -> None:
        """Returns once stock may have arrived since the last wait, or after `max_seconds`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._restocked.wait(), max_seconds)
        self._restocked.clear()
