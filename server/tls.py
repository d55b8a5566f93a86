"""TLS between the gateway and the gRPC server, when they run on different hosts.

Plaintext stays the default. The server serves TLS with `--tls-cert/--tls-key`
and requires client certificates (mutual TLS) with `--tls-client-ca`; a gateway
verifies its upstream with `--tls-ca` and presents `--tls-client-cert/
--tls-client-key`. Every file is read and checked here, before anything
starts, so that a missing file or a key of another certificate stops the start
with one line (grpc would only log a failed handshake per connection).
"""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from server.settings import Settings


class TlsSettingsError(ValueError):
    """A TLS file is missing, unreadable or malformed, or the options do not fit."""


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The gRPC server's credentials; None for plaintext (no --tls-cert/--tls-key)."""
    if settings.tls_client_ca and not settings.tls_cert:
        raise TlsSettingsError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    pair = _certificate_and_key(settings.tls_cert, "--tls-cert", settings.tls_key, "--tls-key")
    if pair is None:
        return None
    client_ca = _certificates(settings.tls_client_ca) if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def upstream_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """A gateway's credentials for its upstream; None for plaintext (no --tls-ca)."""
    pair = _certificate_and_key(
        settings.tls_client_cert, "--tls-client-cert", settings.tls_client_key, "--tls-client-key"
    )
    if not settings.tls_ca:
        if pair is not None:
            raise TlsSettingsError("--tls-client-cert needs --tls-ca (the server's CA)")
        return None
    key, chain = pair or (None, None)
    return grpc.ssl_channel_credentials(_certificates(settings.tls_ca), key, chain)


def refuse_in_one_process(settings: Settings) -> None:
    """`serve` calls its own gRPC server in process, over loopback, in plaintext: TLS
    settings there would be ignored, so they are refused instead."""
    given = [name for name in _ALL if getattr(settings, name)]
    if given:
        raise TlsSettingsError(
            f"TLS ({', '.join(given)}) is for `server` and `gateway` run apart; `serve` calls"
            " its own gRPC server over loopback in plaintext"
        )


_ALL = ("tls_cert", "tls_key", "tls_client_ca", "tls_ca", "tls_client_cert", "tls_client_key")


def _certificate_and_key(
    cert_path: str, cert_flag: str, key_path: str, key_flag: str
) -> tuple[bytes, bytes] | None:
    """(key PEM, certificate chain PEM), checked to belong together; None if neither given."""
    if not cert_path and not key_path:
        return None
    if not cert_path or not key_path:
        raise TlsSettingsError(f"{cert_flag} and {key_flag} go together: give both or neither")
    chain = _certificates(cert_path)
    key_pem = _read(key_path)
    if _public_key(x509.load_pem_x509_certificate(chain)) != _public_key(
        _private_key(key_pem, key_path)
    ):
        raise TlsSettingsError(f"the TLS key {key_path} is not the key of {cert_path}")
    return key_pem, chain


def _certificates(path: str) -> bytes:
    """The file's PEM, checked to hold one certificate or more."""
    pem = _read(path)
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TlsSettingsError(f"the TLS file {path} holds no PEM certificate") from None
    return pem


def _private_key(pem: bytes, path: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):  # TypeError: the key is encrypted
        raise TlsSettingsError(
            f"the TLS file {path} holds no unencrypted PEM private key"
        ) from None


def _public_key(holder: x509.Certificate | PrivateKeyTypes) -> bytes:
    return holder.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise TlsSettingsError(f"cannot read the TLS file {path}: {error.strerror}") from None
