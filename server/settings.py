"""The service's settings: one frozen value, built from flags and environment.

Each setting is defined once, with its default and meaning; its flag is
`--name` and its environment variable INSTANT_ORDERS_NAME (the name without a
_seconds or _days unit), for every command that takes it (server/cli.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from typing import Any

from server.domain.clients import TrustedProxies
from server.domain.fulfillment import BATCH_SIZE
from server.domain.limits import DEFAULT_LIMITS, Limits, Rate

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(database: str) -> bool:
    """Whether the database setting is a PostgreSQL URL (else: a SQLite file's path)."""
    return database.startswith(_POSTGRES_SCHEMES)


def setting(default: Any, meaning: str) -> Any:
    """A setting's default and what it means: the CLI's help and the configuration
    reference (docs/configuration.md) are made from it."""
    return field(default=default, metadata={"meaning": meaning})


@dataclass(frozen=True)
class Settings:
    database: str = setting(
        "./instant-orders.db", "SQLite database file, or postgresql://HOST:PORT/DB?search_path=S"
    )
    grpc_listen: str = setting("127.0.0.1:50051", "HOST:PORT of the gRPC server")
    http_listen: str = setting("127.0.0.1:8080", "HOST:PORT of the REST gateway")
    upstream: str = setting("127.0.0.1:50051", "HOST:PORT of the gRPC server a gateway calls")
    tls_cert: str = setting(
        "",
        "PEM certificate chain of the gRPC server; with --tls-key it serves TLS only "
        "(default: plaintext, for loopback)",
    )
    tls_key: str = setting("", "PEM private key of --tls-cert (unencrypted; keep it 0600)")
    tls_client_ca: str = setting(
        "", "PEM CA certificates: the gRPC server requires a client certificate they issued "
        "(mutual TLS); needs --tls-cert",
    )  # fmt: skip
    tls_ca: str = setting(
        "",
        "PEM CA certificates a gateway verifies its upstream's certificate with; TLS to "
        "the upstream when set (default: plaintext)",
    )
    tls_client_cert: str = setting(
        "", "PEM certificate chain a gateway presents to its upstream (mutual TLS); needs --tls-ca"
    )
    tls_client_key: str = setting("", "PEM private key of --tls-client-cert (unencrypted)")
    token_lifetime_seconds: int = setting(3600, "SECONDS a bearer token is valid")
    shutdown_grace_seconds: float = setting(
        10.0, "SECONDS in-flight calls may take to finish after SIGTERM"
    )
    shutdown_drain_seconds: float = setting(
        0.0,
        "SECONDS readiness fails after SIGTERM while requests are still served, before "
        "the graceful stop: time for load balancers to move traffic away",
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    fulfillment_timeout_seconds: float = setting(
        86400.0,
        "SECONDS a PROCESSING order may wait for a code before it is cancelled and refunded",
    )
    fulfillment_batch: int = setting(
        BATCH_SIZE, "orders completed or cancelled per transaction (one fsync); 1: one each"
    )
    secret_key_file: str = setting(
        "",
        "key file of the token signing key and the code data keys, made with mode 0600 "
        "if missing for a database holding no code (one holding codes is refused without "
        "its key file) (default: the database path + .key; instant-orders.key for "
        "PostgreSQL); keep it apart from backups; replicas share one",
    )
    rate_limit_orders: str = setting(
        str(DEFAULT_LIMITS.orders),
        "orders per API key (all replicas on PostgreSQL; per process on SQLite): "
        "RATE/s:BURST, 0 = off",
    )
    rate_limit_reads: str = setting(
        str(DEFAULT_LIMITS.reads),
        "reads per API key (all replicas on PostgreSQL; per process on SQLite): "
        "RATE/s:BURST, 0 = off",
    )
    rate_limit_tokens: str = setting(
        str(DEFAULT_LIMITS.token_requests),
        "tokens issued per API key and process (10 a minute, burst 20): RATE/s:BURST, 0 = off",
    )
    trusted_proxies: str = setting(
        "",
        "CIDR,... of the proxies (load balancers; for a server, its gateways) whose "
        "X-Forwarded-For or Forwarded names the client's address for the failed-login "
        "limits; none by default: the TCP peer is the client (serve's own gateway is "
        "believed without it)",
    )
    database_pool_size: int = setting(10, "PostgreSQL connections per process")
    database_statement_timeout_seconds: float = setting(
        5.0, "SECONDS a call to PostgreSQL may take in all before it fails with UNAVAILABLE"
    )
    idempotency_retention_days: float = setting(
        90.0, "DAYS an Idempotency-Key and its answer are kept; then the key may be reused"
    )
    metrics: str = setting(
        "on", "on: count and time every call for /metrics; off: not at all (to measure their cost)"
    )
    metrics_listen: str = setting(
        "",
        "HOST:PORT of the /metrics of a server or worker alone (serve shows everything "
        "at the gateway's /metrics); none by default",
    )
    otlp_endpoint: str = setting(
        "",
        "OTLP/HTTP collector URL for traces; tracing is off without it (or the standard "
        "OTEL_EXPORTER_OTLP_ENDPOINT)",
    )

    def __post_init__(self) -> None:
        if not self.fulfillment_timeout_seconds > 0:
            raise ValueError("the fulfillment timeout must be a positive number of seconds")
        if self.database_pool_size < 1:
            raise ValueError("the database pool size must be 1 or more")
        if not self.database_statement_timeout_seconds > 0:
            raise ValueError("the database statement timeout must be a positive number")
        if not self.idempotency_retention_days > 0:
            raise ValueError("the idempotency retention must be a positive number of days")
        if self.metrics not in ("on", "off"):
            raise ValueError("metrics must be on or off")
        if self.fulfillment_batch < 1:
            raise ValueError("the fulfillment batch must be 1 or more")
        for rate in (self.rate_limit_orders, self.rate_limit_reads, self.rate_limit_tokens):
            Rate.parse(rate)  # raises ValueError for a malformed RATE:BURST
        TrustedProxies.parse(self.trusted_proxies)  # raises ValueError for a malformed CIDR

    @property
    def limits(self) -> Limits:
        return replace(
            DEFAULT_LIMITS,
            orders=Rate.parse(self.rate_limit_orders),
            reads=Rate.parse(self.rate_limit_reads),
            token_requests=Rate.parse(self.rate_limit_tokens),
        )

    @property
    def proxies(self) -> TrustedProxies:
        return TrustedProxies.parse(self.trusted_proxies)

    @property
    def key_file(self) -> str:
        if self.secret_key_file:
            return self.secret_key_file
        return "instant-orders.key" if is_postgres(self.database) else f"{self.database}.key"

    @property
    def fulfillment_timeout(self) -> timedelta:
        return timedelta(seconds=self.fulfillment_timeout_seconds)

    @property
    def idempotency_retention(self) -> timedelta:
        return timedelta(days=self.idempotency_retention_days)

    @property
    def token_lifetime(self) -> timedelta:
        return timedelta(seconds=self.token_lifetime_seconds)


def bare_name(name: str) -> str:
    """The setting's name without its unit: what its flag and variable are named after."""
    return name.removesuffix("_seconds").removesuffix("_days")


def flag(name: str) -> str:
    return "--" + bare_name(name).replace("_", "-")


def environment_variable(name: str) -> str:
    return "INSTANT_ORDERS_" + bare_name(name).upper()


def meaning(name: str) -> str:
    return str(Settings.__dataclass_fields__[name].metadata["meaning"])


ENVIRONMENT = {each.name: environment_variable(each.name) for each in fields(Settings)}
