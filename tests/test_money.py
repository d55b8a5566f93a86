"""Exact money: minor units per ISO 4217, conversions rounded up."""

from __future__ import annotations

from decimal import Decimal

import pytest

from server.domain import admin
from server.domain.clock import utc_now
from server.domain.money import MAX_BALANCE_MINOR, Money, parse_rate


@pytest.mark.parametrize(
    ("price", "rate", "currency", "expected"),
    [
        (Money(Decimal("9.70"), "EUR"), Decimal("1.1829"), "USD", "11.48"),  # 11.47413
        (Money(Decimal("10.00"), "USD"), Decimal("1.5"), "USD", "15.00"),  # exact stays exact
        (Money(Decimal("9.70"), "EUR"), Decimal("161.2345"), "JPY", "1564"),  # 1563.97465
        (Money(Decimal("100.00"), "USD"), Decimal("0.30701"), "KWD", "30.701"),
        (Money(Decimal("100.00"), "USD"), Decimal("0.307011"), "KWD", "30.702"),  # 30.7011
        (Money(Decimal("950"), "JPY"), Decimal("0.0066"), "USD", "6.27"),
    ],
)
def test_conversion_rounds_up_to_the_minor_unit(price, rate, currency, expected):
    assert price.converted(rate, currency) == Money(Decimal(expected), currency)
    assert str(price.converted(rate, currency).amount) == expected


@pytest.mark.parametrize(
    ("text", "currency"),
    [("1.005", "USD"), ("1.5", "JPY"), ("1e3", "USD"), ("10", "XYZ"), ("", "USD"), ("NaN", "USD")],
)
def test_amounts_with_too_many_digits_or_bad_spelling_are_refused(text, currency):
    with pytest.raises(ValueError):
        Money.parse(text, currency)


def test_minor_units_round_trip():
    assert Money.parse("1000.50", "USD").minor == 100050
    assert Money.from_minor(100050, "USD") == Money.parse("1000.5", "USD")
    assert str(Money.from_minor(0, "KWD").amount) == "0.000"
    assert str(Money.from_minor(1500, "JPY").amount) == "1500"


#: Unicode digits (Arabic-Indic, Devanagari, fullwidth) that \d and Decimal read as
#: numbers, and spellings that are not plain decimals.
NOT_ASCII_DECIMALS = [
    "\u0665", "\u0967\u0966", "\uff15", "5.\u0665\u0660", "0x10", "+5", " 5", "5 ", "5.", ".5",
    "5_000", "Infinity",
]  # fmt: skip


@pytest.mark.parametrize("text", NOT_ASCII_DECIMALS)
def test_only_ascii_decimal_digits_are_amounts_and_rates(text):
    with pytest.raises(ValueError):
        Money.parse(text, "USD")
    with pytest.raises(ValueError):
        parse_rate(text)


def test_a_top_up_or_dataset_amount_past_the_maximum_balance_is_refused():
    most = Money.from_minor(MAX_BALANCE_MINOR, "USD")
    assert admin.parse_money(str(most.amount), "USD") == most
    for amount in ("10000000000000.01", "90000000000000000"):
        with pytest.raises(admin.InvalidInput, match="more than a balance may hold"):
            admin.parse_money(amount, "USD")
    with pytest.raises(admin.InvalidInput, match="more than a balance may hold"):
        admin.parse_dataset(
            {"accounts": [{"name": "x", "balances": {"JPY": str(MAX_BALANCE_MINOR + 1)}}]},
            utc_now(),
        )
    assert MAX_BALANCE_MINOR * 2 < 2**63  # no sum of two balances overflows
