"""Protobuf messages to domain values and back; nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from instantorders.v2 import (
    balances_pb2,
    catalog_pb2,
    exchange_rates_pb2,
    money_pb2,
    orders_pb2,
)

from server.domain.clock import micros
from server.domain.models import (
    BulkLineRequest,
    BulkOrderRequest,
    CodesFilter,
    ExchangeRate,
    InstantOrderRequest,
    Order,
    OrderFilter,
    OrderLine,
    OrderStatus,
    Page,
    Product,
)
from server.domain.money import Money
from server.domain.service import ProductCodes, RatesView

_STATUS = {
    OrderStatus.PROCESSING: orders_pb2.PROCESSING,
    OrderStatus.COMPLETED: orders_pb2.COMPLETED,
    OrderStatus.CANCELLED: orders_pb2.CANCELLED,
}


def instant_order_request(message: orders_pb2.CreateInstantOrderRequest) -> InstantOrderRequest:
    return InstantOrderRequest(
        sku=message.sku,
        client_order_number=message.client_order_number,
        dup_check=message.enable_client_order_number_dup_check,
        pay_with_currency=message.pay_with_currency,
    )


def bulk_order_request(message: orders_pb2.CreateBulkOrderRequest) -> BulkOrderRequest:
    return BulkOrderRequest(
        lines=tuple(BulkLineRequest(line.sku, line.quantity) for line in message.products),
        client_order_number=message.client_order_number,
        dup_check=message.enable_client_order_number_dup_check,
        pay_with_currency=message.pay_with_currency,
    )


def order_filter(message: orders_pb2.ListOrdersRequest) -> OrderFilter:
    return OrderFilter(message.transaction_id, message.client_order_number)


def codes_filter(message: orders_pb2.GetCodesRequest) -> CodesFilter:
    return CodesFilter(
        message.sku, frozenset(message.stock_ids), message.after_stock_id, message.limit
    )


def money(value: Money) -> money_pb2.Money:
    return money_pb2.Money(amount=str(value.amount), currency=value.currency)


def timestamp(moment: datetime) -> Timestamp:
    # Arithmetic rather than Timestamp.FromDatetime, which costs several times
    # as much and runs for every order answered.
    since_epoch = micros(moment)
    return Timestamp(seconds=since_epoch // 1_000_000, nanos=since_epoch % 1_000_000 * 1000)


def order(value: Order) -> orders_pb2.Order:
    message = orders_pb2.Order(
        transaction_id=value.transaction_id,
        client_order_number=value.client_order_number,
        pay_with_currency=value.pay_with_currency,
        grand_total=money(value.grand_total),
        created_at=timestamp(value.created_at),
        status=_STATUS[value.status],
        products=_products(value),
        refunded_total=money(value.refunded) if value.refunded_minor else None,
    )
    if value.fx is not None:
        message.fx_summary.add(
            pair=value.fx.pair, rate=float(value.fx.rate), as_of_date=value.fx.as_of
        )
    return message


def _products(value: Order) -> list[orders_pb2.OrderProduct]:
    """A bulk order's lines, or an instant order's one product (its order's fields)."""
    lines: Sequence[Order | OrderLine] = value.lines or [value]
    return [
        orders_pb2.OrderProduct(
            sku=line.sku,
            quantity=line.quantity,
            unit_price_original=money(line.unit_price_original) if value.fx else None,
            unit_price=money(line.unit_price),
            total_price=money(line.total_price),
            status=_STATUS[line.status],
        )
        for line in lines
    ]


def page_fields(page: Page[Any]) -> dict[str, int]:
    """The pagination fields every list response shares."""
    return {
        "total": page.total,
        "page": page.page,
        "page_size": page.page_size,
        "total_page": page.total_pages,
    }


def orders_page(page: Page[Order]) -> orders_pb2.ListOrdersResponse:
    return orders_pb2.ListOrdersResponse(
        **page_fields(page), items=[order(item) for item in page.items]
    )


def codes(products: list[ProductCodes]) -> orders_pb2.GetCodesResponse:
    return orders_pb2.GetCodesResponse(
        products=[
            orders_pb2.ProductCodes(
                sku=product.sku,
                quantity=product.quantity,
                codes=[
                    orders_pb2.Code(
                        stock_id=code.stock_id,
                        status=_STATUS[code.status],
                        redeem_code=code.redeem_code,
                        pin_code=code.pin_code,
                    )
                    for code in product.codes
                ],
            )
            for product in products
        ]
    )


def product(value: Product) -> catalog_pb2.Product:
    return catalog_pb2.Product(
        sku=value.sku,
        name=value.name,
        brand=value.brand,
        brand_category=value.brand_category,
        brand_sub_category=value.brand_sub_category,
        types=value.types,
        format=value.format,
        country=value.country,
        currency=value.currency,
        image_url=value.image_url,
        prices=[
            catalog_pb2.Price(
                price=str(tier.price.amount),
                from_quantity=tier.from_quantity,
                to_quantity=tier.to_quantity,
            )
            for tier in value.price_tiers
        ],
        face_value=str(value.face_value.amount),
        percentage_off_face_value=str(value.percentage_off_face_value),
        is_instant_delivery_supported=value.instant_delivery_supported,
        descriptions=value.descriptions,
        instructions=value.instructions,
        term_conditions=value.term_conditions,
    )


def products_page(page: Page[Product]) -> catalog_pb2.ListProductsResponse:
    return catalog_pb2.ListProductsResponse(
        **page_fields(page), items=[product(item) for item in page.items]
    )


def balances(values: list[Money]) -> balances_pb2.GetBalancesResponse:
    return balances_pb2.GetBalancesResponse(
        balances=[
            balances_pb2.Balance(balance=str(value.amount), currency=value.currency)
            for value in values
        ]
    )


def exchange_rate(rate: ExchangeRate) -> exchange_rates_pb2.ExchangeRate:
    return exchange_rates_pb2.ExchangeRate(
        pair=rate.base + rate.quote,
        base=rate.base,
        quote=rate.quote,
        rate=f"{rate.rate:.4f}",
    )


def exchange_rates(view: RatesView) -> exchange_rates_pb2.GetExchangeRatesResponse:
    return exchange_rates_pb2.GetExchangeRatesResponse(
        updated_at=None if view.updated_at is None else timestamp(view.updated_at),
        product_currencies=view.product_currencies,
        rates=[exchange_rate(rate) for rate in view.rates],
    )
