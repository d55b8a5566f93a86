"""The REST gateway: aiohttp in front of the gRPC services, generic over the routes.

Request:  HTTP -> route (from the .proto) -> request message -> gRPC call.
Response: message -> proto3 JSON -> {"requestId", "data"}; errors -> {"requestId",
"error", "message", ...metadata} with the status from gateway.errors.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import errors, streams, transcode
from gateway.openapi import openapi_document
from gateway.responses import (
    REQUEST_ID,
    REQUEST_ID_HEADER,
    call_metadata,
    error_response,
    json_response,
)
from gateway.routes import Route, load_routes

MAX_BODY_BYTES = 64 * 1024

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


def create_app(channel: grpc.aio.Channel, settings: GatewaySettings) -> web.Application:
    routes = load_routes()
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[_request_id_middleware, _error_middleware],
    )
    app.on_response_prepare.append(_echo_request_id)
    streams.setup(app)
    for route in routes:
        handler = (
            streams.stream_handler(
                route, channel, settings.sse_heartbeat_seconds, settings.stream_timeout_seconds
            )
            if route.server_streaming
            else _handler(route, channel, settings)
        )
        app.router.add_route(route.http_method, route.path, handler)
    document = json.dumps(openapi_document(routes)).encode()
    app.router.add_get("/openapi.json", _static_json(document))
    app.router.add_get("/healthz", _health_handler(channel))
    return app


def _handler(route: Route, channel: grpc.aio.Channel, settings: GatewaySettings) -> Handler:
    call = channel.unary_unary(
        route.rpc_path,
        request_serializer=route.request_type.SerializeToString,
        response_deserializer=route.response_type.FromString,
    )

    async def handle(request: web.Request) -> web.StreamResponse:
        message = transcode.request_message(
            route, request.match_info, request.query, await _body(route, request)
        )
        try:
            response = await call(
                message, metadata=call_metadata(request), timeout=settings.rpc_timeout_seconds
            )
        except grpc.aio.AioRpcError as error:
            return error_response(request, errors.reply_for(error))
        body: dict[str, Any] = {"requestId": request[REQUEST_ID]}
        body["data"] = transcode.response_json(route, response)
        headers = {}
        if route.oauth2_token_response:
            body.update(body["data"])
            headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        return json_response(200, body, headers)

    return handle


async def _body(route: Route, request: web.Request) -> dict[str, Any] | None:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, request.content_length)
    if route.body != "*":
        return None
    if request.content_type == "application/x-www-form-urlencoded":
        return transcode.form_fields(await request.post())
    return transcode.parse_json_object(await request.read())


def _static_json(document: bytes) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(body=document, content_type="application/json")

    return handle


def _health_handler(channel: grpc.aio.Channel) -> Handler:
    """200 while the gRPC server reports SERVING, else 503: for load balancers."""
    health = health_pb2_grpc.HealthStub(channel)

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            serving = answer.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            serving = False
        body = {
            "requestId": request[REQUEST_ID],
            "status": "SERVING" if serving else "NOT_SERVING",
        }
        return json_response(200 if serving else 503, body)

    return handle


@web.middleware
async def _request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given: list[str] = request.headers.getall(REQUEST_ID_HEADER, [])
    request[REQUEST_ID] = (
        given[0] if len(given) == 1 and _is_request_id(given[0]) else str(uuid.uuid4())
    )
    return await handler(request)


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, event streams included, names its request."""
    if REQUEST_ID in request:
        response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]


def _is_request_id(value: str) -> bool:
    """A client's own request id is kept when it is short printable ASCII."""
    return 0 < len(value) <= 128 and value.isascii() and value.isprintable()


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.GatewayError as error:
        return error_response(request, error.reply)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return error_response(request, errors.GatewayError(error.status, error.reason).reply)
    except Exception:
        log.exception("gateway failure, requestId %s", request[REQUEST_ID])
        reply = errors.ErrorReply(500, "INTERNAL", errors.INTERNAL_MESSAGE)
        return error_response(request, reply)


#: Limits of aiohttp's HTTP parser, which answers a plain-text 400 before the
#: gateway sees a request over them. The request line may be 16 KiB, so that
#: an over-long value in a query (a 10 KB clientOrderNumber, say) reaches the
#: API's own validation and its JSON error; a header stays at 8 KiB.
HTTP_LIMITS: dict[str, Any] = {"max_line_size": 16 * 1024, "max_field_size": 8190}


async def start_gateway(settings: GatewaySettings) -> tuple[web.AppRunner, int, grpc.aio.Channel]:
    """Serves on settings.http_listen (port 0 picks one); returns the runner, port and channel."""
    channel = grpc.aio.insecure_channel(settings.upstream)
    runner = web.AppRunner(
        create_app(channel, settings),
        access_log=None,
        shutdown_timeout=settings.shutdown_grace_seconds,
        # A client that goes away cancels its handler, and so its gRPC call:
        # an abandoned event stream costs the server nothing further.
        handler_cancellation=True,
        **HTTP_LIMITS,
    )
    await runner.setup()
    host, _, port = settings.http_listen.rpartition(":")
    site = web.TCPSite(runner, host or None, int(port), reuse_port=False)
    await site.start()
    address: Any = runner.addresses[0]
    return runner, int(address[1]), channel
