"""The one place where an error becomes an HTTP status and an error body.

Every error takes the same path, whether a gRPC call failed or the gateway
refused the request itself (no route, 405, 413, a body that is not JSON), as
grpc-gateway's routing error handler does: a reason, a gRPC code, a message
and metadata make the reply. The HTTP status is the one the error catalogue
(server/domain/errors.py) declares for the reason; a failure without an
ErrorInfo (the server unreachable, a deadline, a framework limit) gets the
status of its gRPC code, as google/rpc/code.proto maps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2

from server.domain.errors import ApiError, Reason

HTTP_STATUS_BY_CODE = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
#: Messages for failures that carry no ErrorInfo: never the raw details, which
#: may leak internals.
GENERIC_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "The service is unavailable. Try again shortly.",
    grpc.StatusCode.DEADLINE_EXCEEDED: "The service did not answer in time. Try again.",
    grpc.StatusCode.UNAUTHENTICATED: "Authentication is required.",
}
_TOO_LARGE = "The request is larger than the service accepts."
#: The reasons of the gateway's own refusals, by the status aiohttp refuses with.
_REFUSALS = {
    reason.http_status: reason
    for reason in (
        Reason.INVALID_REQUEST,
        Reason.NOT_FOUND,
        Reason.METHOD_NOT_ALLOWED,
        Reason.PAYLOAD_TOO_LARGE,
        Reason.UNSUPPORTED_MEDIA_TYPE,
        Reason.REQUEST_TIMEOUT,
    )
}


@dataclass(frozen=True)
class ErrorReply:
    status: int
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    def body(self, request_id: str) -> dict[str, str]:
        # Metadata first, so that it can never overwrite the fixed keys.
        return {
            **self.metadata,
            "requestId": request_id,
            "error": self.reason,
            "message": self.message,
        }


def reply(
    reason: str, code: grpc.StatusCode, message: str, metadata: Mapping[str, str]
) -> ErrorReply:
    known = Reason.__members__.get(reason)
    status = known.http_status if known else HTTP_STATUS_BY_CODE.get(code, 500)
    return ErrorReply(status, reason, message, dict(metadata))


def reply_for(error: grpc.aio.AioRpcError) -> ErrorReply:
    """A failed gRPC call's reply."""
    code = error.code()
    info = _error_info(error)
    if info is None and code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # gRPC's own limit on a message's size: a rate limit always says RATE_LIMITED,
        # and a request that can never succeed must not be told to retry (429).
        return reply_for_api_error(ApiError(Reason.PAYLOAD_TOO_LARGE, detail=_TOO_LARGE))
    if info is None:
        message = GENERIC_MESSAGES.get(code, Reason.INTERNAL.value.template)
        return reply(code.name, code, message, {})
    return reply(info.reason, code, error.details() or "", info.metadata)


def reply_for_api_error(error: ApiError) -> ErrorReply:
    """The reply to an error raised in the gateway, as if a call had failed with it."""
    code = grpc.StatusCode[error.reason.code.name]
    return reply(error.reason.name, code, error.message, error.metadata)


def refusal(status: int, message: str) -> ApiError:
    """The gateway's own refusal of a request aiohttp answered `status` (404, 405, ...)."""
    return ApiError(_REFUSALS.get(status, Reason.INVALID_REQUEST), detail=message)


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    return None
