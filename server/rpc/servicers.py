"""The RPCs: each converts its request, calls the domain, converts the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

from google.protobuf import empty_pb2
from instantorders.v2 import (
    auth_pb2,
    auth_pb2_grpc,
    balances_pb2,
    balances_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    exchange_rates_pb2,
    exchange_rates_pb2_grpc,
    orders_pb2,
    orders_pb2_grpc,
)

from server.domain.service import InstantOrdersService
from server.rpc import converters
from server.rpc.interceptors import PEERS_ONLY, ClientAddresses, current_caller

#: grpc.aio.ServicerContext; grpcio ships no types.
Context: TypeAlias = Any


class OrdersServicer(orders_pb2_grpc.OrdersServiceServicer):
    def __init__(self, service: InstantOrdersService) -> None:
        self._service = service

    async def CreateInstantOrder(
        self, request: orders_pb2.CreateInstantOrderRequest, context: Context
    ) -> orders_pb2.Order:
        order_request = converters.instant_order_request(request)
        order = await self._service.create_instant_order(
            current_caller(), order_request, request.request_id
        )
        return converters.order(order)

    async def CreateBulkOrder(
        self, request: orders_pb2.CreateBulkOrderRequest, context: Context
    ) -> orders_pb2.Order:
        order = await self._service.create_bulk_order(
            current_caller(), converters.bulk_order_request(request), request.request_id
        )
        return converters.order(order)

    async def CancelOrder(
        self, request: orders_pb2.CancelOrderRequest, context: Context
    ) -> orders_pb2.Order:
        order = await self._service.cancel_order(
            current_caller(), request.transaction_id, request.request_id
        )
        return converters.order(order)

    async def GetOrder(
        self, request: orders_pb2.GetOrderRequest, context: Context
    ) -> orders_pb2.Order:
        order = await self._service.get_order(current_caller(), request.transaction_id)
        return converters.order(order)

    async def ListOrders(
        self, request: orders_pb2.ListOrdersRequest, context: Context
    ) -> orders_pb2.ListOrdersResponse:
        page = await self._service.list_orders(
            current_caller(), converters.order_filter(request), request.page, request.limit
        )
        return converters.orders_page(page)

    async def GetCodes(
        self, request: orders_pb2.GetCodesRequest, context: Context
    ) -> orders_pb2.GetCodesResponse:
        products = await self._service.get_codes(
            current_caller(), request.transaction_id, converters.codes_filter(request)
        )
        return converters.codes(products)

    async def WatchOrder(
        self, request: orders_pb2.WatchOrderRequest, context: Context
    ) -> AsyncIterator[orders_pb2.Order]:
        async for order in self._service.watch_order(current_caller(), request.transaction_id):
            yield converters.order(order)


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, service: InstantOrdersService) -> None:
        self._service = service

    async def ListProducts(
        self, request: catalog_pb2.ListProductsRequest, context: Context
    ) -> catalog_pb2.ListProductsResponse:
        page = await self._service.list_products(request.sku, request.page, request.limit)
        return converters.products_page(page)


class BalancesServicer(balances_pb2_grpc.BalancesServiceServicer):
    def __init__(self, service: InstantOrdersService) -> None:
        self._service = service

    async def GetBalances(
        self, request: balances_pb2.GetBalancesRequest, context: Context
    ) -> balances_pb2.GetBalancesResponse:
        balances = await self._service.balances(current_caller(), request.currency)
        return converters.balances(balances)


class ExchangeRatesServicer(exchange_rates_pb2_grpc.ExchangeRatesServiceServicer):
    def __init__(self, service: InstantOrdersService) -> None:
        self._service = service

    async def GetExchangeRates(
        self, request: exchange_rates_pb2.GetExchangeRatesRequest, context: Context
    ) -> exchange_rates_pb2.GetExchangeRatesResponse:
        view = await self._service.exchange_rates(request.pairs, request.base, request.quote)
        return converters.exchange_rates(view)


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self, service: InstantOrdersService, client_addresses: ClientAddresses = PEERS_ONLY
    ) -> None:
        self._service = service
        self._client_addresses = client_addresses

    async def IssueToken(
        self, request: auth_pb2.IssueTokenRequest, context: Context
    ) -> auth_pb2.IssueTokenResponse:
        token = await self._service.issue_token(
            request.grant_type,
            request.client_id,
            request.client_secret,
            self._client_addresses.of(context),
        )
        return auth_pb2.IssueTokenResponse(
            access_token=token.access_token,
            token_type="Bearer",  # noqa: S106 - the token type, not a secret
            expires_in=token.expires_in,
        )


class CredentialsServicer(auth_pb2_grpc.CredentialsServiceServicer):
    """The REST gateway's check of a request's credentials, before it refuses the
    request itself. The AuthInterceptor has authenticated the call (the domain's
    rule) and spent its budget by the time it gets here: reaching it means valid."""

    def __init__(self, service: InstantOrdersService) -> None:
        self._service = service

    async def VerifyCredentials(
        self, request: empty_pb2.Empty, context: Context
    ) -> empty_pb2.Empty:
        return empty_pb2.Empty()
