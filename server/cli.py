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

from tqdm import tqdm

from server import demo, logs
from server.domain import admin
from server.domain.clock import EPOCH, utc_now
from server.domain.failures import DataConflict, StorageUnavailable
from server.domain.ports import Store
from server.keys import KeyFileError, add_code_key
from server.runtime import open_store, serve, work
from server.settings import ENVIRONMENT, Settings, flag, meaning
from server.store.backends import CannotOpenDatabase
from server.store.common import SchemaTooNew
from server.tls import TlsSettingsError


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
    except (
        admin.InvalidInput, DataConflict, SchemaTooNew, KeyFileError, CannotOpenDatabase, OSError,
        TlsSettingsError,
    ) as error:  # fmt: skip
        print(f"instant-orders: {error}", file=sys.stderr)
        return 1
    except StorageUnavailable as error:  # a full disk, PostgreSQL gone: one line, no traceback
        print(f"instant-orders: the database cannot serve now: {error}", file=sys.stderr)
        return 1
    return result


_DATABASE = (
    "database", "secret_key_file", "database_pool_size", "database_statement_timeout_seconds",
)  # fmt: skip
_FULFILLER = ("fulfillment_timeout_seconds", "idempotency_retention_days")
_LIMITS = ("rate_limit_orders", "rate_limit_reads", "rate_limit_tokens", "trusted_proxies")
#: TLS between a gateway and a server on different hosts; `serve` refuses them (server/tls.py).
_SERVER_TLS = ("tls_cert", "tls_key", "tls_client_ca")
_UPSTREAM_TLS = ("tls_ca", "tls_client_cert", "tls_client_key")
#: The settings each command takes as flags (all of them also from the environment).
COMMAND_OPTIONS: dict[str, tuple[str, ...]] = {
    "serve": ("grpc_listen", "http_listen", *_DATABASE, *_FULFILLER, *_LIMITS, "otlp_endpoint"),
    "server": (
        "grpc_listen", *_DATABASE, *_FULFILLER, *_LIMITS, "metrics_listen", "otlp_endpoint",
        *_SERVER_TLS,
    ),
    "worker": (*_FULFILLER, *_DATABASE, "metrics_listen", "otlp_endpoint"),
    "gateway": ("upstream", "http_listen", "trusted_proxies", "otlp_endpoint", *_UPSTREAM_TLS),
    "demo": ("grpc_listen", "http_listen", "secret_key_file"),
    "admin": _DATABASE,
}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instant-orders", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    both = commands.add_parser("serve", help="run the gRPC server and the REST gateway")
    both.set_defaults(run=lambda args, s: _serve(s, grpc=True, gateway=True))
    grpc_only = commands.add_parser("server", help="run the gRPC server alone")
    grpc_only.set_defaults(run=lambda args, s: _serve(s, grpc=True, gateway=False))
    worker = commands.add_parser("worker", help="run the fulfiller alone (the server runs one too)")
    worker.set_defaults(run=lambda args, s: _work(s))
    gateway = commands.add_parser("gateway", help="run the REST gateway alone")
    gateway.set_defaults(run=lambda args, s: _serve(s, grpc=False, gateway=True))
    demo_command = commands.add_parser(
        "demo", help="serve a fresh demo database and print a curl session to try it"
    )
    demo_command.add_argument("--database", default="demo.db", help="recreated on every start")
    demo_command.set_defaults(run=lambda args, s: demo.run(s))
    for name, command in (("serve", both), ("server", grpc_only), ("worker", worker),
                          ("gateway", gateway), ("demo", demo_command)):  # fmt: skip
        _serving_options(command, *COMMAND_OPTIONS[name])
    reference = commands.add_parser(
        "configuration", help="print the configuration reference (docs/configuration.md)"
    )
    reference.set_defaults(run=lambda args, s: print(configuration_reference(), end="") or 0)
    _admin_commands(commands)
    return parser


_METAVARS = {
    "seconds": "SECONDS", "days": "DAYS", "size": "N", "orders": "RATE:BURST",
    "reads": "RATE:BURST", "tokens": "RATE:BURST", "proxies": "CIDR,...",
    "cert": "PEM", "key": "PEM", "ca": "PEM",
}  # fmt: skip


def _serving_options(parser: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        parser.add_argument(
            flag(name),
            dest=name,
            metavar=_METAVARS.get(name.rpartition("_")[2]),
            help=f"{meaning(name)} (env {ENVIRONMENT[name]})",
        )


def configuration_reference() -> str:
    """docs/configuration.md, made from the settings' definitions (a test keeps it current)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `server/settings.py` by `instant-orders configuration`; a test",
        "checks it is current. A flag wins over its environment variable, which wins over",
        "the default.",
        "",
        "| setting | flag (commands) | environment variable | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    defaults = Settings()
    for each in fields(Settings):
        takers = [command for command, names in COMMAND_OPTIONS.items() if each.name in names]
        flag_cell = f"`{flag(each.name)}` ({', '.join(takers)})" if takers else ""
        default = getattr(defaults, each.name)
        lines.append(
            f"| {each.name} | {flag_cell} | `{ENVIRONMENT[each.name]}` | "
            f"`{default!r}` | {meaning(each.name)} |"
        )
    return "\n".join(lines) + "\n"


def _admin_commands(commands: Any) -> None:
    parser = commands.add_parser("admin", help="change the data: load, add-codes, top-up, set-rate")
    _serving_options(parser, *COMMAND_OPTIONS["admin"])
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

    report = actions.add_parser(
        "report", help="stock and backlog per SKU, balances, recent orders by status"
    )
    report.add_argument("--json", action="store_true", help="as JSON rather than tables")
    report.set_defaults(
        run=lambda args, s: _admin(s, _report, render=None if args.json else render_report)
    )

    backup = actions.add_parser(
        "backup", help="write a consistent copy of the live SQLite database (0600)"
    )
    backup.add_argument("--to", type=Path, required=True, help="the copy's path (must not exist)")
    backup.set_defaults(run=lambda args, s: _admin(s, _backup(args.to, s.key_file)))


def _settings(args: argparse.Namespace) -> Settings:
    """Flags first, then environment variables, then the defaults."""
    defaults = Settings()
    values: dict[str, Any] = {}
    for field in fields(Settings):
        given = getattr(args, field.name, None)
        value = given if given is not None else os.environ.get(ENVIRONMENT[field.name])
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


def _admin(
    settings: Settings,
    action: AdminAction,
    *,
    json_lines: bool = False,
    render: Callable[[Any], str] | None = None,
) -> int:
    """Runs the action on the database; prints its result as JSON (one line per item
    with `json_lines`), or rendered by `render`."""

    async def run() -> Any:
        store = await open_store(settings)
        try:
            return await action(store)
        finally:
            await store.close()

    result = asyncio.run(run())
    if render is not None:
        print(render(result))
        return 0
    for item in result if json_lines else [result]:
        print(json.dumps(item))
    return 0


def _progress(what: str, total: int) -> tqdm[Any]:
    """A progress bar on stderr for a long job, when stderr is a terminal; nothing else."""
    return tqdm(
        total=total, unit=what, file=sys.stderr, disable=not sys.stderr.isatty(), leave=False
    )


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
                "clientRequestId": record.client_request_id,
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

    codes = len(document.get("codes", [])) if isinstance(document, dict) else 0

    async def action(store: Store) -> Any:
        with _progress("codes", codes) as bar:
            created = await admin.load_dataset(store, document, utc_now(), bar.update)
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
        with _progress("codes", len(codes)) as bar:
            return {"added": await store.add_codes(codes, utc_now(), bar.update)}

    return action


async def _report(store: Store) -> Any:
    found = await admin.report(store, utc_now())
    return {
        "at": found.at.isoformat(),
        "stock": [
            {
                "sku": level.sku,
                "unsold": level.unsold,
                "waiting": level.waiting,
                "oldestWaitSeconds": _age(found.at, level.oldest_waiting_since),
            }
            for level in found.stock
        ],
        "balances": [
            {
                "accountId": row.account_id,
                "account": row.account_name,
                "currency": row.balance.currency,
                "balance": str(row.balance.amount),
            }
            for row in found.balances
        ],
        "ordersLastHour": found.last_hour,
        "ordersLastDay": found.last_day,
    }


def _age(now: datetime, since: datetime | None) -> float | None:
    return None if since is None else round((now - since).total_seconds(), 1)


def render_report(report: dict[str, Any]) -> str:
    """The report as plain-text tables, for a terminal."""
    stock = [(r["sku"], r["unsold"], r["waiting"], r["oldestWaitSeconds"] or "") for r in
             report["stock"]]  # fmt: skip
    balances = [(r["accountId"], r["account"], r["currency"], r["balance"])
                for r in report["balances"]]  # fmt: skip
    statuses = sorted({*report["ordersLastHour"], *report["ordersLastDay"]})
    orders = [(s, report["ordersLastHour"].get(s, 0), report["ordersLastDay"].get(s, 0))
              for s in statuses]  # fmt: skip
    return "\n\n".join([
        f"instant-orders report, {report['at']}",
        _table(("sku", "unsold", "waiting", "oldest wait s"), stock),
        _table(("account id", "account", "currency", "balance"), balances),
        _table(("orders created", "last hour", "last day"), orders),
    ])  # fmt: skip


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    cells = [tuple(str(cell) for cell in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in cells]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _backup(to: Path, key_file: str) -> AdminAction:
    async def action(store: Store) -> Any:
        await store.backup(to)
        return {
            "backup": str(to),
            "keyFile": key_file,
            "note": "the codes in the copy open only with this key file: keep a copy of it,"
            " apart from the database's copies",
        }

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
