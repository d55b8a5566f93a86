"""OpenTelemetry: a client's W3C traceparent continues through the gateway, the gRPC
call and the store, and the request's log lines carry the trace id."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import HTTP_LIMITS, GatewaySettings, create_app
from server import logs, tracing
from server.domain.service import InstantOrdersService
from server.rpc.app import start_server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The spans of this process, kept in memory (a provider can be set only once)."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)
    return spans


@pytest.fixture
def tracing_on(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    tracing.enable()
    exporter.clear()
    yield exporter
    tracing.disable()


@pytest.fixture
async def traced_http(
    tracing_on: InMemorySpanExporter, service: InstantOrdersService
) -> AsyncIterator[TestClient[Any, Any]]:
    """The server and the gateway, instrumented as they are with tracing on."""
    server = await start_server(service, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}", interceptors=tracing.client_interceptors()
    )
    test_server = TestServer(create_app(channel, GatewaySettings()))
    await test_server.start_server(**HTTP_LIMITS)
    async with TestClient(test_server) as client:
        yield client
    await channel.close()
    await server.stop(grace=1)


async def test_a_traceparent_is_continued_through_the_gateway_the_call_and_the_store(
    traced_http, tracing_on, accounts
):
    headers = {**accounts["acme"].headers(), "traceparent": TRACEPARENT}
    response = await traced_http.post("/v2/orders/instant", json={"sku": "8PX-UF-Y5U"},
                                      headers=headers)  # fmt: skip
    assert response.status == 200

    spans = [s for s in tracing_on.get_finished_spans() if _trace_id(s) == TRACE_ID]
    by_name = {span.name: span for span in spans}
    http = by_name["POST /v2/orders/instant"]
    rpc = by_name["/instantorders.v2.OrdersService/CreateInstantOrder"]
    assert http.kind is trace.SpanKind.SERVER
    assert {s.kind for s in spans if s.name == rpc.name} == {
        trace.SpanKind.CLIENT,
        trace.SpanKind.SERVER,
    }
    store = by_name["db place_instant_order"]
    # The store's span hangs, through the server's and the client's, off the request's.
    chain = _ancestors(store, spans)
    assert [s.name for s in chain[-2:]] == [rpc.name, "POST /v2/orders/instant"]


async def test_the_log_lines_of_a_traced_request_name_its_trace(tracing_on):
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "placed", None, None)
    with trace.get_tracer("test").start_as_current_span("a request"):
        expected = format(trace.get_current_span().get_span_context().trace_id, "032x")
        logs._RequestIdFilter().filter(record)
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["traceId"] == expected


def test_off_by_default_nothing_is_instrumented():
    assert not tracing.enabled()
    assert tracing.server_interceptors() == tracing.client_interceptors() == []


def _trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def _ancestors(span: ReadableSpan, spans: list[ReadableSpan]) -> list[ReadableSpan]:
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    chain = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span)
    return chain
