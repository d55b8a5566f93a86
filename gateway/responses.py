"""What every gateway handler shares: the request id, call metadata, JSON and error replies."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway import errors

#: Headers passed on to the gRPC server as call metadata.
FORWARDED_HEADERS = ("x-api-key", "authorization")
REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID = web.RequestKey("request_id", str)


def call_metadata(request: web.Request) -> list[tuple[str, str]]:
    metadata = [("x-request-id", request[REQUEST_ID])]
    for name in FORWARDED_HEADERS:
        for value in request.headers.getall(name, ()):
            # gRPC metadata is printable ASCII; anything else cannot be a valid
            # credential, and leaving it out makes the server answer 401.
            if value.isascii() and value.isprintable():
                metadata.append((name, value))
    return metadata


def error_response(request: web.Request, reply: errors.ErrorReply) -> web.Response:
    headers = {}
    if reply.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="instant-orders"'
    elif reply.status == 503:
        headers["Retry-After"] = "1"
    return json_response(reply.status, reply.body(request[REQUEST_ID]), headers)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=dumps(body), content_type="application/json", headers=headers
    )


def dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()
