"""The order rules as pure functions, table by table: no database, no server."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from server.domain.errors import ApiError
from server.domain.models import ExchangeRate, InstantOrderRequest, Order, OrderStatus, Product
from server.domain.money import Money
from server.domain.orders import (
    BalanceSpent,
    DuplicateOf,
    OrderFacts,
    OrderPlan,
    Placed,
    Refused,
    decide_instant_order,
    placed_order,
    price_in,
    rate_pair,
    settlement_currency,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)
STEAM = Product("STEAM", "Steam 10", "Steam", Money.parse("9.75", "USD"),
                Money.parse("10.00", "USD"), instant_delivery_supported=True)  # fmt: skip
PLAY = Product("PLAY", "Play 10", "Google", Money.parse("9.70", "EUR"),
               Money.parse("10.00", "EUR"), instant_delivery_supported=True)  # fmt: skip
XBOX = Product("XBOX", "Xbox 25", "Xbox", Money.parse("24.10", "GBP"),
               Money.parse("25.00", "GBP"), instant_delivery_supported=False)  # fmt: skip
EUR_USD = ExchangeRate("EUR", "USD", Decimal("1.1829"), "2025-10-06", NOW)
EUR_JPY = ExchangeRate("EUR", "JPY", Decimal("161.2345"), "2025-10-06", NOW)
RATES = {("EUR", "USD"): EUR_USD, ("EUR", "JPY"): EUR_JPY}


def balances(**amounts: str) -> dict[str, Money]:
    return {currency: Money.parse(amount, currency) for currency, amount in amounts.items()}


def facts(product: Product | None, held: dict[str, Money], holder: str | None = None) -> OrderFacts:
    return OrderFacts(product, held, RATES, holder)


@pytest.mark.parametrize(
    ("requested", "product", "held", "expected"),
    [
        ("", STEAM, balances(USD="0"), "USD"),  # the product's currency, even at zero
        ("", PLAY, balances(USD="50", EUR="1"), "EUR"),
        ("USD", PLAY, balances(USD="50", EUR="1"), "USD"),  # asked for, and held
        ("", PLAY, balances(USD="50"), None),  # EUR not held, nothing asked: refused
        ("GBP", STEAM, balances(USD="50"), None),  # asked for a currency not held
        ("usd", STEAM, balances(USD="50"), None),  # codes are case-sensitive
        ("XXX", STEAM, balances(USD="50"), None),
    ],
)
def test_settlement_currency(requested, product, held, expected):
    if expected is None:
        with pytest.raises(ApiError) as refused:
            settlement_currency(requested, product, held)
        assert refused.value.reason.name == "UNSUPPORTED_CURRENCY"
    else:
        assert settlement_currency(requested, product, held) == expected


@pytest.mark.parametrize(
    ("currency", "product", "unit_price", "converted"),
    [
        ("USD", STEAM, "9.75 USD", False),
        ("EUR", PLAY, "9.70 EUR", False),
        ("USD", PLAY, "11.48 USD", True),  # 11.47413, rounded up
        ("JPY", PLAY, "1564 JPY", True),  # 1563.97465, rounded up to the yen
        ("GBP", PLAY, None, False),  # no EUR/GBP rate
        ("EUR", STEAM, None, False),  # USD/EUR is not EUR/USD: no inverse is made up
    ],
)
def test_price_in(currency, product, unit_price, converted):
    if unit_price is None:
        with pytest.raises(ApiError) as refused:
            price_in(currency, product, RATES)
        assert refused.value.reason.name == "UNSUPPORTED_CURRENCY"
        return
    plan = price_in(currency, product, RATES)
    assert str(plan.unit_price) == unit_price
    assert plan.unit_price_original == product.price
    assert (plan.fx is not None) is converted
    if converted:
        assert plan.fx is not None and plan.fx.pair == f"{product.currency}/{currency}"


@pytest.mark.parametrize(
    ("request_", "order_facts", "outcome"),
    [
        (InstantOrderRequest("STEAM"), facts(STEAM, balances(USD="9.75")), "9.75 USD"),
        (InstantOrderRequest("STEAM"), facts(STEAM, balances(USD="9.74")), "INSUFFICIENT_BALANCE"),
        (InstantOrderRequest("NOPE"), facts(None, balances(USD="100")), "PRODUCT_NOT_FOUND"),
        (InstantOrderRequest("XBOX"), facts(XBOX, balances(GBP="100")),
         "INSTANT_DELIVERY_NOT_SUPPORTED"),
        (InstantOrderRequest("PLAY", pay_with_currency="USD"),
         facts(PLAY, balances(USD="11.48")), "11.48 USD"),
        (InstantOrderRequest("PLAY", pay_with_currency="USD"),
         facts(PLAY, balances(USD="11.47")), "INSUFFICIENT_BALANCE"),
        (InstantOrderRequest("PLAY"), facts(PLAY, balances(USD="100")), "UNSUPPORTED_CURRENCY"),
        # The duplicate check comes first, even before an unknown product...
        (InstantOrderRequest("NOPE", "po-1", dup_check=True),
         facts(None, balances(USD="0"), holder="tx-1"), "CLIENT_ORDER_NUMBER_DUPLICATE"),
        # ...and only with the check on.
        (InstantOrderRequest("STEAM", "po-1"), facts(STEAM, balances(USD="10"), holder="tx-1"),
         "9.75 USD"),
    ],
)  # fmt: skip
def test_decide_instant_order(request_, order_facts, outcome):
    decision = decide_instant_order(request_, order_facts)
    if isinstance(decision, Refused):
        assert decision.error.reason.name == outcome
    else:
        assert str(decision.unit_price) == outcome


def test_the_pair_looked_up_is_product_to_pay_currency_and_only_when_asked():
    assert rate_pair(InstantOrderRequest("PLAY", pay_with_currency="USD"), PLAY) == ("EUR", "USD")
    assert rate_pair(InstantOrderRequest("PLAY", pay_with_currency="EUR"), PLAY) is None
    assert rate_pair(InstantOrderRequest("PLAY"), PLAY) is None
    assert rate_pair(InstantOrderRequest("NOPE", pay_with_currency="USD"), None) is None


PLAN = OrderPlan(Money.parse("11.48", "USD"), PLAY.price, None)
ORDER = Order(1, "tx-2", "po-1", "PLAY", OrderStatus.COMPLETED, PLAN.unit_price, PLAY.price,
              None, NOW)  # fmt: skip


@pytest.mark.parametrize(
    ("outcome", "reason", "metadata"),
    [
        (DuplicateOf("tx-1"), "CLIENT_ORDER_NUMBER_DUPLICATE",
         {"clientOrderNumber": "po-1", "transactionId": "tx-1"}),
        (BalanceSpent(PLAN.unit_price), "INSUFFICIENT_BALANCE",
         {"currency": "USD", "requiredAmount": "11.48"}),
    ],
)  # fmt: skip
def test_what_a_store_reports_becomes_the_rules_error(outcome, reason, metadata):
    """Refusals found by the store's writes read exactly like the rules' own."""
    request = InstantOrderRequest("PLAY", "po-1", dup_check=True, pay_with_currency="USD")
    with pytest.raises(ApiError) as raised:
        placed_order(request, outcome)
    assert (raised.value.reason.name, raised.value.metadata) == (reason, metadata)
    order_facts = facts(PLAY, balances(USD="1"), holder="tx-1")
    if reason == "INSUFFICIENT_BALANCE":
        order_facts = facts(PLAY, balances(USD="1"))
    refused = decide_instant_order(request, order_facts)
    assert isinstance(refused, Refused)
    assert refused.error.message == raised.value.message


def test_a_placed_outcome_is_the_order():
    assert placed_order(InstantOrderRequest("PLAY"), Placed(ORDER)) is ORDER
