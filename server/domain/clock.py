"""Time as the service keeps it: aware UTC datetimes, stored as integer microseconds;
and a guard against steps of the wall clock for what measures deadlines by it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def utc_now() -> datetime:
    return datetime.now(UTC)


def micros(moment: datetime) -> int:
    """Microseconds since the epoch: exact, and the same in both databases."""
    return (moment - EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


#: A gap between the wall-clock and the monotonic time elapsed between two
#: readings larger than this is a step of the wall clock, not jitter.
CLOCK_STEP_TOLERANCE = timedelta(seconds=1)


class StepGuardedClock:
    """Wall-clock readings that a forward step of the system clock cannot rush.

    Between two readings, the guarded time advances by at most the monotonic
    time elapsed; so after a forward step it lags the wall clock and advances at
    the monotonic rate, and nothing measured against it seems older than it is.
    Once `settle` of monotonic time has passed since the last forward step, it
    takes up the wall clock again: whatever predates the step is by then older
    than `settle` anyway, and what came after was stamped by the new clock. A
    backward step is followed at once: it can only make things seem younger.
    A suspended machine looks like a forward step (the monotonic clock stops):
    deadlines are then late, never early.
    """

    def __init__(self, monotonic: Callable[[], float], settle: timedelta) -> None:
        self._monotonic = monotonic
        self._settle = settle
        self._last: tuple[datetime, float, datetime] | None = None  # wall, monotonic, guarded
        self._stepped_at: float | None = None  # monotonic time of an unsettled forward step

    def guard(self, wall: datetime) -> datetime:
        """`wall`, just read from the wall clock, held back after a forward step."""
        monotonic = self._monotonic()
        guarded = wall if self._last is None else self._advance(wall, monotonic, *self._last)
        self._last = (wall, monotonic, guarded)
        return guarded

    def _advance(
        self,
        wall: datetime,
        monotonic: float,
        last_wall: datetime,
        last_monotonic: float,
        last_guarded: datetime,
    ) -> datetime:
        elapsed = timedelta(seconds=max(monotonic - last_monotonic, 0.0))
        step = wall - last_wall - elapsed
        if step > CLOCK_STEP_TOLERANCE:
            self._stepped_at = monotonic
            log.warning(
                "the wall clock stepped forward by %.1f s: deadlines follow the monotonic"
                " clock for the next %.0f s",
                step.total_seconds(),
                self._settle.total_seconds(),
            )
        elif step < -CLOCK_STEP_TOLERANCE:
            log.warning("the wall clock stepped back by %.1f s", -step.total_seconds())
        if self._stepped_at is None or monotonic - self._stepped_at >= self._settle.total_seconds():
            self._stepped_at = None
            return wall
        return min(wall, last_guarded + elapsed)
