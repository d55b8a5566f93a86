"""The logs of a whole session: JSON lines with a request id, and no secret in any of them."""

from __future__ import annotations

import json

import aiohttp

from server.logs import mask
from server.store.backends import shown
from tests.helpers import DATASET, sold_codes
from tests.processes import eventually, healthy, log_of, serve_loaded, stop

PIN = "PIN-8842-LOGS"


async def test_a_full_session_logs_json_lines_without_any_secret(tmp_path):
    dataset = {**DATASET, "codes": [{"sku": "8PX-UF-Y5U", "redeemCode": "LOGS-CODE-1",
                                     "pinCode": PIN}]}  # fmt: skip
    process, api, acme = serve_loaded(tmp_path, dataset, env={"INSTANT_ORDERS_LOG_LEVEL": "DEBUG"})
    secrets = [acme["apiSecret"], "LOGS-CODE-1", PIN]
    try:
        await eventually(lambda: healthy(f"{api}/healthz"))
        async with aiohttp.ClientSession(api) as http:
            form = {"grant_type": "client_credentials", "client_id": acme["apiKey"]}
            token = await (await http.post("/v2/auth/token", data={
                **form, "client_secret": acme["apiSecret"]})).json()  # fmt: skip
            bearer = token["access_token"]
            secrets.append(bearer)
            headers = {"x-api-key": acme["apiKey"], "Authorization": f"Bearer {bearer}"}
            await http.post("/v2/auth/token", data={**form, "client_secret": "sk_" + "w" * 40})
            order = await (
                await http.post("/v2/orders/instant", json={"sku": "8PX-UF-Y5U"}, headers=headers)
            ).json()
            tx = order["data"]["transactionId"]
            codes = await (await http.get(f"/v2/orders/{tx}/codes", headers=headers)).json()
            assert codes["data"][0]["codes"][0]["pinCode"] == PIN
            await (await http.get(f"/v2/orders/{tx}/events", headers=headers)).read()
            await http.get("/v2/balances", headers={**headers, "x-api-key": "ak_other"})
            await http.post("/v2/orders/instant", data=b"{not json", headers=headers)
    finally:
        assert stop(process) == 0
    log = log_of(process)

    lines = [json.loads(line) for line in log.splitlines()]
    assert lines, "nothing was logged"
    assert all({"time", "level", "logger", "requestId", "message"} <= set(line) for line in lines)
    assert any(line["requestId"] != "-" for line in lines)
    assert sold_codes(str(tmp_path / "orders.db"))[tx] == "LOGS-CODE-1"
    for secret in secrets:
        assert secret not in log


def test_anything_shaped_like_a_secret_or_token_is_masked():
    line = "header Authorization: Bearer abc.def and sk_" + "A" * 30 + " eyJhbGci.eyJzdWIi.c2ln"
    assert mask(line) == "header Authorization: [redacted] and [redacted] [redacted]"


def test_a_database_url_is_shown_without_its_password():
    url = "postgresql://orders:s3cr%40t@db.internal:5432/orders?search_path=live"
    assert shown(url) == "postgresql://orders:***@db.internal:5432/orders?search_path=live"
    assert shown("postgresql://127.0.0.1/test") == "postgresql://127.0.0.1/test"
    assert shown("./instant-orders.db") == "./instant-orders.db"
