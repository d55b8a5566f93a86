"""Bearer tokens for API keys (OAuth 2.0 client credentials), and every call requiring them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from multidict import CIMultiDict

from server.domain.auth import TokenSigner
from server.domain.errors import ApiError
from server.domain.models import Caller
from tests.helpers import signing_key

TOKEN_PATH = "/v2/auth/token"


def client_credentials(account, **overrides):
    fields = {
        "grant_type": "client_credentials",
        "client_id": account.api_key,
        "client_secret": account.api_secret,
    }
    return {**fields, **overrides}


@pytest.mark.parametrize("encoding", ["form", "json"])
async def test_token_endpoint_issues_a_bearer_token_that_works(http, accounts, encoding):
    acme = accounts["acme"]
    body = client_credentials(acme)
    sent = {"data": body} if encoding == "form" else {"json": body}

    response = await http.post(TOKEN_PATH, **sent)

    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    token = await response.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 3600
    assert token["data"]["access_token"] == token["access_token"]
    assert token["requestId"]
    headers = {"x-api-key": acme.api_key, "Authorization": f"Bearer {token['access_token']}"}
    balances = await http.get("/v2/balances", headers=headers)
    assert balances.status == 200


async def test_issue_token_over_grpc(api, accounts):
    reply = await api.call("IssueToken", client_credentials(accounts["acme"]))
    token = reply.expect_ok()
    assert token["token_type"] == "Bearer"
    assert token["access_token"]


@pytest.mark.parametrize(
    ("overrides", "reason", "status"),
    [
        ({"client_secret": "sk_wrong"}, "invalid_client", 401),
        ({"client_id": "ak_unknown"}, "invalid_client", 401),
        ({"grant_type": "password"}, "unsupported_grant_type", 400),
        ({"grant_type": ""}, "invalid_request", 400),
        ({"client_secret": ""}, "invalid_request", 400),
    ],
)
async def test_token_failures_use_rfc6749_codes(api, accounts, overrides, reason, status):
    reply = await api.call("IssueToken", client_credentials(accounts["acme"], **overrides))
    reply.expect_error(reason, status)


async def test_wrong_key_and_wrong_secret_are_indistinguishable(http, accounts):
    acme = accounts["acme"]
    wrong_secret = await http.post(TOKEN_PATH, data=client_credentials(acme, client_secret="x"))
    wrong_key = await http.post(TOKEN_PATH, data=client_credentials(acme, client_id="x"))

    first, second = await wrong_secret.json(), await wrong_key.json()
    assert wrong_secret.status == wrong_key.status == 401
    assert {**first, "requestId": ""} == {**second, "requestId": ""}


def forged(account, key: bytes, **claims):
    now = int(time.time())
    payload = {"sub": account.api_key, "acc": account.account_id, "iat": now, "exp": now + 60}
    return jwt.encode({**payload, **claims}, key, algorithm="HS256")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": "ak_x"},
        {"Authorization": "Bearer x"},
        {"x-api-key": "KEY", "Authorization": "Bearer not-a-jwt"},
        {"x-api-key": "KEY", "Authorization": "Basic abc"},
        {"x-api-key": "OTHER_KEY", "Authorization": "Bearer TOKEN"},
        {"x-api-key": "KEY", "Authorization": "Bearer EXPIRED"},
        {"x-api-key": "KEY", "Authorization": "Bearer WRONG_SIGNATURE"},
    ],
    ids=["none", "key-only", "token-only", "garbage", "basic", "other-key", "expired", "forged"],
)
async def test_calls_without_valid_credentials_are_unauthenticated(
    api, accounts, database, headers
):
    acme, globex = accounts["acme"], accounts["globex"]
    key = signing_key(database)
    replacements = {
        "KEY": acme.api_key,
        "OTHER_KEY": globex.api_key,
        "TOKEN": acme.token,
        "EXPIRED": forged(acme, key, exp=int(time.time()) - 1),
        "WRONG_SIGNATURE": forged(acme, b"another key of thirty-two bytes!"),
    }
    for name, value in headers.items():
        for placeholder, real in replacements.items():
            value = value.replace(placeholder, real)
        headers = {**headers, name: value}

    class Credentials:
        def headers(self):
            return headers

    reply = await api.call("GetBalances", {}, Credentials())

    reply.expect_error("UNAUTHENTICATED", 401)
    if api.transport == "rest":
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")


async def test_duplicated_credential_headers_are_refused(http, accounts):
    acme = accounts["acme"]
    headers = CIMultiDict(acme.headers())
    headers.add("x-api-key", accounts["globex"].api_key)

    response = await http.get("/v2/balances", headers=headers)

    assert response.status == 401
    assert (await response.json())["error"] == "UNAUTHENTICATED"


def test_a_token_verified_before_is_still_refused_once_expired_or_for_another_key():
    signer = TokenSigner(b"k" * 32, timedelta(minutes=1))
    issued_at = datetime(2026, 1, 1, tzinfo=UTC)
    token = signer.issue(Caller(7, "ak_one"), issued_at).access_token
    header = f"Bearer {token}"

    assert signer.verify("ak_one", header, issued_at).account_id == 7  # now remembered
    with pytest.raises(ApiError):
        signer.verify("ak_two", header, issued_at)
    with pytest.raises(ApiError):
        signer.verify("ak_one", header, issued_at + timedelta(minutes=1))
