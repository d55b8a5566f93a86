"""`make run`: a fresh demo database, the API served on it, and a curl session to try it."""

from __future__ import annotations

import asyncio
import json
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

from server.domain.admin import CreatedAccount, load_dataset
from server.domain.clock import utc_now
from server.runtime import local_host, open_store, serve
from server.settings import Settings

#: Printed before the session, so that tests and scripts can find it.
SESSION_MARKER = "# --- try it: paste these lines into a shell ---"


def run(settings: Settings) -> int:
    for suffix in ("", "-wal", "-shm"):
        Path(settings.database + suffix).unlink(missing_ok=True)
    if not settings.secret_key_file:  # the demo's own key file, beside its database
        Path(settings.key_file).unlink(missing_ok=True)
    document = json.loads(resources.files("server").joinpath("demo_data/dataset.json").read_text())
    asyncio.run(_run(settings, document))
    return 0


async def _run(settings: Settings, document: Any) -> None:
    account = await _load(settings, document)

    def print_session(ports: dict[str, int]) -> None:
        print(curl_session(f"http://{local_host(settings.http_listen)}:{ports['http']}", account))
        print(f"# gRPC: grpcurl -plaintext {local_host(settings.grpc_listen)}:{ports['grpc']} list")
        print("# Stop the server with Ctrl-C.", flush=True)

    await serve(settings, on_ready=print_session)


async def _load(settings: Settings, document: Any) -> CreatedAccount:
    store = await open_store(settings)
    try:
        (account,) = await load_dataset(store, document, utc_now())
    finally:
        await store.close()
    return account


def curl_session(api: str, account: CreatedAccount) -> str:
    """Shell lines that take a token, order a product priced in EUR, poll it and fetch its code."""
    auth = '-H "x-api-key: $KEY" -H "Authorization: Bearer $TOKEN"'
    read = "python3 -c 'import json,sys; print(json.load(sys.stdin)"
    order = '{"clientOrderNumber": "po-1234", "sku": "TTR-WI-YWN", "payWithCurrency": "USD"}'
    keyed = "-H 'Idempotency-Key: po-1234-1'"
    return "\n".join(
        [
            SESSION_MARKER,
            f"API={shlex.quote(api)}",
            f"KEY={shlex.quote(account.api_key)}",
            f"SECRET={shlex.quote(account.api_secret)}",
            "# 1. a bearer token (OAuth 2.0 client credentials)",
            'TOKEN=$(curl -s "$API/v2/auth/token" -d grant_type=client_credentials'
            f' -d client_id="$KEY" -d client_secret="$SECRET" | {read}["access_token"])\')',
            "# 2. an instant order for a EUR product, paid in USD (9.70 EUR x 1.1829 = 11.48 USD),",
            "#    with an Idempotency-Key so that a retry can never order twice",
            f'ORDER=$(curl -s "$API/v2/orders/instant" {auth} {keyed}'
            f" -H 'Content-Type: application/json' -d '{order}')",
            'echo "$ORDER"',
            "#    the same request again, as after a timeout: the first answer, replayed",
            "#    (header Idempotent-Replayed: true, on stderr), and nothing charged twice",
            f'curl -s -D /dev/stderr "$API/v2/orders/instant" {auth} {keyed}'
            f" -H 'Content-Type: application/json' -d '{order}'; echo",
            f'TX=$(echo "$ORDER" | {read}["data"]["transactionId"])\')',
            "# 3. poll the order, as a client does until it is COMPLETED",
            f'curl -s "$API/v2/orders?transactionId=$TX" {auth}; echo',
            "# 4. fetch its code",
            f'curl -s "$API/v2/orders/$TX/codes" {auth}; echo',
            "# 5. the balance left",
            f'curl -s "$API/v2/balances" {auth}; echo',
        ]
    )
