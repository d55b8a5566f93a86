"""Cross-cutting concerns of every API call: request ids, errors, authentication.

Both interceptors wrap the method's behaviour instead of answering from
intercept_service, so that their work runs in the call's own task and context
(contextvars set here are seen by the servicer).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hmac
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from server import metrics
from server.domain.auth import credentials_of
from server.domain.clients import (
    FORWARDED_FOR_METADATA,
    FORWARDED_METADATA,
    IN_PROCESS_GATEWAY_METADATA,
    NO_PROXIES,
    TrustedProxies,
)
from server.domain.errors import ApiError, Reason, api_error_of, invalid_request
from server.domain.failures import StorageFailing
from server.domain.idempotency import REPLAYED_FROM
from server.domain.limits import Budget
from server.domain.models import Caller
from server.domain.requests import (
    REPLAYED_METADATA,
    REQUEST_ID_METADATA,
    client_request_id_from,
    new_request_id,
)
from server.logs import CLIENT_REQUEST_ID, REQUEST_ID

#: ErrorInfo.domain of every error this service raises.
ERROR_DOMAIN = "instantorders.v2"
#: Calls to our own services; health and reflection pass untouched.
API_METHOD_PREFIX = "/instantorders.v2."

#: grpc.aio.ServicerContext; grpcio ships no types.
Context: TypeAlias = Any
#: What runs around a call's behaviour, unary or streaming, in the call's task.
Around = Callable[[Context], contextlib.AbstractAsyncContextManager[None]]

_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller")

log = logging.getLogger(__name__)


def current_caller() -> Caller:
    """The account authenticated for the running call."""
    return _CALLER.get()


def to_rpc_status(error: ApiError, metadata: Metadata = ()) -> grpc.Status:
    """An ApiError as google.rpc.Status with exactly one ErrorInfo (AIP-193), and
    `metadata` beside it in the trailers."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason.name, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(
        code=error.reason.code.value, message=error.message, details=[detail]
    )
    converted = rpc_status.to_status(status)
    return converted._replace(trailing_metadata=(*converted.trailing_metadata, *metadata))


Metadata = tuple[tuple[str, str], ...]


def _replay_metadata() -> Metadata:
    """Trailers of a replayed answer: it is one, and the request first answered so."""
    original = REPLAYED_FROM.get()
    if original is None:
        return ()
    return ((REPLAYED_METADATA, "true"), (REQUEST_ID_METADATA, original))


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Names the call with a request id, counts and times it, and turns every
    failure into a rich status.

    An ApiError becomes its catalogued status; anything unexpected is logged
    here and answered as INTERNAL, so no stack trace or detail reaches callers.
    """

    def __init__(self) -> None:
        self._metrics: dict[str, metrics.RpcMethod] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(API_METHOD_PREFIX):
            return handler
        series = self._metrics.get(method)
        if series is None:
            service, _, name = method.strip("/").partition("/")
            kind = "unary" if handler.unary_unary is not None else "server_stream"
            series = self._metrics[method] = metrics.RpcMethod(kind, service, name)
        given = _values(handler_call_details.invocation_metadata, REQUEST_ID_METADATA)
        guard = functools.partial(_Guarded, client_request_id_from(given), series)
        return _wrap(_refusing_undecodable(handler), guard)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with an x-api-key and a bearer token of that key, and
    within the key's rate limit for the method's budget."""

    def __init__(
        self,
        authenticate: Callable[[str, str, str, str], Awaitable[Caller]],
        spend: Callable[[str, Budget], Awaitable[None]],
        budgets: dict[str, Budget],
        public_methods: set[str],
    ):
        self._authenticate = authenticate
        self._spend = spend
        self._budgets = budgets
        self._public_methods = public_methods

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if (
            handler is None
            or not method.startswith(API_METHOD_PREFIX)
            or method in self._public_methods
        ):
            return handler
        metadata = handler_call_details.invocation_metadata
        budget = self._budgets.get(method, Budget.READS)
        return _wrap(
            handler,
            lambda context: _Authenticated(self._authenticate, self._spend, metadata, budget),
        )


class _Authenticated:
    """Around a call: authenticates it and spends its rate budget, or refuses it.

    Context managers are classes here, not @asynccontextmanager generators,
    as they run around every call and a class costs a fraction of a generator.
    """

    def __init__(
        self,
        authenticate: Callable[[str, str, str, str], Awaitable[Caller]],
        spend: Callable[[str, Budget], Awaitable[None]],
        metadata: Sequence[tuple[str, str | bytes]] | None,
        budget: Budget,
    ) -> None:
        self._authenticate, self._spend = authenticate, spend
        self._metadata, self._budget = metadata, budget

    async def __aenter__(self) -> None:
        api_key, authorization = credentials_of(
            _values(self._metadata, "x-api-key"), _values(self._metadata, "authorization")
        )
        caller = await self._authenticate(
            api_key, authorization, REQUEST_ID.get(), CLIENT_REQUEST_ID.get()
        )
        await self._spend(caller.api_key, self._budget)
        _CALLER.set(caller)

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class _Guarded:
    """Around a call: names it with a request id of ours (beside the client's own),
    counts and times it, and answers every failure with a status. The reason only is
    logged: messages may quote what the client sent."""

    def __init__(self, client_request_id: str, series: metrics.RpcMethod, context: Context) -> None:
        self._client_request_id, self._series, self._context = client_request_id, series, context
        self._started = 0.0

    async def __aenter__(self) -> None:
        REQUEST_ID.set(new_request_id())
        CLIENT_REQUEST_ID.set(self._client_request_id)
        REPLAYED_FROM.set(None)
        self._series.started()
        self._started = time.perf_counter()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any
    ) -> None:
        replayed = _replay_metadata()
        if error is None:
            self._handled("OK")
            if replayed:
                self._context.set_trailing_metadata(replayed)
            return
        if isinstance(error, grpc.aio.AbortError):  # aborted inside: its code is its own
            self._handled("UNKNOWN")
            return
        meaning = api_error_of(error)
        if meaning is None:
            if not isinstance(error, Exception):  # cancelled: the client went away
                self._handled("CANCELLED")
                return
            log.error("unexpected failure", exc_info=error)
            meaning = ApiError(Reason.INTERNAL)
        elif not isinstance(error, StorageFailing):  # the store logs it, once per burst
            log.info("call refused: %s", meaning.reason.name)
        self._handled(meaning.reason.code.name)
        if meaning.reason is Reason.RATE_LIMITED:
            metrics.rate_limited(meaning.metadata.get("budget", ""))
        await self._context.abort_with_status(to_rpc_status(meaning, replayed))

    def _handled(self, code: str) -> None:
        self._series.handled(code, time.perf_counter() - self._started)


class _Undecodable:
    """Stands for a request whose bytes are not a valid message."""


_UNDECODABLE = _Undecodable()


def _refusing_undecodable(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """Answers a request that does not parse with INVALID_ARGUMENT (INVALID_REQUEST).
    Left to grpc, a parse failure is UNKNOWN with the exception's text in it."""
    parse = handler.request_deserializer
    if parse is None:
        return handler

    def tolerant_parse(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return _UNDECODABLE

    def refused(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def checked(request: Any, context: Context) -> Any:
            if request is _UNDECODABLE:
                raise invalid_request("The request is not a valid protobuf message.")
            return behavior(request, context)

        return checked

    if handler.unary_unary is not None:
        return handler._replace(
            request_deserializer=tolerant_parse, unary_unary=refused(handler.unary_unary)
        )
    if handler.unary_stream is not None:
        return handler._replace(
            request_deserializer=tolerant_parse, unary_stream=refused(handler.unary_stream)
        )
    return handler


def _wrap(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """The handler with its behaviour, unary or server-streaming, run inside `around`.

    Fails closed: a client-streaming method would otherwise slip past
    authentication.
    """
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_behavior(request: Any, context: Context) -> Any:
            async with around(context):
                return await unary(request, context)

        return handler._replace(unary_unary=unary_behavior)
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        async def stream_behavior(request: Any, context: Context) -> AsyncIterator[Any]:
            async with around(context):
                async for response in stream(request, context):
                    yield response

        return handler._replace(unary_stream=stream_behavior)
    raise TypeError("client-streaming methods are not wrapped; add them before using one")


def _values(metadata: Sequence[tuple[str, str | bytes]] | None, key: str) -> list[str]:
    return [value for k, value in metadata or () if k == key and isinstance(value, str)]


@dataclass(frozen=True)
class ClientAddresses:
    """How the server finds a caller's address: its peer's, or the one named in
    x-forwarded-for or forwarded metadata by a trusted proxy. Our gateway is one
    when its address is in `proxies`, or when it runs in this process (`serve`)
    and sends `in_process_token`: not every local process on loopback is."""

    proxies: TrustedProxies = NO_PROXIES
    in_process_token: str = ""

    def of(self, context: Context) -> str:
        metadata = context.invocation_metadata()
        return self.proxies.client_address(
            peer_host(context.peer() or ""),
            _values(metadata, FORWARDED_FOR_METADATA),
            _values(metadata, FORWARDED_METADATA),
            peer_trusted=self._from_in_process_gateway(metadata),
        )

    def _from_in_process_gateway(self, metadata: Sequence[tuple[str, str | bytes]]) -> bool:
        tokens = _values(metadata, IN_PROCESS_GATEWAY_METADATA)
        return bool(self.in_process_token) and any(
            hmac.compare_digest(token.encode(), self.in_process_token.encode()) for token in tokens
        )


#: Every peer is its own client.
PEERS_ONLY = ClientAddresses()


def peer_host(peer: str) -> str:
    """The host of a gRPC peer: "ipv4:1.2.3.4:5678", "ipv6:[::1]:5678" (or %5B::1%5D)."""
    address = urllib.parse.unquote(peer.partition(":")[2])
    return address.rpartition(":")[0].strip("[]") if address.count(":") else address
