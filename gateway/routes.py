"""The REST routes, read from the services' google.api.http annotations.

Adding an annotated RPC to a .proto adds its route: the gateway holds no code
per endpoint. Path templates may use simple `{field}` variables only. A
server-streaming RPC becomes a Server-Sent Events route.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType

from google.api import annotations_pb2, http_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from instantorders.v2 import (
    auth_pb2,
    balances_pb2,
    catalog_pb2,
    exchange_rates_pb2,
    options_pb2,
    orders_pb2,
)

#: The modules whose services the gateway exposes.
API_MODULES: tuple[ModuleType, ...] = (
    orders_pb2,
    catalog_pb2,
    balances_pb2,
    exchange_rates_pb2,
    auth_pb2,
)

_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_HTTP_METHODS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Route:
    http_method: str  # "GET", "POST", ...
    path: str  # "/v2/orders/{transactionId}": variables by JSON name, as aiohttp and OpenAPI
    path_fields: dict[str, FieldDescriptor]  # the fields the path sets, by JSON name
    body: str  # "*": the whole request message comes from the JSON body; "": none
    response_body: str  # "": the whole response message is `data`
    rpc: MethodDescriptor
    request_type: type[Message]
    response_type: type[Message]

    @property
    def rpc_path(self) -> str:
        """The gRPC method path: "/instantorders.v2.OrdersService/GetOrder"."""
        return f"/{self.rpc.containing_service.full_name}/{self.rpc.name}"

    @cached_property
    def oauth2_token_response(self) -> bool:
        options = self.rpc.GetOptions()
        return bool(options.Extensions[options_pb2.oauth2_token_response])

    @property
    def public(self) -> bool:
        """Needs no credentials: the token route only (the server's PUBLIC_METHODS)."""
        return self.oauth2_token_response

    @property
    def server_streaming(self) -> bool:
        return bool(self.rpc.server_streaming)

    @property
    def request_message(self) -> Descriptor:
        return self.rpc.input_type

    @cached_property
    def header_fields(self) -> dict[str, FieldDescriptor]:
        """Request fields taken from an HTTP header, by header name: those with the
        (instantorders.v2.http_header) option."""
        fields = {}
        for field in self.request_message.fields:
            header = field.GetOptions().Extensions[options_pb2.http_header]
            if header:
                fields[header] = field
        return fields

    @cached_property
    def body_fields(self) -> dict[str, FieldDescriptor]:
        """Request fields a JSON body may set, by JSON name: with body "*", those
        neither in the path nor in a header."""
        if self.body != "*":
            return {}
        return self._fields_but(self.path_fields.values(), self.header_fields.values())

    @cached_property
    def query_fields(self) -> dict[str, FieldDescriptor]:
        """Request fields taken from the query string, by JSON name: without a body,
        those neither in the path nor in a header."""
        if self.body == "*":
            return {}
        return self._fields_but(self.path_fields.values(), self.header_fields.values())

    def _fields_but(self, *taken: Iterable[FieldDescriptor]) -> dict[str, FieldDescriptor]:
        names = {field.name for fields in taken for field in fields}
        return {f.json_name: f for f in self.request_message.fields if f.name not in names}


def load_routes(modules: tuple[ModuleType, ...] = API_MODULES) -> list[Route]:
    routes = []
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if options.HasExtension(annotations_pb2.http):
                    rule = options.Extensions[annotations_pb2.http]
                    for binding in (rule, *rule.additional_bindings):
                        routes.append(_route(method, binding))
    return routes


def _route(method: MethodDescriptor, rule: http_pb2.HttpRule) -> Route:
    verb = rule.WhichOneof("pattern")
    if verb not in _HTTP_METHODS:
        raise ValueError(f"{method.full_name}: unsupported HTTP pattern {verb!r}")
    path = getattr(rule, verb)
    if _VARIABLE.sub("", path).count("{"):
        raise ValueError(f"{method.full_name}: only {{field}} path variables are supported")
    if method.client_streaming:
        raise ValueError(f"{method.full_name}: client-streaming RPCs have no REST mapping")
    if method.server_streaming and (verb != "get" or rule.response_body):
        raise ValueError(f"{method.full_name}: a stream maps to GET without response_body")
    fields = method.input_type.fields_by_name
    for name in _VARIABLE.findall(path):
        if name not in fields:
            raise ValueError(f"{method.full_name}: path names unknown field {name!r}")
    if rule.body not in ("", "*"):
        raise ValueError(f"{method.full_name}: body must be '*' or empty")
    return Route(
        http_method=verb.upper(),
        path=_VARIABLE.sub(lambda match: "{" + fields[match[1]].json_name + "}", path),
        path_fields={fields[name].json_name: fields[name] for name in _VARIABLE.findall(path)},
        body=rule.body,
        response_body=rule.response_body,
        rpc=method,
        request_type=message_factory.GetMessageClass(method.input_type),
        response_type=message_factory.GetMessageClass(method.output_type),
    )
