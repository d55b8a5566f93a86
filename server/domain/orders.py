"""The rules of an instant order, as a pure decision over facts the store reads.

The store reads the facts inside the order's transaction, calls
`decide_instant_order`, and applies the plan in the same transaction; so the
rules live here, and race-freedom lives in the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from server.domain.errors import ApiError, Reason
from server.domain.models import ExchangeRate, FxConversion, InstantOrderRequest, Product
from server.domain.money import Money, is_currency


@dataclass(frozen=True)
class OrderFacts:
    """What the rules need to know, read in the order's transaction."""

    product: Product | None
    #: The account's balances by currency; a currency is "in the balances"
    #: when the account has a balance in it, even a zero one.
    balances: dict[str, Money]
    #: The rate of a pair (base, quote), or None; read only when an order
    #: settles in another currency, so same-currency orders cost no rate lookup.
    rate: Callable[[str, str], ExchangeRate | None]
    #: transactionId of an existing order with the same clientOrderNumber, if
    #: the request asked for the duplicate check and there is one.
    duplicate_of: str | None


@dataclass(frozen=True)
class OrderPlan:
    """How to charge the order: the store debits `unit_price` and records the rest."""

    unit_price: Money
    unit_price_original: Money
    fx: FxConversion | None


def decide_instant_order(request: InstantOrderRequest, facts: OrderFacts) -> OrderPlan:
    """Checks the order against the rules, in the order a client would want to hear them.

    The duplicate check comes first, so a client retrying an order it already
    placed learns of that order even if the product or its balance has changed.
    """
    if facts.duplicate_of is not None:
        raise ApiError(
            Reason.CLIENT_ORDER_NUMBER_DUPLICATE,
            clientOrderNumber=request.client_order_number,
            transactionId=facts.duplicate_of,
        )
    product = facts.product
    if product is None:
        raise ApiError(Reason.PRODUCT_NOT_FOUND, sku=request.sku)
    if not product.instant_delivery_supported:
        raise ApiError(Reason.INSTANT_DELIVERY_NOT_SUPPORTED, sku=product.sku)
    pay_currency = settlement_currency(request.pay_with_currency, product, facts.balances)
    plan = price_in(pay_currency, product, facts.rate)
    if facts.balances[pay_currency].amount < plan.unit_price.amount:
        raise ApiError(
            Reason.INSUFFICIENT_BALANCE,
            currency=pay_currency,
            requiredAmount=str(plan.unit_price.amount),
        )
    return plan


def settlement_currency(requested: str, product: Product, balances: dict[str, Money]) -> str:
    """The currency to charge, per the reference's payWithCurrency rules.

    Given, it must be one of the account's balance currencies. Omitted, the
    product's currency is used when the account holds it, and otherwise the
    client must say which currency to pay with.
    """
    if requested:
        if not is_currency(requested) or requested not in balances:
            raise ApiError(Reason.UNSUPPORTED_CURRENCY)
        return requested
    if product.currency in balances:
        return product.currency
    raise ApiError(Reason.UNSUPPORTED_CURRENCY)


def price_in(
    currency: str, product: Product, rate_of: Callable[[str, str], ExchangeRate | None]
) -> OrderPlan:
    """The product's unit price in `currency`, converted at the PRODUCT/PAY rate if needed."""
    if currency == product.currency:
        return OrderPlan(unit_price=product.price, unit_price_original=product.price, fx=None)
    rate = rate_of(product.currency, currency)
    if rate is None:
        raise ApiError(Reason.UNSUPPORTED_CURRENCY)
    return OrderPlan(
        unit_price=product.price.converted(rate.rate, currency),
        unit_price_original=product.price,
        fx=FxConversion(pair=rate.pair, rate=rate.rate, as_of=rate.as_of),
    )
