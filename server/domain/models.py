"""The domain's nouns: plain, immutable values that know no transport or database."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Generic, TypeVar

from server.domain.money import Money

T = TypeVar("T")


class OrderStatus(enum.Enum):
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class PriceTier:
    """The unit price from `from_quantity` units up to `to_quantity` (None: no upper bound)."""

    price: Money
    from_quantity: int = 1
    to_quantity: int | None = None

    def covers(self, quantity: int) -> bool:
        return self.from_quantity <= quantity and (
            self.to_quantity is None or quantity <= self.to_quantity
        )


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    brand: str
    price: Money
    face_value: Money
    instant_delivery_supported: bool
    brand_category: str | None = None
    brand_sub_category: str | None = None
    types: tuple[str, ...] = ()
    format: str = "D"
    country: str | None = None
    image_url: str | None = None
    descriptions: tuple[str, ...] = ()
    instructions: tuple[str, ...] = ()
    term_conditions: tuple[str, ...] = ()
    #: The quantity tiers, from 1 up without gap or overlap; none: `price` from 1.
    tiers: tuple[PriceTier, ...] = ()

    @property
    def currency(self) -> str:
        return self.price.currency

    @property
    def price_tiers(self) -> tuple[PriceTier, ...]:
        return self.tiers or (PriceTier(self.price),)

    def unit_price(self, quantity: int) -> Money:
        """The unit price of `quantity` units: the tier that covers it."""
        return next(tier.price for tier in self.price_tiers if tier.covers(quantity))

    @property
    def percentage_off_face_value(self) -> Decimal:
        """The discount of the price on the face value, in percent with 2 digits."""
        if self.face_value.amount == 0:
            return Decimal("0.00")
        discount = (self.face_value.amount - self.price.amount) / self.face_value.amount
        return (discount * 100).quantize(Decimal("0.01"))


@dataclass(frozen=True)
class ExchangeRate:
    """One `base` costs `rate` `quote`."""

    base: str
    quote: str
    rate: Decimal
    as_of: str
    updated_at: datetime

    @property
    def pair(self) -> str:
        return f"{self.base}/{self.quote}"


@dataclass(frozen=True)
class FxConversion:
    """The conversion that priced an order in another currency."""

    pair: str
    rate: Decimal
    as_of: str


@dataclass(frozen=True)
class DeliveredCode:
    redeem_code: str
    pin_code: str | None


#: The stockId of an order's first unit: units are numbered 1 to quantity within
#: their order, so a stockId tells nothing of other customers' orders.
FIRST_UNIT = 1


@dataclass(frozen=True)
class OrderLine:
    """A bulk order's product line. Its units are stockIds `first_stock_id` on, delivered
    in that order: the first `delivered` have codes, the last `cancelled` were
    cancelled (refunded at the unit price), those between wait."""

    sku: str
    quantity: int
    unit_price: Money
    unit_price_original: Money
    first_stock_id: int
    delivered: int = 0
    cancelled: int = 0

    @property
    def total_price(self) -> Money:
        return self.unit_price.times(self.quantity)

    @property
    def waiting(self) -> int:
        return self.quantity - self.delivered - self.cancelled

    @property
    def status(self) -> OrderStatus:
        """COMPLETED once no unit waits and one was delivered; CANCELLED if all were cancelled."""
        if self.waiting:
            return OrderStatus.PROCESSING
        return OrderStatus.CANCELLED if self.cancelled == self.quantity else OrderStatus.COMPLETED

    def unit_status(self, stock_id: int) -> OrderStatus:
        position = stock_id - self.first_stock_id
        if position < self.delivered:
            return OrderStatus.COMPLETED
        if position < self.delivered + self.waiting:
            return OrderStatus.PROCESSING
        return OrderStatus.CANCELLED

    @property
    def stock_ids(self) -> range:
        return range(self.first_stock_id, self.first_stock_id + self.quantity)


@dataclass(frozen=True)
class Order:
    """An instant order (one unit of one product, stockId FIRST_UNIT from
    PROCESSING to COMPLETED; `code` is set once it is fulfilled), or a bulk order:
    its `lines`, whose units the fulfiller delivers as stock allows.

    `id` is the store's number of the order, never shown to a client: it counts
    every customer's orders.
    """

    id: int
    transaction_id: str
    client_order_number: str
    sku: str
    status: OrderStatus
    unit_price: Money
    unit_price_original: Money
    fx: FxConversion | None
    created_at: datetime
    code: DeliveredCode | None = None
    quantity: int = 1
    #: A bulk order's lines; none for an instant order.
    lines: tuple[OrderLine, ...] = ()
    #: What its cancellation refunded, in the pay currency (zero if none).
    refunded_minor: int = 0

    @property
    def is_bulk(self) -> bool:
        return bool(self.lines)

    @property
    def pay_with_currency(self) -> str:
        return self.unit_price.currency

    @property
    def total_price(self) -> Money:
        return self.unit_price.times(self.quantity)

    @property
    def grand_total(self) -> Money:
        if not self.lines:
            return self.total_price
        return Money.from_minor(
            sum(line.total_price.minor for line in self.lines), self.pay_with_currency
        )

    @property
    def refunded(self) -> Money:
        return Money.from_minor(self.refunded_minor, self.pay_with_currency)


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    page: int
    page_size: int

    @property
    def total_pages(self) -> int:
        return -(-self.total // self.page_size)


@dataclass(frozen=True)
class ApiCredentials:
    """What the store knows of an API key: whose it is, its secret's hash, whether it is on."""

    api_key: str
    account_id: int
    secret_hash: str
    active: bool = True


@dataclass(frozen=True)
class Caller:
    """The authenticated account behind a request, and the request's ids (for the
    audit): ours, made by the server, and the one the caller sent, if any."""

    account_id: int
    api_key: str
    request_id: str = ""
    client_request_id: str = ""

    @property
    def known_request_id(self) -> str:
        """The id the caller knows the request by: its own, else ours."""
        return self.client_request_id or self.request_id


class LedgerKind(enum.Enum):
    """Why a balance changed."""

    TOP_UP = "TOP_UP"
    ORDER = "ORDER"
    REFUND = "REFUND"


class AuditEvent(enum.Enum):
    ORDER_CREATED = "ORDER_CREATED"
    ORDER_COMPLETED = "ORDER_COMPLETED"
    ORDER_CANCELLED = "ORDER_CANCELLED"
    CODES_REVEALED = "CODES_REVEALED"
    KEY_CREATED = "KEY_CREATED"
    KEY_DISABLED = "KEY_DISABLED"


@dataclass(frozen=True)
class AuditRecord:
    """One line of the audit trail: what happened, to which order, on whose behalf."""

    at: datetime
    event: AuditEvent
    account_id: int | None
    api_key: str | None = None
    request_id: str | None = None
    transaction_id: str | None = None
    details: dict[str, str] = field(default_factory=dict)
    client_request_id: str | None = None


@dataclass(frozen=True)
class InstantOrderRequest:
    sku: str
    client_order_number: str = ""
    dup_check: bool = False
    pay_with_currency: str = ""


@dataclass(frozen=True)
class BulkLineRequest:
    sku: str
    quantity: int


@dataclass(frozen=True)
class BulkOrderRequest:
    lines: tuple[BulkLineRequest, ...]
    client_order_number: str = ""
    dup_check: bool = False
    pay_with_currency: str = ""


@dataclass(frozen=True)
class OrderFilter:
    transaction_id: str = ""
    client_order_number: str = ""


@dataclass(frozen=True)
class CodesFilter:
    sku: str = ""
    stock_ids: frozenset[int] = field(default_factory=frozenset)
    #: Units after this stockId only, at most `limit` of them (0: the default page).
    after_stock_id: int = 0
    limit: int = 0
