"""What both stores share: rows to domain values, times as integer microseconds,
and the refusal to open a schema newer than this service knows."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from server.domain.models import (
    AuditEvent,
    AuditRecord,
    DeliveredCode,
    ExchangeRate,
    FxConversion,
    InstantOrderRequest,
    Order,
    OrderStatus,
    Product,
)
from server.domain.money import Money
from server.domain.orders import OrderPlan
from server.keys import CodeCipher

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: The columns `order_from_row` reads, an order with its code if it has one.
ORDER_COLUMNS = """
    o.id, o.transaction_id, o.client_order_number, o.sku, o.status, o.pay_currency,
    o.unit_price_minor, o.original_currency, o.unit_price_original_minor, o.fx_rate,
    o.fx_as_of, o.created_at_us, c.id, c.key_id, c.redeem_code, c.pin_code
    FROM orders o LEFT JOIN codes c ON c.order_id = o.id
"""
#: The columns `product_from_row` reads.
PRODUCT_COLUMNS = """
    sku, name, brand, currency, price_minor, face_value_minor, instant_delivery_supported,
    details FROM products
"""
#: The columns `product_to_price` reads: no descriptive details, which pricing does
#: not need (decoding them was a tenth of an order's own work in the database).
PRICED_PRODUCT_COLUMNS = """
    sku, name, brand, currency, price_minor, face_value_minor, instant_delivery_supported
    FROM products
"""
RATE_COLUMNS = "base, quote, rate, as_of, updated_at_us FROM rates"


class SchemaTooNew(RuntimeError):
    """The database was written by a newer version of the service."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"the database has schema version {found}; this service knows {known} at most"
        )


class RestockSignal:
    """Wakes the fulfiller of this process when stock may have arrived."""

    def __init__(self) -> None:
        self._restocked = asyncio.Event()

    def set(self) -> None:
        self._restocked.set()

    async def wait(self, max_seconds: float) -> None:
        """Returns once stock may have arrived since the last wait, or after `max_seconds`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._restocked.wait(), max_seconds)
        self._restocked.clear()


@dataclass(frozen=True)
class SealedCode:
    id: int
    key_id: int
    redeem_code: bytes
    pin_code: bytes | None

    def opened(self, cipher: CodeCipher) -> DeliveredCode:
        return DeliveredCode(
            *cipher.open_code(self.id, self.key_id, self.redeem_code, self.pin_code)
        )


def order_from_row(row: Any, cipher: CodeCipher) -> Order:
    (stock_id, transaction_id, client_order_number, sku, status, pay_currency, unit_minor,
     original_currency, original_minor, fx_rate, fx_as_of, created_at_us, code_id, key_id,
     redeem_code, pin_code) = row  # fmt: skip
    code = None if code_id is None else SealedCode(code_id, key_id, redeem_code, pin_code)
    return Order(
        stock_id=stock_id,
        transaction_id=transaction_id,
        client_order_number=client_order_number,
        sku=sku,
        status=OrderStatus(status),
        unit_price=Money.from_minor(unit_minor, pay_currency),
        unit_price_original=Money.from_minor(original_minor, original_currency),
        fx=None
        if fx_rate is None
        else FxConversion(f"{original_currency}/{pay_currency}", Decimal(fx_rate), fx_as_of),
        created_at=from_micros(created_at_us),
        code=None if code is None else code.opened(cipher),
    )


def placed_order(
    request: InstantOrderRequest,
    transaction_id: str,
    plan: OrderPlan,
    stock_id: int,
    status: OrderStatus,
    created_at_us: int,
    code: DeliveredCode | None,
) -> Order:
    """The order a store has just written, as the caller gets it back."""
    return Order(
        stock_id=stock_id,
        transaction_id=transaction_id,
        client_order_number=request.client_order_number,
        sku=request.sku,
        status=status,
        unit_price=plan.unit_price,
        unit_price_original=plan.unit_price_original,
        fx=plan.fx,
        created_at=from_micros(created_at_us),
        code=code,
    )


#: The columns `audit_from_row` reads.
AUDIT_COLUMNS = "at_us, event, account_id, api_key, request_id, transaction_id, details FROM audit"


def audit_from_row(row: Any) -> AuditRecord:
    at, event, account_id, api_key, request_id, transaction_id, details = row
    return AuditRecord(
        from_micros(at),
        AuditEvent(event),
        account_id,
        api_key,
        request_id,
        transaction_id,
        json.loads(details),
    )


def product_to_price(row: Any) -> Product:
    sku, name, brand, currency, price_minor, face_minor, instant = row
    return Product(
        sku,
        name,
        brand,
        Money.from_minor(price_minor, currency),
        Money.from_minor(face_minor, currency),
        bool(instant),
    )


def product_from_row(row: Any) -> Product:
    sku, name, brand, currency, price_minor, face_minor, instant, details_json = row
    details = json.loads(details_json)
    return Product(
        sku=sku,
        name=name,
        brand=brand,
        price=Money.from_minor(price_minor, currency),
        face_value=Money.from_minor(face_minor, currency),
        instant_delivery_supported=bool(instant),
        brand_category=details["brandCategory"],
        brand_sub_category=details["brandSubCategory"],
        types=tuple(details["types"]),
        format=details["format"],
        country=details["country"],
        image_url=details["imageUrl"],
        descriptions=tuple(details["descriptions"]),
        instructions=tuple(details["instructions"]),
        term_conditions=tuple(details["termConditions"]),
    )


def product_details(product: Product) -> str:
    """The catalogue's descriptive fields, stored as one JSON text."""
    return json.dumps(
        {
            "brandCategory": product.brand_category,
            "brandSubCategory": product.brand_sub_category,
            "types": list(product.types),
            "format": product.format,
            "country": product.country,
            "imageUrl": product.image_url,
            "descriptions": list(product.descriptions),
            "instructions": list(product.instructions),
            "termConditions": list(product.term_conditions),
        }
    )


def rate_from_row(row: Any) -> ExchangeRate:
    base, quote, rate, as_of, updated_at_us = row
    return ExchangeRate(base, quote, Decimal(rate), as_of, from_micros(updated_at_us))


def micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)
