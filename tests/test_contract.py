"""Live responses against the reference's OpenAPI transcription and against our /openapi.json."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS30Validator, validate
from openapi_spec_validator import validate as validate_spec

from tests.contract import vendor


def inline_refs(node: Any, document: dict[str, Any]) -> Any:
    """The schema with every local $ref replaced by what it points at."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return inline_refs(target, document)
        return {key: inline_refs(value, document) for key, value in node.items()}
    if isinstance(node, list):
        return [inline_refs(item, document) for item in node]
    return node


def response_schema(document: dict[str, Any], path: str, method: str, status: int) -> Any:
    content = document["paths"][path][method]["responses"][str(status)]["content"]
    if "text/event-stream" in content:  # one event's data
        return inline_refs(content["text/event-stream"]["x-event-data"], document)
    return inline_refs(content["application/json"]["schema"], document)


def event_data(text: str) -> list[Any]:
    """The JSON data of each event of a text/event-stream body."""
    return [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """The vendor's API as this project keeps it (tests/contract/vendor-api-v2.json)."""
    return vendor.load()


def test_the_kept_contract_is_derived_from_the_reference():
    """The file the contract tests read is what the reference says today, when the
    reference lies beside this checkout (a lone clone tests against the file alone)."""
    source = Path(os.environ.get("INSTANT_ORDERS_REFERENCE", vendor.REFERENCE))
    if not source.exists():
        pytest.skip(f"no reference at {source}: the kept contract is used as it is")
    derived = vendor.derive(yaml.safe_load(source.read_text()))
    assert json.loads(vendor.CONTRACT.read_text()) == derived, (
        "tests/contract/vendor-api-v2.json is stale: python -m tests.contract.vendor"
    )


async def exercise_every_route(http, accounts) -> list[tuple[str, str, int, Any]]:
    """(path template, method, status, body) for a success of every route and some errors."""
    acme = accounts["acme"]
    headers = acme.headers()
    seen = []

    async def record(method: str, template: str, url: str, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", headers)
        response = await http.request(method, url, **kwargs)
        body = await response.json()
        seen.append((template, method.lower(), response.status, body))
        return body

    order = await record(
        "POST", "/v2/orders/instant", "/v2/orders/instant",
        json={"sku": "TTR-WI-YWN", "payWithCurrency": "USD", "clientOrderNumber": "po-1234"},
    )  # fmt: skip
    await record("POST", "/v2/orders/instant", "/v2/orders/instant", json={"sku": "8PX-UF-Y5U"})
    pending = await record(
        "POST", "/v2/orders/instant", "/v2/orders/instant",
        json={"sku": "TTR-WI-YWN", "payWithCurrency": "USD"},
    )  # fmt: skip
    assert pending["data"]["status"] == "PROCESSING"
    tx = order["data"]["transactionId"]
    await record("GET", "/v2/orders", "/v2/orders")
    await record("GET", "/v2/orders", f"/v2/orders?transactionId={tx}")
    await record("GET", "/v2/orders/{transactionId}", f"/v2/orders/{tx}")
    await record("GET", "/v2/orders/{transactionId}/codes", f"/v2/orders/{tx}/codes")
    pending_tx = pending["data"]["transactionId"]
    await record("GET", "/v2/orders/{transactionId}/codes", f"/v2/orders/{pending_tx}/codes")
    events = await http.get(f"/v2/orders/{tx}/events", headers=headers)  # a final order: one event
    assert events.content_type == "text/event-stream"
    for data in event_data(await events.text()):
        seen.append(("/v2/orders/{transactionId}/events", "get", events.status, data))
    bulk = await record(
        "POST", "/v2/orders", "/v2/orders",
        json={"products": [{"sku": "TTR-WI-YWN", "quantity": 2}], "payWithCurrency": "USD",
              "clientOrderNumber": "po-bulk"},
    )  # fmt: skip
    bulk_tx = bulk["data"]["transactionId"]
    await record("GET", "/v2/orders/{transactionId}", f"/v2/orders/{bulk_tx}")
    await record("GET", "/v2/orders/{transactionId}/codes", f"/v2/orders/{bulk_tx}/codes")
    await record("GET", "/v2/balances", "/v2/balances")
    await record("GET", "/v2/products", "/v2/products")
    await record("GET", "/v2/exchange-rates", "/v2/exchange-rates")
    await record(
        "POST", "/v2/auth/token", "/v2/auth/token",
        data={"grant_type": "client_credentials", "client_id": acme.api_key,
              "client_secret": acme.api_secret},
    )  # fmt: skip
    cancel = "/v2/orders/{transactionId}/cancel"
    await record("POST", cancel, f"/v2/orders/{pending_tx}/cancel", json={})
    # and errors
    await record("POST", cancel, f"/v2/orders/{tx}/cancel")  # COMPLETED: 409
    keyed = {"Idempotency-Key": "contract-1"}
    await record("POST", "/v2/orders/instant", "/v2/orders/instant",
                 json={"sku": "NOPE"}, headers={**headers, **keyed})  # fmt: skip
    await record(
        "POST",
        "/v2/orders/instant",
        "/v2/orders/instant",
        json={"sku": "8PX-UF-Y5U"},
        headers={**headers, **keyed},
    )  # 422 mismatch
    await record("POST", "/v2/orders/instant", "/v2/orders/instant", json={"sku": "TTR-WI-YWN"})
    await record("POST", "/v2/orders/instant", "/v2/orders/instant", json={"sku": "NOPE"})
    await record("GET", "/v2/orders/{transactionId}", "/v2/orders/missing")
    await record("GET", "/v2/products", "/v2/products?limit=0&page=-1")
    return seen


async def test_shared_routes_match_the_reference(http, accounts, reference):
    checked = 0
    for template, method, status, body in await exercise_every_route(http, accounts):
        if status != 200 or template not in reference["paths"]:
            continue
        if method not in reference["paths"][template]:
            continue
        schema = response_schema(reference, template, method, 200)
        validate(body, schema, cls=OAS30Validator)
        checked += 1
    assert checked >= 10


async def test_openapi_document_is_valid_and_describes_live_responses(http, accounts):
    document = await (await http.get("/openapi.json")).json()
    validate_spec(copy.deepcopy(document))

    exercised = set()
    for template, method, status, body in await exercise_every_route(http, accounts):
        validate(body, response_schema(document, template, method, status), cls=OAS30Validator)
        exercised.add((template, method))

    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == exercised


async def test_openapi_documents_every_status_the_api_answers(http):
    document = await (await http.get("/openapi.json")).json()
    for item in document["paths"].values():
        for operation in item.values():
            assert {"200", "400", "401", "404", "409", "413", "422", "429", "503"} <= set(
                operation["responses"]
            )


async def test_openapi_marks_the_required_sku(http):
    document = await (await http.get("/openapi.json")).json()
    body = document["paths"]["/v2/orders/instant"]["post"]["requestBody"]
    schema = inline_refs(body["content"]["application/json"]["schema"], document)
    assert schema["required"] == ["sku"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {
        "clientOrderNumber", "enableClientOrderNumberDupCheck", "sku", "payWithCurrency",
    }  # fmt: skip
    assert all(re.fullmatch(r"/v2/[a-z/{}A-Z-]+", path) for path in document["paths"])


async def test_openapi_documents_the_idempotency_key_where_it_is_taken(http):
    document = await (await http.get("/openapi.json")).json()
    keyed = {
        (path, method)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if any(p["in"] == "header" and p["name"] == "Idempotency-Key"
               for p in operation["parameters"])
    }  # fmt: skip
    assert keyed == {
        ("/v2/orders/instant", "post"),
        ("/v2/orders", "post"),
        ("/v2/orders/{transactionId}/cancel", "post"),
    }
    body = document["components"]["schemas"]["CreateInstantOrderRequest"]
    assert "requestId" not in body["properties"]  # the header, not the body, carries it
