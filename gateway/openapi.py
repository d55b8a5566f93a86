"""The OpenAPI 3 description of the REST API, derived from the same descriptors as the routes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from instantorders.v2 import options_pb2

from gateway.routes import Route

#: Every status the API answers with besides 200; each route may return any of them.
ERROR_STATUSES = {
    "400": "Bad Request: malformed JSON, unknown or mistyped fields or parameters.",
    "401": "Unauthorized: x-api-key and a bearer token of that key are required; checked"
    " before the body, so a request without them is 401 whatever its body.",
    "404": "Not Found: no such order or product for this account.",
    "409": "Conflict: duplicate clientOrderNumber with the duplicate check on, an order "
    "that can no longer be cancelled, or an Idempotency-Key whose first request is "
    "still being processed (IDEMPOTENCY_KEY_IN_USE, with Retry-After).",
    "413": "Payload Too Large: bodies are limited to 16 KiB, the gRPC server's message limit.",
    "415": "Unsupported Media Type: a body must be application/json (the token route"
    " also takes application/x-www-form-urlencoded).",
    "422": "Unprocessable Entity: currency, balance or delivery rules refuse the order, or "
    "an Idempotency-Key was used for a different request (IDEMPOTENCY_KEY_MISMATCH).",
    "429": "Too Many Requests.",
    "500": "Internal Server Error.",
    "503": "Service Unavailable: the order service or its database cannot serve now"
    " (UNAVAILABLE: nothing changed), or the database did not confirm a change that may"
    " have been made (OUTCOME_UNKNOWN: retry with the same Idempotency-Key).",
    "504": "Gateway Timeout: the order service did not answer in time.",
}
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT64: {"type": "string"},
    FieldDescriptor.TYPE_UINT64: {"type": "string"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"}
}


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["requestId", "error", "message"],
            "properties": {
                "requestId": {"type": "string"},
                "error": {
                    "type": "string",
                    "description": "The reason, e.g. UNSUPPORTED_CURRENCY.",
                },
                "message": {"type": "string"},
            },
            "additionalProperties": {"type": "string"},
        }
    }
    paths: dict[str, Any] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.http_method.lower()] = _operation(route, schemas)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "instant-orders REST API",
            "version": "2",
            "description": "Generated from the gRPC services' google.api.http annotations.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "BearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    }


def _operation(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.rpc.name[0].lower() + route.rpc.name[1:],
        "tags": [route.rpc.containing_service.name],
        "parameters": _parameters(route, schemas),
        "responses": {
            "200": _success_response(route, schemas),
            **{
                status: {
                    "description": text,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
                for status, text in ERROR_STATUSES.items()
            },
        },
    }
    if route.oauth2_token_response:
        operation["security"] = []
    else:
        # Both headers on the same request: one requirement object naming both.
        operation["security"] = [{"ApiKeyAuth": [], "BearerAuth": []}]
    if route.body == "*":
        body_schema = _message_schema(
            route.request_message, schemas, request=True, fields=route.body_fields.values()
        )
        content = {"application/json": {"schema": body_schema}}
        if route.oauth2_token_response:
            content["application/x-www-form-urlencoded"] = {"schema": body_schema}
        operation["requestBody"] = {"required": bool(route.body_fields), "content": content}
    return operation


def _parameters(route: Route, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    parameters = [
        {
            "name": json_name,
            "in": "path",
            "required": True,
            "schema": _field_schema(field, schemas, request=True),
        }
        for json_name, field in route.path_fields.items()
    ]
    for json_name, field in route.query_fields.items():
        parameter: dict[str, Any] = {
            "name": json_name,
            "in": "query",
            "required": False,
            "schema": _field_schema(field, schemas, request=True),
        }
        if field.is_repeated:
            parameter.update(style="form", explode=False)
        parameters.append(parameter)
    for header in route.header_fields:
        parameters.append(
            {
                "name": header,
                "in": "header",
                "required": False,
                "description": _HEADERS.get(header, ""),
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        )
    return parameters


_HEADERS = {
    "Idempotency-Key": (
        "Makes the request safe to retry (draft-ietf-httpapi-idempotency-key-header): a "
        "repeat with the same key and body gets the first answer again, with the header "
        "Idempotent-Replayed: true, and changes nothing. 1 to 255 printable ASCII "
        "characters, scoped to the account."
    )
}


def _success_response(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    envelope = _success_schema(route, schemas)
    if not route.server_streaming:
        return {"description": "OK", "content": {"application/json": {"schema": envelope}}}
    return {
        "description": (
            "Server-Sent Events: one event per message, whose `data:` line is the JSON "
            "envelope given as x-event-data; `: heartbeat` comment lines keep the "
            "connection open; a failure after the first event is an `event: error` whose "
            "data is the Error schema. The stream ends when the order is final."
        ),
        "content": {"text/event-stream": {"schema": _SSE_EVENT, "x-event-data": envelope}},
    }


#: One Server-Sent Event, as OpenAPI before 3.2 has a text/event-stream schema
#: describe each event: its fields, `data` holding the JSON text.
_SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string", "description": "absent or `message`; `error` for a failure"},
        "data": {"type": "string", "description": "the JSON envelope (x-event-data)"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


def _success_schema(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    response = route.rpc.output_type
    data = (
        _field_schema(response.fields_by_name[route.response_body], schemas, request=False)
        if route.response_body
        else _message_schema(response, schemas, request=False)
    )
    envelope: dict[str, Any] = {
        "type": "object",
        "required": ["requestId", "data"],
        "properties": {"requestId": {"type": "string"}, "data": data},
    }
    if route.oauth2_token_response:
        # RFC 6749 section 5.1: the token's fields also stand at the top level.
        token = schemas[_schema_name(response)]
        envelope["properties"].update(token["properties"])
        envelope["required"] += token["required"]
    return envelope


def _message_schema(
    descriptor: Descriptor,
    schemas: dict[str, Any],
    *,
    request: bool,
    fields: Iterable[FieldDescriptor] | None = None,
) -> Any:
    """The message's schema, of `fields` only if given (a body: not those a path
    or a header sets)."""
    if descriptor.full_name in _WELL_KNOWN:
        return dict(_WELL_KNOWN[descriptor.full_name])
    name = _schema_name(descriptor)
    if name not in schemas:
        schemas[name] = {}  # placeholder: recursive messages refer to it meanwhile
        shown = list(descriptor.fields if fields is None else fields)
        properties = {
            field.json_name: _field_schema(field, schemas, request=request) for field in shown
        }
        required = [
            field.json_name
            for field in shown
            if (_is_required_in_request(field) if request else _always_rendered(field))
        ]
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        if request:
            schema["additionalProperties"] = False
        schemas[name] = schema
    return {"$ref": f"#/components/schemas/{name}"}


def _field_schema(field: FieldDescriptor, schemas: dict[str, Any], *, request: bool) -> Any:
    if field.message_type is not None:
        item = _message_schema(field.message_type, schemas, request=request)
    elif field.enum_type is not None:
        item = _enum_schema(field.enum_type)
    else:
        item = dict(_SCALARS[field.type])
    if field.is_repeated:
        return {"type": "array", "items": item}
    return item


def _enum_schema(enum: EnumDescriptor) -> dict[str, Any]:
    return {"type": "string", "enum": [v.name for v in enum.values if v.number != 0]}


def _is_required_in_request(field: FieldDescriptor) -> bool:
    behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return field_behavior_pb2.REQUIRED in behaviors


def _always_rendered(field: FieldDescriptor) -> bool:
    """Fields without presence are always in the JSON; optional and message ones may be absent."""
    if field.GetOptions().Extensions[options_pb2.omit_when_empty]:
        return False
    return field.is_repeated or not field.has_presence


def _schema_name(descriptor: Descriptor) -> str:
    return descriptor.full_name.removeprefix("instantorders.v2.").replace(".", "_")
