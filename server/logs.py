"""Structured logs: one JSON object per line on stderr, with the request id on every line.

Writing happens on a background thread (QueueHandler -> QueueListener), so a
slow or blocked stderr never stalls the event loop. As a last line of defence,
anything shaped like an API secret or a bearer token is masked; codes and PINs
are never passed to a logger in the first place.
"""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import logging.handlers
import queue
import re
import sys
from datetime import UTC, datetime

from server import tracing

#: The id of the request being served; "-" outside of one.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
#: The id the client sent for it (the gateway's, through the gateway); "" if none.
CLIENT_REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar(
    "client_request_id", default=""
)

_SECRET_SHAPES = re.compile(
    r"sk_[A-Za-z0-9_-]{16,}"  # an API secret
    r"|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"  # a JWT
    r"|(?i:bearer)\s+\S+"
)


class _RequestIdFilter(logging.Filter):
    """Stamps the record with the request id and trace id while still in the
    request's context."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.client_request_id = CLIENT_REQUEST_ID.get()
        record.trace_id = tracing.trace_id() if tracing.enabled() else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "requestId": getattr(record, "request_id", "-"),
            "message": mask(record.getMessage()),
        }
        client_request_id = getattr(record, "client_request_id", "")
        if client_request_id:
            line["clientRequestId"] = mask(client_request_id)
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            line["traceId"] = trace_id
        return json.dumps(line, ensure_ascii=False)


def mask(text: str) -> str:
    return _SECRET_SHAPES.sub("[redacted]", text)


def configure(level: str) -> None:
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    to_queue = logging.handlers.QueueHandler(records)
    to_queue.addFilter(_RequestIdFilter())
    # The queue carries the rendered message (a traceback included) to the writer.
    to_queue.setFormatter(logging.Formatter("%(message)s"))
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(JsonFormatter())
    listener = logging.handlers.QueueListener(records, writer)
    listener.start()
    atexit.register(listener.stop)  # flush what is queued before the process ends
    logging.basicConfig(level=level.upper(), handlers=[to_queue], force=True)
    # aiosqlite logs every statement at DEBUG: noise, and nothing an operator needs.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLogger().level))
