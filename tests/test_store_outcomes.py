"""What a store reports when its writes find the facts changed, the same on both
backends: the domain decides, the store only reports."""

from __future__ import annotations

from dataclasses import replace

import pytest

from server.domain.clock import utc_now
from server.domain.errors import ApiError
from server.domain.failures import DataConflict
from server.domain.models import Caller, InstantOrderRequest
from server.domain.money import Money
from server.domain.orders import (
    BalanceSpent,
    DuplicateOf,
    NewOrder,
    OrderFacts,
    OrderPlan,
    Placed,
    decide_instant_order,
    placed_order,
)
from server.domain.ports import NewCode
from server.domain.service import new_transaction_id
from tests.api import Account
from tests.databases import one
from tests.helpers import assert_invariants, snapshot

STEAM = "8PX-UF-Y5U"  # 9.75 USD; acme holds 100.00 USD


def new_order(account: Account, request: InstantOrderRequest) -> NewOrder:
    caller = Caller(account.account_id, account.api_key)
    return NewOrder(caller, request, new_transaction_id(), utc_now())


def lying(price: str):
    """Rules that approve any order at `price`, whatever the facts say: what the
    writes see when the facts changed after they were read."""

    def decide(facts: OrderFacts) -> OrderPlan:
        assert facts.product is not None
        money = Money.parse(price, "USD")
        return OrderPlan(unit_price=money, unit_price_original=facts.product.price, fx=None)

    return decide


async def test_a_debit_the_balance_cannot_cover_is_reported_and_changes_nothing(
    store, accounts, database
):
    before = snapshot(database)
    request = InstantOrderRequest(STEAM, client_order_number="po-overdraw")

    outcome = await store.place_instant_order(new_order(accounts["acme"], request), lying("100.01"))

    assert outcome == BalanceSpent(Money.parse("100.01", "USD"))
    assert snapshot(database) == before
    with pytest.raises(ApiError) as refused:
        placed_order(request, outcome)
    assert refused.value.reason.name == "INSUFFICIENT_BALANCE"
    # The number was not kept either: an order may take it now.
    again = await store.place_instant_order(new_order(accounts["acme"], request), lying("9.75"))
    assert isinstance(again, Placed)
    assert_invariants(database)


async def test_a_number_claimed_since_the_facts_were_read_is_reported_with_its_holder(
    store, accounts, database, service
):
    acme = accounts["acme"]
    caller = await service.authenticate(acme.api_key, f"Bearer {acme.token}", "")
    request = InstantOrderRequest(STEAM, client_order_number="po-race", dup_check=True)
    first = await service.create_instant_order(caller, request)
    before = snapshot(database)

    def blind(facts: OrderFacts):  # the facts were read before the first order
        return decide_instant_order(request, replace(facts, number_holder=None))

    outcome = await store.place_instant_order(new_order(acme, request), blind)

    assert outcome == DuplicateOf(first.transaction_id)
    assert snapshot(database) == before


async def test_a_code_already_in_stock_is_refused_naming_its_sku(store, accounts, database):
    before = snapshot(database), one(database, "SELECT count(*) FROM codes")
    with pytest.raises(DataConflict, match=f"a code for SKU '{STEAM}' is already in stock"):
        await store.add_codes([NewCode(STEAM, "STEAM-0001", None)], utc_now())
    with pytest.raises(DataConflict, match=f"a code for SKU '{STEAM}' is already in stock"):
        await store.add_codes(
            [NewCode(STEAM, "NEW-1", None), NewCode(STEAM, "NEW-1", None)], utc_now()
        )
    assert (snapshot(database), one(database, "SELECT count(*) FROM codes")) == before
