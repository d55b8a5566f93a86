"""What the domain tells whoever watches it work (metrics), without knowing who."""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def order_answered(self, kind: str, outcome: str) -> None:
        """An order request was answered: placed (outcome: its status, lower case),
        refused (the reason), or replayed for its Idempotency-Key ("replayed")."""

    def orders_completed(self, count: int) -> None:
        """Waiting orders the fulfiller completed."""

    def orders_cancelled(self, cause: str, count: int) -> None:
        """Orders cancelled and refunded; cause: "deadline" or "customer"."""


class Unobserved:
    """Tells nobody (the default)."""

    def order_answered(self, kind: str, outcome: str) -> None:
        pass

    def orders_completed(self, count: int) -> None:
        pass

    def orders_cancelled(self, cause: str, count: int) -> None:
        pass


UNOBSERVED = Unobserved()
