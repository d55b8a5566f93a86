"""Authentication before the gateway's own refusals.

The gRPC server authenticates every call; the gateway holds no key. A request
that parses is authenticated by its own call, so the usual path costs nothing
more. Before the gateway refuses a request itself (a body or query that does
not parse, a wrong Content-Type) it asks the server whether the request's
credentials are valid (CredentialsService.VerifyCredentials), so that an
unauthenticated request is a 401 whatever it carries, and learns nothing of
the API's validation.
"""

from __future__ import annotations

import grpc
from aiohttp import web
from google.protobuf import empty_pb2
from instantorders.v2 import auth_pb2

from gateway import errors
from gateway.responses import call_metadata
from gateway.routes import Route
from server.domain.auth import credentials_of
from server.domain.errors import ApiError

_VERIFY = auth_pb2.DESCRIPTOR.services_by_name["CredentialsService"].methods_by_name[
    "VerifyCredentials"
]


class CredentialsCheck:
    """Asks the gRPC server whether a request's credentials are valid."""

    def __init__(self, channel: grpc.aio.Channel, timeout_seconds: float) -> None:
        self._verify = channel.unary_unary(
            f"/{_VERIFY.containing_service.full_name}/{_VERIFY.name}",
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )
        self._timeout = timeout_seconds

    async def refusal(self, route: Route, request: web.Request) -> errors.ErrorReply | None:
        """The answer to give instead of the gateway's own refusal: 401 for credentials
        the server refuses, or whatever else the check failed with (429, 503: fail
        closed); None when they are valid, or the route needs none."""
        if route.public:
            return None
        metadata = call_metadata(request)
        try:
            # The server's own first rule: no call needed for what it refuses anyway.
            credentials_of(_values(metadata, "x-api-key"), _values(metadata, "authorization"))
            await self._verify(empty_pb2.Empty(), metadata=metadata, timeout=self._timeout)
        except ApiError as error:
            return errors.reply_for_api_error(error)
        except grpc.aio.AioRpcError as error:
            return errors.reply_for(error)
        return None


def _values(metadata: list[tuple[str, str]], key: str) -> list[str]:
    return [value for name, value in metadata if name == key]
