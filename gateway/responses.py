"""What every gateway handler shares: the request id, call metadata, JSON and error replies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway import errors
from gateway.client_address import client_metadata
from server.domain.requests import REPLAYED_METADATA, REQUEST_ID_METADATA

#: Headers passed on to the gRPC server as call metadata.
FORWARDED_HEADERS = ("x-api-key", "authorization")
REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID = web.RequestKey("request_id", str)
#: Set when the answer is one stored for an Idempotency-Key and given again.
REPLAYED = web.RequestKey("replayed", bool)
REPLAYED_HEADER = "Idempotent-Replayed"


def call_metadata(request: web.Request) -> list[tuple[str, str]]:
    metadata = [(REQUEST_ID_METADATA, request[REQUEST_ID])]
    metadata.extend(client_metadata(request))  # for the failed-login limits
    for name in FORWARDED_HEADERS:
        for value in request.headers.getall(name, ()):
            # gRPC metadata is printable ASCII; anything else cannot be a valid
            # credential, and leaving it out makes the server answer 401.
            if value.isascii() and value.isprintable():
                metadata.append((name, value))
    return metadata


def note_replay(request: web.Request, trailers: Any) -> None:
    """A replayed answer keeps the request id of the first: the body and headers say it."""
    values = dict(trailers or ())
    if values.get(REPLAYED_METADATA) == "true" and REQUEST_ID_METADATA in values:
        request[REQUEST_ID] = values[REQUEST_ID_METADATA]
        request[REPLAYED] = True


def error_response(request: web.Request, reply: errors.ErrorReply) -> web.Response:
    headers = {}
    if reply.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="instant-orders"'
    elif reply.status == 429:
        headers.update(rate_limit_headers(reply.metadata))
    elif reply.status == 503 or "retryAfterSeconds" in reply.metadata:
        headers["Retry-After"] = reply.metadata.get("retryAfterSeconds", "1")
    return json_response(reply.status, reply.body(request[REQUEST_ID]), headers)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=dumps(body), content_type="application/json", headers=headers
    )


def dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def rate_limit_headers(metadata: Mapping[str, str]) -> dict[str, str]:
    """Retry-After, and the RateLimit headers of draft-ietf-httpapi-ratelimit-headers,
    from a RATE_LIMITED error's details."""
    retry_after = metadata.get("retryAfterSeconds", "1")
    headers = {"Retry-After": retry_after}
    if "quota" in metadata:
        policy = metadata.get("budget", "default").replace('"', "")
        headers["RateLimit-Policy"] = (
            f'"{policy}";q={metadata["quota"]};w={metadata.get("windowSeconds", "1")}'
        )
        headers["RateLimit"] = f'"{policy}";r=0;t={retry_after}'
    return headers
