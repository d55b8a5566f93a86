"""A stateful model test: Hypothesis drives the real domain and store (each backend,
a fresh database per example) through top-ups, restocks, orders with and without
the duplicate check, cross-currency orders, fulfillment and deadline
cancellations, and after every step compares them with a plain in-memory model
of balances, stock, order states and codes sold."""

from __future__ import annotations

import asyncio
import copy
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from server.domain import admin
from server.domain.errors import ApiError
from server.domain.fulfillment import Fulfiller, InventorySource
from server.domain.limits import DEFAULT_LIMITS, Rate
from server.domain.models import Caller, InstantOrderRequest, OrderFilter
from server.domain.money import Money
from server.domain.ports import NewCode, Store
from server.domain.service import InstantOrdersService
from tests.databases import (
    drop_postgres_schema,
    new_postgres_schema,
    postgres_unreachable,
    query,
)
from tests.helpers import DATASET, assert_fulfillment_consistent, open_store, signing_key

TIMEOUT = timedelta(hours=1)
UNLIMITED = replace(DEFAULT_LIMITS, orders=Rate.parse("0"), reads=Rate.parse("0"))
SKUS = ["8PX-UF-Y5U", "TTR-WI-YWN", "JPY-NT-1000", "ELX-BF-85S"]
PRODUCT_CURRENCY = {"8PX-UF-Y5U": "USD", "TTR-WI-YWN": "EUR", "JPY-NT-1000": "JPY",
                    "ELX-BF-85S": "GBP"}  # fmt: skip
#: The price of each SKU in each currency it can be paid in (EUR/USD 1.1829,
#: rounded up); any other pair is UNSUPPORTED_CURRENCY.
PRICES = {
    ("8PX-UF-Y5U", "USD"): Decimal("9.75"),
    ("TTR-WI-YWN", "EUR"): Decimal("9.70"),
    ("TTR-WI-YWN", "USD"): Decimal("11.48"),
    ("JPY-NT-1000", "JPY"): Decimal("950"),
}
NOT_INSTANT = {"ELX-BF-85S"}
AMOUNTS = {"USD": ["5.00", "20.00", "100.00"], "EUR": ["10.00", "30.00"], "JPY": ["1000", "5000"]}


@dataclass
class ModelOrder:
    transaction_id: str
    sku: str
    currency: str
    price: Decimal
    status: str
    created_at: datetime


class OrdersModel(RuleBasedStateMachine):
    backend = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.workdir = tempfile.TemporaryDirectory()
        if self.backend == "sqlite":
            self.database = str(Path(self.workdir.name) / "model.db")
        else:
            self.database = new_postgres_schema(Path(self.workdir.name))
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        self.store: Store = self.run(open_store(self.database))
        self.service = InstantOrdersService(
            self.store, signing_key(self.database), TIMEOUT, lambda: self.now, UNLIMITED
        )
        # Its monotonic clock runs with the model's time: no step of the wall clock.
        self.fulfiller = Fulfiller(
            self.store,
            InventorySource(self.store),
            TIMEOUT,
            lambda: self.now,
            monotonic=lambda: self.now.timestamp(),
        )
        (acme, _) = self.run(admin.load_dataset(self.store, copy.deepcopy(DATASET), self.now))
        self.caller = Caller(acme.account_id, acme.api_key)
        # Yen for the product without stock, so that orders wait from the start.
        self.run(self.store.top_up(acme.account_id, Money.parse("5000", "JPY"), self.now))
        # The model: what the dataset holds, then every change a rule makes.
        self.balances = {"USD": Decimal("100.00"), "JPY": Decimal("5000")}
        self.stock = {"8PX-UF-Y5U": 2, "TTR-WI-YWN": 1, "JPY-NT-1000": 0, "ELX-BF-85S": 0}
        self.orders: list[ModelOrder] = []
        self.numbers: dict[str, str] = {}  # clientOrderNumber -> its first order
        self.restocked = 0

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()
        if self.backend == "postgresql":
            drop_postgres_schema(self.database)
        self.workdir.cleanup()

    # --- rules ----------------------------------------------------------------------

    @rule(currency=st.sampled_from(sorted(AMOUNTS)), data=st.data())
    def top_up(self, currency: str, data: st.DataObject) -> None:
        amount = data.draw(st.sampled_from(AMOUNTS[currency]))
        self.run(self.store.top_up(self.caller.account_id, Money.parse(amount, currency), self.now))
        self.balances[currency] = self.balances.get(currency, Decimal(0)) + Decimal(amount)

    @rule(sku=st.sampled_from(SKUS[:3]), count=st.integers(1, 3))
    def restock(self, sku: str, count: int) -> None:
        codes = [NewCode(sku, f"R{self.restocked + n}", None) for n in range(count)]
        self.run(self.store.add_codes(codes, self.now))
        self.restocked += count
        self.stock[sku] += count

    @rule(
        sku=st.sampled_from(SKUS),
        pay=st.sampled_from(["", "USD", "EUR", "JPY"]),
        number=st.sampled_from(["", "PO-1", "PO-2"]),
        dup_check=st.booleans(),
    )
    def order(self, sku: str, pay: str, number: str, dup_check: bool) -> None:
        request = InstantOrderRequest(sku, number, dup_check, pay)
        expected = self._expected_refusal(request)
        try:
            placed = self.run(self.service.create_instant_order(self.caller, request))
        except ApiError as error:
            assert error.reason.name == expected, (request, error)
            if expected == "CLIENT_ORDER_NUMBER_DUPLICATE":
                assert error.metadata["transactionId"] == self.numbers[number]
            return
        assert expected is None, (request, expected)
        currency = pay or PRODUCT_CURRENCY[sku]
        price = PRICES[(sku, currency)]
        waiting = any(o.sku == sku and o.status == "PROCESSING" for o in self.orders)
        status = "COMPLETED" if self.stock[sku] and not waiting else "PROCESSING"
        assert (placed.status.value, placed.unit_price.amount) == (status, price)
        self.stock[sku] -= status == "COMPLETED"
        self.balances[currency] -= price
        self.orders.append(
            ModelOrder(placed.transaction_id, sku, currency, price, status, self.now)
        )
        if number:
            self.numbers.setdefault(number, placed.transaction_id)

    @rule(minutes=st.sampled_from([30, 60]))  # sums hit the deadline exactly, and pass it
    def time_passes(self, minutes: int) -> None:
        """Time passes, and the fulfiller runs (as the server's does all along)."""
        self.now += timedelta(minutes=minutes)
        self.fulfill()

    @rule()
    def fulfill(self) -> None:
        changed = self.run(self.fulfiller.run_once())
        expected = 0
        for order in self.orders:  # overdue first: they are refunded, never completed
            if order.status == "PROCESSING" and order.created_at < self.now - TIMEOUT:
                order.status = "CANCELLED"
                self.balances[order.currency] += order.price
                expected += 1
        for order in self.orders:  # then first come, first served
            if order.status == "PROCESSING" and self.stock[order.sku]:
                order.status = "COMPLETED"
                self.stock[order.sku] -= 1
                expected += 1
        assert changed == expected

    def _expected_refusal(self, request: InstantOrderRequest) -> str | None:
        """The reason the rules refuse the request with, in the model; None to place it."""
        if request.dup_check and request.client_order_number in self.numbers:
            return "CLIENT_ORDER_NUMBER_DUPLICATE"
        if request.sku in NOT_INSTANT:
            return "INSTANT_DELIVERY_NOT_SUPPORTED"
        currency = request.pay_with_currency or PRODUCT_CURRENCY[request.sku]
        if currency not in self.balances or (request.sku, currency) not in PRICES:
            return "UNSUPPORTED_CURRENCY"
        if self.balances[currency] < PRICES[(request.sku, currency)]:
            return "INSUFFICIENT_BALANCE"
        return None

    # --- after every step -----------------------------------------------------------

    @invariant()
    def balances_match(self) -> None:
        stored = self.run(self.store.balances(self.caller.account_id))
        assert {money.currency: money.amount for money in stored} == self.balances

    @invariant()
    def orders_match(self) -> None:
        page = self.run(self.store.list_orders(self.caller.account_id, OrderFilter(), 1, 1000))
        stored = {order.transaction_id: order.status.value for order in page.items}
        assert stored == {order.transaction_id: order.status for order in self.orders}
        for order in page.items:
            assert (order.code is not None) == (order.status.value == "COMPLETED")

    @invariant()
    def stock_matches(self) -> None:
        unsold = dict(
            query(
                self.database, "SELECT sku, count(*) FROM codes WHERE order_id IS NULL GROUP BY 1"
            )
        )
        assert {sku: count for sku, count in self.stock.items() if count} == unsold
        assert_fulfillment_consistent(self.database)


def test_the_store_and_domain_behave_as_the_model(backend):
    if backend == "postgresql" and (reason := postgres_unreachable()):
        pytest.skip(reason)
    OrdersModel.backend = backend
    run_state_machine_as_test(
        OrdersModel,
        settings=settings(
            max_examples=30,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,  # no example database in the checkout
        ),
    )
