"""The stores' transactions, each written once for both backends.

A transaction is a generator: it yields each query (statements.py), receives
its result, and returns its own. The backend runs it: SQLite in one call on
its database thread, PostgreSQL on a pooled connection inside BEGIN/COMMIT.
So the sequence of statements of every change, and every row conversion,
exists once, and a transaction holds no I/O of its own.

A transaction reports outcomes and keeps invariants; the rules that decide
anything are the domain's, passed in (`decide`) or applied to what it returns.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import groupby, islice
from typing import Any, TypeVar

from server.domain.bulk import BulkFacts, BulkPlan
from server.domain.bulk import rate_pair as bulk_rate_pair
from server.domain.clock import micros
from server.domain.failures import DataConflict
from server.domain.idempotency import IdempotencyKey, KeyInUse, KeyRecord, Remembered
from server.domain.models import (
    FIRST_UNIT,
    AuditEvent,
    AuditRecord,
    BulkOrderRequest,
    Caller,
    DeliveredCode,
    ExchangeRate,
    InstantOrderRequest,
    LedgerKind,
    Order,
    OrderLine,
    OrderStatus,
)
from server.domain.money import MAX_BALANCE_MINOR, Money
from server.domain.orders import (
    BalanceSpent,
    Cancellation,
    Cancelled,
    CancelRequest,
    DuplicateOf,
    NewBulkOrder,
    NewOrder,
    OrderFacts,
    OrderOutcome,
    OrderPlan,
    Pair,
    Placed,
    Refused,
    rate_pair,
)
from server.domain.ports import Dataset, Delivery, NewCode, WaitingUnits
from server.keys import CodeCipher
from server.store import statements as sql
from server.store.rows import (
    SealedCode,
    audit_params,
    balances_from_rows,
    is_bulk,
    line_from_row,
    order_from_row,
    priced_product,
    product_params,
    rate_from_row,
    rate_params,
    remembered_from_row,
)
from server.store.sql import Query, Rollback, Unit

T = TypeVar("T")
Decide = Callable[[OrderFacts], OrderPlan | Refused]
DecideBulk = Callable[[BulkFacts], BulkPlan | Refused]


def one(query: Query) -> Unit[Any]:
    """A transaction of one query."""
    return (yield query)


# --- orders ------------------------------------------------------------------------


def get_order(account_id: int, transaction_id: str, cipher: CodeCipher) -> Unit[Order | None]:
    row = yield sql.ORDER_BY_TRANSACTION_ID.row(
        transaction_id=transaction_id, account_id=account_id
    )
    if row is None:
        return None
    (order,) = yield from orders_from_rows([row], cipher)
    return order


def orders_from_rows(rows: Sequence[Any], cipher: CodeCipher) -> Unit[list[Order]]:
    """The orders of _ORDER's rows, each bulk order with its lines (one more query)."""
    orders = [order_from_row(row, cipher) for row in rows]
    bulk_ids = [row["id"] for row in rows if is_bulk(row)]
    if not bulk_ids:
        return orders
    line_rows = yield sql.ORDER_LINES.rows(order_ids=bulk_ids)
    lines: dict[int, list[OrderLine]] = {}
    by_id = {order.id: order for order in orders}
    for line in line_rows:
        order = by_id[line["order_id"]]
        original_currency = order.unit_price_original.currency
        lines.setdefault(order.id, []).append(
            line_from_row(line, order.pay_with_currency, original_currency)
        )
    return [
        replace(order, lines=tuple(lines[order.id]), sku="") if order.id in lines else order
        for order in orders
    ]


def unit_codes(
    order_id: int, stock_ids: Sequence[int], cipher: CodeCipher
) -> Unit[dict[int, DeliveredCode]]:
    """The codes of the order's units among `stock_ids` (a page), by stockId."""
    rows = yield sql.UNIT_CODES.rows(order_id=order_id, stock_ids=list(stock_ids))
    return {row["stock_id"]: SealedCode.from_row(row).opened(cipher) for row in rows}


def place_instant_order(
    new_order: NewOrder, decide: Decide, cipher: CodeCipher, key: IdempotencyKey | None
) -> Unit[OrderOutcome | Remembered | KeyInUse]:
    """Reads the facts, lets the rules decide and applies their plan, in one
    transaction; with a key, that transaction also holds the key and stores its
    answer (or gives back the one stored)."""

    def place() -> Unit[OrderOutcome]:
        decision = decide((yield from order_facts(account_id, new_order.request)))
        if isinstance(decision, Refused):
            return decision
        return (yield from apply_order_plan(new_order, decision, cipher))

    account_id = new_order.caller.account_id
    return (yield from keyed(account_id, key, new_order.at, place))


def place_bulk_order(
    new_order: NewBulkOrder, decide: DecideBulk, key: IdempotencyKey | None
) -> Unit[OrderOutcome | Remembered | KeyInUse]:
    """As place_instant_order: the facts, the rules' decision and its plan applied in
    one transaction, with the key held and its answer stored."""

    def place() -> Unit[OrderOutcome]:
        decision = decide((yield from bulk_facts(account_id, new_order.request)))
        if isinstance(decision, Refused):
            return decision
        return (yield from apply_bulk_plan(new_order, decision))

    account_id = new_order.caller.account_id
    return (yield from keyed(account_id, key, new_order.at, place))


def keyed(
    account_id: int, key: IdempotencyKey | None, at: datetime, place: Callable[[], Unit[T]]
) -> Unit[T | Remembered | KeyInUse]:
    """`place`, with the key held first and its answer stored after, in the same
    transaction; or the answer stored before (KeyInUse while another holds it)."""
    if key is None:
        return (yield from place())
    held = yield from claim_key(account_id, key)
    if held is not None:
        return held
    outcome = yield from place()
    yield from remember(account_id, key, key.record_of(outcome), at)
    return outcome


def bulk_facts(account_id: int, request: BulkOrderRequest) -> Unit[BulkFacts]:
    skus = [line.sku for line in request.lines]
    product_rows = yield sql.PRICED_PRODUCTS.rows(skus=skus)
    products = {row["sku"]: priced_product(row) for row in product_rows}
    balances = balances_from_rows((yield sql.BALANCES.rows(account_id=account_id)))
    currencies = {product.currency for product in products.values()}
    pair = bulk_rate_pair(request, currencies.pop() if len(currencies) == 1 else None)
    rates = yield from rate_of(pair)
    holder = yield from number_holder(account_id, request.client_order_number)
    return BulkFacts(products, balances, rates, holder)


def apply_bulk_plan(new_order: NewBulkOrder, plan: BulkPlan) -> Unit[OrderOutcome]:
    """Claims the clientOrderNumber, debits the grand total and records the order, its
    lines, the ledger row and the audit row. Its units wait for the fulfiller, behind
    the orders that wait already: first come, first served."""
    request, total = new_order.request, plan.grand_total
    account_id = new_order.caller.account_id
    number = {"account_id": account_id, "client_order_number": request.client_order_number}
    if request.client_order_number:
        claimed = yield sql.CLAIM_CLIENT_ORDER_NUMBER.value(
            **number, transaction_id=new_order.transaction_id
        )
        if claimed is None and request.dup_check:
            return DuplicateOf((yield sql.CLIENT_ORDER_NUMBER_HOLDER.value(**number)))
    debited = yield sql.DEBIT.count(
        account_id=account_id, currency=total.currency, amount_minor=total.minor
    )
    if not debited:
        raise Rollback(BalanceSpent(total))
    at = micros(new_order.at)
    order_id = yield sql.INSERT_BULK_ORDER.value(
        transaction_id=new_order.transaction_id,
        account_id=account_id,
        client_order_number=request.client_order_number,
        sku=plan.lines[0].sku,
        pay_currency=total.currency,
        original_currency=plan.lines[0].unit_price_original.currency,
        fx_rate=None if plan.fx is None else str(plan.fx.rate),
        fx_as_of=None if plan.fx is None else plan.fx.as_of,
        at=at,
    )
    yield sql.INSERT_ORDER_LINE.many(
        {
            "order_id": order_id,
            "line": line_number,
            "sku": line.sku,
            "quantity": line.quantity,
            "first_stock_id": line.first_stock_id,
            "unit_price_minor": line.unit_price.minor,
            "unit_price_original_minor": line.unit_price_original.minor,
        }
        for line_number, line in enumerate(plan.lines, start=1)
    )
    yield from ledger(account_id, -total, LedgerKind.ORDER, order_id, at)
    yield from audit_order(
        new_order,
        AuditEvent.ORDER_CREATED,
        skus=",".join(line.sku for line in plan.lines),
        units=str(sum(line.quantity for line in plan.lines)),
        status=OrderStatus.PROCESSING.value,
    )
    return Placed(bulk_as_placed(new_order, plan, order_id))


def bulk_as_placed(new_order: NewBulkOrder, plan: BulkPlan, order_id: int) -> Order:
    lines = tuple(
        OrderLine(
            line.sku,
            line.quantity,
            line.unit_price,
            line.unit_price_original,
            line.first_stock_id,
        )
        for line in plan.lines
    )
    return Order(
        id=order_id,
        transaction_id=new_order.transaction_id,
        client_order_number=new_order.request.client_order_number,
        sku="",
        status=OrderStatus.PROCESSING,
        unit_price=Money.from_minor(0, plan.grand_total.currency),
        unit_price_original=Money.from_minor(0, plan.lines[0].unit_price_original.currency),
        fx=plan.fx,
        created_at=new_order.at,
        lines=lines,
    )


def order_facts(account_id: int, request: InstantOrderRequest) -> Unit[OrderFacts]:
    product_row = yield sql.PRICED_PRODUCT.row(sku=request.sku)
    product = None if product_row is None else priced_product(product_row)
    balances = balances_from_rows((yield sql.BALANCES.rows(account_id=account_id)))
    rates = yield from rate_of(rate_pair(request, product))
    holder = yield from number_holder(account_id, request.client_order_number)
    return OrderFacts(product, balances, rates, holder)


def rate_of(pair: Pair | None) -> Unit[dict[Pair, ExchangeRate]]:
    """The exchange rate of `pair` the rules will look up, if there is one."""
    if pair is None:
        return {}
    row = yield sql.RATE.row(base=pair[0], quote=pair[1])
    return {} if row is None else {pair: rate_from_row(row)}


def number_holder(account_id: int, client_order_number: str) -> Unit[str | None]:
    """The transactionId of the account's order that holds the clientOrderNumber."""
    if not client_order_number:
        return None
    holder: str | None = yield sql.CLIENT_ORDER_NUMBER_HOLDER.value(
        account_id=account_id, client_order_number=client_order_number
    )
    return holder


def apply_order_plan(
    new_order: NewOrder, plan: OrderPlan, cipher: CodeCipher
) -> Unit[OrderOutcome]:
    """Claims the clientOrderNumber, debits, takes a code unless orders wait for the
    SKU, and records the order with its ledger and audit rows. PostgreSQL runs the
    same statements in one call (place_instant_order in schema.py)."""
    request, price = new_order.request, plan.unit_price
    number = {
        "account_id": new_order.caller.account_id,
        "client_order_number": request.client_order_number,
    }
    if request.client_order_number:
        claimed = yield sql.CLAIM_CLIENT_ORDER_NUMBER.value(
            **number, transaction_id=new_order.transaction_id
        )
        if claimed is None and request.dup_check:
            return DuplicateOf((yield sql.CLIENT_ORDER_NUMBER_HOLDER.value(**number)))
    debited = yield sql.DEBIT.count(
        account_id=new_order.caller.account_id, currency=price.currency, amount_minor=price.minor
    )
    if not debited:
        raise Rollback(BalanceSpent(price))
    code_row = yield sql.CODE_FOR_NEW_ORDER.row(sku=request.sku)
    status = OrderStatus.PROCESSING if code_row is None else OrderStatus.COMPLETED
    order_id = yield sql.INSERT_ORDER.value(**order_params(new_order, plan, status))
    at = micros(new_order.at)
    yield from ledger(new_order.caller.account_id, -price, LedgerKind.ORDER, order_id, at)
    yield from audit_order(
        new_order, AuditEvent.ORDER_CREATED, sku=request.sku, status=status.value
    )
    code = None
    if code_row is not None:
        sealed = SealedCode.from_row(code_row)
        yield sql.SELL_CODE.run(order_id=order_id, stock_id=FIRST_UNIT, code_id=sealed.id)
        yield from audit_order(new_order, AuditEvent.ORDER_COMPLETED, stockId=str(FIRST_UNIT))
        code = sealed.opened(cipher)
    return Placed(as_placed(new_order, plan, order_id, status, code))


def order_params(new_order: NewOrder, plan: OrderPlan, status: OrderStatus) -> dict[str, Any]:
    """INSERT_ORDER's parameters: the columns of a new order."""
    request = new_order.request
    return {
        "transaction_id": new_order.transaction_id,
        "account_id": new_order.caller.account_id,
        "client_order_number": request.client_order_number,
        "sku": request.sku,
        "status": status.value,
        "pay_currency": plan.unit_price.currency,
        "unit_price_minor": plan.unit_price.minor,
        "original_currency": plan.unit_price_original.currency,
        "unit_price_original_minor": plan.unit_price_original.minor,
        "fx_rate": None if plan.fx is None else str(plan.fx.rate),
        "fx_as_of": None if plan.fx is None else plan.fx.as_of,
        "at": micros(new_order.at),
    }


def audit_order(
    new_order: NewOrder | NewBulkOrder, event: AuditEvent, **details: str
) -> Unit[None]:
    """The audit row of an order's step, on behalf of its caller (audit_params's
    columns, made here directly: this runs twice per order)."""
    caller = new_order.caller
    yield sql.INSERT_AUDIT.run(
        at=micros(new_order.at),
        event=event.value,
        account_id=caller.account_id,
        api_key=caller.api_key,
        request_id=caller.request_id or None,
        client_request_id=caller.client_request_id or None,
        transaction_id=new_order.transaction_id,
        details=json.dumps(details),
    )


def as_placed(
    new_order: NewOrder,
    plan: OrderPlan,
    order_id: int,
    status: OrderStatus,
    code: DeliveredCode | None,
) -> Order:
    """The order just placed, as its client gets it back."""
    return Order(
        id=order_id,
        transaction_id=new_order.transaction_id,
        client_order_number=new_order.request.client_order_number,
        sku=new_order.request.sku,
        status=status,
        unit_price=plan.unit_price,
        unit_price_original=plan.unit_price_original,
        fx=plan.fx,
        created_at=new_order.at,
        code=code,
    )


def orders_page(
    account_id: int,
    transaction_id: str,
    client_order_number: str,
    limit: int,
    offset: int,
    cipher: CodeCipher,
) -> Unit[tuple[list[Order], int]]:
    """A page of the account's orders, newest first, and how many match in all."""
    count, page = sql.ORDERS_OF_ACCOUNT[bool(transaction_id), bool(client_order_number)]
    where = {
        "account_id": account_id,
        "transaction_id": transaction_id,
        "client_order_number": client_order_number,
    }
    total = yield count.value(**where)
    rows = yield page.rows(**where, limit=limit, offset=offset)
    return (yield from orders_from_rows(rows, cipher)), total


# --- fulfillment -------------------------------------------------------------------


def waiting_units(
    skus: Collection[str], not_before: datetime, limit: int
) -> Unit[list[WaitingUnits]]:
    rows = yield sql.WAITING_UNITS.rows(skus=list(skus), not_before=micros(not_before), limit=limit)
    return [WaitingUnits(*row) for row in rows]


@dataclass(frozen=True)
class _Claimed:
    """Units claimed for delivery: an instant order's one (line 0), a bulk line's rest."""

    order_id: int
    transaction_id: str
    line: int
    sku: str
    units: int
    next_stock_id: int


def complete_from_stock(
    waiting: Sequence[WaitingUnits], now: datetime, max_units: int
) -> Unit[Delivery]:
    """Claims what still waits of `waiting` (on PostgreSQL skipping rows another
    fulfiller holds) and the oldest unsold codes of its SKUs, and hands them out
    oldest order first: an instant order its one code (COMPLETED), a bulk line as
    many as there are, in stockId order; a bulk order none of whose units waits any
    more is COMPLETED."""
    claimed = yield from _claim_waiting(waiting)
    transaction_ids = {entry.order_id: entry.transaction_id for entry in claimed}
    sold: list[dict[str, int]] = []
    delivered: list[dict[str, int]] = []
    completed: list[int] = []
    for sku, group in groupby(sorted(claimed, key=lambda c: c.sku), key=lambda c: c.sku):
        queue = list(group)  # oldest order first: sorted is stable
        count = min(sum(c.units for c in queue), max_units - len(sold))
        if count <= 0:
            break
        codes = iter((yield sql.CLAIM_UNSOLD_CODES.column(sku=sku, count=count)))
        for entry in queue:
            given = list(islice(codes, entry.units))
            if not given:
                break
            sold += [
                {"order_id": entry.order_id, "stock_id": entry.next_stock_id + n, "code_id": code}
                for n, code in enumerate(given)
            ]
            if entry.line:
                delivered.append(
                    {"order_id": entry.order_id, "line": entry.line, "count": len(given)}
                )
            else:
                completed.append(entry.order_id)
    if not sold:
        return Delivery()
    yield sql.SELL_CODE.many(sold)
    bulk_ids = sorted({entry["order_id"] for entry in delivered})
    if delivered:
        yield sql.DELIVER_TO_LINE.many(delivered)
        completed += yield sql.BULK_ORDERS_DONE.column(ids=bulk_ids)
    if completed:
        yield from finish(completed, OrderStatus.COMPLETED, now)
    done = set(completed)
    return Delivery(
        completed=tuple(transaction_ids[order_id] for order_id in sorted(done)),
        partly=tuple(transaction_ids[order_id] for order_id in bulk_ids if order_id not in done),
    )


def _claim_waiting(waiting: Sequence[WaitingUnits]) -> Unit[list[_Claimed]]:
    """What of `waiting` still waits, locked, oldest order first."""
    orders = yield sql.CLAIM_WAITING_ORDERS.rows(ids=sorted({u.order_id for u in waiting}))
    bulk_ids = [row["id"] for row in orders if row["kind"] == "BULK"]
    lines = (yield sql.WAITING_LINES.rows(order_ids=bulk_ids)) if bulk_ids else []
    wanted = {(unit.order_id, unit.line) for unit in waiting}
    claimed = [
        _Claimed(row["id"], row["transaction_id"], 0, row["sku"], 1, FIRST_UNIT)
        for row in orders
        if row["kind"] == "INSTANT"
    ]
    bulk_transaction_ids = {row["id"]: row["transaction_id"] for row in orders}
    claimed += [
        _Claimed(
            row["order_id"],
            bulk_transaction_ids[row["order_id"]],
            row["line"],
            row["sku"],
            row["waiting"],
            row["first_stock_id"] + row["delivered"],
        )
        for row in lines
        if (row["order_id"], row["line"]) in wanted
    ]
    return sorted(claimed, key=lambda c: (c.order_id, c.line))


def cancel_overdue(created_before: datetime, now: datetime, limit: int) -> Unit[list[str]]:
    """Cancels the oldest overdue PROCESSING orders, each with its refund; returns
    their transaction ids."""
    claimed = yield sql.CLAIM_OVERDUE_ORDERS.rows(before=micros(created_before), limit=limit)
    if not claimed:
        return []
    overdue = [row["id"] for row in claimed]
    bulk = [row["id"] for row in claimed if row["kind"] == "BULK"]
    cancelled = yield from cancel_and_refund(overdue, bulk, now)
    position = {order_id: index for index, order_id in enumerate(overdue)}
    return [row["transaction_id"] for row in sorted(cancelled, key=lambda r: position[r["id"]])]


def cancel_order(
    request: CancelRequest,
    decide: Callable[[Order | None], Cancellation | Refused],
    cipher: CodeCipher,
    key: IdempotencyKey | None,
) -> Unit[Cancelled | Refused | Remembered | KeyInUse]:
    """A customer's cancellation: the order is locked, the rules decide, and a
    PROCESSING order is cancelled with its refund; with a key, as for an order."""

    def cancel() -> Unit[Cancelled | Refused]:
        row = yield sql.ORDER_TO_CANCEL.row(
            transaction_id=request.transaction_id, account_id=account_id
        )
        order = None if row is None else order_from_row(row, cipher)  # its status is enough
        decision = decide(order)
        if isinstance(decision, Refused):
            return decision
        assert order is not None  # the rules refuse a missing order
        if decision.refund:
            bulk = [order.id] if is_bulk(row) else []
            yield from cancel_and_refund([order.id], bulk, request.at, by=request.caller)
        if decision.refund or is_bulk(row):  # the order as it is now, with its lines
            order = yield from get_order(account_id, request.transaction_id, cipher)
            assert order is not None
        return Cancelled(order, now=decision.refund)

    account_id = request.caller.account_id
    return (yield from keyed(account_id, key, request.at, cancel))


def cancel_and_refund(
    order_ids: list[int], bulk_ids: list[int], now: datetime, by: Caller | None = None
) -> Unit[list[Any]]:
    """Cancels what still waits of each order (locked by the caller; `bulk_ids` the
    bulk ones) and refunds it: an instant order whole; a bulk order's units not
    delivered, each at its line's unit price (the order then COMPLETED if a unit
    was delivered, else CANCELLED). Returns the orders' rows."""
    refunds, partly_delivered = yield from _cancel_waiting_units(bulk_ids)
    cancelled = yield from finish(
        [i for i in order_ids if i not in partly_delivered], OrderStatus.CANCELLED, now, by
    )
    completed = []
    if partly_delivered:
        completed = yield from finish(sorted(partly_delivered), OrderStatus.COMPLETED, now, by)
    at = micros(now)
    finished = [*cancelled, *completed]
    for row in finished:
        if row["kind"] == "INSTANT":
            refunds[row["id"]] = row["unit_price_minor"]
    if bulk_ids:
        yield sql.SET_REFUNDED.many(
            {"id": row["id"], "refunded_minor": refunds[row["id"]]}
            for row in finished
            if row["kind"] == "BULK"
        )
    # Balances are locked in one order by everyone, so refunds cannot deadlock.
    for row in sorted(finished, key=lambda row: (row["account_id"], row["pay_currency"])):
        refund = Money.from_minor(refunds.get(row["id"], 0), row["pay_currency"])
        if refund.minor:
            yield from credit(row["account_id"], refund, at, LedgerKind.REFUND, row["id"])
    return finished


def _cancel_waiting_units(bulk_ids: list[int]) -> Unit[tuple[dict[int, int], set[int]]]:
    """Cancels the bulk orders' units that wait; (refund by order, the orders that had
    a unit delivered)."""
    refunds = dict.fromkeys(bulk_ids, 0)
    if not bulk_ids:
        return refunds, set()
    for line in (yield sql.CANCEL_WAITING_UNITS.rows(order_ids=bulk_ids)):
        refunds[line["order_id"]] += line["refund_minor"]
    partly_delivered = set((yield sql.DELIVERED_ANY.column(order_ids=bulk_ids)))
    return refunds, partly_delivered


def finish(
    order_ids: list[int], status: OrderStatus, now: datetime, by: Caller | None = None
) -> Unit[list[Any]]:
    """PROCESSING -> `status`, with audit rows naming who did it (the fulfiller, or
    the customer's key and request); returns the rows changed."""
    finished = yield sql.FINISH_ORDERS.rows(ids=order_ids, status=status.value, at=micros(now))
    event = (
        AuditEvent.ORDER_COMPLETED
        if status is OrderStatus.COMPLETED
        else AuditEvent.ORDER_CANCELLED
    )
    records = (
        AuditRecord(
            at=now,
            event=event,
            account_id=row["account_id"],
            api_key=None if by is None else by.api_key,
            request_id=None if by is None else by.request_id,
            client_request_id=None if by is None else by.client_request_id,
            transaction_id=row["transaction_id"],
            details={"by": "fulfiller" if by is None else "customer"},
        )
        for row in finished
    )
    yield sql.INSERT_AUDIT.many(audit_params(record) for record in records)
    return list(finished)


# --- idempotency keys --------------------------------------------------------------


def claim_key(account_id: int, key: IdempotencyKey) -> Unit[Remembered | KeyInUse | None]:
    """Holds the key for this transaction and recalls its stored answer; None: the
    key is new, and this transaction will store its answer."""
    where = {"account_id": account_id, "idempotency_key": key.key}
    if not (yield sql.LOCK_KEY.value(**where)):
        return KeyInUse()
    row = yield sql.RECALL_KEY.row(**where)
    return None if row is None else remembered_from_row(row)


def remember(account_id: int, key: IdempotencyKey, record: KeyRecord, now: datetime) -> Unit[None]:
    yield sql.REMEMBER_KEY.run(
        account_id=account_id,
        idempotency_key=key.key,
        fingerprint=key.fingerprint,
        request_id=key.request_id,
        transaction_id=record.transaction_id,
        status=None if record.status is None else record.status.value,
        refusal=record.refusal,
        at=micros(now),
    )


def remember_refusal(
    account_id: int, key: IdempotencyKey, record: KeyRecord, now: datetime
) -> Unit[Remembered | KeyInUse | None]:
    """Stores a refusal found outside a transaction that held the key (PostgreSQL's
    two round trips); the answer stored meanwhile, if another request stored one."""
    held = yield from claim_key(account_id, key)
    if held is None:
        yield from remember(account_id, key, record, now)
    return held


def forget_keys(before: datetime, limit: int) -> Unit[int]:
    """Deletes up to `limit` keys stored before `before`; returns how many."""
    forgotten: int = yield sql.FORGET_KEYS.count(before=micros(before), limit=limit)
    return forgotten


# --- money -------------------------------------------------------------------------


def credit(
    account_id: int, amount: Money, at: int, kind: LedgerKind, order_id: int | None = None
) -> Unit[Money]:
    """Adds to the balance (creating it) with its ledger row; returns the new balance.
    A sum past MAX_BALANCE_MINOR changes nothing and is refused."""
    minor = yield sql.CREDIT.value(
        account_id=account_id,
        currency=amount.currency,
        amount_minor=amount.minor,
        max_minor=MAX_BALANCE_MINOR,
    )
    if minor is None:
        raise DataConflict(
            f"account {account_id}'s {amount.currency} balance would pass the maximum of"
            f" {Money.from_minor(MAX_BALANCE_MINOR, amount.currency)}: nothing changed"
        )
    if amount.minor:
        yield from ledger(account_id, amount, kind, order_id, at)
    return Money.from_minor(minor, amount.currency)


def ledger(
    account_id: int, change: Money, kind: LedgerKind, order_id: int | None, at: int
) -> Unit[None]:
    """The ledger row of a balance change (negative for a debit)."""
    yield sql.INSERT_LEDGER.run(
        account_id=account_id,
        currency=change.currency,
        amount_minor=change.minor,
        kind=kind.value,
        order_id=order_id,
        at=at,
    )


def top_up(account_id: int, amount: Money, now: datetime) -> Unit[Money]:
    yield from _existing_account(account_id)
    return (yield from credit(account_id, amount, micros(now), LedgerKind.TOP_UP))


# --- administration ----------------------------------------------------------------


def create_api_key(
    account_id: int, api_key: str, secret_hash: str, now: datetime, max_active: int
) -> Unit[None]:
    yield from _existing_account(account_id)
    active = yield sql.ACTIVE_KEYS.value(account_id=account_id)
    if active >= max_active:
        raise DataConflict(
            f"account {account_id} has {active} active keys already: disable one first"
        )
    yield from insert_api_key(account_id, api_key, secret_hash, now)


def insert_api_key(account_id: int, api_key: str, secret_hash: str, now: datetime) -> Unit[None]:
    yield sql.INSERT_API_KEY.run(
        api_key=api_key, account_id=account_id, secret_hash=secret_hash, at=micros(now)
    )
    created = AuditRecord(
        at=now, event=AuditEvent.KEY_CREATED, account_id=account_id, api_key=api_key
    )
    yield sql.INSERT_AUDIT.run(**audit_params(created))


def disable_api_key(api_key: str, now: datetime) -> Unit[int]:
    account_id = yield sql.DISABLE_API_KEY.value(api_key=api_key, at=micros(now))
    if account_id is None:
        raise DataConflict("no active API key has that id")
    disabled = AuditRecord(
        at=now, event=AuditEvent.KEY_DISABLED, account_id=account_id, api_key=api_key
    )
    yield sql.INSERT_AUDIT.run(**audit_params(disabled))
    return int(account_id)


def load(
    dataset: Dataset,
    cipher: CodeCipher,
    now: datetime,
    progress: Callable[[int], object] | None = None,
) -> Unit[list[int]]:
    """Adds the dataset; returns the new accounts' ids in the dataset's order."""
    at = micros(now)
    account_ids = []
    for account in dataset.accounts:
        account_id = yield sql.INSERT_ACCOUNT.value(name=account.name, at=at).or_conflict(
            f"an account named {account.name!r} exists already"
        )
        yield from insert_api_key(account_id, account.api_key, account.secret_hash, now)
        for money in account.balances:
            yield from credit(account_id, money, at, LedgerKind.TOP_UP)
        account_ids.append(account_id)
    for product in dataset.products:
        yield sql.UPSERT_PRODUCT.run(**product_params(product))
    yield from add_codes(dataset.codes, cipher, now, progress)
    for rate in dataset.rates:
        yield sql.UPSERT_RATE.run(**rate_params(rate))
    return account_ids


#: Codes sealed and inserted per step of `add_codes` (a step reports progress).
CODES_PER_STEP = 2000


def add_codes(
    codes: Sequence[NewCode],
    cipher: CodeCipher,
    now: datetime,
    progress: Callable[[int], object] | None = None,
) -> Unit[int]:
    """Adds the codes, sealed, telling `progress` how many more each step added; a
    code already in stock would be sold twice, so it refuses the whole list."""
    if not codes:
        return 0
    skus = sorted({code.sku for code in codes})
    known = yield sql.KNOWN_SKUS.column(skus=skus)
    for sku in skus:
        if sku not in known:
            raise DataConflict(f"no product has SKU {sku!r}")
    ids = yield sql.NEW_CODE_IDS.column(count=len(codes))
    at = micros(now)
    for start in range(0, len(codes), CODES_PER_STEP):
        step = zip(
            ids[start : start + CODES_PER_STEP], codes[start : start + CODES_PER_STEP], strict=True
        )
        rows = sorted((_code_params(i, code, cipher, at) for i, code in step), key=_sku)
        for sku, group in groupby(rows, _sku):
            yield sql.INSERT_CODE.many(group).or_conflict(
                f"a code for SKU {sku!r} is already in stock"
            )
        if progress is not None:
            progress(len(rows))
    return len(codes)


def _sku(row: dict[str, Any]) -> str:
    return str(row["sku"])


def _code_params(code_id: int, code: NewCode, cipher: CodeCipher, at: int) -> dict[str, Any]:
    redeem_code, pin_code = cipher.seal_code(code_id, code.redeem_code, code.pin_code)
    return {
        "id": code_id,
        "sku": code.sku,
        "fingerprint": cipher.fingerprint(code.sku, code.redeem_code),
        "redeem_code": redeem_code,
        "pin_code": pin_code,
        "key_id": cipher.active_key_id,
        "at": at,
    }


def reseal_codes(cipher: CodeCipher, limit: int) -> Unit[int]:
    """Re-encrypts up to `limit` codes not sealed with the active data key."""
    active = cipher.active_key_id
    rows = yield sql.CODES_TO_RESEAL.rows(active_key_id=active, limit=limit)
    resealed = []
    for row in rows:
        code = SealedCode.from_row(row)
        opened = code.opened(cipher)
        redeem_code, pin_code = cipher.seal_code(code.id, opened.redeem_code, opened.pin_code)
        resealed.append(
            {"id": code.id, "redeem_code": redeem_code, "pin_code": pin_code, "key_id": active}
        )
    yield sql.RESEAL_CODE.many(resealed)
    return len(rows)


def record_audit(record: AuditRecord) -> Unit[None]:
    yield sql.INSERT_AUDIT.run(**audit_params(record))


def _existing_account(account_id: int) -> Unit[None]:
    if (yield sql.ACCOUNT.value(account_id=account_id)) is None:
        raise DataConflict(f"no account has id {account_id}")
