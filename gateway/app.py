"""The REST gateway: aiohttp in front of the gRPC services, generic over the routes.

Request:  HTTP -> route (from the .proto) -> request message -> gRPC call.
Response: message -> proto3 JSON -> {"requestId", "data"}; errors -> {"requestId",
"error", "message", ...metadata} with the status from gateway.errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web, web_response
from aiohttp.http_exceptions import HttpProcessingError
from google.protobuf.message import Message

from gateway import client_address, errors, probes, streams, transcode
from gateway.credentials import CredentialsCheck
from gateway.openapi import openapi_document
from gateway.responses import (
    REPLAYED,
    REPLAYED_HEADER,
    REQUEST_ID,
    REQUEST_ID_HEADER,
    call_metadata,
    error_response,
    json_response,
    note_replay,
)
from gateway.routes import Route, load_routes
from server import metrics, tracing
from server.domain.clients import NO_PROXIES, TrustedProxies
from server.domain.errors import ApiError, Reason
from server.domain.requests import request_id_from

JSON = "application/json"
#: OAuth 2.0 clients send this to the token route (RFC 6749 section 4.4.2), and only there.
FORM = "application/x-www-form-urlencoded"
#: The gRPC server's message limit (server/rpc/app.py MAX_MESSAGE_BYTES): a larger
#: body could never be served, and a JSON body is never smaller than its message.
MAX_BODY_BYTES = 16 * 1024
#: On every response of the gateway: nothing it answers may be kept by a cache
#: (codes, tokens, secrets, and errors about them), or be read as another type.
#: The Server header names no versions.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Server": "instant-orders",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewaySettings:
    upstream: str = "127.0.0.1:50051"
    http_listen: str = "127.0.0.1:8080"
    #: The deadline of every call to the gRPC server.
    rpc_timeout_seconds: float = 10.0
    #: How long in-flight requests may take to finish when the gateway stops.
    shutdown_grace_seconds: float = 10.0
    #: Server-Sent Events: a comment line after this long without an event.
    sse_heartbeat_seconds: float = 15.0
    #: The deadline of a streaming call: the longest an event stream stays
    #: open (EventSource clients reconnect by themselves).
    stream_timeout_seconds: float = 3600.0
    #: Peers that may name the client's address (X-Forwarded-For, Forwarded).
    trusted_proxies: TrustedProxies = NO_PROXIES
    #: Sent to the gRPC server of the same process (`serve`), which then believes
    #: the client address the gateway names; see gateway.client_address.
    in_process_token: str = ""
    #: A connection must send a complete request head within this long of opening,
    #: or of its previous response: so an idle keep-alive connection closes then too.
    request_head_timeout_seconds: float = 10.0
    #: A request's body must have arrived within this long of its head, else 408.
    request_body_timeout_seconds: float = 10.0
    #: TLS to the upstream (server.tls.upstream_credentials); None: plaintext.
    upstream_credentials: grpc.ChannelCredentials | None = None


def create_app(channel: grpc.aio.Channel, settings: GatewaySettings) -> web.Application:
    routes = load_routes()
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            _observed_middleware,
            _request_id_middleware,
            _error_middleware,
            _body_deadline(settings.request_body_timeout_seconds),
        ],
    )
    app.on_response_prepare.append(_echo_request_id)
    app.on_response_prepare.append(_security_headers)
    _name_no_server_version()
    streams.setup(app)
    client_address.setup(app, settings.trusted_proxies, settings.in_process_token)
    credentials = CredentialsCheck(channel, settings.rpc_timeout_seconds)
    for route in routes:
        handler = (
            streams.stream_handler(
                route,
                channel,
                settings.sse_heartbeat_seconds,
                settings.stream_timeout_seconds,
                credentials,
            )
            if route.server_streaming
            else _handler(route, channel, settings, credentials)
        )
        if route.oauth2_token_response:
            handler = _in_oauth2_terms(handler)
        app.router.add_route(route.http_method, route.path, handler)
    document = json.dumps(openapi_document(routes)).encode()
    app.router.add_get("/openapi.json", _static_json(document))
    probes.setup(app, channel)
    return app


def _handler(
    route: Route,
    channel: grpc.aio.Channel,
    settings: GatewaySettings,
    credentials: CredentialsCheck,
) -> Handler:
    call = channel.unary_unary(
        route.rpc_path,
        request_serializer=route.request_type.SerializeToString,
        response_deserializer=route.response_type.FromString,
    )

    # Only a call that takes an Idempotency-Key can be answered with a replay.
    replayable = bool(route.header_fields)

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            message = await _request_message(route, request)
        except ApiError:
            # Authentication comes first: unauthenticated is 401, whatever the request carries.
            refusal = await credentials.refusal(route, request)
            if refusal is not None:
                return error_response(request, refusal)
            raise
        unary = call(message, metadata=call_metadata(request), timeout=settings.rpc_timeout_seconds)
        try:
            response = await unary
        except grpc.aio.AioRpcError as error:
            if replayable:
                note_replay(request, error.trailing_metadata())
            return error_response(request, errors.reply_for(error))
        if replayable:
            note_replay(request, await unary.trailing_metadata())
        body: dict[str, Any] = {"requestId": request[REQUEST_ID]}
        body["data"] = transcode.response_json(route, response)
        headers = {}
        if route.oauth2_token_response:
            body.update(body["data"])
            headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        return json_response(200, body, headers)

    return handle


async def _request_message(route: Route, request: web.Request) -> Message:
    body = await _body(route, request)
    return transcode.request_message(
        route, request.match_info, request.query, body, request.headers
    )


async def _body(route: Route, request: web.Request) -> dict[str, Any] | None:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, request.content_length)
    if route.body != "*":
        return None
    if route.oauth2_token_response and request.content_type == FORM:
        return transcode.form_fields(await request.read(), request.charset)
    raw = await request.read()
    if raw and request.content_type != JSON:
        raise _unsupported_media_type(route)
    return transcode.parse_json_object(raw)


def _in_oauth2_terms(handler: Handler) -> Handler:
    """The token route refuses a malformed request as RFC 6749 says: invalid_request."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as error:
            if error.reason is not Reason.INVALID_REQUEST:
                raise
            raise ApiError(Reason.invalid_request, detail=error.message, **error.metadata) from None

    return handle


def _unsupported_media_type(route: Route) -> ApiError:
    accepted = f"{JSON} or {FORM}" if route.oauth2_token_response else JSON
    return ApiError(Reason.UNSUPPORTED_MEDIA_TYPE, detail=f"Send the body as {accepted}.")


def _static_json(document: bytes) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(body=document, content_type="application/json")

    return handle


_UNTRACED = contextlib.nullcontext()
#: The methods counted by name; any other is "other", so that labels stay bounded.
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


@web.middleware
async def _observed_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts and times every request by method, route template and status (never the
    raw path: its ids would make the labels unbounded), in a span when tracing is on."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    method = request.method if request.method in _METHODS else "other"
    started, status = time.perf_counter(), 500
    traced = tracing.enabled()
    with tracing.http_request_span(method, route, request.headers) if traced else _UNTRACED:
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            metrics.http_request(method, route, status, time.perf_counter() - started)


@web.middleware
async def _request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[REQUEST_ID] = request_id_from(request.headers.getall(REQUEST_ID_HEADER, []))
    return await handler(request)


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, event streams included, names its request
    (a replayed answer, the request first answered so, and says it is replayed)."""
    if REQUEST_ID in request:
        response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
    if request.get(REPLAYED):
        response.headers[REPLAYED_HEADER] = "true"


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: SECURITY_HEADERS on every response the application answers."""
    response.headers.update(SECURITY_HEADERS)


def _name_no_server_version() -> None:
    """aiohttp answers a request its parser refuses itself, before any hook of ours:
    its default Server header would name aiohttp's and Python's versions."""
    # Every aiohttp response takes its default from this module global, read when sent.
    web_response.SERVER_SOFTWARE = SECURITY_HEADERS["Server"]  # type: ignore[attr-defined]


def _body_deadline(seconds: float) -> Any:
    """A middleware: a body still arriving `seconds` after its head is refused with 408,
    and the connection closed, so that a client cannot hold it by sending slowly."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.content.is_eof():  # no body, or all of it here already: the usual case
            return await handler(request)
        late = asyncio.get_running_loop().call_later(seconds, _refuse_late_body, request)
        try:
            return await handler(request)
        except web.HTTPRequestTimeout:
            detail = f"The body did not arrive within {seconds:g} s."
            timed_out = error_response(request, errors.reply_for_api_error(
                ApiError(Reason.REQUEST_TIMEOUT, detail=detail)
            ))  # fmt: skip
            timed_out.force_close()
            return timed_out
        finally:
            late.cancel()

    return middleware


def _refuse_late_body(request: web.Request) -> None:
    """Fails the handler's read of a body that has not arrived in time."""
    if not request.content.is_eof():
        request.content.set_exception(web.HTTPRequestTimeout())


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(request, errors.reply_for_api_error(error))
    except web.HTTPException as error:
        if error.status < 400:
            raise
        refused = errors.refusal(error.status, error.reason)
        return error_response(request, errors.reply_for_api_error(refused))
    except Exception:
        log.exception("gateway failure, requestId %s", request[REQUEST_ID])
        internal = errors.reply_for_api_error(ApiError(Reason.INTERNAL))
        return error_response(request, internal)


class MalformedHttpFilter(logging.Filter):
    """aiohttp logs a request its parser refuses (a NUL in a header, a line too
    long) as an ERROR with a stack trace. It is the client's mistake, answered
    with a 400: one INFO line without the trace, so that nobody can fill the
    logs with tracebacks by sending garbage."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "refused malformed HTTP: %s", (error.message,)
            record.exc_info = record.exc_text = None
        return True


#: Limits of aiohttp's HTTP parser, which answers a plain-text 400 before the
#: gateway sees a request over them. The request line may be 16 KiB, so that
#: an over-long value in a query (a 10 KB clientOrderNumber, say) reaches the
#: API's own validation and its JSON error; a header stays at 8 KiB.
HTTP_LIMITS: dict[str, Any] = {"max_line_size": 16 * 1024, "max_field_size": 8190}


def _upstream_channel(settings: GatewaySettings) -> grpc.aio.Channel:
    interceptors = tracing.client_interceptors()
    if settings.upstream_credentials is None:
        return grpc.aio.insecure_channel(settings.upstream, interceptors=interceptors)
    return grpc.aio.secure_channel(
        settings.upstream, settings.upstream_credentials, interceptors=interceptors
    )


async def start_gateway(settings: GatewaySettings) -> tuple[web.AppRunner, int, grpc.aio.Channel]:
    """Serves on settings.http_listen (port 0 picks one); returns the runner, port and channel."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedHttpFilter) for f in server_log.filters):
        server_log.addFilter(MalformedHttpFilter())
    channel = _upstream_channel(settings)
    runner = web.AppRunner(
        create_app(channel, settings),
        access_log=None,
        shutdown_timeout=settings.shutdown_grace_seconds,
        # A client that goes away cancels its handler, and so its gRPC call:
        # an abandoned event stream costs the server nothing further.
        handler_cancellation=True,
        # aiohttp closes a connection without a complete request within this long of
        # opening or of its last response: the head timeout, and the idle one.
        keepalive_timeout=settings.request_head_timeout_seconds,
        **HTTP_LIMITS,
    )
    await runner.setup()
    host, _, port = settings.http_listen.rpartition(":")
    site = web.TCPSite(runner, host or None, int(port), reuse_port=False)
    await site.start()
    address: Any = runner.addresses[0]
    return runner, int(address[1]), channel
