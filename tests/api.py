"""One client for both transports, so that every rule is checked over REST and gRPC alike.

`call("CreateInstantOrder", fields, account)` builds the request from the same
route table the gateway uses: over REST as the documented HTTP request, over
gRPC as the request message. Both answer a Reply whose `data` is the
response's JSON (the gateway's `data`) and whose `error` is the error body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp.test_utils import TestClient
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from gateway import transcode
from gateway.routes import Route, load_routes
from server.domain.errors import Reason

ROUTES: dict[str, Route] = {route.rpc.name: route for route in load_routes()}


@dataclass
class Account:
    name: str
    account_id: int
    api_key: str
    api_secret: str
    token: str = ""

    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key, "Authorization": f"Bearer {self.token}"}


@dataclass
class Reply:
    transport: str
    status: Any  # HTTP status (int) over REST, grpc.StatusCode over gRPC
    data: Any = None
    error: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in (200, grpc.StatusCode.OK)

    def expect_ok(self) -> Any:
        assert self.ok, f"expected success, got {self.status}: {self.error}"
        return self.data

    def expect_error(self, reason: str, http_status: int) -> dict[str, Any]:
        """Asserts the reason, and the status: `http_status` over REST, the
        catalogued gRPC code over gRPC."""
        if self.transport == "rest":
            assert self.status == http_status, (self.status, self.error)
        else:
            expected = grpc.StatusCode[Reason[reason].code.name]
            assert self.status == expected, (self.status, self.error)
        assert self.error.get("error") == reason, self.error
        assert self.error.get("message"), self.error
        return self.error


class RestApi:
    transport = "rest"

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    async def call(
        self, rpc: str, fields: dict[str, Any] | None = None, account: Account | None = None
    ) -> Reply:
        route = ROUTES[rpc]
        fields = dict(fields or {})
        path = route.path
        for json_name in route.path_fields:
            path = path.replace("{" + json_name + "}", str(fields.pop(json_name)))
        headers = account.headers() if account else {}
        if route.body == "*":
            response = await self.client.request(
                route.http_method, path, json=fields, headers=headers
            )
        else:
            query = [
                (key, ",".join(map(str, value)) if isinstance(value, list) else str(value))
                for key, value in fields.items()
            ]
            response = await self.client.request(
                route.http_method, path, params=query, headers=headers
            )
        body = await response.json()
        assert response.content_type == "application/json"
        assert body["requestId"] == response.headers["X-Request-Id"]
        headers_out = dict(response.headers)
        if response.status == 200:
            assert set(body) >= {"requestId", "data"}
            return Reply("rest", 200, data=body["data"], headers=headers_out)
        return Reply("rest", response.status, error=body, headers=headers_out)


class GrpcApi:
    transport = "grpc"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel

    async def call(
        self, rpc: str, fields: dict[str, Any] | None = None, account: Account | None = None
    ) -> Reply:
        route = ROUTES[rpc]
        request = json_format.ParseDict(fields or {}, route.request_type())
        metadata = [(k.lower(), v) for k, v in (account.headers() if account else {}).items()]
        call = self.channel.unary_unary(
            route.rpc_path,
            request_serializer=route.request_type.SerializeToString,
            response_deserializer=route.response_type.FromString,
        )
        try:
            response = await call(request, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as error:
            return Reply("grpc", error.code(), error=_error_body(error))
        return Reply("grpc", grpc.StatusCode.OK, data=transcode.response_json(route, response))


def _error_body(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The ErrorInfo as the gateway renders it; asserts there is exactly one."""
    trailers = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1, status
    assert infos[0].domain == "instantorders.v2"
    assert status.code == error.code().value[0]
    return {**infos[0].metadata, "error": infos[0].reason, "message": status.message}


def error_reason(error: grpc.aio.AioRpcError) -> str:
    return str(_error_body(error)["error"])
