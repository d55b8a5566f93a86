"""`instant-orders admin`: loading data, adding codes, top-ups and rates, all or nothing."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from server.domain.money import MAX_BALANCE_MINOR, Money
from server.domain.service import InstantOrdersService
from tests.databases import (
    latest_schema_version,
    one,
    query,
    stamp_schema_version,
    stored_schema_version,
)
from tests.helpers import (
    DATASET,
    assert_invariants,
    database_args,
    open_store,
    signing_key,
    snapshot,
    stored_codes,
)
from tests.processes import run_cli


def admin(database: str, arguments: str):
    """Runs `instant-orders admin --database DATABASE ARGUMENTS` (no spaces inside arguments)."""
    return run_cli("admin", *database_args(database), *arguments.split())


def write(tmp_path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content)
    return str(path)


def count(database: str, table: str) -> int:
    return int(one(database, f"SELECT count(*) FROM {table}"))


def load(tmp_path, database: str, document) -> dict[str, Any]:
    result = admin(database, f"load {write(tmp_path, 'd.json', json.dumps(document))}")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_load_creates_accounts_whose_secret_gets_a_token(tmp_path, database):
    output = load(tmp_path, database, DATASET)

    names = [account["name"] for account in output["accounts"]]
    assert names == ["acme", "globex"]
    acme = output["accounts"][0]
    assert acme["apiKey"].startswith("ak_") and acme["apiSecret"].startswith("sk_")
    store = await open_store(database)
    try:
        service = InstantOrdersService(store, signing_key(database), timedelta(minutes=5))
        token = await service.issue_token("client_credentials", acme["apiKey"], acme["apiSecret"])
        assert token.access_token
    finally:
        await store.close()
    stored = query(database, "SELECT secret_hash FROM api_keys")
    assert all(acme["apiSecret"] not in row[0] for row in stored)
    assert count(database, "codes") == 3
    assert_invariants(database)


def test_load_with_an_error_applies_nothing(tmp_path, database):
    document = {**DATASET, "codes": [*DATASET["codes"], {"sku": "UNKNOWN", "redeemCode": "X"}]}

    result = admin(database, f"load {write(tmp_path, 'd.json', json.dumps(document))}")

    assert result.returncode == 1
    assert "UNKNOWN" in result.stderr
    assert "Traceback" not in result.stderr
    for table in ("accounts", "products", "codes", "rates", "ledger"):
        assert count(database, table) == 0


def test_load_refuses_an_existing_account_name(tmp_path, database):
    load(tmp_path, database, DATASET)
    again = write(tmp_path, "again.json", json.dumps({"accounts": [{"name": "acme"}]}))

    result = admin(database, f"load {again}")

    assert result.returncode == 1
    assert "acme" in result.stderr
    assert count(database, "accounts") == 2


def test_load_refuses_unknown_fields_and_bad_amounts(tmp_path, database):
    for document in (
        {"products": [{**DATASET["products"][0], "prize": "1.00"}]},
        {"accounts": [{"name": "x", "balances": {"USD": "1.005"}}]},
        {"accounts": [{"name": "x", "balances": {"USD": 10.5}}]},
        {"rates": [{"pair": "EURUSD", "rate": "1.1"}]},
    ):
        result = admin(database, f"load {write(tmp_path, 'd.json', json.dumps(document))}")
        assert result.returncode == 1, document
        assert result.stderr.strip()
    assert count(database, "accounts") == 0


def test_add_codes_from_csv(tmp_path, database):
    load(tmp_path, database, DATASET)
    csv_file = write(tmp_path, "codes.csv", "redeemCode,pinCode\nNEW-1,0001\nNEW-2,\n")

    result = admin(database, f"add-codes --sku TTR-WI-YWN --file {csv_file}")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"added": 2}
    pins = {code: pin for _, code, pin in stored_codes(database) if code.startswith("NEW-")}
    assert pins == {"NEW-1": "0001", "NEW-2": None}
    again = admin(database, f"add-codes --sku TTR-WI-YWN --file {csv_file}")
    assert again.returncode == 1, "a code loaded twice could be sold twice"


def test_top_up_writes_a_ledger_row(tmp_path, database):
    account_id = load(tmp_path, database, DATASET)["accounts"][0]["accountId"]

    result = admin(database, f"top-up --account {account_id} --currency EUR --amount 25.50")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["balance"] == "25.50"
    assert_invariants(database)
    assert (
        admin(database, f"top-up --account {account_id} --currency EUR --amount -5").returncode == 1
    )
    assert admin(database, "top-up --account 999 --currency EUR --amount 5").returncode == 1


def top_up(database: str, account_id: int, currency: str, amount: str):
    return run_cli(
        "admin", *database_args(database), "top-up", "--account", str(account_id),
        "--currency", currency, "--amount", amount,
    )  # fmt: skip


def assert_refused_in_one_line(result, *words: str) -> None:
    assert result.returncode == 1, result.stdout
    (line,) = result.stderr.strip().splitlines()
    for word in words:
        assert word in line


#: An Arabic-Indic five, an exponent, more digits than the currency has (the
#: rest of the spellings: test_money.py).
NOT_AMOUNTS = ["\u0665", "1e3", "5.000000001"]


def test_top_up_takes_ascii_decimal_amounts_only(tmp_path, database):
    account_id = load(tmp_path, database, DATASET)["accounts"][0]["accountId"]
    before = snapshot(database)

    for amount in NOT_AMOUNTS:
        assert_refused_in_one_line(top_up(database, account_id, "USD", amount), "amount")

    assert snapshot(database) == before


def test_no_top_up_takes_a_balance_past_the_maximum(tmp_path, database):
    """10^15 minor units at most: 9e16 twice no longer overflows SQLite's integer."""
    account_id = load(tmp_path, database, DATASET)["accounts"][0]["accountId"]
    most = str(Money.from_minor(MAX_BALANCE_MINOR, "EUR").amount)  # 10000000000000.00
    assert_refused_in_one_line(top_up(database, account_id, "EUR", "90000000000000000"), most)
    assert top_up(database, account_id, "EUR", most).returncode == 0
    before = snapshot(database)

    for amount in ("0.01", most):
        assert_refused_in_one_line(top_up(database, account_id, "EUR", amount), "maximum", most)

    assert snapshot(database) == before
    eur = "SELECT amount_minor FROM balances WHERE account_id = ? AND currency = 'EUR'"
    assert one(database, eur, (account_id,)) == MAX_BALANCE_MINOR
    assert_invariants(database)


def test_the_schema_refuses_a_balance_past_the_maximum(tmp_path, database):
    load(tmp_path, database, DATASET)
    at_most = "UPDATE balances SET amount_minor = ? WHERE currency = 'USD'"

    query(database, at_most, (MAX_BALANCE_MINOR,))
    with pytest.raises(Exception, match=r"(?i)check constraint"):
        query(database, at_most, (MAX_BALANCE_MINOR + 1,))

    assert one(database, "SELECT max(amount_minor) FROM balances") == MAX_BALANCE_MINOR


def test_set_rate(tmp_path, database):
    load(tmp_path, database, DATASET)

    result = admin(database, "set-rate --pair EUR/USD --rate 1.2000 --as-of 2025-11-01")

    assert result.returncode == 0, result.stderr
    rate = query(database, "SELECT rate, as_of FROM rates WHERE base = 'EUR' AND quote = 'USD'")
    assert rate == [("1.2000", "2025-11-01")]
    assert admin(database, "set-rate --pair EUR/EUR --rate 1").returncode == 1


def test_migrate_brings_a_new_database_up_to_date_and_is_idempotent(database):
    latest = latest_schema_version(database)

    first, again = admin(database, "migrate"), admin(database, "migrate")

    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert json.loads(first.stdout) == {"from": 0, "schemaVersion": latest}
    assert json.loads(again.stdout) == {"from": latest, "schemaVersion": latest}
    assert stored_schema_version(database) == latest


def test_a_database_from_a_newer_version_is_refused_and_left_alone(database):
    newer = latest_schema_version(database) + 1
    assert admin(database, "migrate").returncode == 0
    stamp_schema_version(database, newer)
    before = snapshot(database)

    migrate = admin(database, "migrate")
    server = run_cli("worker", *database_args(database))

    for refused in (migrate, server):
        assert refused.returncode == 1
        assert f"schema version {newer}" in refused.stderr
    assert snapshot(database) == before
    assert stored_schema_version(database) == newer
