"""Request ids: the name of one call in logs, errors and the audit trail, the same
in the gateway and the gRPC server."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

MAX_REQUEST_ID_LENGTH = 128
#: The gRPC metadata that carries a request id: to the server, and back with a
#: replayed answer (the id of the request first answered so).
REQUEST_ID_METADATA = "x-request-id"
#: Trailing metadata of an answer stored for an idempotency key and given again.
REPLAYED_METADATA = "idempotent-replayed"


def request_id_from(given: Sequence[str]) -> str:
    """The id the client knows its request by: its own when it sent exactly one that
    is short printable ASCII (X-Request-Id, or x-request-id metadata), else a new one.
    The gateway names its requests so, and passes the id on as the client's."""
    return client_request_id_from(given) or new_request_id()


def client_request_id_from(given: Sequence[str]) -> str:
    """The client's id as given, if it is one short printable ASCII value; else ""."""
    if len(given) == 1 and _acceptable(given[0]):
        return given[0]
    return ""


def new_request_id() -> str:
    """Our own id of a request: the server makes it, so no client can choose or
    repeat it (a client's id is any text, and two accounts may send the same)."""
    return str(uuid.uuid4())


def _acceptable(value: str) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and value.isascii() and value.isprintable()
