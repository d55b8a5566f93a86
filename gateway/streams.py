"""Server-streaming RPCs as Server-Sent Events (text/event-stream).

The first message decides the answer. A failure before it (401, 404, ...) is an
ordinary JSON error response. Otherwise the answer is 200 and each message is
one event whose `data:` line holds the {requestId, data} envelope. A comment
line is sent after every quiet heartbeat interval, so that proxies keep the
connection open and a vanished client is noticed. A failure after the first
message becomes an `event: error` whose data is the usual error body. The
event stream ends when the RPC does.

A client that disconnects cancels the RPC at once (the gateway runs its
handlers with cancellation on), and stopping the gateway ends every stream
with an UNAVAILABLE error event, so that clients reconnect elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import Message

from gateway import errors, transcode
from gateway.credentials import CredentialsCheck
from gateway.responses import (
    REQUEST_ID,
    call_metadata,
    dumps,
    error_response,
)
from gateway.routes import Route
from server.domain.errors import ApiError, Reason

#: The calls behind the open event streams, cancelled when the gateway stops.
OPEN_STREAMS: web.AppKey[set[Any]] = web.AppKey("open_streams")
HEARTBEAT = b": heartbeat\n\n"
_STOPPING = errors.reply_for_api_error(
    ApiError(Reason.UNAVAILABLE, detail="The gateway is stopping. Reconnect to continue watching.")
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup(app: web.Application) -> None:
    app[OPEN_STREAMS] = set()
    app.on_shutdown.append(_end_streams)


def stream_handler(
    route: Route,
    channel: grpc.aio.Channel,
    heartbeat_seconds: float,
    timeout_seconds: float,
    credentials: CredentialsCheck,
) -> Handler:
    start_call = channel.unary_stream(
        route.rpc_path,
        request_serializer=route.request_type.SerializeToString,
        response_deserializer=route.response_type.FromString,
    )

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            message = transcode.request_message(route, request.match_info, request.query, None)
        except ApiError:  # authentication first, as for every route
            refusal = await credentials.refusal(route, request)
            if refusal is not None:
                return error_response(request, refusal)
            raise
        call = start_call(message, metadata=call_metadata(request), timeout=timeout_seconds)
        open_streams = request.app[OPEN_STREAMS]
        open_streams.add(call)
        messages = _messages(call)
        try:
            try:
                first = await anext(messages)
            except grpc.aio.AioRpcError as error:
                return error_response(request, errors.reply_for(error))
            response = await _start_events(request)
            if first is not None:
                await response.write(_event(request, route, first))
                await _relay(request, response, route, messages, heartbeat_seconds)
            await response.write_eof()
            return response
        finally:
            open_streams.discard(call)
            call.cancel()

    return handle


async def _messages(call: Any) -> AsyncIterator[Message | None]:
    """The call's messages, then None when it ends; a cancelled call raises
    CancelledError in its reader, which here means the gateway is stopping."""
    async for message in call:
        yield message
    yield None


async def _start_events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: pass events on at once
        }
    )
    await response.prepare(request)
    return response


async def _relay(
    request: web.Request,
    response: web.StreamResponse,
    route: Route,
    messages: AsyncIterator[Message | None],
    heartbeat_seconds: float,
) -> None:
    """Sends each further message as an event, with heartbeats between, until the end."""
    next_message = asyncio.ensure_future(anext(messages))
    try:
        while True:
            done, _ = await asyncio.wait({next_message}, timeout=heartbeat_seconds)
            if not done:
                await response.write(HEARTBEAT)
                continue
            if next_message.cancelled():
                await response.write(_error_event(request, _STOPPING))
                return
            try:
                message = next_message.result()
            except grpc.aio.AioRpcError as error:
                await response.write(_error_event(request, errors.reply_for(error)))
                return
            if message is None:
                return
            await response.write(_event(request, route, message))
            next_message = asyncio.ensure_future(anext(messages))
    finally:
        next_message.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await next_message


def _event(request: web.Request, route: Route, message: Message) -> bytes:
    envelope = {"requestId": request[REQUEST_ID], "data": transcode.response_json(route, message)}
    return b"data: " + dumps(envelope) + b"\n\n"


def _error_event(request: web.Request, reply: errors.ErrorReply) -> bytes:
    return b"event: error\ndata: " + dumps(reply.body(request[REQUEST_ID])) + b"\n\n"


async def _end_streams(app: web.Application) -> None:
    for call in app[OPEN_STREAMS].copy():
        call.cancel()
