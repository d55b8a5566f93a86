"""What operators and load balancers ask the gateway: liveness, readiness, metrics.

- `/healthz` (liveness): 200 while the gRPC server answers SERVING, else 503.
- `/readyz` (readiness): 200 only while this process takes traffic: not
  draining, the gRPC server SERVING, and its database answering within a
  second (the server reports that per service, see server/runtime.py); else
  503 with the reason. The server reports its database's storage failing (a
  full disk) on a health "service" of its own, STORAGE_SERVICE, which names
  that reason.
- `/metrics`: Prometheus' text format, of this process (with `serve`, the
  gRPC server's and the domain's too: one process, one registry).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.responses import REQUEST_ID, json_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Set when the process is stopping: readiness fails first, while requests are
#: still served, so that load balancers move traffic away before it closes.
DRAINING: web.AppKey[bool] = web.AppKey("draining", bool)
#: The service whose status says whether the server can serve calls now.
READINESS_SERVICE = "instantorders.v2.OrdersService"
#: NOT_SERVING while the database's storage fails (disk full, I/O error, read-only).
STORAGE_SERVICE = "instantorders.v2.storage"
STORAGE_FAILING = (
    "the database's storage is failing (disk full, I/O error or read-only file system:"
    " the server's log says which)"
)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def setup(app: web.Application, channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    app[DRAINING] = False
    app.router.add_get("/healthz", _liveness(health))
    app.router.add_get("/readyz", _readiness(health))
    app.router.add_get("/metrics", _metrics)


def _liveness(health: health_pb2_grpc.HealthStub) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        serving = await _status(health, "") == _SERVING
        body = {"requestId": request[REQUEST_ID], "status": _name(serving)}
        return json_response(200 if serving else 503, body)

    return handle


def _readiness(health: health_pb2_grpc.HealthStub) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        reason = await _not_ready_because(request.app, health)
        body = {"requestId": request[REQUEST_ID], "status": _name(not reason)}
        if reason:
            body["reason"] = reason
        return json_response(503 if reason else 200, body)

    return handle


async def _not_ready_because(app: web.Application, health: health_pb2_grpc.HealthStub) -> str:
    if app[DRAINING]:
        return "the gateway is draining: it is stopping"
    service = await _status(health, READINESS_SERVICE)
    if service == _SERVING:
        return ""
    if service is None:
        return "the gRPC server does not answer"
    if await _status(health, "") != _SERVING:
        return "the gRPC server is stopping"
    if await _status(health, STORAGE_SERVICE) == _NOT_SERVING:
        return STORAGE_FAILING
    return "the database does not answer"


async def _status(health: health_pb2_grpc.HealthStub, service: str) -> int | None:
    try:
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
    except grpc.aio.AioRpcError:
        return None
    return int(answer.status)


def _name(serving: bool) -> str:
    return "SERVING" if serving else "NOT_SERVING"


async def _metrics(request: web.Request) -> web.StreamResponse:
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response
