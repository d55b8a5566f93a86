"""The ceiling: a gRPC server that answers our RPCs with canned replies.

It runs the same grpc.aio server configuration as the service (options, event
loop) with no interceptors, no domain and no database, and answers each RPC
with a reply recorded from the real service: the same bytes on the wire. What
the framework costs for a call is what this server costs; the service's
throughput divided by this one's is how much the service adds.

    python -m bench.ceiling --listen 127.0.0.1:PORT --replies FILE

FILE maps an RPC path ("/instantorders.v2.OrdersService/GetCodes") to the
base64 of its serialized reply.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from server.rpc.app import SERVER_OPTIONS


def _canned(reply: bytes) -> Callable[[bytes, Any], Any]:
    async def answer(request: bytes, context: Any) -> bytes:
        return reply

    return answer


async def serve(listen: str, replies: dict[str, bytes]) -> None:
    handlers: dict[str, dict[str, Any]] = {}
    for path, reply in replies.items():
        service, method = path.strip("/").split("/")
        # Bytes in, bytes out: the request is not even parsed, so this is
        # the framework's own floor.
        handlers.setdefault(service, {})[method] = grpc.unary_unary_rpc_method_handler(
            _canned(reply)
        )
    server = grpc.aio.server(options=SERVER_OPTIONS)
    for service, methods in handlers.items():
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))
    # Health too, as the gateway's /healthz asks it.
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(listen)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--replies", required=True)
    args = parser.parse_args()
    with open(args.replies) as file:
        replies = {path: base64.b64decode(reply) for path, reply in json.load(file).items()}
    asyncio.run(serve(args.listen, replies))


if __name__ == "__main__":
    main()
