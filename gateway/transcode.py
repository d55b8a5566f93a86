"""HTTP requests to protobuf messages and protobuf messages to JSON, per proto3 JSON.

Strict on input: an unknown field or query parameter, a wrong type, a
duplicated key or parameter is a 400, never silently ignored (a typo like
`payWithCurency` must not settle an order in another currency).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from typing import Any, cast
from urllib.parse import parse_qsl

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from instantorders.v2 import options_pb2
from multidict import MultiMapping

from gateway.routes import Route
from server.domain.errors import ApiError, Reason, invalid_request


def request_message(
    route: Route,
    path_params: Mapping[str, str],
    query: MultiMapping[str],
    body: dict[str, Any] | None,
    headers: MultiMapping[str] | None = None,
) -> Message:
    """The RPC's request from the route's path variables, query string, body and
    the headers its fields name."""
    fields: dict[str, Any] = dict(body or {})
    _refuse_unknown_fields(route, fields)
    fields.update(_query_fields(route, query))
    for json_name in route.path_fields:
        fields[json_name] = path_params[json_name]
    fields.update(_header_fields(route, headers))
    message = route.request_type()
    try:
        json_format.ParseDict(fields, message, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        raise invalid_request(f"Invalid request: {_describe(error)}") from None
    return message


def _refuse_unknown_fields(route: Route, body: Mapping[str, Any]) -> None:
    """Names a field the body may not set in the API's terms, not protobuf's."""
    known = set(route.body_fields) | {f.name for f in route.body_fields.values()}
    for key in body:
        if key not in known:
            expected = ", ".join(route.body_fields) or "none"
            raise invalid_request(
                f"Unknown field {key!r}; the fields are: {expected}.", str(key)[:64]
            )


def _header_fields(route: Route, headers: MultiMapping[str] | None) -> dict[str, str]:
    """The fields set by headers (Idempotency-Key), each at most once and not empty."""
    fields = {}
    for header, field in route.header_fields.items():
        values = headers.getall(header, []) if headers is not None else []
        if not values:
            continue
        if len(values) > 1 or not values[0]:
            raise invalid_request(f"{header} must be given once, and not empty.", header)
        fields[field.json_name] = values[0]
    return fields


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object body; duplicate keys, NaN and Infinity are errors."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise invalid_request("The body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise invalid_request("The body must be a JSON object.")
    return value


def form_fields(raw: bytes, charset: str | None) -> dict[str, str]:
    """An application/x-www-form-urlencoded body in its charset (UTF-8 if none),
    decoded strictly; each parameter at most once (RFC 6749)."""
    encoding = charset or "utf-8"
    try:
        text = raw.decode(encoding).rstrip()
        pairs = parse_qsl(text, keep_blank_values=True, encoding=encoding, errors="strict")
    except (LookupError, ValueError):  # an unknown charset, or bytes that are not in it
        raise invalid_request("The body is not form data in its charset.") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            raise invalid_request(f"Parameter {key!r} must be given once.")
        fields[key] = value
    return fields


def response_json(route: Route, message: Message) -> Any:
    """The JSON of `data`: the response, or its `response_body` field."""
    document = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    _drop_empty_omittable(cast(Descriptor, message.DESCRIPTOR), document)
    if route.response_body:
        return document[message.DESCRIPTOR.fields_by_name[route.response_body].json_name]
    return document


def _query_fields(route: Route, query: MultiMapping[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key in set(query.keys()):
        field = route.query_fields.get(key)
        if field is None:
            raise ApiError(
                Reason.INVALID_REQUEST, detail=f"Unknown query parameter {key!r}.", parameter=key
            )
        values = query.getall(key)
        if field.is_repeated:
            fields[key] = [item for value in values for item in value.split(",") if item]
        elif len(values) > 1:
            raise invalid_request(f"Query parameter {key!r} is given more than once.")
        else:
            fields[key] = values[0]
    return fields


@cache
def _omittable_plan(
    descriptor: Descriptor,
) -> tuple[tuple[str, ...], tuple[tuple[FieldDescriptor, Descriptor], ...]]:
    """(JSON names to drop when empty, message fields that contain such names)."""
    omit = tuple(
        f.json_name
        for f in descriptor.fields
        if f.GetOptions().Extensions[options_pb2.omit_when_empty]
    )
    nested = tuple(
        (f, f.message_type)
        for f in descriptor.fields
        if f.message_type is not None and _has_omittable(f.message_type, frozenset())
    )
    return omit, nested


def _has_omittable(descriptor: Descriptor, seen: frozenset[str]) -> bool:
    if descriptor.full_name in seen:
        return False
    seen = seen | {descriptor.full_name}
    return any(
        f.GetOptions().Extensions[options_pb2.omit_when_empty]
        or (f.message_type is not None and _has_omittable(f.message_type, seen))
        for f in descriptor.fields
    )


def _drop_empty_omittable(descriptor: Descriptor, document: dict[str, Any]) -> None:
    omit, nested = _omittable_plan(descriptor)
    for name in omit:
        if document.get(name) == []:
            del document[name]
    for field, message_type in nested:
        value = document.get(field.json_name)
        children = value if isinstance(value, list) else [value]
        for child in children:
            if isinstance(child, dict):
                _drop_empty_omittable(message_type, child)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate key")
    return document


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _describe(error: Exception) -> str:
    """protobuf's parse error without the internal message path it appends."""
    text = _INTERNAL_PATH.sub("", str(error).split("\n")[0])
    return text if len(text) <= 300 else text[:300] + "..."


_INTERNAL_PATH = re.compile(r" at [\w.]+(?=\.$)")
