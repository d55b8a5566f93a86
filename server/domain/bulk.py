"""The rules of a bulk order, as a pure decision over facts the store reads.

A bulk order buys product lines of one product currency, each priced by the
product's quantity tier for its quantity, converted per unit (rounded up) when
paid in another currency, exactly as an instant order is. The whole grand
total is debited when it is placed; its units are delivered later, as stock
allows (fulfillment.py), and those cancelled are refunded at their unit price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from server.domain.errors import ApiError, Reason, invalid_request
from server.domain.models import (
    FIRST_UNIT,
    BulkOrderRequest,
    ExchangeRate,
    FxConversion,
    Product,
)
from server.domain.money import Money
from server.domain.orders import (
    Pair,
    Refused,
    duplicate,
    insufficient_balance,
    settlement_currency,
)

MAX_LINES = 100
MAX_QUANTITY = 10_000


def check_lines(request: BulkOrderRequest) -> None:
    """The request's shape: 1 to MAX_LINES lines, each SKU once, each quantity in range."""
    if not 1 <= len(request.lines) <= MAX_LINES:
        raise invalid_request(f"products must hold 1 to {MAX_LINES} lines.", "products")
    seen: set[str] = set()
    for index, line in enumerate(request.lines):
        field = f"products[{index}]"
        if not line.sku:
            raise invalid_request(f"{field}.sku is required.", f"{field}.sku")
        if not 1 <= line.quantity <= MAX_QUANTITY:
            raise invalid_request(
                f"{field}.quantity must be between 1 and {MAX_QUANTITY}.", f"{field}.quantity"
            )
        if line.sku in seen:
            raise invalid_request(
                f"{field}.sku: {line.sku} is in the order twice; give it once, with the"
                " whole quantity.",
                f"{field}.sku",
            )
        seen.add(line.sku)


@dataclass(frozen=True)
class BulkFacts:
    """What the rules need to know, read by the store."""

    #: The products of the lines that exist, by SKU.
    products: Mapping[str, Product]
    balances: Mapping[str, Money]
    #: Exchange rates by (base, quote): at least the pair `rate_pair` names.
    rates: Mapping[Pair, ExchangeRate]
    number_holder: str | None


@dataclass(frozen=True)
class LinePlan:
    sku: str
    quantity: int
    unit_price: Money
    unit_price_original: Money
    first_stock_id: int


@dataclass(frozen=True)
class BulkPlan:
    """How to charge the order: the store debits `grand_total` and records the lines."""

    lines: tuple[LinePlan, ...]
    fx: FxConversion | None

    @property
    def grand_total(self) -> Money:
        currency = self.lines[0].unit_price.currency
        total = sum(line.unit_price.minor * line.quantity for line in self.lines)
        return Money.from_minor(total, currency)


def rate_pair(request: BulkOrderRequest, product_currency: str | None) -> Pair | None:
    """The exchange rate the rules will look up for this order, if any."""
    wanted = request.pay_with_currency
    if product_currency is None or not wanted or wanted == product_currency:
        return None
    return (product_currency, wanted)


def decide_bulk_order(request: BulkOrderRequest, facts: BulkFacts) -> BulkPlan | Refused:
    """The plan to charge the order, or why the rules refuse it."""
    try:
        return _plan(request, facts)
    except ApiError as error:
        return Refused(error)


def _plan(request: BulkOrderRequest, facts: BulkFacts) -> BulkPlan:
    """Checks in the order a client wants to hear: the duplicate first (as for an
    instant order), then the products, their one currency, the price, the balance."""
    if request.dup_check and request.client_order_number and facts.number_holder:
        raise duplicate(request, facts.number_holder)
    for line in request.lines:
        if line.sku not in facts.products:
            raise ApiError(Reason.PRODUCT_NOT_FOUND, sku=line.sku)
    products = [facts.products[line.sku] for line in request.lines]
    currencies = sorted({product.currency for product in products})
    if len(currencies) > 1:
        raise ApiError(Reason.MIXED_PRODUCT_CURRENCIES, currencies=", ".join(currencies))
    pay_currency = settlement_currency(request.pay_with_currency, products[0], facts.balances)
    fx = _conversion(currencies[0], pay_currency, facts.rates)
    lines, next_stock_id = [], FIRST_UNIT
    for line, product in zip(request.lines, products, strict=True):
        original = product.unit_price(line.quantity)
        unit_price = original if fx is None else original.converted(fx.rate, pay_currency)
        lines.append(LinePlan(line.sku, line.quantity, unit_price, original, next_stock_id))
        next_stock_id += line.quantity
    plan = BulkPlan(tuple(lines), fx)
    if facts.balances[pay_currency].amount < plan.grand_total.amount:
        raise insufficient_balance(plan.grand_total)
    return plan


def _conversion(
    product_currency: str, pay_currency: str, rates: Mapping[Pair, ExchangeRate]
) -> FxConversion | None:
    if pay_currency == product_currency:
        return None
    rate = rates.get((product_currency, pay_currency))
    if rate is None:
        raise ApiError(Reason.UNSUPPORTED_CURRENCY)
    return FxConversion(pair=rate.pair, rate=rate.rate, as_of=rate.as_of)
