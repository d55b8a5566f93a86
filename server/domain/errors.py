"""The error catalogue: every error the API can answer, transport-neutral.

Each reason carries a canonical code, named as in google/rpc/code.proto, the
HTTP status the REST gateway answers it with, and a message template: the one
table of both. The gRPC layer turns an ApiError into a google.rpc.Status with
one ErrorInfo (reason, metadata); the gateway reads the HTTP status of that
reason here, and answers its own refusals (no route, 405, 413, bad JSON) from
the same table. The reasons spelt in lower case are RFC 6749 section 5.2 error
codes of the token endpoint, which OAuth clients expect verbatim.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from server.domain.failures import OutcomeUnknown, StorageFailing, StorageUnavailable


class Code(enum.Enum):
    """The canonical error codes of google.rpc.Code that this API uses."""

    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


@dataclass(frozen=True)
class ErrorSpec:
    code: Code
    http_status: int
    template: str
    #: An error of the OAuth 2.0 token endpoint (RFC 6749 section 5.2). Also
    #: keeps invalid_request from being an alias of INVALID_REQUEST.
    oauth2: bool = False


class Reason(enum.Enum):
    INVALID_REQUEST = ErrorSpec(Code.INVALID_ARGUMENT, 400, "{detail}")
    UNAUTHENTICATED = ErrorSpec(
        Code.UNAUTHENTICATED,
        401,
        "Send the x-api-key header and Authorization: Bearer with an unexpired token of that key.",
    )
    PRODUCT_NOT_FOUND = ErrorSpec(Code.NOT_FOUND, 404, "No product has SKU {sku}.")
    ORDER_NOT_FOUND = ErrorSpec(Code.NOT_FOUND, 404, "No order has transactionId {transactionId}.")
    INSTANT_DELIVERY_NOT_SUPPORTED = ErrorSpec(
        Code.FAILED_PRECONDITION, 422, "Product {sku} cannot be ordered for instant delivery."
    )
    MIXED_PRODUCT_CURRENCIES = ErrorSpec(
        Code.FAILED_PRECONDITION,
        422,
        "An order holds products of one currency; this one mixes {currencies}.",
    )
    UNSUPPORTED_CURRENCY = ErrorSpec(
        Code.FAILED_PRECONDITION,
        422,
        "payWithCurrency is required or not supported for this account.",
    )
    INSUFFICIENT_BALANCE = ErrorSpec(
        Code.FAILED_PRECONDITION,
        422,
        "The {currency} balance does not cover the order total of {requiredAmount} {currency}.",
    )
    CLIENT_ORDER_NUMBER_DUPLICATE = ErrorSpec(
        Code.ALREADY_EXISTS,
        409,
        "An order with clientOrderNumber {clientOrderNumber} exists already: {transactionId}.",
    )
    ORDER_NOT_CANCELLABLE = ErrorSpec(
        Code.FAILED_PRECONDITION,
        409,
        "Order {transactionId} is {status} and cannot be cancelled any more.",
    )
    IDEMPOTENCY_KEY_MISMATCH = ErrorSpec(
        Code.FAILED_PRECONDITION,
        422,
        "This Idempotency-Key was used for a different request. Use a new key.",
    )
    IDEMPOTENCY_KEY_IN_USE = ErrorSpec(
        Code.ABORTED,
        409,
        "A request with this Idempotency-Key is being processed. Retry after"
        " {retryAfterSeconds} s to get its answer.",
    )
    RATE_LIMITED = ErrorSpec(
        Code.RESOURCE_EXHAUSTED,
        429,
        "Too many {budget}. Retry after {retryAfterSeconds} s.",
    )
    UNAVAILABLE = ErrorSpec(Code.UNAVAILABLE, 503, "{detail}")
    OUTCOME_UNKNOWN = ErrorSpec(
        Code.UNAVAILABLE,
        503,
        "The database did not confirm the change, which may have been made (an order may"
        " have been placed). Retry with the same Idempotency-Key, or look the order up by"
        " its clientOrderNumber.",
    )
    INTERNAL = ErrorSpec(
        Code.INTERNAL, 500, "Internal error. Quote the requestId when you report it."
    )
    # The gateway's own refusals, before any call.
    NOT_FOUND = ErrorSpec(Code.NOT_FOUND, 404, "{detail}")
    METHOD_NOT_ALLOWED = ErrorSpec(Code.UNIMPLEMENTED, 405, "{detail}")
    PAYLOAD_TOO_LARGE = ErrorSpec(Code.RESOURCE_EXHAUSTED, 413, "{detail}")
    REQUEST_TIMEOUT = ErrorSpec(Code.DEADLINE_EXCEEDED, 408, "{detail}")
    UNSUPPORTED_MEDIA_TYPE = ErrorSpec(Code.INVALID_ARGUMENT, 415, "{detail}")
    # The token endpoint's (RFC 6749 section 5.2).
    invalid_request = ErrorSpec(Code.INVALID_ARGUMENT, 400, "{detail}", oauth2=True)
    invalid_client = ErrorSpec(
        Code.UNAUTHENTICATED, 401, "Client authentication failed.", oauth2=True
    )
    unsupported_grant_type = ErrorSpec(
        Code.INVALID_ARGUMENT, 400, "grant_type must be client_credentials.", oauth2=True
    )

    @property
    def code(self) -> Code:
        return self.value.code

    @property
    def http_status(self) -> int:
        return self.value.http_status


class ApiError(Exception):
    """A failure the caller can act on.

    `metadata` holds the dynamic parts of the message (lowerCamel keys, string
    values, as in an ErrorInfo) and fills the template; `detail` is
    message-only text for reasons whose template is just "{detail}".
    """

    def __init__(self, reason: Reason, *, detail: str = "", **metadata: str) -> None:
        self.reason = reason
        self.metadata = metadata
        self.message = reason.value.template.format(detail=detail, **metadata)
        super().__init__(f"{reason.name}: {self.message}")

    @classmethod
    def restored(cls, reason: Reason, message: str, metadata: dict[str, str]) -> ApiError:
        """The error as it was first answered (a replay), message and all."""
        error = cls.__new__(cls)
        error.reason, error.message, error.metadata = reason, message, metadata
        Exception.__init__(error, f"{reason.name}: {message}")
        return error


def invalid_request(detail: str, field: str | None = None) -> ApiError:
    """A malformed request; `field` names the offending field (its JSON name)."""
    if field is None:
        return ApiError(Reason.INVALID_REQUEST, detail=detail)
    return ApiError(Reason.INVALID_REQUEST, detail=detail, field=field)


def api_error_of(error: BaseException) -> ApiError | None:
    """What a failure means to the caller; None for a defect (answered INTERNAL)."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, OutcomeUnknown):
        return ApiError(Reason.OUTCOME_UNKNOWN)
    if isinstance(error, StorageUnavailable):
        return ApiError(Reason.UNAVAILABLE, detail="The database is unavailable. Retry shortly.")
    return None


def log_retried_failure(log: logging.Logger, what: str, error: Exception) -> None:
    """Logs why a background job failed before it tries again: an outage the store
    reported (the database is down or restarting) as one line, any other failure
    with its stack trace, since that one is a defect. A failing storage (a full disk)
    is not logged here: the store logs it, once per burst."""
    if isinstance(error, StorageFailing):
        return
    meaning = api_error_of(error)
    if meaning is not None and meaning.reason.code is Code.UNAVAILABLE:
        log.warning("%s, retrying: %s", what, meaning.message)
    else:
        log.error("%s; retrying", what, exc_info=error)
