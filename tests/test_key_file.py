"""The key file must go with the database (issue 19, finding 2): a command that opens a
database holding sealed codes refuses to start when the key file is missing or does
not open them, and new keys are made only for a database that holds none. Every key
file whose keys are empty or malformed is refused; a refusal changes nothing."""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.databases import key_file, query, stored_schema_version
from tests.helpers import DATASET, database_args, stored_codes
from tests.processes import COMMANDS_OPENING_THE_DATABASE, run_cli

DATASET_CODES = [code["redeemCode"] for code in DATASET["codes"]]
#: A command that has not refused by then would serve: the test fails instead of waiting.
DEADLINE_SECONDS = 20

#: The commands that open the database, and those that read or write codes.
COMMANDS = {
    **COMMANDS_OPENING_THE_DATABASE,
    "admin add-codes": (["admin"], ["add-codes", "--sku", "8PX-UF-Y5U", "--file", "{csv}"]),
    "admin rotate-code-key": (["admin"], ["rotate-code-key"]),
}


def run(database: str, name: str, tmp_path: Path, keys: str | None = None):
    """Runs the command on the database with the key file `keys` (default: its own)."""
    before, after = COMMANDS[name]
    csv = tmp_path / "codes.csv"
    csv.write_text("redeemCode,pinCode\nSTEAM-0001,0042\n")  # a code in stock already
    options = ["--database", database, "--secret-key-file", keys or key_file(database)]
    arguments = [word.format(csv=csv) for word in after]
    return run_cli(*before, *options, *arguments, timeout=DEADLINE_SECONDS)


def refusal(result) -> str:
    """The one line on stderr of a command that exited 1 without a traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def loaded(tmp_path: Path, database: str) -> None:
    """The dataset (three sealed codes) in the database, its key file made for it."""
    document = tmp_path / "dataset.json"
    document.write_text(json.dumps(DATASET))
    result = run_cli("admin", *database_args(database), "load", str(document))
    assert result.returncode == 0, result.stderr


def stored_state(database: str) -> tuple[Any, ...]:
    """What a command could change: the codes as stored, the schema version."""
    rows = query(database, "SELECT id, sku, fingerprint, key_id, redeem_code FROM codes")
    return sorted((i, s, bytes(f), k, bytes(r)) for i, s, f, k, r in rows), stored_schema_version(
        database
    )


@pytest.mark.parametrize("name", COMMANDS)
def test_a_missing_key_file_on_a_database_with_codes_is_refused(tmp_path, database, name):
    loaded(tmp_path, database)
    keys = Path(key_file(database))
    kept = keys.rename(tmp_path / "kept.key")  # the backup that forgot it
    before = stored_state(database)

    line = refusal(run(database, name, tmp_path))

    assert str(keys) in line and "missing" in line
    assert not keys.exists(), "no new key file was made"
    assert stored_state(database) == before
    kept.rename(keys)
    assert [code for _, code, _ in stored_codes(database)] == DATASET_CODES


def another_database_s(keys: dict[str, Any]) -> dict[str, Any]:
    fresh = base64.b64encode(secrets.token_bytes(32)).decode()
    return {**keys, "fingerprintKey": fresh, "codeKeys": {"1": fresh}}


def without_data_key_1(keys: dict[str, Any]) -> dict[str, Any]:
    return {**keys, "codeKeys": {"2": keys["codeKeys"]["1"]}, "activeCodeKey": 2}


def another_fingerprint_key(keys: dict[str, Any]) -> dict[str, Any]:
    return {**keys, "fingerprintKey": base64.b64encode(secrets.token_bytes(32)).decode()}


WRONG: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "another database's": (another_database_s, "does not open the database's codes"),
    "without data key 1": (without_data_key_1, "has no data key 1"),
    "another fingerprint key": (another_fingerprint_key, "another fingerprint key"),
}


@pytest.mark.parametrize("wrong", WRONG)
@pytest.mark.parametrize("name", ["server", "admin add-codes"])
def test_a_key_file_that_does_not_open_the_codes_is_refused(tmp_path, database, wrong, name):
    loaded(tmp_path, database)
    change, reason = WRONG[wrong]
    keys = tmp_path / "wrong.key"
    keys.write_text(json.dumps(change(json.loads(Path(key_file(database)).read_text()))))
    keys.chmod(0o600)
    written, before = keys.read_bytes(), stored_state(database)

    line = refusal(run(database, name, tmp_path, keys=str(keys)))

    assert str(keys) in line and reason in line
    assert keys.read_bytes() == written
    assert stored_state(database) == before


_KEY = base64.b64encode(bytes(32)).decode()
_GOOD = {"tokenSigningKey": _KEY, "fingerprintKey": _KEY, "codeKeys": {"1": _KEY},
         "activeCodeKey": 1}  # fmt: skip
MALFORMED = {
    "empty file": "",
    "not JSON": "tokenSigningKey=abc",
    "a JSON list": "[]",
    "no keys": "{}",
    "an empty signing key": json.dumps({**_GOOD, "tokenSigningKey": ""}),
    "an empty data key": json.dumps({**_GOOD, "codeKeys": {"1": ""}}),
    "no data key": json.dumps({**_GOOD, "codeKeys": {}}),
    "a short fingerprint key": json.dumps({**_GOOD, "fingerprintKey": _KEY[:20]}),
    "a key not in base64": json.dumps({**_GOOD, "codeKeys": {"1": "*" * 44}}),
    "an active key it lacks": json.dumps({**_GOOD, "activeCodeKey": 2}),
}


@pytest.mark.parametrize("malformed", MALFORMED)
def test_a_key_file_with_empty_or_malformed_keys_is_refused(tmp_path, database, malformed):
    keys = tmp_path / "malformed.key"
    keys.write_text(MALFORMED[malformed])
    keys.chmod(0o600)

    line = refusal(run(database, "admin migrate", tmp_path, keys=str(keys)))

    assert str(keys) in line
    assert keys.read_text() == MALFORMED[malformed], "the file is left as it was"


def test_a_new_database_without_a_key_file_gets_new_keys_and_works(tmp_path, database):
    keys = Path(key_file(database))
    assert not keys.exists()

    loaded(tmp_path, database)  # a new database: its keys are made

    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600
    assert run(database, "admin rotate-code-key", tmp_path).returncode == 0
    refused = run(database, "admin add-codes", tmp_path)  # its fingerprint is known
    assert refused.returncode == 1 and "already in stock" in refused.stderr
    assert [code for _, code, _ in stored_codes(database)] == DATASET_CODES
