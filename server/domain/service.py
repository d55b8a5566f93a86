"""The use cases behind every RPC: validate, apply the rules, ask the store."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial

from server.domain.auth import (
    DUMMY_SECRET_HASH,
    IssuedToken,
    TokenSigner,
    verify_secret,
)
from server.domain.bulk import check_lines, decide_bulk_order
from server.domain.clock import utc_now
from server.domain.errors import ApiError, Reason, invalid_request
from server.domain.idempotency import (
    IdempotencyKey,
    KeyInUse,
    Remembered,
    cancellation_record,
    in_use,
    key_for,
    order_record,
    replay,
)
from server.domain.limits import DEFAULT_LIMITS, Limiter, Limits, SharedBuckets
from server.domain.models import (
    FIRST_UNIT,
    AuditEvent,
    AuditRecord,
    BulkOrderRequest,
    Caller,
    CodesFilter,
    ExchangeRate,
    InstantOrderRequest,
    Order,
    OrderFilter,
    OrderLine,
    OrderStatus,
    Page,
    Product,
)
from server.domain.money import Money, is_currency
from server.domain.observer import UNOBSERVED, Observer
from server.domain.orders import (
    CancelRequest,
    NewBulkOrder,
    NewOrder,
    OrderOutcome,
    Refused,
    decide_cancellation,
    decide_instant_order,
    placed_order,
)
from server.domain.ports import Store
from server.domain.updates import OrderUpdates

MAX_SKU_LENGTH = 64
MAX_CLIENT_ORDER_NUMBER_LENGTH = 128
MAX_TRANSACTION_ID_LENGTH = 64
MAX_CURRENCY_LENGTH = 16
ORDERS_PAGE = (10, 100)  # (default, maximum) page size
#: Units per GetCodes answer (default, maximum): an order of up to 10,000 units
#: (the most a line holds) in one answer, as a vendor client expects; a larger one
#: a page at a time (afterStockId), never whole into memory.
CODES_PAGE = (10_000, 10_000)
PRODUCTS_PAGE = (1000, 1000)


@dataclass(frozen=True)
class CodeView:
    """One unit of an order; `stock_id` numbers it within its order, from FIRST_UNIT."""

    stock_id: int
    status: OrderStatus
    redeem_code: str | None = None
    pin_code: str | None = None


@dataclass(frozen=True)
class ProductCodes:
    sku: str
    quantity: int
    codes: list[CodeView]


@dataclass(frozen=True)
class RatesView:
    updated_at: datetime | None
    product_currencies: list[str]
    rates: list[ExchangeRate]


class InstantOrdersService:
    """One instance per process, shared by all requests."""

    def __init__(
        self,
        store: Store,
        signing_key: bytes,
        token_lifetime: timedelta,
        clock: Callable[[], datetime] = utc_now,
        limits: Limits = DEFAULT_LIMITS,
        observer: Observer = UNOBSERVED,
        shared_limits: SharedBuckets | None = None,
    ) -> None:
        self._store = store
        self._tokens = TokenSigner(signing_key, token_lifetime)
        self._clock = clock
        self._observer = observer
        self.updates = OrderUpdates(store)
        self.limiter = Limiter(limits, shared=shared_limits)

    # --- authentication -------------------------------------------------------------

    async def issue_token(
        self, grant_type: str, client_id: str, client_secret: str, client_address: str = ""
    ) -> IssuedToken:
        """A bearer token for valid client credentials. Failed attempts are limited per
        key and client address and per client address, tokens issued per key; every
        failure gets the same answer."""
        if not grant_type:
            raise ApiError(Reason.invalid_request, detail="grant_type is required.")
        if grant_type != "client_credentials":
            raise ApiError(Reason.unsupported_grant_type)
        if not client_id or not client_secret:
            raise ApiError(
                Reason.invalid_request, detail="client_id and client_secret are required."
            )
        await self.limiter.check_login(client_id, client_address)
        credentials = await self._store.credentials(client_id)
        stored_hash = credentials.secret_hash if credentials else DUMMY_SECRET_HASH
        # scrypt takes tens of milliseconds: keep it off the event loop.
        matches = await asyncio.to_thread(partial(verify_secret, client_secret, stored_hash))
        # One answer for an unknown key, a wrong secret and a disabled key.
        if credentials is None or not matches or not credentials.active:
            await self.limiter.login_failed(client_id, client_address)
            raise ApiError(Reason.invalid_client)
        await self.limiter.token_issued(client_id)
        return self._tokens.issue(Caller(credentials.account_id, client_id), self._clock())

    async def authenticate(
        self, api_key: str, authorization: str, request_id: str, client_request_id: str = ""
    ) -> Caller:
        """The caller, if the token is valid for the key and the key is still enabled:
        disabling a key rejects its tokens at once, in every process. `request_id` is
        ours; `client_request_id` the one the caller sent, recorded beside it."""
        caller = self._tokens.verify(api_key, authorization, self._clock())
        if not await self._store.api_key_active(caller.api_key, caller.account_id):
            raise ApiError(Reason.UNAUTHENTICATED)
        return Caller(caller.account_id, caller.api_key, request_id, client_request_id)

    # --- orders ---------------------------------------------------------------------

    async def create_instant_order(
        self, caller: Caller, request: InstantOrderRequest, idempotency_key: str = ""
    ) -> Order:
        check_text("sku", request.sku, MAX_SKU_LENGTH, required=True)
        check_text("clientOrderNumber", request.client_order_number, MAX_CLIENT_ORDER_NUMBER_LENGTH)
        # Any printable code of sane length reaches the currency rules, which
        # answer UNSUPPORTED_CURRENCY for one that is not ISO 4217.
        check_text("payWithCurrency", request.pay_with_currency, MAX_CURRENCY_LENGTH)
        key = key_for(
            idempotency_key, caller.known_request_id, partial(order_record, request),
            "CreateInstantOrder", **dataclasses.asdict(request),
        )  # fmt: skip
        order = NewOrder(caller, request, new_transaction_id(), self._clock())
        outcome = await self._store.place_instant_order(
            order, partial(decide_instant_order, request), key
        )
        return await self._answer("instant", caller, request, key, outcome)

    async def create_bulk_order(
        self, caller: Caller, request: BulkOrderRequest, idempotency_key: str = ""
    ) -> Order:
        """Debits the grand total and answers the order PROCESSING at once: the
        fulfiller delivers its units as stock allows."""
        check_lines(request)
        for line in request.lines:
            check_text("sku", line.sku, MAX_SKU_LENGTH, required=True)
        check_text("clientOrderNumber", request.client_order_number, MAX_CLIENT_ORDER_NUMBER_LENGTH)
        check_text("payWithCurrency", request.pay_with_currency, MAX_CURRENCY_LENGTH)
        key = key_for(
            idempotency_key, caller.known_request_id, partial(order_record, request),
            "CreateBulkOrder", **dataclasses.asdict(request),
        )  # fmt: skip
        order = NewBulkOrder(caller, request, new_transaction_id(), self._clock())
        outcome = await self._store.place_bulk_order(
            order, partial(decide_bulk_order, request), key
        )
        return await self._answer("bulk", caller, request, key, outcome)

    async def _answer(
        self,
        kind: str,
        caller: Caller,
        request: InstantOrderRequest | BulkOrderRequest,
        key: IdempotencyKey | None,
        outcome: OrderOutcome | Remembered | KeyInUse,
    ) -> Order:
        """The order placed, the answer stored with its key, or the refusal; counted."""
        if isinstance(outcome, Remembered | KeyInUse):
            self._observer.order_answered(kind, "replayed")
            return await self._replayed(caller, key, outcome)
        try:
            placed = placed_order(request, outcome)
        except ApiError as refusal:
            self._observer.order_answered(kind, refusal.reason.name)
            raise
        self._observer.order_answered(kind, placed.status.value.lower())
        return placed

    async def cancel_order(
        self, caller: Caller, transaction_id: str, idempotency_key: str = ""
    ) -> Order:
        """Cancels and refunds an order still waiting for stock; its watchers hear it."""
        check_text("transactionId", transaction_id, MAX_TRANSACTION_ID_LENGTH, required=True)
        key = key_for(
            idempotency_key, caller.known_request_id, cancellation_record,
            "CancelOrder", transactionId=transaction_id,
        )  # fmt: skip
        outcome = await self._store.cancel_order(
            CancelRequest(caller, transaction_id, self._clock()),
            partial(decide_cancellation, transaction_id),
            key,
        )
        if isinstance(outcome, Remembered | KeyInUse):
            return await self._replayed(caller, key, outcome)
        if isinstance(outcome, Refused):
            raise outcome.error
        if outcome.now:
            self._observer.orders_cancelled("customer", 1)
            self.updates.notify([transaction_id])
        return outcome.order

    async def _replayed(
        self, caller: Caller, key: IdempotencyKey | None, outcome: Remembered | KeyInUse
    ) -> Order:
        """The answer stored with the key, given again (or IN_USE while there is none)."""
        assert key is not None  # a store answers so only for a key
        if isinstance(outcome, KeyInUse):
            raise in_use()
        record = replay(outcome, key)  # raises the refusal it stored
        assert record.transaction_id is not None and record.status is not None
        order = await self.get_order(caller, record.transaction_id)
        return replace(order, status=record.status, code=None)

    async def get_order(self, caller: Caller, transaction_id: str) -> Order:
        check_text("transactionId", transaction_id, MAX_TRANSACTION_ID_LENGTH, required=True)
        order = await self._store.get_order(caller.account_id, transaction_id)
        if order is None:
            # Another account's order is answered exactly like a missing one.
            raise ApiError(Reason.ORDER_NOT_FOUND, transactionId=transaction_id)
        return order

    async def watch_order(self, caller: Caller, transaction_id: str) -> AsyncIterator[Order]:
        """The order now, then each change until it is final. The watch starts
        before the first read, so that no change falls between the two."""
        check_text("transactionId", transaction_id, MAX_TRANSACTION_ID_LENGTH, required=True)
        with self.limiter.stream(caller.api_key), self.updates.watching(transaction_id) as changed:
            order = await self.get_order(caller, transaction_id)
            yield order
            while order.status is OrderStatus.PROCESSING:
                await changed.wait()
                changed.clear()
                if self.updates.closed:
                    raise ApiError(
                        Reason.UNAVAILABLE, detail="The server is stopping. Watch the order again."
                    )
                latest = await self.get_order(caller, transaction_id)
                if latest != order:  # a new status, or a bulk order's units delivered
                    order = latest
                    yield order

    async def list_orders(
        self, caller: Caller, order_filter: OrderFilter, page: int, limit: int
    ) -> Page[Order]:
        check_text("transactionId", order_filter.transaction_id, MAX_TRANSACTION_ID_LENGTH)
        check_text(
            "clientOrderNumber", order_filter.client_order_number, MAX_CLIENT_ORDER_NUMBER_LENGTH
        )
        page, limit = page_bounds(page, limit, *ORDERS_PAGE)
        return await self._store.list_orders(caller.account_id, order_filter, page, limit)

    async def get_codes(
        self, caller: Caller, transaction_id: str, codes_filter: CodesFilter
    ) -> list[ProductCodes]:
        """The order's units that match the filter, a page at most (the first
        CODES_PAGE units after `after_stock_id`, in stockId order), each with its
        code once delivered."""
        if codes_filter.after_stock_id < 0:
            raise invalid_request("afterStockId must be 0 or more.", "afterStockId")
        _, limit = page_bounds(1, codes_filter.limit, *CODES_PAGE)
        order = await self.get_order(caller, transaction_id)
        if order.is_bulk:
            products = await self._bulk_units(order, codes_filter, limit)
        elif codes_filter.sku and codes_filter.sku != order.sku:
            products = []
        else:
            codes = [code for code in codes_of(order) if matches(code, codes_filter)]
            products = [ProductCodes(sku=order.sku, quantity=order.quantity, codes=codes)]
        await self._record_revealed(caller, transaction_id, products)
        return products

    async def _bulk_units(
        self, order: Order, codes_filter: CodesFilter, limit: int
    ) -> list[ProductCodes]:
        """A page of a bulk order's units, per line, without the cancelled ones (as a
        cancelled instant order shows none: the reference's units are PROCESSING or
        COMPLETED); only the page's codes are read."""
        page: list[tuple[OrderLine, int]] = []
        for line in order.lines:
            if codes_filter.sku and codes_filter.sku != line.sku:
                continue
            for stock_id in _candidates(line, codes_filter):
                if len(page) == limit:
                    break
                if line.unit_status(stock_id) is not OrderStatus.CANCELLED:
                    page.append((line, stock_id))
        delivered = [s for line, s in page if line.unit_status(s) is OrderStatus.COMPLETED]
        codes = await self._store.unit_codes(order.id, delivered) if delivered else {}
        products: dict[str, ProductCodes] = {}
        for line, stock_id in page:
            units = products.setdefault(line.sku, ProductCodes(line.sku, line.quantity, []))
            code = codes.get(stock_id)
            units.codes.append(
                CodeView(
                    stock_id,
                    line.unit_status(stock_id),
                    None if code is None else code.redeem_code,
                    None if code is None else code.pin_code,
                )
            )
        return list(products.values())

    async def _record_revealed(
        self, caller: Caller, transaction_id: str, products: list[ProductCodes]
    ) -> None:
        codes = [code for product in products for code in product.codes]
        if any(code.redeem_code is not None for code in codes):
            # Written before the codes leave: no code is revealed unrecorded.
            await self._store.record_audit(
                AuditRecord(
                    self._clock(),
                    AuditEvent.CODES_REVEALED,
                    caller.account_id,
                    caller.api_key,
                    caller.request_id,
                    transaction_id,
                    {"stockIds": _ranges(c.stock_id for c in codes if c.redeem_code is not None)},
                    caller.client_request_id,
                )
            )

    # --- catalogue, balances, rates -------------------------------------------------

    async def list_products(self, skus: Sequence[str], page: int, limit: int) -> Page[Product]:
        for sku in skus:
            check_text("sku", sku, MAX_SKU_LENGTH)
        page, limit = page_bounds(page, limit, *PRODUCTS_PAGE)
        return await self._store.list_products([s for s in skus if s], page, limit)

    async def balances(self, caller: Caller, currency: str) -> list[Money]:
        if currency and not is_currency(currency):
            raise invalid_request(f"currency {currency!r} is not an ISO 4217 code.", "currency")
        balances = await self._store.balances(caller.account_id)
        return [b for b in balances if not currency or b.currency == currency]

    async def exchange_rates(self, pairs: Sequence[str], base: str, quote: str) -> RatesView:
        wanted = {parse_pair(p) for p in pairs if p}
        for name, code in (("base", base), ("quote", quote)):
            if code and not is_currency(code):
                raise invalid_request(f"{name} {code!r} is not an ISO 4217 code.", name)
        rates = await self._store.exchange_rates()
        if wanted:
            rates = [r for r in rates if (r.base, r.quote) in wanted]
        else:
            rates = [r for r in rates if base in ("", r.base) and quote in ("", r.quote)]
        updated_at = max((r.updated_at for r in rates), default=None)
        return RatesView(updated_at, await self._store.product_currencies(), rates)


def new_transaction_id() -> str:
    """128 random bits: unguessable, so one account cannot probe another's orders."""
    return secrets.token_hex(16)


def codes_of(order: Order) -> list[CodeView]:
    if order.status is OrderStatus.CANCELLED:
        return []
    if order.code is None:
        return [CodeView(FIRST_UNIT, OrderStatus.PROCESSING)]
    return [CodeView(FIRST_UNIT, order.status, order.code.redeem_code, order.code.pin_code)]


def _candidates(line: OrderLine, codes_filter: CodesFilter) -> Iterable[int]:
    """The line's stockIds the filter lets through, in order: the ones asked for
    (however long the line), or all those after `after_stock_id`."""
    start = max(line.first_stock_id, codes_filter.after_stock_id + 1)
    if codes_filter.stock_ids:
        asked = sorted(codes_filter.stock_ids)
        return (s for s in asked if start <= s < line.stock_ids.stop)
    return range(start, line.stock_ids.stop)


def _ranges(stock_ids: Iterable[int]) -> str:
    """1,2,3,5 -> "1-3,5": a page of a thousand units stays a short audit row."""
    spans: list[list[int]] = []
    for stock_id in sorted(stock_ids):
        if spans and stock_id == spans[-1][1] + 1:
            spans[-1][1] = stock_id
        else:
            spans.append([stock_id, stock_id])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def matches(code: CodeView, codes_filter: CodesFilter) -> bool:
    if code.stock_id <= codes_filter.after_stock_id:
        return False
    return not codes_filter.stock_ids or code.stock_id in codes_filter.stock_ids


def check_text(field: str, value: str, max_length: int, *, required: bool = False) -> None:
    """Rejects a missing required value, an over-long one and control characters."""
    if required and not value:
        raise invalid_request(f"{field} is required.", field)
    if len(value) > max_length:
        raise invalid_request(f"{field} is longer than {max_length} characters.", field)
    if not value.isprintable():
        raise invalid_request(f"{field} contains control characters.", field)


def page_bounds(page: int, limit: int, default_limit: int, max_limit: int) -> tuple[int, int]:
    """(page, limit) with defaults applied for zeros; out-of-range values are rejected."""
    page = page or 1
    limit = limit or default_limit
    if page < 1:
        raise invalid_request("page must be 1 or more.", "page")
    if not 1 <= limit <= max_limit:
        raise invalid_request(f"limit must be between 1 and {max_limit}.", "limit")
    return page, limit


def parse_pair(pair: str) -> tuple[str, str]:
    """ "USDCAD" -> ("USD", "CAD")."""
    base, quote = pair[:3], pair[3:]
    if len(pair) != 6 or not is_currency(base) or not is_currency(quote):
        raise invalid_request(f"pairs: {pair!r} is not BASEQUOTE with two ISO 4217 codes.", "pairs")
    return base, quote
