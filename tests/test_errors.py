"""One error table: every reason's gRPC code and HTTP status are declared once, in the
catalogue, and every error, an RPC's or the gateway's own, takes one path to its reply."""

from __future__ import annotations

import grpc
import pytest

from gateway import errors
from server.domain.errors import ApiError, Reason
from server.rpc.interceptors import to_rpc_status

#: Every template's fields, so that any reason can be raised in a test.
DETAILS = {
    "sku": "SKU-1",
    "transactionId": "tx-1",
    "currency": "USD",
    "requiredAmount": "9.75",
    "clientOrderNumber": "po-1",
    "budget": "orders",
    "retryAfterSeconds": "1",
    "status": "COMPLETED",
    "currencies": "EUR, USD",
}


def test_no_two_reasons_share_one_entry():
    """An Enum makes equal values aliases: each reason must be a member of its own."""
    assert list(Reason.__members__) == [reason.name for reason in Reason]


@pytest.mark.parametrize("reason", list(Reason), ids=lambda reason: reason.name)
def test_a_failed_call_is_answered_with_the_status_the_catalogue_declares(reason):
    status = to_rpc_status(ApiError(reason, detail="why", **DETAILS))
    failed = grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
    )

    reply = errors.reply_for(failed)

    assert (reply.status, reply.reason) == (reason.http_status, reason.name)
    assert errors.reply_for_api_error(ApiError(reason, detail="why", **DETAILS)) == reply


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, "INVALID_REQUEST"),
        (404, "NOT_FOUND"),
        (405, "METHOD_NOT_ALLOWED"),
        (413, "PAYLOAD_TOO_LARGE"),
        (415, "UNSUPPORTED_MEDIA_TYPE"),
        (408, "REQUEST_TIMEOUT"),
    ],
)
def test_the_gateways_own_refusals_are_reasons_of_the_catalogue(status, reason):
    reply = errors.reply_for_api_error(errors.refusal(status, "refused"))
    assert (reply.status, reply.reason, reply.message) == (status, reason, "refused")


def test_a_failure_without_error_info_gets_its_codes_status_and_no_details():
    failed = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connect: refused"
    )
    reply = errors.reply_for(failed)
    assert (reply.status, reply.reason) == (503, "UNAVAILABLE")
    assert "refused" not in reply.message
