"""The `instant-orders` command: serve, server, gateway, admin and demo.

Every serving option can also come from an environment variable (see
server.settings.ENVIRONMENT); a flag wins over the variable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server import demo, logs
from server.domain import admin
from server.domain.clock import EPOCH, utc_now
from server.domain.failures import DataConflict
from server.domain.ports import Store
from server.keys import KeyFileError, add_code_key
from server.runtime import open_store, serve, work
from server.settings import ENVIRONMENT, Settings
from server.store.common import SchemaTooNew


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except ValueError as error:
        parser.error(str(error))
    logs.configure(settings.log_level)
    try:
        result: int = args.run(args, settings)
    except (admin.InvalidInput, DataConflict, SchemaTooNew, KeyFileError, OSError) as error:
        print(f"instant-orders: {error}", file=sys.stderr)
        return 1
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instant-orders", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    both = commands.add_parser("serve", help="run the gRPC server and the REST gateway")
    _serving_options(both, "grpc_listen", "http_listen", *_DATABASE_OPTIONS, *_SERVER_OPTIONS)
    both.set_defaults(run=lambda args, s: _serve(s, grpc=True, gateway=True))

    grpc_only = commands.add_parser("server", help="run the gRPC server alone")
    _serving_options(grpc_only, "grpc_listen", *_DATABASE_OPTIONS, *_SERVER_OPTIONS)
    grpc_only.set_defaults(run=lambda args, s: _serve(s, grpc=True, gateway=False))

    worker = commands.add_parser("worker", help="run the fulfiller alone (the server runs one too)")
    _serving_options(
        worker, "fulfillment_timeout_seconds", "idempotency_retention_days", *_DATABASE_OPTIONS
    )
    worker.set_defaults(run=lambda args, s: _work(s))

    gateway = commands.add_parser("gateway", help="run the REST gateway alone")
    _serving_options(gateway, "upstream", "http_listen")
    gateway.set_defaults(run=lambda args, s: _serve(s, grpc=False, gateway=True))

    demo_command = commands.add_parser(
        "demo", help="serve a fresh demo database and print a curl session to try it"
    )
    _serving_options(demo_command, "grpc_listen", "http_listen", "secret_key_file")
    demo_command.add_argument("--database", default="demo.db", help="recreated on every start")
    demo_command.set_defaults(run=lambda args, s: demo.run(s))

    _admin_commands(commands)
    return parser


_METAVARS = {
    "seconds": "SECONDS", "days": "DAYS", "size": "N", "orders": "RATE:BURST",
    "reads": "RATE:BURST",
}  # fmt: skip
_DATABASE_OPTIONS = (
    "database", "secret_key_file", "database_pool_size", "database_statement_timeout_seconds",
)  # fmt: skip
_SERVER_OPTIONS = (
    "fulfillment_timeout_seconds", "idempotency_retention_days", "rate_limit_orders",
    "rate_limit_reads",
)  # fmt: skip


def _serving_options(parser: argparse.ArgumentParser, *names: str) -> None:
    helps = {
        "database": "SQLite database file, or postgresql://HOST:PORT/DB?search_path=SCHEMA",
        "grpc_listen": "HOST:PORT of the gRPC server",
        "http_listen": "HOST:PORT of the REST gateway",
        "upstream": "HOST:PORT of the gRPC server the gateway calls",
        "fulfillment_timeout_seconds": "SECONDS a PROCESSING order may wait for a code before "
        "it is cancelled and refunded (default 86400)",
        "secret_key_file": "key file of the token signing key and the code data keys, made "
        "with mode 0600 if missing (default: the database path + .key; instant-orders.key "
        "for PostgreSQL); replicas share one",
        "database_pool_size": "PostgreSQL connections per process (default 10)",
        "database_statement_timeout_seconds": "SECONDS a PostgreSQL statement may run before "
        "the call fails with UNAVAILABLE (default 5)",
        "idempotency_retention_days": "DAYS an Idempotency-Key and its answer are kept "
        "(default 90)",
        "rate_limit_orders": "order creation per API key: RATE/s:BURST, 0 = off (default 50:100)",
        "rate_limit_reads": "reads per API key: RATE/s:BURST, 0 = off (default 100:200)",
    }
    for name in names:
        parser.add_argument(
            "--" + name.removesuffix("_seconds").removesuffix("_days").replace("_", "-"),
            dest=name,
            metavar=_METAVARS.get(name.rpartition("_")[2]),
            help=f"{helps[name]} (env {ENVIRONMENT[name]})",
        )


def _admin_commands(commands: Any) -> None:
    parser = commands.add_parser("admin", help="change the data: load, add-codes, top-up, set-rate")
    _serving_options(parser, *_DATABASE_OPTIONS)
    actions = parser.add_subparsers(required=True, metavar="ACTION")

    migrate = actions.add_parser(
        "migrate", help="bring the schema up to date (the server and worker do it on start too)"
    )
    migrate.set_defaults(run=lambda args, s: _admin(s, _schema_versions))

    load = actions.add_parser("load", help="add accounts, products, codes and rates from JSON")
    load.add_argument("file", type=Path)
    load.set_defaults(run=lambda args, s: _admin(s, _load(args.file)))

    codes = actions.add_parser("add-codes", help="add codes of one SKU from a CSV file")
    codes.add_argument("--sku", required=True)
    codes.add_argument(
        "--file", type=Path, required=True, help="CSV with header redeemCode,pinCode"
    )
    codes.set_defaults(run=lambda args, s: _admin(s, _add_codes(args.sku, args.file)))

    top_up = actions.add_parser("top-up", help="credit an account's balance")
    top_up.add_argument("--account", type=int, required=True, help="account id")
    top_up.add_argument("--currency", required=True)
    top_up.add_argument("--amount", required=True, help='decimal, e.g. "250.00"')
    top_up.set_defaults(
        run=lambda args, s: _admin(s, _top_up(args.account, args.currency, args.amount))
    )

    rate = actions.add_parser("set-rate", help="set the exchange rate of a currency pair")
    rate.add_argument("--pair", required=True, help="BASE/QUOTE, e.g. EUR/USD")
    rate.add_argument("--rate", required=True, help='one BASE in QUOTE, e.g. "1.1829"')
    rate.add_argument("--as-of", help="the date the rate took effect (default: today)")
    rate.set_defaults(run=lambda args, s: _admin(s, _set_rate(args.pair, args.rate, args.as_of)))

    create_key = actions.add_parser(
        "create-key", help="give an account a new API key (at most two active: for rotation)"
    )
    create_key.add_argument("--account", type=int, required=True, help="account id")
    create_key.set_defaults(run=lambda args, s: _admin(s, _create_key(args.account)))

    disable_key = actions.add_parser(
        "disable-key", help="disable an API key: its tokens are refused at once"
    )
    disable_key.add_argument("--key", required=True, help="the API key")
    disable_key.set_defaults(run=lambda args, s: _admin(s, _disable_key(args.key)))

    rotate = actions.add_parser(
        "rotate-code-key", help="add a new data key to the key file and re-encrypt every code"
    )
    rotate.set_defaults(run=lambda args, s: _admin(s, _rotate_code_key(s.key_file)))

    audit = actions.add_parser("audit", help="print an account's audit trail as JSON lines")
    audit.add_argument("--account", type=int, required=True, help="account id")
    audit.add_argument(
        "--since", type=_moment, default=EPOCH, help="ISO 8601 time, e.g. 2026-11-27T10:00Z"
    )
    audit.set_defaults(
        run=lambda args, s: _admin(s, _audit(args.account, args.since), json_lines=True)
    )


def _settings(args: argparse.Namespace) -> Settings:
    """Flags first, then environment variables, then the defaults."""
    defaults = Settings()
    values: dict[str, Any] = {}
    for field in fields(Settings):
        flag = getattr(args, field.name, None)
        value = flag if flag is not None else os.environ.get(ENVIRONMENT[field.name])
        if value is not None:
            values[field.name] = type(getattr(defaults, field.name))(value)
    return Settings(**values)


def _serve(settings: Settings, *, grpc: bool, gateway: bool) -> int:
    asyncio.run(serve(settings, grpc=grpc, gateway=gateway))
    return 0


def _work(settings: Settings) -> int:
    asyncio.run(work(settings))
    return 0


AdminAction = Callable[[Store], Awaitable[Any]]


async def _schema_versions(store: Store) -> dict[str, int]:
    """Opening the store migrated it; say from which version to which."""
    return {"from": store.found_schema_version, "schemaVersion": store.schema_version}


def _admin(settings: Settings, action: AdminAction, *, json_lines: bool = False) -> int:
    async def run() -> Any:
        store = await open_store(settings)
        try:
            return await action(store)
        finally:
            await store.close()

    result = asyncio.run(run())
    for item in result if json_lines else [result]:
        print(json.dumps(item))
    return 0


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _create_key(account_id: int) -> AdminAction:
    async def action(store: Store) -> Any:
        api_key, api_secret = await admin.create_api_key(store, account_id, utc_now())
        return {"accountId": account_id, "apiKey": api_key, "apiSecret": api_secret}

    return action


def _disable_key(api_key: str) -> AdminAction:
    async def action(store: Store) -> Any:
        account_id = await store.disable_api_key(api_key, utc_now())
        return {"accountId": account_id, "apiKey": api_key, "disabled": True}

    return action


def _rotate_code_key(key_file: str) -> AdminAction:
    async def action(store: Store) -> Any:
        ring = add_code_key(key_file)
        resealed = 0
        while count := await store.reseal_codes(limit=1000):  # one transaction per 1000
            resealed += count
        return {"activeCodeKey": ring.active_code_key, "reencrypted": resealed}

    return action


def _audit(account_id: int, since: datetime) -> AdminAction:
    async def action(store: Store) -> Any:
        return [
            {
                "at": record.at.isoformat().replace("+00:00", "Z"),
                "event": record.event.value,
                "accountId": record.account_id,
                "apiKey": record.api_key,
                "requestId": record.request_id,
                "transactionId": record.transaction_id,
                "details": record.details,
            }
            for record in await store.audit_trail(account_id, since)
        ]

    return action


def _load(path: Path) -> AdminAction:
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise admin.InvalidInput(f"{path} is not valid JSON: {error}") from None

    async def action(store: Store) -> Any:
        created = await admin.load_dataset(store, document, utc_now())
        return {
            "accounts": [
                {
                    "name": account.name,
                    "accountId": account.account_id,
                    "apiKey": account.api_key,
                    "apiSecret": account.api_secret,
                }
                for account in created
            ]
        }

    return action


def _add_codes(sku: str, path: Path) -> AdminAction:
    codes = admin.parse_codes_csv(path.read_text(), sku)

    async def action(store: Store) -> Any:
        return {"added": await store.add_codes(codes, utc_now())}

    return action


def _top_up(account_id: int, currency: str, amount: str) -> AdminAction:
    async def action(store: Store) -> Any:
        balance = await store.top_up(account_id, admin.parse_money(amount, currency), utc_now())
        return {"accountId": account_id, "balance": str(balance.amount), "currency": currency}

    return action


def _set_rate(pair: str, rate: str, as_of: str | None) -> AdminAction:
    async def action(store: Store) -> Any:
        exchange_rate = admin.parse_exchange_rate(pair, rate, as_of, utc_now())
        await store.set_rate(exchange_rate)
        return {
            "pair": exchange_rate.pair,
            "rate": str(exchange_rate.rate),
            "asOfDate": exchange_rate.as_of,
        }

    return action


if __name__ == "__main__":
    sys.exit(main())
