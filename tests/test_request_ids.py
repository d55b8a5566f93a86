"""One rule for a client's request id, in the gateway and in the gRPC server alike."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from server.domain.clock import utc_now
from server.domain.models import AuditEvent, AuditRecord
from server.domain.requests import request_id_from

KEPT = ["po-1234/attempt-2", "r" * 128]
REPLACED = ["r" * 129, "ünïcode", "tab\there", ""]


@pytest.mark.parametrize("given", KEPT)
def test_a_short_printable_ascii_id_is_kept(given):
    assert request_id_from([given]) == given


@pytest.mark.parametrize("given", [*REPLACED, "twice"])
def test_any_other_id_is_replaced_by_a_new_one(given):
    values = [given, given] if given == "twice" else [given]
    assert uuid.UUID(request_id_from(values))


@pytest.mark.parametrize("given", ["po-1234/attempt-2", "r" * 129, "tab\there"])
async def test_the_audit_records_our_request_id_and_the_clients_beside_it(
    api, accounts, store, given
):
    """The request id is the server's own; what the client sent is kept beside it,
    as given when it is short printable ASCII (through the gateway, a replaced one
    is the id the gateway answered with)."""
    acme = accounts["acme"]
    if api.transport == "grpc" and not given.isprintable():
        pytest.skip("gRPC metadata values are printable ASCII: the channel refuses a tab")
    answered = await api.call("CreateInstantOrder", {"sku": "8PX-UF-Y5U"}, acme, request_id=given)
    assert answered.ok
    created, completed = await order_audit(store, acme)
    assert uuid.UUID(created.request_id or "") and created.request_id != given
    # One request, one pair of ids; the details name the unit, not orders.id.
    assert (completed.request_id, completed.client_request_id) == (
        created.request_id,
        created.client_request_id,
    )
    assert completed.details == {"stockId": "1"}
    if given in KEPT:
        assert created.client_request_id == given
    elif api.transport == "rest":
        assert created.client_request_id == answered.request_id != given
    else:
        assert created.client_request_id is None


async def test_two_accounts_sending_the_same_request_id_get_distinct_ids_of_ours(
    api, accounts, store
):
    for name in ("acme", "globex"):
        placed = await api.call(
            "CreateInstantOrder", {"sku": "8PX-UF-Y5U"}, accounts[name], request_id="same-id"
        )
        assert placed.ok
    (acme, _), (globex, _) = [await order_audit(store, accounts[n]) for n in ("acme", "globex")]

    assert acme.client_request_id == globex.client_request_id == "same-id"
    assert acme.request_id != globex.request_id
    assert uuid.UUID(acme.request_id or "") and uuid.UUID(globex.request_id or "")


async def order_audit(store, account) -> tuple[AuditRecord, AuditRecord]:
    """The ORDER_CREATED and ORDER_COMPLETED rows of the account's one order."""
    trail = await store.audit_trail(account.account_id, since=utc_now() - timedelta(hours=1))
    (created,) = [r for r in trail if r.event is AuditEvent.ORDER_CREATED]
    (completed,) = [r for r in trail if r.event is AuditEvent.ORDER_COMPLETED]
    return created, completed
