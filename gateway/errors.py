"""The one place where a gRPC outcome becomes an HTTP status and an error body.

The status comes from the ErrorInfo reason where the API defines its own
(422s), and otherwise from the gRPC code, as google/rpc/code.proto maps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2

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
HTTP_STATUS_BY_REASON = {
    "UNSUPPORTED_CURRENCY": 422,
    "INSUFFICIENT_BALANCE": 422,
    "INSTANT_DELIVERY_NOT_SUPPORTED": 422,
}
#: Messages for failures that carry no ErrorInfo (the server unreachable, a
#: deadline, a framework limit): never the raw details, which may leak internals.
GENERIC_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "The service is unavailable. Try again shortly.",
    grpc.StatusCode.DEADLINE_EXCEEDED: "The service did not answer in time. Try again.",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "The request exceeds a limit of the service.",
    grpc.StatusCode.UNAUTHENTICATED: "Authentication is required.",
}
INTERNAL_MESSAGE = "Internal error. Quote the requestId when you report it."
#: Reasons that the gateway answers itself, before any RPC.
GATEWAY_REASONS = {
    400: "INVALID_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


@dataclass(frozen=True)
class ErrorReply:
    status: int
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)

    def body(self, request_id: str) -> dict[str, str]:
        # Metadata first, so that it can never overwrite the fixed keys.
        return {
            **self.metadata,
            "requestId": request_id,
            "error": self.reason,
            "message": self.message,
        }


class GatewayError(Exception):
    """A request the gateway refuses itself (malformed, too large, unknown route)."""

    def __init__(self, status: int, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.reply = ErrorReply(
            status, GATEWAY_REASONS.get(status, "INVALID_REQUEST"), message, metadata
        )


def reply_for(error: grpc.aio.AioRpcError) -> ErrorReply:
    code = error.code()
    info = _error_info(error)
    if info is None:
        message = GENERIC_MESSAGES.get(code, INTERNAL_MESSAGE)
        return ErrorReply(HTTP_STATUS_BY_CODE.get(code, 500), code.name, message)
    status = HTTP_STATUS_BY_REASON.get(info.reason) or HTTP_STATUS_BY_CODE.get(code, 500)
    return ErrorReply(status, info.reason, error.details() or "", dict(info.metadata))


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    return None
