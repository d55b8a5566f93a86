"""Secrets and codes at rest, key rotation and disabling, and the audit trail."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
import uuid
from pathlib import Path

import grpc
import psycopg
import pytest
from cryptography.exceptions import InvalidTag

from server.domain.clock import utc_now
from server.domain.ports import NewCode
from server.keys import CodeCipher
from server.store.schema import compiled_step
from server.store.sql import Dialect
from tests.api import ROUTES, error_reason
from tests.databases import key_file, query
from tests.helpers import database_args, open_store, stored_codes
from tests.processes import run_cli

ORDER = "CreateInstantOrder"
CODE, PIN = "STEAM-ZQX-SECRET-93", "PIN-4471-QW"


def raw_bytes(database: str) -> bytes:
    """The database file and its write-ahead log, as a thief would copy them."""
    return b"".join(
        Path(database + suffix).read_bytes()
        for suffix in ("", "-wal")
        if Path(database + suffix).exists()
    )


def admin(database: str, *args: str):
    return run_cli("admin", *database_args(database), *args)


@pytest.mark.sqlite_only  # a thief of PostgreSQL's files is the same case, not tested
async def test_the_database_file_holds_no_code_pin_secret_or_key(api, accounts, store, database):
    await store.add_codes([NewCode("8PX-UF-Y5U", CODE, PIN)], utc_now())
    acme = accounts["acme"]
    for _ in range(3):  # sells both dataset codes and then ours
        order = (await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, acme)).expect_ok()
    codes = (await api.call("GetCodes", {"transactionId": order["transactionId"]}, acme)).data
    assert (codes[0]["codes"][0]["redeemCode"], codes[0]["codes"][0]["pinCode"]) == (CODE, PIN)

    stolen = raw_bytes(database)
    keys = json.loads(Path(key_file(database)).read_text())
    for secret in (CODE, PIN, "STEAM-0001", acme.api_secret, accounts["globex"].api_secret):
        assert secret.encode() not in stolen, secret
    for key in (keys["tokenSigningKey"], keys["codeKeys"]["1"]):
        assert base64.b64decode(key) not in stolen
    assert stat.S_IMODE(os.stat(key_file(database)).st_mode) == 0o600


def test_a_sealed_code_moved_to_another_row_does_not_open(tmp_path):
    cipher = CodeCipher(tmp_path / "keys")
    sealed = cipher.seal(7, "redeemCode", CODE)
    assert cipher.open(7, "redeemCode", cipher.active_key_id, sealed) == CODE
    for code_id, field in ((8, "redeemCode"), (7, "pinCode")):
        with pytest.raises(InvalidTag):
            cipher.open(code_id, field, cipher.active_key_id, sealed)


async def test_swapped_ciphertexts_are_an_internal_error_not_a_leak(api, accounts, database):
    acme = accounts["acme"]
    order = (await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, acme)).expect_ok()
    # An attacker with write access to the database.
    (first, second) = query(database, "SELECT id, redeem_code FROM codes ORDER BY id LIMIT 2")
    query(database, "UPDATE codes SET redeem_code = ? WHERE id = ?", (second[1], first[0]))

    reply = await api.call("GetCodes", {"transactionId": order["transactionId"]}, acme)
    error = reply.expect_error("INTERNAL", 500)
    assert "STEAM" not in json.dumps(error)


async def test_rotating_the_code_key_reencrypts_every_code(api, accounts, database, tmp_path):
    acme = accounts["acme"]
    order = (await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, acme)).expect_ok()
    before = stored_codes(database)

    result = admin(database, "rotate-code-key")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"activeCodeKey": 2, "reencrypted": 3}
    assert query(database, "SELECT DISTINCT key_id FROM codes") == [(2,)]
    assert stored_codes(database) == before
    # The running service (which loaded key 1 only) opens values sealed under key 2.
    codes = (await api.call("GetCodes", {"transactionId": order["transactionId"]}, acme)).data
    assert codes[0]["codes"][0]["redeemCode"] == "STEAM-0001"


async def test_a_disabled_key_is_refused_at_once_and_cannot_get_tokens(api, accounts, database):
    acme = accounts["acme"]
    assert (await api.call("GetBalances", {}, acme)).ok

    result = admin(database, "disable-key", "--key", acme.api_key)

    assert result.returncode == 0, result.stderr
    (await api.call("GetBalances", {}, acme)).expect_error("UNAUTHENTICATED", 401)
    token = await api.call(
        "IssueToken",
        {"grant_type": "client_credentials", "client_id": acme.api_key,
         "client_secret": acme.api_secret},
    )  # fmt: skip
    token.expect_error("invalid_client", 401)
    assert admin(database, "disable-key", "--key", acme.api_key).returncode == 1


async def test_an_account_rotates_keys_with_two_active_at_most(api, accounts, database, service):
    acme = accounts["acme"]
    created = admin(database, "create-key", "--account", str(acme.account_id))
    assert created.returncode == 0, created.stderr
    new = json.loads(created.stdout)
    refused = admin(database, "create-key", "--account", str(acme.account_id))
    assert refused.returncode == 1
    assert "2 active keys" in refused.stderr

    token = await service.issue_token("client_credentials", new["apiKey"], new["apiSecret"])
    acme.api_key, acme.token = new["apiKey"], token.access_token
    assert (await api.call("GetBalances", {}, acme)).ok  # both keys work meanwhile
    assert admin(database, "disable-key", "--key", accounts["globex"].api_key).returncode == 0


async def test_the_audit_trail_records_who_did_what_and_is_append_only(
    http, accounts, store, database
):
    acme = accounts["acme"]
    headers = {**acme.headers(), "X-Request-Id": "audit-req-1"}
    response = await http.post("/v2/orders/instant", json={"sku": "8PX-UF-Y5U"}, headers=headers)
    tx = (await response.json())["data"]["transactionId"]
    headers["X-Request-Id"] = "audit-req-2"
    await http.get(f"/v2/orders/{tx}/codes", headers=headers)
    admin(database, "disable-key", "--key", acme.api_key)

    result = admin(database, "audit", "--account", str(acme.account_id))

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    events = [(line["event"], line["clientRequestId"], line["transactionId"]) for line in lines]
    assert events == [
        ("KEY_CREATED", None, None),
        ("ORDER_CREATED", "audit-req-1", tx),
        ("ORDER_COMPLETED", "audit-req-1", tx),
        ("CODES_REVEALED", "audit-req-2", tx),
        ("KEY_DISABLED", None, None),
    ]
    # Ours beside the client's: one per request, made by the server.
    ours = [line["requestId"] for line in lines[1:4]]
    assert ours[0] == ours[1] != ours[2] and all(uuid.UUID(id_) for id_ in ours)
    assert all(line["apiKey"] == acme.api_key for line in lines)
    assert "STEAM" not in result.stdout  # the trail names orders, never codes
    later = admin(database, "audit", "--account", str(acme.account_id), "--since", "2999-01-01")
    assert later.stdout == ""
    with pytest.raises((sqlite3.IntegrityError, psycopg.Error), match="append-only"):
        query(database, "DELETE FROM audit")


async def test_a_schema_2_database_has_its_codes_sealed_on_open(tmp_path):
    """Codes stored in the clear by an older version are encrypted by the migration, and
    the clear text does not linger in the file's free pages."""
    database = str(tmp_path / "old.db")
    with sqlite3.connect(database) as db:
        for version in (1, 2):
            db.executescript(compiled_step(version, Dialect.SQLITE))
        db.execute("INSERT INTO products VALUES ('SKU-1', 'n', 'b', 'USD', 100, 100, 1, '{}')")
        db.execute(
            "INSERT INTO codes (sku, redeem_code, pin_code, added_at_us) VALUES ('SKU-1', ?, ?, 0)",
            (CODE, PIN),
        )
        db.execute("PRAGMA user_version = 2")
    os.chmod(database, 0o600)  # as the upgrade notes say (a database others may read is refused)

    store = await open_store(database)
    await store.close()

    assert stored_codes(database) == [(None, CODE, PIN)]
    assert CODE.encode() not in raw_bytes(database)
    assert PIN.encode() not in raw_bytes(database)


TRANSACTION_ROUTES = [rpc for rpc, route in ROUTES.items() if "transactionId" in route.path_fields]


@pytest.mark.parametrize("rpc", TRANSACTION_ROUTES)
async def test_another_accounts_order_is_answered_exactly_like_a_missing_one(api, accounts, rpc):
    """Every route and RPC taking a transactionId (order, codes, events)."""
    acme, globex = accounts["acme"], accounts["globex"]
    order = (await api.call(ORDER, {"sku": "8PX-UF-Y5U"}, acme)).expect_ok()
    theirs, missing = order["transactionId"], "f" * 32
    if api.transport == "grpc" and ROUTES[rpc].server_streaming:
        details = [await first_stream_error(api, rpc, tx, globex) for tx in (theirs, missing)]
        assert details[0] == details[1] == (grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")
        return

    answers = []
    for transaction_id in (theirs, missing):
        reply = await api.call(rpc, {"transactionId": transaction_id}, globex)
        error = reply.expect_error("ORDER_NOT_FOUND", 404)
        assert error.pop("transactionId") == transaction_id
        error.pop("requestId", None)
        answers.append((reply.status, error["message"].replace(transaction_id, "ID"), error))
    assert answers[0][:2] == answers[1][:2]
    assert answers[0][2].keys() == answers[1][2].keys()

    listed = (await api.call("ListOrders", {"transactionId": theirs}, globex)).expect_ok()
    assert listed["items"] == []


async def first_stream_error(api, rpc: str, transaction_id: str, account) -> tuple[object, str]:
    route = ROUTES[rpc]
    call = api.channel.unary_stream(
        route.rpc_path,
        request_serializer=route.request_type.SerializeToString,
        response_deserializer=route.response_type.FromString,
    )(
        route.request_type(transaction_id=transaction_id),
        metadata=[(key.lower(), value) for key, value in account.headers().items()],
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    return raised.value.code(), error_reason(raised.value)


def test_a_key_file_readable_by_others_is_refused(tmp_path):
    database = str(tmp_path / "o.db")
    assert admin(database, "audit", "--account", "1").returncode == 0  # creates the key file
    os.chmod(key_file(database), 0o644)

    result = admin(database, "audit", "--account", "1")

    assert result.returncode == 1
    assert "readable by others" in result.stderr
    assert "Traceback" not in result.stderr
