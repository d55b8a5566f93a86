"""What gRPC clients rely on beyond the RPCs: health, reflection, rich errors, size limits."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from instantorders.v2 import orders_pb2, orders_pb2_grpc

from server.domain.errors import Reason
from tests.databases import query


async def test_health_reports_serving(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "instantorders.v2.OrdersService", "instantorders.v2.CredentialsService"):
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for answer in stub.ServerReflectionInfo(iter([request])):
        names = {service.name for service in answer.list_services_response.service}
        break
    assert {
        "instantorders.v2.OrdersService",
        "instantorders.v2.CatalogService",
        "instantorders.v2.BalancesService",
        "instantorders.v2.ExchangeRatesService",
        "instantorders.v2.AuthService",
        "instantorders.v2.CredentialsService",  # internal: the gateway's, no REST route
        "grpc.health.v1.Health",
    } <= names


async def test_oversized_request_is_refused(channel, accounts):
    stub = orders_pb2_grpc.OrdersServiceStub(channel)
    request = orders_pb2.CreateInstantOrderRequest(
        sku="8PX-UF-Y5U", client_order_number="x" * 70_000
    )
    metadata = [(k.lower(), v) for k, v in accounts["acme"].headers().items()]
    try:
        await stub.CreateInstantOrder(request, metadata=metadata)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    else:
        raise AssertionError("a 70 KB request was accepted")


def test_error_reasons_are_distinct_and_upper_snake_or_rfc6749():
    names = list(Reason.__members__)
    assert len(names) == len(list(Reason)), "two reasons share a value and alias each other"
    for reason in Reason:
        if reason.value.oauth2:
            assert reason.name.islower()
        else:
            assert reason.name.isupper()


async def test_an_internal_failure_is_answered_without_details(api, accounts, database, caplog):
    query(database, "DROP TABLE rates")  # a real fault inside the store, not a mock

    reply = await api.call("GetExchangeRates", {}, accounts["acme"])

    error = reply.expect_error("INTERNAL", 500)
    text = str(error).lower()
    for secret in ("rates", "sqlite", "postgres", "relation", "traceback"):
        assert secret not in text
    # The operator still sees it in the log.
    assert "no such table" in caplog.text or 'relation "rates" does not exist' in caplog.text


async def test_reflection_serves_every_file_grpcurl_needs(grpc_port):
    """grpcurl builds the service's descriptors, dependencies included, from reflection."""
    import asyncio

    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    def describe() -> list[str]:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as sync_channel:
            pool = DescriptorPool(ProtoReflectionDescriptorDatabase(sync_channel))
            service = pool.FindServiceByName("instantorders.v2.OrdersService")
            method = service.methods_by_name["CreateInstantOrder"]
            return [field.json_name for field in method.input_type.fields]

    fields = await asyncio.to_thread(describe)
    assert fields == [
        "clientOrderNumber",
        "enableClientOrderNumberDupCheck",
        "sku",
        "payWithCurrency",
        "requestId",  # AIP-155's; the REST gateway fills it from Idempotency-Key
    ]
