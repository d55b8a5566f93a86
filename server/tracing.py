"""OpenTelemetry tracing: off unless an OTLP endpoint is set.

With `--otlp-endpoint URL` (or the standard OTEL_EXPORTER_OTLP_ENDPOINT), spans
go to that collector over OTLP/HTTP: the gateway's HTTP request (continuing a
client's W3C `traceparent`), the gRPC call (the gateway's client span and the
server's), and each store transaction, the fulfiller's batches among them. The log
lines of a request carry its trace id. Off, nothing is instrumented and a
span costs one attribute lookup.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from opentelemetry import context, propagate, trace

TRACER = trace.get_tracer("instant_orders")
_NOTHING = contextlib.nullcontext()


class _State:
    enabled = False


def configure(endpoint: str, service_name: str) -> bool:
    """Exports spans to `endpoint` (or OTEL_EXPORTER_OTLP_ENDPOINT); returns whether
    tracing is on."""
    endpoint = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    enable()
    return True


def enable() -> None:
    """Turns the spans on (the tracer provider is set already, as tests set one)."""
    _State.enabled = True


def disable() -> None:
    _State.enabled = False


def enabled() -> bool:
    return _State.enabled


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A span around the block, or nothing while tracing is off."""
    if not _State.enabled:
        return _NOTHING
    return TRACER.start_as_current_span(name, attributes=attributes)


def server_interceptors() -> list[Any]:
    """The gRPC server's: a span per call, continuing the caller's trace."""
    if not _State.enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[Any]:
    """The gateway's channel's: a span per call, and the trace passed on in metadata."""
    if not _State.enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def http_request_span(method: str, route: str, headers: Any) -> Iterator[Any]:
    """The gateway's span of one HTTP request, continuing a W3C traceparent. Our own,
    not opentelemetry-instrumentation-aiohttp-server's: that one instruments by
    patching aiohttp's Application class for the whole process."""
    token = context.attach(propagate.extract(headers))
    try:
        name = f"{method} {route}"
        attributes = {"http.request.method": method, "http.route": route}
        with TRACER.start_as_current_span(
            name, kind=trace.SpanKind.SERVER, attributes=attributes
        ) as current:
            yield current
    finally:
        context.detach(token)


def trace_id() -> str:
    """The current trace's id in hex, or "" outside of one."""
    current = trace.get_current_span().get_span_context()
    return format(current.trace_id, "032x") if current.is_valid else ""
