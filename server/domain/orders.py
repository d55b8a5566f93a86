"""The rules of an instant order, as a pure decision over facts the store reads.

The store reads the facts, calls `decide_instant_order` and applies the plan
atomically, checking again whatever may have changed since (a balance, a
clientOrderNumber). It reports what happened as an outcome; the rules here
turn every outcome into the order or the API error, so that the rules live
here and race-freedom lives in the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from server.domain.errors import ApiError, Reason
from server.domain.models import (
    BulkOrderRequest,
    Caller,
    ExchangeRate,
    FxConversion,
    InstantOrderRequest,
    Order,
    OrderStatus,
    Product,
)
from server.domain.money import Money, is_currency

Pair = tuple[str, str]  # (base, quote)


@dataclass(frozen=True)
class NewOrder:
    """An order about to be placed: on whose behalf, what, under which id, and when."""

    caller: Caller
    request: InstantOrderRequest
    transaction_id: str
    at: datetime


@dataclass(frozen=True)
class NewBulkOrder:
    caller: Caller
    request: BulkOrderRequest
    transaction_id: str
    at: datetime


@dataclass(frozen=True)
class OrderFacts:
    """What the rules need to know, read by the store."""

    product: Product | None
    #: The account's balances by currency; a currency is "in the balances"
    #: when the account has a balance in it, even a zero one.
    balances: Mapping[str, Money]
    #: Exchange rates by (base, quote): at least the pair `rate_pair` names.
    rates: Mapping[Pair, ExchangeRate]
    #: transactionId of the account's order holding the clientOrderNumber, if any.
    number_holder: str | None


@dataclass(frozen=True)
class OrderPlan:
    """How to charge the order: the store debits `unit_price` and records the rest."""

    unit_price: Money
    unit_price_original: Money
    fx: FxConversion | None


@dataclass(frozen=True)
class Refused:
    """The rules refuse the order; nothing is written."""

    error: ApiError


# What a store reports after it tried to apply a plan.
@dataclass(frozen=True)
class Placed:
    order: Order


@dataclass(frozen=True)
class DuplicateOf:
    """The duplicate check is on and the clientOrderNumber was claimed meanwhile."""

    transaction_id: str


@dataclass(frozen=True)
class BalanceSpent:
    """The balance no longer covers `price` (spent by a concurrent order)."""

    price: Money


OrderOutcome = Placed | DuplicateOf | BalanceSpent | Refused


def decide_instant_order(request: InstantOrderRequest, facts: OrderFacts) -> OrderPlan | Refused:
    """The plan to charge the order, or why the rules refuse it."""
    try:
        return _plan(request, facts)
    except ApiError as error:
        return Refused(error)


def placed_order(request: InstantOrderRequest | BulkOrderRequest, outcome: OrderOutcome) -> Order:
    """The order a store placed, or the API error its outcome means."""
    if isinstance(outcome, Placed):
        return outcome.order
    raise refusal_of(request, outcome)


def refusal_of(request: InstantOrderRequest | BulkOrderRequest, outcome: OrderOutcome) -> ApiError:
    """The API error of an outcome that placed no order."""
    match outcome:
        case DuplicateOf(transaction_id):
            return duplicate(request, transaction_id)
        case BalanceSpent(price):
            return insufficient_balance(price)
        case Refused(error):
            return error
    raise ValueError(f"{outcome} placed an order")


def rate_pair(request: InstantOrderRequest, product: Product | None) -> Pair | None:
    """The exchange rate the rules will look up for this order, if any."""
    wanted = request.pay_with_currency
    if product is None or not wanted or wanted == product.currency:
        return None
    return (product.currency, wanted)


def _plan(request: InstantOrderRequest, facts: OrderFacts) -> OrderPlan:
    """Checks the order against the rules, in the order a client would want to hear them.

    The duplicate check comes first, so a client retrying an order it already
    placed learns of that order even if the product or its balance has changed.
    """
    if request.dup_check and request.client_order_number and facts.number_holder:
        raise duplicate(request, facts.number_holder)
    product = facts.product
    if product is None:
        raise ApiError(Reason.PRODUCT_NOT_FOUND, sku=request.sku)
    if not product.instant_delivery_supported:
        raise ApiError(Reason.INSTANT_DELIVERY_NOT_SUPPORTED, sku=product.sku)
    pay_currency = settlement_currency(request.pay_with_currency, product, facts.balances)
    plan = price_in(pay_currency, product, facts.rates)
    if facts.balances[pay_currency].amount < plan.unit_price.amount:
        raise insufficient_balance(plan.unit_price)
    return plan


def duplicate(request: InstantOrderRequest | BulkOrderRequest, holder: str) -> ApiError:
    return ApiError(
        Reason.CLIENT_ORDER_NUMBER_DUPLICATE,
        clientOrderNumber=request.client_order_number,
        transactionId=holder,
    )


def insufficient_balance(price: Money) -> ApiError:
    return ApiError(
        Reason.INSUFFICIENT_BALANCE, currency=price.currency, requiredAmount=str(price.amount)
    )


def settlement_currency(requested: str, product: Product, balances: Mapping[str, Money]) -> str:
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


def price_in(currency: str, product: Product, rates: Mapping[Pair, ExchangeRate]) -> OrderPlan:
    """The product's unit price in `currency`, converted at the PRODUCT/PAY rate if needed."""
    if currency == product.currency:
        return OrderPlan(unit_price=product.price, unit_price_original=product.price, fx=None)
    rate = rates.get((product.currency, currency))
    if rate is None:
        raise ApiError(Reason.UNSUPPORTED_CURRENCY)
    return OrderPlan(
        unit_price=product.price.converted(rate.rate, currency),
        unit_price_original=product.price,
        fx=FxConversion(pair=rate.pair, rate=rate.rate, as_of=rate.as_of),
    )


# --- cancellation ------------------------------------------------------------------


@dataclass(frozen=True)
class CancelRequest:
    """A customer's request to cancel one of its orders, and when it was made."""

    caller: Caller
    transaction_id: str
    at: datetime


@dataclass(frozen=True)
class Cancellation:
    """The order may be cancelled: with a refund now, or none (cancelled already)."""

    refund: bool


@dataclass(frozen=True)
class Cancelled:
    """The order, cancelled: by this request (`now`), or before it."""

    order: Order
    now: bool = False


def decide_cancellation(transaction_id: str, order: Order | None) -> Cancellation | Refused:
    """A customer may cancel an order that still waits for stock. Cancelling a
    cancelled order again changes nothing and is no error: a retry must not fail;
    nor is cancelling again a bulk order whose cancellation left it COMPLETED (its
    units delivered before, the rest refunded)."""
    if order is None:
        return Refused(ApiError(Reason.ORDER_NOT_FOUND, transactionId=transaction_id))
    if order.status is OrderStatus.COMPLETED and order.refunded_minor:
        return Cancellation(refund=False)
    if order.status is OrderStatus.COMPLETED:
        return Refused(
            ApiError(
                Reason.ORDER_NOT_CANCELLABLE,
                transactionId=transaction_id,
                status=order.status.value,
            )
        )
    return Cancellation(refund=order.status is OrderStatus.PROCESSING)
