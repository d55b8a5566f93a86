"""Operators' changes: datasets, codes, top-ups and rates, validated before the store sees them."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from server.domain.auth import hash_secret, new_api_key, new_api_secret
from server.domain.models import ExchangeRate, PriceTier, Product
from server.domain.money import MAX_BALANCE_MINOR, Money, is_currency, parse_rate
from server.domain.ports import (
    AccountBalance,
    Dataset,
    NewAccount,
    NewCode,
    StockLevel,
    Store,
)


class InvalidInput(ValueError):
    """An operator's input that cannot be applied; the message says where and why."""


@dataclass(frozen=True)
class CreatedAccount:
    name: str
    account_id: int
    api_key: str
    api_secret: str


_SECTIONS = {"accounts", "products", "codes", "rates"}
_ACCOUNT_FIELDS = {"name", "balances"}
_PRODUCT_REQUIRED = {"sku", "name", "brand", "currency", "faceValue"}
_PRODUCT_OPTIONAL = {
    "price", "prices", "instantDeliverySupported", "brandCategory", "brandSubCategory",
    "types", "format", "country", "imageUrl", "descriptions", "instructions", "termConditions",
}  # fmt: skip
_TIER_FIELDS = {"price", "fromQuantity", "toQuantity"}
_CODE_FIELDS = {"sku", "redeemCode", "pinCode"}
_RATE_FIELDS = {"pair", "rate", "asOfDate"}


async def load_dataset(
    store: Store,
    document: Any,
    now: datetime,
    progress: Callable[[int], object] | None = None,
) -> list[CreatedAccount]:
    """Applies a dataset document (see the README) in one transaction.

    Returns the accounts created with their API key and secret: the only time
    the secret is shown, as only its hash is kept. `progress` is told of the codes
    added as they are.
    """
    dataset, secrets = parse_dataset(document, now)
    account_ids = await store.load(dataset, now, progress)
    return [
        CreatedAccount(account.name, account_id, account.api_key, secret)
        for account, account_id, secret in zip(dataset.accounts, account_ids, secrets, strict=True)
    ]


#: Two, so that a key can be rotated without downtime: create the new one,
#: move the clients over, disable the old one.
MAX_ACTIVE_KEYS = 2


async def create_api_key(store: Store, account_id: int, now: datetime) -> tuple[str, str]:
    """A new API key and secret for the account; the secret is shown only now."""
    api_key, api_secret = new_api_key(), new_api_secret()
    await store.create_api_key(account_id, api_key, hash_secret(api_secret), now, MAX_ACTIVE_KEYS)
    return api_key, api_secret


def parse_dataset(document: Any, now: datetime) -> tuple[Dataset, list[str]]:
    """The dataset, and the new accounts' plain secrets in the same order."""
    root = _object(document, "the dataset", required=set(), optional=_SECTIONS)
    accounts, secrets = [], []
    for index, item in enumerate(_list(root.get("accounts", []), "accounts")):
        account, secret = _account(item, f"accounts[{index}]")
        accounts.append(account)
        secrets.append(secret)
    products = [
        _product(item, f"products[{i}]")
        for i, item in enumerate(_list(root.get("products", []), "products"))
    ]
    codes = [
        _code(item, f"codes[{i}]") for i, item in enumerate(_list(root.get("codes", []), "codes"))
    ]
    rates = [
        _rate(item, f"rates[{i}]", now)
        for i, item in enumerate(_list(root.get("rates", []), "rates"))
    ]
    dataset = Dataset(tuple(accounts), tuple(products), tuple(codes), tuple(rates))
    return dataset, secrets


def parse_codes_csv(text: str, sku: str) -> list[NewCode]:
    """Codes from CSV text with the header `redeemCode,pinCode`."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or set(reader.fieldnames) != {"redeemCode", "pinCode"}:
        raise InvalidInput("the CSV header must be redeemCode,pinCode")
    return [_code({"sku": sku, **row}, f"line {line}") for line, row in enumerate(reader, start=2)]


def parse_money(amount: str, currency: str) -> Money:
    """A top-up: a positive ASCII decimal within the maximum a balance may hold."""
    return _money(amount, currency, "amount")


def parse_exchange_rate(pair: str, rate: str, as_of: str | None, now: datetime) -> ExchangeRate:
    base, slash, quote = pair.partition("/")
    if not slash or not is_currency(base) or not is_currency(quote) or base == quote:
        raise InvalidInput(f"pair {pair!r} is not BASE/QUOTE with two ISO 4217 codes")
    try:
        exact = parse_rate(rate)
    except ValueError as error:
        raise InvalidInput(str(error)) from None
    as_of = as_of or now.date().isoformat()
    try:
        date.fromisoformat(as_of[:10])
    except ValueError:
        raise InvalidInput(f"asOfDate {as_of!r} is not an ISO 8601 date") from None
    return ExchangeRate(base, quote, exact, as_of, updated_at=now)


def _account(item: Any, where: str) -> tuple[NewAccount, str]:
    fields = _object(item, where, required={"name"}, optional=_ACCOUNT_FIELDS)
    name = _text(fields, "name", where)
    balances = _object(fields.get("balances", {}), f"{where}.balances", set(), None)
    secret = new_api_secret()
    account = NewAccount(
        name=name,
        balances=tuple(
            _money(amount, currency, f"{where}.balances.{currency}", allow_zero=True)
            for currency, amount in balances.items()
        ),
        api_key=new_api_key(),
        secret_hash=hash_secret(secret),
    )
    return account, secret


def _product(item: Any, where: str) -> Product:
    fields = _object(item, where, required=_PRODUCT_REQUIRED, optional=_PRODUCT_OPTIONAL)
    currency = _text(fields, "currency", where)
    fmt = fields.get("format", "D")
    if fmt not in ("D", "P"):
        raise InvalidInput(f"{where}.format must be D or P")
    tiers = _tiers(fields, currency, where)
    return Product(
        sku=_text(fields, "sku", where),
        name=_text(fields, "name", where),
        brand=_text(fields, "brand", where),
        price=tiers[0].price,
        tiers=tiers if len(tiers) > 1 else (),
        face_value=_money(fields["faceValue"], currency, f"{where}.faceValue", allow_zero=True),
        instant_delivery_supported=_bool(fields.get("instantDeliverySupported", True), where),
        brand_category=_optional_text(fields, "brandCategory", where),
        brand_sub_category=_optional_text(fields, "brandSubCategory", where),
        types=_texts(fields, "types", where),
        format=fmt,
        country=_optional_text(fields, "country", where),
        image_url=_optional_text(fields, "imageUrl", where),
        descriptions=_texts(fields, "descriptions", where),
        instructions=_texts(fields, "instructions", where),
        term_conditions=_texts(fields, "termConditions", where),
    )


def _tiers(fields: Mapping[str, Any], currency: str, where: str) -> tuple[PriceTier, ...]:
    """`price` (one tier from 1), or `prices`: tiers from quantity 1 up, in order,
    each starting where the one before ends, the last without an end."""
    if ("price" in fields) == ("prices" in fields):
        raise InvalidInput(f"{where} must have price or prices (quantity tiers), not both")
    if "price" in fields:
        return (PriceTier(_money(fields["price"], currency, f"{where}.price")),)
    items = _list(fields["prices"], f"{where}.prices")
    if not items:
        raise InvalidInput(f"{where}.prices must hold at least one tier")
    tiers, expected_from = [], 1
    for index, item in enumerate(items):
        at = f"{where}.prices[{index}]"
        tier_fields = _object(item, at, required={"price", "fromQuantity"}, optional=_TIER_FIELDS)
        start = _quantity(tier_fields["fromQuantity"], f"{at}.fromQuantity")
        end = tier_fields.get("toQuantity")
        if start != expected_from:
            where_from = "1" if index == 0 else f"{expected_from}, where the tier before ends"
            raise InvalidInput(f"{at}.fromQuantity is {start}: it must be {where_from}")
        if end is not None:
            end = _quantity(end, f"{at}.toQuantity")
            if end < start:
                raise InvalidInput(f"{at}.toQuantity {end} is below its fromQuantity {start}")
        elif index < len(items) - 1:
            raise InvalidInput(f"{at} has no toQuantity but is not the last tier")
        tiers.append(PriceTier(_money(tier_fields["price"], currency, f"{at}.price"), start, end))
        expected_from = (end or 0) + 1
    if tiers[-1].to_quantity is not None:
        raise InvalidInput(
            f"{where}.prices: the last tier must have no toQuantity (no upper bound)"
        )
    return tuple(tiers)


#: The largest quantity a tier may name (the catalogue's fields are 32-bit).
MAX_TIER_QUANTITY = 2**31 - 1


def _quantity(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TIER_QUANTITY:
        raise InvalidInput(f"{where} must be a whole number from 1 to {MAX_TIER_QUANTITY}")
    return value


def _code(item: Any, where: str) -> NewCode:
    fields = _object(item, where, required={"sku", "redeemCode"}, optional=_CODE_FIELDS)
    return NewCode(
        sku=_text(fields, "sku", where),
        redeem_code=_text(fields, "redeemCode", where),
        pin_code=_optional_text(fields, "pinCode", where),
    )


def _rate(item: Any, where: str, now: datetime) -> ExchangeRate:
    fields = _object(item, where, required={"pair", "rate"}, optional=_RATE_FIELDS)
    try:
        return parse_exchange_rate(
            _text(fields, "pair", where),
            _text(fields, "rate", where),
            _optional_text(fields, "asOfDate", where),
            now,
        )
    except InvalidInput as error:
        raise InvalidInput(f"{where}: {error}") from None


def _object(
    value: Any, where: str, required: set[str], optional: set[str] | None
) -> Mapping[str, Any]:
    """A JSON object with exactly the allowed keys (`optional` None: any keys)."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be an object")
    missing = required - value.keys()
    if missing:
        raise InvalidInput(f"{where} lacks {', '.join(sorted(missing))}")
    if optional is not None:
        unknown = value.keys() - required - optional
        if unknown:
            raise InvalidInput(f"{where} has unknown fields {', '.join(sorted(unknown))}")
    return value


def _list(value: Any, where: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"{where} must be a list")
    return value


def _text(fields: Mapping[str, Any], key: str, where: str) -> str:
    value = fields.get(key)
    if not isinstance(value, str) or not value or not value.isprintable():
        raise InvalidInput(f"{where}.{key} must be a non-empty string of printable characters")
    return value


def _optional_text(fields: Mapping[str, Any], key: str, where: str) -> str | None:
    """Absent, null or "" (an empty CSV cell) all mean no value."""
    return None if fields.get(key) in (None, "") else _text(fields, key, where)


def _texts(fields: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = _list(fields.get(key, []), f"{where}.{key}")
    return tuple(_text({key: v}, key, where) for v in values)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}.instantDeliverySupported must be true or false")
    return value


def _money(amount: Any, currency: Any, where: str, *, allow_zero: bool = False) -> Money:
    if not isinstance(amount, str) or not isinstance(currency, str):
        raise InvalidInput(f'{where} must be a decimal string such as "9.70"')
    try:
        money = Money.parse(amount, currency)
    except ValueError as error:
        raise InvalidInput(f"{where}: {error}") from None
    if money.amount < 0 or (money.amount == 0 and not allow_zero):
        raise InvalidInput(f"{where} must be positive")
    if money.minor > MAX_BALANCE_MINOR:
        limit = Money.from_minor(MAX_BALANCE_MINOR, money.currency)
        raise InvalidInput(f"{where} {amount} is more than a balance may hold ({limit})")
    return money


@dataclass(frozen=True)
class Report:
    """What an operator looks at: stock and backlog per SKU, balances, recent orders."""

    at: datetime
    stock: list[StockLevel]
    balances: list[AccountBalance]
    #: Orders created in the last hour and in the last day, by status.
    last_hour: dict[str, int]
    last_day: dict[str, int]


async def report(store: Store, now: datetime) -> Report:
    return Report(
        at=now,
        stock=await store.stock_levels(),
        balances=await store.all_balances(),
        last_hour=await store.orders_by_status(now - timedelta(hours=1)),
        last_day=await store.orders_by_status(now - timedelta(days=1)),
    )
