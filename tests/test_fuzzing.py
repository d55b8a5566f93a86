"""API fuzzing: schemathesis generates requests from our own /openapi.json, valid and
invalid, authenticated and not, against a live `serve` process on each backend, and
checks every answer against the document. Zero failures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import (
    acme_signed_in,
    assert_fulfillment_consistent,
    database_args,
)
from tests.processes import log_of, start_service, stop

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,negative_data_rejection,ignored_auth"
)
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


async def test_schemathesis_finds_nothing(database, tmp_path):
    _, headers = await acme_signed_in(database)
    process, url = await start_service(database_args(database))
    try:
        # The stateful phase (links between operations) is left out: it takes
        # minutes, and test_model.py covers sequences of operations.
        fuzzing = subprocess.run(
            [SCHEMATHESIS, "run", f"{url}/openapi.json", "--checks", CHECKS,
             "--phases", "examples,coverage,fuzzing", "--max-examples", "40", "--seed", "1",
             *(f"--header={name}: {value}" for name, value in headers.items()), "--no-color"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        assert stop(process) == 0
    assert fuzzing.returncode == 0, fuzzing.stdout[-6000:]
    assert "Traceback" not in log_of(process)
    assert_fulfillment_consistent(database)
