"""The service's settings: one frozen value, built from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

from server.domain.fulfillment import BATCH_SIZE
from server.domain.limits import DEFAULT_LIMITS, Limits, Rate

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(database: str) -> bool:
    """Whether the database setting is a PostgreSQL URL (else: a SQLite file's path)."""
    return database.startswith(_POSTGRES_SCHEMES)


ENVIRONMENT = {
    "database": "INSTANT_ORDERS_DATABASE",
    "grpc_listen": "INSTANT_ORDERS_GRPC_LISTEN",
    "http_listen": "INSTANT_ORDERS_HTTP_LISTEN",
    "upstream": "INSTANT_ORDERS_UPSTREAM",
    "token_lifetime_seconds": "INSTANT_ORDERS_TOKEN_LIFETIME",
    "shutdown_grace_seconds": "INSTANT_ORDERS_SHUTDOWN_GRACE",
    "log_level": "INSTANT_ORDERS_LOG_LEVEL",
    "fulfillment_timeout_seconds": "INSTANT_ORDERS_FULFILLMENT_TIMEOUT",
    "fulfillment_batch": "INSTANT_ORDERS_FULFILLMENT_BATCH",
    "secret_key_file": "INSTANT_ORDERS_SECRET_KEY_FILE",
    "rate_limit_orders": "INSTANT_ORDERS_RATE_LIMIT_ORDERS",
    "rate_limit_reads": "INSTANT_ORDERS_RATE_LIMIT_READS",
    "database_pool_size": "INSTANT_ORDERS_DATABASE_POOL_SIZE",
    "database_statement_timeout_seconds": "INSTANT_ORDERS_DATABASE_STATEMENT_TIMEOUT",
    "idempotency_retention_days": "INSTANT_ORDERS_IDEMPOTENCY_RETENTION",
}


@dataclass(frozen=True)
class Settings:
    database: str = "./instant-orders.db"
    grpc_listen: str = "127.0.0.1:50051"
    http_listen: str = "127.0.0.1:8080"
    #: Where a stand-alone gateway finds the gRPC server.
    upstream: str = "127.0.0.1:50051"
    token_lifetime_seconds: int = 3600
    #: How long in-flight calls may take to finish after SIGTERM.
    shutdown_grace_seconds: float = 10.0
    log_level: str = "INFO"
    #: How long a PROCESSING order may wait for a code before it is cancelled
    #: and refunded.
    fulfillment_timeout_seconds: float = 86400.0
    #: Orders completed or cancelled per transaction (one fsync); 1 gives each
    #: its own transaction.
    fulfillment_batch: int = BATCH_SIZE
    #: The key file (token signing key, code data keys); "" means the
    #: database's path + ".key", or ./instant-orders.key for a PostgreSQL URL.
    #: Keep it apart from database backups; replicas share one.
    secret_key_file: str = ""
    #: Per API key and process, "RATE:BURST" (requests per second, bucket size);
    #: "0" turns the limit off.
    rate_limit_orders: str = str(DEFAULT_LIMITS.orders)
    rate_limit_reads: str = str(DEFAULT_LIMITS.reads)
    #: PostgreSQL only: connections per process, and the longest a statement (or
    #: the wait for a free connection) may take before the call fails UNAVAILABLE.
    database_pool_size: int = 10
    database_statement_timeout_seconds: float = 5.0
    #: How long an Idempotency-Key and its answer are kept; then the key may be reused.
    idempotency_retention_days: float = 90.0

    def __post_init__(self) -> None:
        if not self.fulfillment_timeout_seconds > 0:
            raise ValueError("the fulfillment timeout must be a positive number of seconds")
        if self.database_pool_size < 1:
            raise ValueError("the database pool size must be 1 or more")
        if not self.database_statement_timeout_seconds > 0:
            raise ValueError("the database statement timeout must be a positive number")
        if not self.idempotency_retention_days > 0:
            raise ValueError("the idempotency retention must be a positive number of days")
        if self.fulfillment_batch < 1:
            raise ValueError("the fulfillment batch must be 1 or more")
        for rate in (self.rate_limit_orders, self.rate_limit_reads):
            Rate.parse(rate)  # raises ValueError for a malformed RATE:BURST

    @property
    def limits(self) -> Limits:
        return replace(
            DEFAULT_LIMITS,
            orders=Rate.parse(self.rate_limit_orders),
            reads=Rate.parse(self.rate_limit_reads),
        )

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
