"""Exact money: Decimal amounts held at their currency's ISO 4217 minor unit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation

_ZERO_DIGIT = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE_DIGIT = "BHD IQD JOD KWD LYD OMR TND"
_FOUR_DIGIT = "CLF UYW"
_TWO_DIGIT = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN "
    "BWP BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB "
    "EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS "
    "KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN "
    "MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD "
    "SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS "
    "UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG"
)

#: Fraction digits of each active ISO 4217 currency.
MINOR_UNIT_DIGITS: dict[str, int] = {
    code: digits
    for codes, digits in ((_ZERO_DIGIT, 0), (_TWO_DIGIT, 2), (_THREE_DIGIT, 3), (_FOUR_DIGIT, 4))
    for code in codes.split()
}

#: ASCII digits only: \d would read any Unicode digit, U+0665 (Arabic-Indic five) as 5.
_DECIMAL_TEXT = re.compile(r"-?[0-9]{1,18}(\.[0-9]{1,18})?")

#: The most any balance may hold, in minor units of its currency: 10^15 (ten
#: trillion USD, a quadrillion JPY). Far inside 64-bit integers (9.2 * 10^18),
#: so no sum of two balances overflows; the schema CHECKs it too.
MAX_BALANCE_MINOR = 10**15


def is_currency(code: str) -> bool:
    """True for an active ISO 4217 alphabetic code, spelt in capitals."""
    return code in MINOR_UNIT_DIGITS


def minor_unit(currency: str) -> Decimal:
    """The smallest amount of the currency: Decimal('0.01') for USD."""
    return Decimal(1).scaleb(-MINOR_UNIT_DIGITS[currency])


@dataclass(frozen=True, order=True)
class Money:
    """An amount in one currency, always quantized to that currency's minor unit."""

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        if self.amount != self.amount.quantize(minor_unit(self.currency)):
            raise ValueError(f"{self.amount} has more fraction digits than {self.currency} allows")
        object.__setattr__(self, "amount", self.amount.quantize(minor_unit(self.currency)))

    @classmethod
    def from_minor(cls, minor: int, currency: str) -> Money:
        return cls(Decimal(minor).scaleb(-MINOR_UNIT_DIGITS[currency]), currency)

    @classmethod
    def parse(cls, text: str, currency: str) -> Money:
        """Reads a decimal string such as "9.70"; rejects floats' spellings and extra digits."""
        if not is_currency(currency):
            raise ValueError(f"{currency!r} is not an ISO 4217 currency code")
        if not _DECIMAL_TEXT.fullmatch(text):
            raise ValueError(f"{text!r} is not a decimal amount")
        try:
            return cls(Decimal(text), currency)
        except InvalidOperation as error:  # pragma: no cover - the pattern rules it out
            raise ValueError(f"{text!r} is not a decimal amount") from error

    @property
    def minor(self) -> int:
        """The amount in minor units (cents for USD), as stored."""
        return int(self.amount.scaleb(MINOR_UNIT_DIGITS[self.currency]))

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"

    def converted(self, rate: Decimal, currency: str) -> Money:
        """This amount in another currency at `rate`, rounded up to its minor unit.

        Rounding up means the seller never undercharges: 9.70 EUR at 1.1829 is
        11.47413 USD, charged as 11.48 USD.
        """
        exact = self.amount * rate
        return Money(exact.quantize(minor_unit(currency), rounding=ROUND_CEILING), currency)

    def __neg__(self) -> Money:
        negated = object.__new__(Money)  # already at the minor unit: skip the checks
        object.__setattr__(negated, "amount", -self.amount)
        object.__setattr__(negated, "currency", self.currency)
        return negated

    def times(self, quantity: int) -> Money:
        return Money(self.amount * quantity, self.currency)


def parse_rate(text: str) -> Decimal:
    """An exchange rate: a positive decimal string such as "1.1829"."""
    if not _DECIMAL_TEXT.fullmatch(text) or Decimal(text) <= 0:
        raise ValueError(f"{text!r} is not a positive decimal rate")
    return Decimal(text)
