"""TLS between the gateway and a gRPC server on another host (finding 12 of issue 19):
the real `server` and `gateway` processes, with certificates made here."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import DATASET
from tests.processes import (
    ROOT,
    command,
    eventually,
    healthy,
    log_of,
    run_cli,
    start,
    stop,
    unused_port,
)

# --- certificates -----------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Issued(cert_path, key_path)


class Authority:
    """A certificate authority that issues the server's and the gateway's certificates."""

    def __init__(self, directory: Path, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(name)
        self.cert = (
            self._builder(self.name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.issued = _write(directory, name, self.cert, self.key)
        self.directory = directory

    def issue(self, stem: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            self._builder(_name(stem), key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return _write(self.directory, stem, builder.sign(self.key, hashes.SHA256()), key)

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey):
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server: Issued
    gateway: Issued


@pytest.fixture
def pki(tmp_path) -> Pki:
    authority = Authority(tmp_path, "test-ca")
    server = authority.issue(
        "server",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    gateway = authority.issue("gateway", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    other = Authority(tmp_path, "other-ca")
    return Pki(authority.issued.cert, other.issued.cert, server, gateway)


# --- processes --------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[str]
    address: str


@pytest.fixture
def account(tmp_path) -> dict[str, str]:
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({**DATASET, "accounts": [DATASET["accounts"][0]]}))
    loaded = run_cli("admin", "--database", str(tmp_path / "o.db"), "load", str(dataset))
    assert loaded.returncode == 0, loaded.stderr
    created: dict[str, str] = json.loads(loaded.stdout)["accounts"][0]
    return created


async def start_tls_server(tmp_path, pki: Pki, *options: str) -> Server:
    """`instant-orders server` with TLS; waits until a client trusting the CA (and
    holding the gateway's certificate, for mutual TLS) finds it SERVING."""
    address = f"127.0.0.1:{unused_port()}"
    process = start(
        "server", "--database", str(tmp_path / "o.db"), "--grpc-listen", address,
        "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
        "--rate-limit-orders", "0", "--rate-limit-reads", "0", *options,
    )  # fmt: skip
    credentials = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.gateway.key.read_bytes(), pki.gateway.cert.read_bytes()
    )

    async def serving() -> bool:
        assert process.poll() is None, log_of(process)
        return await _serving(grpc.aio.secure_channel(address, credentials))

    await eventually(serving, timeout=30)
    return Server(process, address)


async def _serving(channel: grpc.aio.Channel) -> bool:
    async with channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


async def start_gateway(upstream: str, *options: str) -> str:
    """`instant-orders gateway`; waits until it answers HTTP (its upstream may refuse it)."""
    http_port = unused_port()
    process = start(
        "gateway", "--upstream", upstream, "--http-listen", f"127.0.0.1:{http_port}", *options
    )
    url = f"http://127.0.0.1:{http_port}"

    async def answers() -> bool:
        assert process.poll() is None, log_of(process)
        try:
            async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz"):
                return True
        except aiohttp.ClientError:
            return False

    await eventually(answers, timeout=30)
    return url


async def token(url: str, account: dict[str, str]) -> tuple[int, str]:
    form = {
        "grant_type": "client_credentials",
        "client_id": account["apiKey"],
        "client_secret": account["apiSecret"],
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v2/auth/token", data=form) as response,
    ):
        return response.status, (await response.json()).get("access_token", "")


# --- tests ------------------------------------------------------------------------


async def test_a_gateway_verifying_the_server_places_orders_and_reads_balances_over_tls(
    tmp_path, pki, account
):
    server = await start_tls_server(tmp_path, pki)
    url = await start_gateway(server.address, "--tls-ca", str(pki.ca))
    await eventually(lambda: healthy(f"{url}/healthz"))
    status, bearer = await token(url, account)
    assert status == 200
    headers = {"x-api-key": account["apiKey"], "Authorization": f"Bearer {bearer}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        order = {"sku": "8PX-UF-Y5U", "clientOrderNumber": "po-tls-1"}
        async with session.post(f"{url}/v2/orders/instant", json=order) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["data"]["status"] == "COMPLETED"
        async with session.get(f"{url}/v2/balances") as response:
            assert response.status == 200
            assert (await response.json())["data"][0]["currency"] == "USD"
    assert stop(server.process) == 0


async def test_a_plaintext_grpc_client_cannot_call_the_tls_server(tmp_path, pki):
    server = await start_tls_server(tmp_path, pki)
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value


async def test_mutual_tls_refuses_a_gateway_without_a_client_certificate(tmp_path, pki, account):
    server = await start_tls_server(tmp_path, pki, "--tls-client-ca", str(pki.ca))
    anonymous = await start_gateway(server.address, "--tls-ca", str(pki.ca))
    assert (await token(anonymous, account))[0] == 503
    holding_a_certificate = await start_gateway(
        server.address, "--tls-ca", str(pki.ca),
        "--tls-client-cert", str(pki.gateway.cert), "--tls-client-key", str(pki.gateway.key),
    )  # fmt: skip
    assert (await token(holding_a_certificate, account))[0] == 200


async def test_a_gateway_trusting_another_ca_refuses_the_server(tmp_path, pki, account):
    server = await start_tls_server(tmp_path, pki)
    url = await start_gateway(server.address, "--tls-ca", str(pki.other_ca))
    assert (await token(url, account))[0] == 503


#: (command, its TLS options, what the one line must name); {names} are the pki's files.
BAD_TLS_SETTINGS = [
    pytest.param("server", "--tls-cert {missing} --tls-key {server_key}", "{missing}",
                 id="server-cert-missing"),
    pytest.param("server", "--tls-cert {server_cert} --tls-key {gateway_key}", "{gateway_key}",
                 id="server-key-of-another-cert"),
    pytest.param("server", "--tls-cert {server_cert} --tls-key {server_cert}", "{server_cert}",
                 id="server-key-not-a-key"),
    pytest.param("server", "--tls-cert {server_cert}", "--tls-key",
                 id="server-cert-without-key"),
    pytest.param("server", "--tls-client-ca {ca}", "--tls-cert",
                 id="client-ca-without-cert"),
    pytest.param("server", "--tls-cert {server_cert} --tls-key {server_key} "
                 "--tls-client-ca {missing}", "{missing}", id="client-ca-missing"),
    pytest.param("gateway", "--tls-ca {missing}", "{missing}", id="gateway-ca-missing"),
    pytest.param("gateway", "--tls-ca {server_key}", "{server_key}", id="gateway-ca-not-a-cert"),
    pytest.param("gateway", "--tls-ca {ca} --tls-client-cert {gateway_cert} "
                 "--tls-client-key {server_key}", "{server_key}",
                 id="gateway-key-of-another-cert"),
    pytest.param("gateway", "--tls-client-cert {gateway_cert} --tls-client-key {gateway_key}",
                 "--tls-ca", id="gateway-cert-without-ca"),
]  # fmt: skip


@pytest.mark.parametrize(("command", "options", "named"), BAD_TLS_SETTINGS)
def test_a_bad_tls_file_stops_the_start_with_one_line(tmp_path, pki, command, options, named):
    paths = {
        "missing": str(tmp_path / "missing.pem"),
        "ca": str(pki.ca),
        "server_cert": str(pki.server.cert),
        "server_key": str(pki.server.key),
        "gateway_cert": str(pki.gateway.cert),
        "gateway_key": str(pki.gateway.key),
    }
    listen = "--grpc-listen" if command == "server" else "--http-listen"
    extra = ["--database", str(tmp_path / "o.db")] if command == "server" else []
    result = run_cli(
        command, *extra, listen, f"127.0.0.1:{unused_port()}",
        *[part.format(**paths) for part in options.split()], timeout=30,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("instant-orders: "), lines
    assert named.format(**paths) in lines[0]
    assert not (tmp_path / "o.db").exists(), "the database was opened before TLS was checked"


def test_serve_refuses_tls_settings_rather_than_serving_plaintext(tmp_path, pki):
    """`serve` calls its own gRPC server in process, in plaintext on loopback: TLS
    settings (here from the environment) are refused rather than ignored."""
    tls = {"INSTANT_ORDERS_TLS_CERT": str(pki.server.cert),
           "INSTANT_ORDERS_TLS_KEY": str(pki.server.key)}  # fmt: skip
    result = subprocess.run(
        command(
            "serve", "--database", str(tmp_path / "o.db"),
            "--grpc-listen", f"127.0.0.1:{unused_port()}",
            "--http-listen", f"127.0.0.1:{unused_port()}",
        ),
        capture_output=True, text=True, timeout=30, check=False, cwd=ROOT,
        env={**os.environ, **tls},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "`server`" in result.stderr, result.stderr
