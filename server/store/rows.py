"""Rows to domain values and domain values to parameters, for both backends.

Rows are read by column name: sqlite3.Row and asyncpg's Record both allow it,
and so does a PostgreSQL composite value (a row read whole, as `p` in
`SELECT p FROM products p`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from server.domain.clock import from_micros, micros
from server.domain.idempotency import KeyRecord, Remembered
from server.domain.models import (
    ApiCredentials,
    AuditEvent,
    AuditRecord,
    DeliveredCode,
    ExchangeRate,
    FxConversion,
    Order,
    OrderLine,
    OrderStatus,
    PriceTier,
    Product,
)
from server.domain.money import Money
from server.keys import CodeCipher

Row = Any  # sqlite3.Row, asyncpg.Record or a composite value: read by name


@dataclass(frozen=True)
class SealedCode:
    """A code as stored: encrypted, with the id of the data key that sealed it."""

    id: int
    key_id: int
    redeem_code: bytes
    pin_code: bytes | None

    @classmethod
    def from_row(cls, row: Row) -> SealedCode:
        return cls(row["id"], row["key_id"], row["redeem_code"], row["pin_code"])

    def opened(self, cipher: CodeCipher) -> DeliveredCode:
        return DeliveredCode(
            *cipher.open_code(self.id, self.key_id, self.redeem_code, self.pin_code)
        )


def order_from_row(row: Row, cipher: CodeCipher) -> Order:
    pay_currency, original_currency = row["pay_currency"], row["original_currency"]
    fx_rate = row["fx_rate"]
    code_id = row["code_id"]
    return Order(
        id=row["id"],
        transaction_id=row["transaction_id"],
        client_order_number=row["client_order_number"],
        sku=row["sku"],
        status=OrderStatus(row["status"]),
        unit_price=Money.from_minor(row["unit_price_minor"], pay_currency),
        unit_price_original=Money.from_minor(row["unit_price_original_minor"], original_currency),
        fx=None
        if fx_rate is None
        else FxConversion(f"{original_currency}/{pay_currency}", Decimal(fx_rate), row["fx_as_of"]),
        created_at=from_micros(row["created_at_us"]),
        refunded_minor=row["refunded_minor"],
        code=None
        if code_id is None
        else SealedCode(code_id, row["code_key_id"], row["redeem_code"], row["pin_code"]).opened(
            cipher
        ),
    )


def is_bulk(row: Row) -> bool:
    return bool(row["kind"] == "BULK")


def line_from_row(row: Row, pay_currency: str, original_currency: str) -> OrderLine:
    return OrderLine(
        sku=row["sku"],
        quantity=row["quantity"],
        unit_price=Money.from_minor(row["unit_price_minor"], pay_currency),
        unit_price_original=Money.from_minor(row["unit_price_original_minor"], original_currency),
        first_stock_id=row["first_stock_id"],
        delivered=row["delivered"],
        cancelled=row["cancelled"],
    )


def priced_product(row: Row) -> Product:
    """The product as the rules price it: without its descriptive details."""
    currency = row["currency"]
    return Product(
        sku=row["sku"],
        name=row["name"],
        brand=row["brand"],
        price=Money.from_minor(row["price_minor"], currency),
        face_value=Money.from_minor(row["face_value_minor"], currency),
        instant_delivery_supported=bool(row["instant_delivery_supported"]),
        tiers=tiers_from_text(row["price_tiers"], currency),
    )


def tiers_from_text(text: str | None, currency: str) -> tuple[PriceTier, ...]:
    """products.price_tiers: JSON [[from, to or null, price_minor], ...]; NULL: none."""
    if text is None:
        return ()
    return tuple(
        PriceTier(Money.from_minor(minor, currency), start, end)
        for start, end, minor in json.loads(text)
    )


def tiers_text(product: Product) -> str | None:
    if not product.tiers:
        return None
    return json.dumps(
        [[tier.from_quantity, tier.to_quantity, tier.price.minor] for tier in product.tiers]
    )


def product_from_row(row: Row) -> Product:
    details = json.loads(row["details"])
    return replace(
        priced_product(row),
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


def product_params(product: Product) -> dict[str, Any]:
    return {
        "sku": product.sku,
        "name": product.name,
        "brand": product.brand,
        "currency": product.currency,
        "price_minor": product.price.minor,
        "face_value_minor": product.face_value.minor,
        "instant_delivery_supported": product.instant_delivery_supported,
        "price_tiers": tiers_text(product),
        # The catalogue's descriptive fields, stored as one JSON text.
        "details": json.dumps(
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
        ),
    }


def balances_from_rows(rows: list[Row]) -> dict[str, Money]:
    return {row["currency"]: Money.from_minor(row["amount_minor"], row["currency"]) for row in rows}


def rate_from_row(row: Row) -> ExchangeRate:
    return ExchangeRate(
        row["base"],
        row["quote"],
        Decimal(row["rate"]),
        row["as_of"],
        from_micros(row["updated_at_us"]),
    )


def rate_params(rate: ExchangeRate) -> dict[str, Any]:
    return {
        "base": rate.base,
        "quote": rate.quote,
        "rate": str(rate.rate),
        "as_of": rate.as_of,
        "at": micros(rate.updated_at),
    }


def credentials_from_row(row: Row) -> ApiCredentials:
    return ApiCredentials(
        row["api_key"], row["account_id"], row["secret_hash"], bool(row["active"])
    )


def remembered_from_row(row: Row) -> Remembered:
    """An idempotency key's row (or the columns named so by place_instant_order)."""
    status = row["status"]
    record = KeyRecord(
        transaction_id=row["transaction_id"],
        status=None if status is None else OrderStatus(status),
        refusal=row["refusal"],
    )
    return Remembered(row["fingerprint"], row["request_id"], record)


def audit_from_row(row: Row) -> AuditRecord:
    return AuditRecord(
        at=from_micros(row["at_us"]),
        event=AuditEvent(row["event"]),
        account_id=row["account_id"],
        api_key=row["api_key"],
        request_id=row["request_id"],
        transaction_id=row["transaction_id"],
        details=json.loads(row["details"]),
        client_request_id=row["client_request_id"],
    )


def audit_params(record: AuditRecord) -> dict[str, Any]:
    return {
        "at": micros(record.at),
        "event": record.event.value,
        "account_id": record.account_id,
        "api_key": record.api_key,
        "request_id": record.request_id or None,
        "client_request_id": record.client_request_id or None,
        "transaction_id": record.transaction_id,
        "details": json.dumps(record.details),
    }
