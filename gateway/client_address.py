"""The client's address, passed on to the gRPC server for its failed-login limits.

The gateway finds it by the rule of server.domain.clients (X-Forwarded-For or
Forwarded only from a trusted proxy) and names it to the server in
x-forwarded-for. The server believes that only from a trusted proxy too: the
gateway's address in the server's --trusted-proxies, or, for the gateway of
`serve`, the token of its process.
"""

from __future__ import annotations

from aiohttp import web

from server.domain.clients import (
    FORWARDED_FOR_METADATA,
    IN_PROCESS_GATEWAY_METADATA,
    NO_PROXIES,
    TrustedProxies,
)

_PROXIES = web.AppKey("trusted_proxies", TrustedProxies)
_IN_PROCESS_TOKEN = web.AppKey("in_process_token", str)


def setup(app: web.Application, proxies: TrustedProxies, in_process_token: str) -> None:
    app[_PROXIES] = proxies
    app[_IN_PROCESS_TOKEN] = in_process_token


def client_address(request: web.Request) -> str:
    proxies = request.app.get(_PROXIES, NO_PROXIES)
    return proxies.client_address(
        request.remote or "",
        request.headers.getall("X-Forwarded-For", ()),
        request.headers.getall("Forwarded", ()),
    )


def client_metadata(request: web.Request) -> list[tuple[str, str]]:
    """The call metadata that names the client to the server."""
    metadata = []
    address = client_address(request)
    if address.isascii() and address.isprintable() and address:
        metadata.append((FORWARDED_FOR_METADATA, address))
    if request.app.get(_IN_PROCESS_TOKEN):
        metadata.append((IN_PROCESS_GATEWAY_METADATA, request.app[_IN_PROCESS_TOKEN]))
    return metadata
