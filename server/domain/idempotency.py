"""Retry-safe calls: the Idempotency-Key of draft-ietf-httpapi-idempotency-key-header,
the request_id of Google AIP-155.

A client sends a key of its choosing with a request that changes state. The
first request with the key runs; what it was answered (the order it placed or
changed, with its status then, or the refusal the rules gave) is stored with the
key in the same transaction as the change, so no crash separates them. A repeat
with the same key and the same request is given that answer again and changes
nothing; with another request it is IDEMPOTENCY_KEY_MISMATCH; while the first is
still being processed, IDEMPOTENCY_KEY_IN_USE. A request refused before the rules
ran (malformed, unauthenticated, rate-limited, an outage) stores nothing, so the
client may fix it and retry with the same key. Keys belong to an account.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from server.domain.errors import ApiError, Reason, invalid_request
from server.domain.models import BulkOrderRequest, InstantOrderRequest, OrderStatus
from server.domain.orders import Cancelled, OrderOutcome, Placed, Refused, refusal_of

MAX_KEY_LENGTH = 255
#: How long a key is kept by default (--idempotency-retention); then it may be reused.
RETENTION = timedelta(days=90)
#: How soon a client may retry a request whose key is in use.
IN_USE_RETRY_SECONDS = 1

#: Set while a call is answered with a stored answer: the id of the request that
#: was first answered so. The transports echo it, and say the answer is replayed.
REPLAYED_FROM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "replayed_from", default=None
)


@dataclass(frozen=True)
class KeyRecord:
    """The answer stored with a key: an order and its status in that answer, or a
    refusal (its reason, message and metadata, as JSON)."""

    transaction_id: str | None = None
    status: OrderStatus | None = None
    refusal: str | None = None


@dataclass(frozen=True)
class IdempotencyKey:
    """A key sent with a request: the store keeps `record_of(outcome)` with it."""

    key: str
    #: The request's operation and data, hashed: a repeat must match it.
    fingerprint: str
    #: The id of this request, echoed again by every replay of its answer.
    request_id: str
    record_of: Callable[[Any], KeyRecord]


@dataclass(frozen=True)
class Remembered:
    """The key was used before: with which request, answered what."""

    fingerprint: str
    request_id: str
    record: KeyRecord


@dataclass(frozen=True)
class KeyInUse:
    """A request with the key is still being processed (its transaction is open)."""


def check_key(key: str) -> None:
    if not 0 < len(key) <= MAX_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise invalid_request(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
            "Idempotency-Key",
        )


def key_for(
    key: str, request_id: str, record_of: Callable[[Any], KeyRecord], operation: str, **fields: Any
) -> IdempotencyKey | None:
    """The key a request was sent with, checked; None for a request without one."""
    if not key:
        return None
    check_key(key)
    # The request as data: the same for the same fields, however the client spelt them.
    document = json.dumps({"operation": operation, **fields}, sort_keys=True)
    return IdempotencyKey(key, hashlib.sha256(document.encode()).hexdigest(), request_id, record_of)


def order_record(
    request: InstantOrderRequest | BulkOrderRequest, outcome: OrderOutcome
) -> KeyRecord:
    """What an order request's key keeps: the order and its status, or the refusal."""
    if isinstance(outcome, Placed):
        return KeyRecord(outcome.order.transaction_id, outcome.order.status)
    return refusal_record(refusal_of(request, outcome))


def cancellation_record(outcome: Cancelled | Refused) -> KeyRecord:
    if isinstance(outcome, Cancelled):
        return KeyRecord(outcome.order.transaction_id, outcome.order.status)
    return refusal_record(outcome.error)


def refusal_record(error: ApiError) -> KeyRecord:
    text = json.dumps(
        {"reason": error.reason.name, "message": error.message, "metadata": error.metadata},
        sort_keys=True,
    )
    return KeyRecord(refusal=text)


def replay(remembered: Remembered, key: IdempotencyKey) -> KeyRecord:
    """The stored answer to give again, once it is sure the request is the same;
    marks the call as replayed."""
    if remembered.fingerprint != key.fingerprint:
        raise ApiError(Reason.IDEMPOTENCY_KEY_MISMATCH)
    REPLAYED_FROM.set(remembered.request_id)
    if remembered.record.refusal is not None:
        raise _refusal(remembered.record.refusal)
    return remembered.record


def in_use() -> ApiError:
    return ApiError(Reason.IDEMPOTENCY_KEY_IN_USE, retryAfterSeconds=str(IN_USE_RETRY_SECONDS))


def _refusal(text: str) -> ApiError:
    stored = json.loads(text)
    return ApiError.restored(Reason[stored["reason"]], stored["message"], stored["metadata"])
