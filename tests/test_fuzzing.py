"""API fuzzing: schemathesis generates requests from our own /openapi.json, valid and
invalid, authenticated and not, against a live `serve` process on each backend, and
checks every answer against the document. Zero failures."""

from __future__ import annotations

import copy
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from server.domain import admin
from server.domain.service import InstantOrdersService, utc_now
from tests.conftest import DATASET
from tests.helpers import assert_fulfillment_consistent, database_args, open_store, signing_key
from tests.processes import log_of, start_service, stop

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,negative_data_rejection,ignored_auth"
)
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


async def test_schemathesis_finds_nothing(database, tmp_path):
    store = await open_store(database)
    try:
        (acme, _) = await admin.load_dataset(store, copy.deepcopy(DATASET), utc_now())
        tokens = InstantOrdersService(store, signing_key(database), timedelta(hours=1))
        token = await tokens.issue_token("client_credentials", acme.api_key, acme.api_secret)
    finally:
        await store.close()
    process, url = await start_service(database_args(database))
    try:
        # The stateful phase (links between operations) is left out: it takes
        # minutes, and test_model.py covers sequences of operations.
        fuzzing = subprocess.run(
            [SCHEMATHESIS, "run", f"{url}/openapi.json", "--checks", CHECKS,
             "--phases", "examples,coverage,fuzzing", "--max-examples", "40", "--seed", "1",
             "--header", f"x-api-key: {acme.api_key}",
             "--header", f"Authorization: Bearer {token.access_token}", "--no-color"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        assert stop(process) == 0
    assert fuzzing.returncode == 0, fuzzing.stdout[-6000:]
    assert "Traceback" not in log_of(process)
    assert_fulfillment_consistent(database)
