"""The order of checks over REST (issue 19, finding 7): authentication comes before
the body, so an unauthenticated request is 401 whatever it carries; a body in a
media type the route does not take is 415. The gateway asks the server about
credentials (CredentialsService.VerifyCredentials) only when it refuses a
request itself: the usual path gains no call."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import empty_pb2

from gateway.openapi import openapi_document
from gateway.routes import load_routes
from server.domain.limits import Limits, Rate
from tests.api import ROUTES, error_reason
from tests.helpers import snapshot
from tests.metrics import moved, scrape

#: The routes that take a JSON body and credentials.
JSON_ROUTES = [route for route in ROUTES.values() if route.body == "*" and not route.public]
MALFORMED = {
    "truncated": '{"sku": "8PX-UF-Y5U"',
    "not-json": "not json",
    "array": '["8PX-UF-Y5U"]',
    "unknown-field": '{"payWithCurency": "USD"}',
}
VALID_JSON = '{"sku": "8PX-UF-Y5U"}'
VERIFY = "/instantorders.v2.CredentialsService/VerifyCredentials"
VERIFY_LABELS = {
    "grpc_type": "unary",
    "grpc_service": "instantorders.v2.CredentialsService",
    "grpc_method": "VerifyCredentials",
}


def path_of(route) -> str:
    path = route.path
    for name in route.path_fields:
        path = path.replace("{" + name + "}", "T-NO-SUCH-ORDER")
    return path


def invalid_credentials(accounts) -> dict[str, dict[str, str]]:
    acme, globex = accounts["acme"], accounts["globex"]
    return {
        "none": {},
        "key only": {"x-api-key": acme.api_key},
        "token only": {"Authorization": f"Bearer {acme.token}"},
        "forged token": {"x-api-key": acme.api_key, "Authorization": "Bearer not.a.token"},
        "another key's token": {
            "x-api-key": acme.api_key,
            "Authorization": f"Bearer {globex.token}",
        },
    }


async def post(http, route, raw: str, headers: dict[str, str], content_type: str | None):
    sent = dict(headers)
    if content_type is not None:
        sent["Content-Type"] = content_type
    return await http.request(route.http_method, path_of(route), data=raw.encode(), headers=sent)


async def assert_error(response, status: int, reason: str) -> dict[str, str]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["error"] == reason, body
    assert body["message"] and body["requestId"] == response.headers["X-Request-Id"]
    return body


@pytest.mark.parametrize("route", JSON_ROUTES, ids=lambda route: route.rpc.name)
async def test_a_malformed_body_without_valid_credentials_is_401_not_400(
    http, accounts, database, route
):
    before = snapshot(database)
    for name, headers in invalid_credentials(accounts).items():
        for kind, raw in MALFORMED.items():
            response = await post(http, route, raw, headers, "application/json")
            await assert_error(response, 401, "UNAUTHENTICATED")
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), (name, kind)
    assert snapshot(database) == before


@pytest.mark.parametrize("route", JSON_ROUTES, ids=lambda route: route.rpc.name)
async def test_a_malformed_body_with_valid_credentials_is_still_400(
    http, accounts, database, route
):
    before = snapshot(database)
    for raw in MALFORMED.values():
        response = await post(http, route, raw, accounts["acme"].headers(), "application/json")
        await assert_error(response, 400, "INVALID_REQUEST")
    assert snapshot(database) == before


@pytest.mark.parametrize("route", JSON_ROUTES, ids=lambda route: route.rpc.name)
@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain", "text/plain; charset=utf-8", None],
    ids=["form", "text", "text-utf8", "none"],
)
async def test_json_in_another_media_type_is_415_with_credentials_and_401_without(
    http, accounts, database, route, content_type
):
    """curl -d sends JSON as a form: the answer names the media type, not a field."""
    before = snapshot(database)
    acme = accounts["acme"]

    refused = await post(http, route, VALID_JSON, acme.headers(), content_type)
    forged = {"x-api-key": acme.api_key, "Authorization": "Bearer not.a.token"}
    unauthenticated = await post(http, route, VALID_JSON, forged, content_type)

    body = await assert_error(refused, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert "application/json" in body["message"]
    await assert_error(unauthenticated, 401, "UNAUTHENTICATED")
    assert snapshot(database) == before


async def test_an_order_in_json_with_a_charset_or_without_a_body_is_taken(http, accounts):
    acme = accounts["acme"]
    order = ROUTES["CreateInstantOrder"]
    placed = await post(http, order, VALID_JSON, acme.headers(), "application/json; charset=utf-8")
    assert placed.status == 200, await placed.text()
    transaction_id = (await placed.json())["data"]["transactionId"]
    cancel = path_of(ROUTES["CancelOrder"]).replace("T-NO-SUCH-ORDER", transaction_id)
    # An empty body needs no Content-Type: the cancel is refused by the order's
    # state, not by the gateway.
    cancelled = await http.post(cancel, headers=acme.headers())
    assert (await cancelled.json())["error"] == "ORDER_NOT_CANCELLABLE"


@pytest.mark.parametrize("encoding", ["form", "json"])
async def test_the_token_route_still_takes_a_form_and_json(http, accounts, encoding):
    acme = accounts["acme"]
    fields = {
        "grant_type": "client_credentials",
        "client_id": acme.api_key,
        "client_secret": acme.api_secret,
    }
    sent = {"data": fields} if encoding == "form" else {"json": fields}
    response = await http.post("/v2/auth/token", **sent)
    assert response.status == 200, await response.text()
    assert (await response.json())["token_type"] == "Bearer"


async def test_the_token_route_refuses_another_media_type_with_415(http, accounts):
    raw = "grant_type=client_credentials"
    response = await http.post(
        "/v2/auth/token", data=raw.encode(), headers={"Content-Type": "text/plain"}
    )
    body = await assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert "application/x-www-form-urlencoded" in body["message"]


async def test_the_credentials_check_costs_a_call_only_when_the_gateway_refuses(
    http, accounts, database
):
    acme = accounts["acme"]
    order = ROUTES["CreateInstantOrder"]
    started = "grpc_server_started_total"
    before, _ = await scrape(http)
    placed = await post(http, order, VALID_JSON, acme.headers(), "application/json")
    without_headers = await post(http, order, "not json", {}, "application/json")
    after_happy_path, _ = await scrape(http)
    refused = await post(http, order, "not json", acme.headers(), "application/json")
    after, _ = await scrape(http)

    assert (placed.status, without_headers.status, refused.status) == (200, 401, 400)
    # Neither a request that parses nor one without credentials costs a check.
    assert moved(before, after_happy_path, started, **VERIFY_LABELS) == 0
    handled = "grpc_server_handled_total"
    assert moved(after_happy_path, after, handled, **VERIFY_LABELS, grpc_code="OK") == 1


async def test_verify_credentials_over_grpc_is_authenticated_like_any_call(channel, accounts):
    verify = channel.unary_unary(
        VERIFY,
        request_serializer=empty_pb2.Empty.SerializeToString,
        response_deserializer=empty_pb2.Empty.FromString,
    )
    acme = accounts["acme"]
    good = [("x-api-key", acme.api_key), ("authorization", f"Bearer {acme.token}")]
    assert await verify(empty_pb2.Empty(), metadata=good, timeout=10) == empty_pb2.Empty()
    forged = [("x-api-key", acme.api_key), ("authorization", "Bearer not.a.token")]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await verify(empty_pb2.Empty(), metadata=forged, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(refused.value) == "UNAUTHENTICATED"


class TestTheCheckSpendsTheReadsBudget:
    @pytest.fixture
    def limits(self) -> Limits:
        return Limits(orders=Rate(0.01, 3), reads=Rate(0.01, 2))

    async def test_refused_bodies_beyond_the_reads_burst_are_429(self, http, accounts):
        """A check costs what any authenticated call costs: no cheaper oracle for tokens."""
        order, acme = ROUTES["CreateInstantOrder"], accounts["acme"]
        statuses = [
            (await post(http, order, "not json", acme.headers(), "application/json")).status
            for _ in range(3)
        ]
        assert statuses == [400, 400, 429]


def test_the_internal_service_has_no_route_and_no_place_in_openapi():
    routes = load_routes()
    assert all(route.rpc.containing_service.name != "CredentialsService" for route in routes)
    document = openapi_document(routes)
    operations = [op for path in document["paths"].values() for op in path.values()]
    assert "verifyCredentials" not in {op["operationId"] for op in operations}
    assert "CredentialsService" not in {tag for op in operations for tag in op["tags"]}
    assert all("415" in op["responses"] for op in operations if "requestBody" in op)
