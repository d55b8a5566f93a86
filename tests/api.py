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
    #: The whole answer as a client sees it: REST's JSON body; over gRPC the
    #: response's JSON or the error body.
    body: Any = None
    #: The request id the answer names (REST's body and header; a replay's trailer).
    request_id: str = ""
    #: Whether the answer is a stored one given again (Idempotent-Replayed).
    replayed: bool = False

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
        self,
        rpc: str,
        fields: dict[str, Any] | None = None,
        account: Account | None = None,
        *,
        key: str | None = None,
        request_id: str = "",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """The call; `key` is sent as the Idempotency-Key header, `request_id` as
        X-Request-Id, `headers` as they are."""
        route = ROUTES[rpc]
        fields = dict(fields or {})
        path = route.path
        for json_name in route.path_fields:
            path = path.replace("{" + json_name + "}", str(fields.pop(json_name)))
        headers = {**(account.headers() if account else {}), **(headers or {})}
        if key is not None:
            headers["Idempotency-Key"] = key
        if request_id:
            headers["X-Request-Id"] = request_id
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
        seen = {
            "headers": headers_out,
            "body": body,
            "request_id": body["requestId"],
            "replayed": headers_out.get("Idempotent-Replayed") == "true",
        }
        if response.status == 200:
            assert set(body) >= {"requestId", "data"}
            return Reply("rest", 200, data=body["data"], **seen)
        return Reply("rest", response.status, error=body, **seen)


class GrpcApi:
    transport = "grpc"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel

    async def call(
        self,
        rpc: str,
        fields: dict[str, Any] | None = None,
        account: Account | None = None,
        *,
        key: str | None = None,
        request_id: str = "",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """The call; `key` is sent as the request's request_id field (AIP-155),
        `request_id` as x-request-id metadata, `headers` as metadata."""
        route = ROUTES[rpc]
        request = json_format.ParseDict(fields or {}, route.request_type())
        if key is not None:
            request.request_id = key  # type: ignore[attr-defined]
        sent = {**(account.headers() if account else {}), **(headers or {})}
        metadata = [(k.lower(), v) for k, v in sent.items()]
        if request_id:
            metadata.append(("x-request-id", request_id))
        call = self.channel.unary_unary(
            route.rpc_path,
            request_serializer=route.request_type.SerializeToString,
            response_deserializer=route.response_type.FromString,
        )
        unary = call(request, metadata=metadata, timeout=10)
        try:
            response = await unary
        except grpc.aio.AioRpcError as error:
            body = _error_body(error)
            replay = _replay(error.trailing_metadata(), request_id)
            return Reply("grpc", error.code(), error=body, body=body, **replay)
        data = transcode.response_json(route, response)
        replay = _replay(await unary.trailing_metadata(), request_id)
        return Reply("grpc", grpc.StatusCode.OK, data=data, body=data, **replay)


def _replay(trailers: Any, sent_request_id: str) -> dict[str, Any]:
    """The request id an answer names (a replay's trailer, else the one sent)."""
    values = dict(trailers or ())
    replayed = values.get("idempotent-replayed") == "true"
    return {
        "replayed": replayed,
        "request_id": values["x-request-id"] if replayed else sent_request_id,
    }


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


def login(account: Account | str, secret: str | None = None) -> dict[str, str]:
    """The token route's form for an account (or a bare key, with a wrong secret)."""
    return {
        "grant_type": "client_credentials",
        "client_id": account if isinstance(account, str) else account.api_key,
        "client_secret": secret or ("x" if isinstance(account, str) else account.api_secret),
    }
