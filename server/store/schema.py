"""The schema of both backends: one list of migrations, written once.

MIGRATIONS[n] takes a database from schema version n to n + 1; a new database
runs them all. Types and what else the two databases spell differently are
{fragments} (sql.py); where they differ more (triggers), a step names both.
Money is stored as integer minor units, rates as exact decimal text, times as
integer microseconds since the epoch. Never edit a released step: add one.

SQLite keeps the version in PRAGMA user_version, PostgreSQL in the table
schema_version. The first PostgreSQL release numbered its one step 1; it
built what version 5 builds here, so a stored 1 is read as 5 (LEGACY_VERSIONS).

PostgreSQL also has routines: functions made from the same statements as the
transactions (statements.py), re-created whenever their text changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from server.domain.models import FIRST_UNIT, AuditEvent, LedgerKind, OrderStatus
from server.keys import CodeCipher
from server.store import statements as sql
from server.store.rows import Row
from server.store.sql import Dialect, Statement, Unit

_INITIAL = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value {bytes} NOT NULL
) {without_rowid};

CREATE TABLE accounts (
    id            {id},
    name          TEXT NOT NULL UNIQUE,
    created_at_us {int} NOT NULL
);

CREATE TABLE api_keys (
    api_key       TEXT PRIMARY KEY,
    account_id    {int} NOT NULL REFERENCES accounts(id),
    secret_hash   TEXT NOT NULL,
    created_at_us {int} NOT NULL
) {without_rowid};

-- The current balance per currency, always equal to the sum of the ledger.
CREATE TABLE balances (
    account_id   {int} NOT NULL REFERENCES accounts(id),
    currency     TEXT NOT NULL,
    amount_minor {int} NOT NULL CHECK (amount_minor >= 0),
    PRIMARY KEY (account_id, currency)
) {without_rowid};

CREATE TABLE products (
    sku                        TEXT PRIMARY KEY,
    name                       TEXT NOT NULL,
    brand                      TEXT NOT NULL,
    currency                   TEXT NOT NULL,
    price_minor                {int} NOT NULL CHECK (price_minor > 0),
    face_value_minor           {int} NOT NULL CHECK (face_value_minor >= 0),
    instant_delivery_supported {bool} NOT NULL,
    details                    TEXT NOT NULL  -- JSON: the catalogue's descriptive fields
) {without_rowid};

CREATE TABLE rates (
    base          TEXT NOT NULL,
    quote         TEXT NOT NULL,
    rate          TEXT NOT NULL,
    as_of         TEXT NOT NULL,
    updated_at_us {int} NOT NULL,
    PRIMARY KEY (base, quote)
) {without_rowid};

-- An instant order is one unit of one product. Its id is the stockId of that unit.
CREATE TABLE orders (
    id                        {id},
    transaction_id            TEXT NOT NULL UNIQUE,
    account_id                {int} NOT NULL REFERENCES accounts(id),
    client_order_number       TEXT NOT NULL,
    sku                       TEXT NOT NULL REFERENCES products(sku),
    status                    TEXT NOT NULL
                              CHECK (status IN ('PROCESSING', 'COMPLETED', 'CANCELLED')),
    pay_currency              TEXT NOT NULL,
    unit_price_minor          {int} NOT NULL,
    original_currency         TEXT NOT NULL,
    unit_price_original_minor {int} NOT NULL,
    fx_rate                   TEXT,  -- NULL for same-currency orders
    fx_as_of                  TEXT,
    created_at_us             {int} NOT NULL
);
CREATE INDEX orders_by_account ON orders (account_id, id);
CREATE INDEX orders_by_client_number ON orders (account_id, client_order_number);

-- Every balance change, written in the transaction that made it.
CREATE TABLE ledger (
    id            {id},
    account_id    {int} NOT NULL REFERENCES accounts(id),
    currency      TEXT NOT NULL,
    amount_minor  {int} NOT NULL CHECK (amount_minor <> 0),
    kind          TEXT NOT NULL CHECK (kind IN ('TOP_UP', 'ORDER', 'REFUND')),
    order_id      {int} REFERENCES orders(id),
    created_at_us {int} NOT NULL
);
CREATE INDEX ledger_by_account ON ledger (account_id, currency);
CREATE INDEX ledger_by_order ON ledger (order_id) WHERE order_id IS NOT NULL;

-- order_id is UNIQUE: a code is sold to at most one order, an order gets one code
CREATE TABLE codes (
    id            {id},
    sku           TEXT NOT NULL REFERENCES products(sku),
    redeem_code   TEXT NOT NULL,
    pin_code      TEXT,
    order_id      {int} UNIQUE REFERENCES orders(id),
    added_at_us   {int} NOT NULL,
    UNIQUE (sku, redeem_code)
);
CREATE INDEX unsold_codes ON codes (sku, id) WHERE order_id IS NULL;
"""

_FULFILLMENT = """
-- When the order became COMPLETED or CANCELLED.
ALTER TABLE orders ADD COLUMN finished_at_us {int};
-- The fulfiller's queues: waiting orders per SKU, first come first served,
-- and by age for the deadline. Partial, so they hold only what waits.
CREATE INDEX waiting_orders ON orders (sku, id) WHERE status = 'PROCESSING';
CREATE INDEX waiting_since ON orders (created_at_us) WHERE status = 'PROCESSING';
"""

_SECURITY = """
-- The token signing key lives in the key file now, not beside the data.
DELETE FROM meta WHERE key = 'token_signing_key';

ALTER TABLE api_keys ADD COLUMN disabled_at_us {int};
CREATE INDEX api_keys_by_account ON api_keys (account_id);

-- Codes sealed with AES-GCM (see server/keys.py): key_id names the data key,
-- fingerprint (an HMAC of sku and code) keeps a code from being stocked twice.
CREATE TABLE sealed_codes (
    id            {id},
    sku           TEXT NOT NULL REFERENCES products(sku),
    fingerprint   {bytes} NOT NULL,
    redeem_code   {bytes} NOT NULL,
    pin_code      {bytes},
    key_id        {int} NOT NULL,
    order_id      {int} UNIQUE REFERENCES orders(id),
    added_at_us   {int} NOT NULL,
    UNIQUE (sku, fingerprint)
);

-- Who did what, written in the transaction of the event itself. Append-only.
CREATE TABLE audit (
    id             {id},
    at_us          {int} NOT NULL,
    event          TEXT NOT NULL,
    account_id     {int},
    api_key        TEXT,
    request_id     TEXT,
    transaction_id TEXT,
    details        TEXT  -- JSON
);
CREATE INDEX audit_by_account ON audit (account_id, at_us);
"""

#: The audit trail refuses UPDATE and DELETE: each database has its own triggers.
_AUDIT_IS_APPEND_ONLY = Statement.differing(
    sqlite="""
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
""",
    postgres="""
CREATE FUNCTION audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END $$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_is_append_only();
""",
)

_CLEAR_CODES = Statement("SELECT id, sku, redeem_code, pin_code, order_id, added_at_us FROM codes")
_INSERT_SEALED_CODE = Statement(
    "INSERT INTO sealed_codes (id, sku, fingerprint, redeem_code, pin_code, key_id,"
    " order_id, added_at_us) VALUES (:id, :sku, :fingerprint, :redeem_code, :pin_code,"
    " :key_id, :order_id, :added_at_us)"
)
_REPLACE_CODES = """
DROP TABLE codes;
ALTER TABLE sealed_codes RENAME TO codes;
CREATE INDEX unsold_codes ON codes (sku, id) WHERE order_id IS NULL;
"""


def row_dict(row: Row) -> dict[str, Any]:
    return {key: row[key] for key in row.keys()}  # noqa: SIM118 - rows are not dicts


def _seal_codes(cipher: CodeCipher) -> Unit[None]:
    """Moves the codes of schema 3 into sealed_codes, encrypted, keeping their ids."""
    rows = yield _CLEAR_CODES.rows()
    sealed = []
    for row in rows:
        redeem_code, pin_code = cipher.seal_code(row["id"], row["redeem_code"], row["pin_code"])
        sealed.append(
            {
                **row_dict(row),
                "fingerprint": cipher.fingerprint(row["sku"], row["redeem_code"]),
                "redeem_code": redeem_code,
                "pin_code": pin_code,
                "key_id": cipher.active_key_id,
            }
        )
    if sealed:
        yield _INSERT_SEALED_CODE.many(sealed)
    yield Statement(_REPLACE_CODES).script()


_CLIENT_ORDER_NUMBERS = """
-- Held a token signing key once (see step 3); nothing since.
DROP TABLE IF EXISTS meta;

-- The first order of each clientOrderNumber. Its primary key makes the
-- duplicate check exact: a second claim of a number waits for the first
-- one's transaction (PostgreSQL) or its write lock (SQLite), then sees it.
CREATE TABLE IF NOT EXISTS client_order_numbers (
    account_id          {int} NOT NULL REFERENCES accounts(id),
    client_order_number TEXT NOT NULL,
    transaction_id      TEXT NOT NULL,
    PRIMARY KEY (account_id, client_order_number)
) {without_rowid};
INSERT INTO client_order_numbers (account_id, client_order_number, transaction_id)
SELECT o.account_id, o.client_order_number, o.transaction_id FROM orders o
WHERE o.client_order_number <> '' AND o.id = (
    SELECT min(f.id) FROM orders f
    WHERE f.account_id = o.account_id AND f.client_order_number = o.client_order_number)
ON CONFLICT DO NOTHING;
"""

_IDEMPOTENCY_KEYS = """
-- The answer given to the first request with each Idempotency-Key, written in
-- the transaction of the change it answers: an order and its status then, or
-- the refusal (JSON). Kept for --idempotency-retention, then purged.
CREATE TABLE idempotency_keys (
    account_id      {int} NOT NULL REFERENCES accounts(id),
    idempotency_key TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,  -- the request's operation and data, hashed
    request_id      TEXT NOT NULL,  -- echoed by every replay
    transaction_id  TEXT,
    status          TEXT,
    refusal         TEXT,
    created_at_us   {int} NOT NULL,
    PRIMARY KEY (account_id, idempotency_key)
) {without_rowid};
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at_us);
"""

_CLIENT_REQUEST_IDS = """
-- audit.request_id is the server's own id of the request; this, beside it, is
-- the id the caller sent (X-Request-Id or x-request-id), as given: any account
-- can send any id, so it identifies nothing by itself.
ALTER TABLE audit ADD COLUMN client_request_id TEXT;
"""

#: No balance passes 10^15 minor units (money.MAX_BALANCE_MINOR, written out:
#: a released step never changes), far inside 64-bit integers, so no sum of two
#: balances overflows. SQLite cannot add a CHECK to a table: it is rebuilt.
_MAX_BALANCE = Statement.differing(
    sqlite="""
CREATE TABLE balances_bounded (
    account_id   INTEGER NOT NULL REFERENCES accounts(id),
    currency     TEXT NOT NULL,
    amount_minor INTEGER NOT NULL
                 CHECK (amount_minor >= 0 AND amount_minor <= 1000000000000000),
    PRIMARY KEY (account_id, currency)
) WITHOUT ROWID;
INSERT INTO balances_bounded (account_id, currency, amount_minor)
SELECT account_id, currency, amount_minor FROM balances;
DROP TABLE balances;
ALTER TABLE balances_bounded RENAME TO balances;
""",
    postgres="""
ALTER TABLE balances ADD CONSTRAINT balances_at_most_max
    CHECK (amount_minor <= 1000000000000000);
""",
)

_BULK_ORDERS = """
-- An order is INSTANT (one unit, described by the order row itself) or BULK
-- (its lines below; the row's sku is its first line's, its unit prices 0).
ALTER TABLE orders ADD COLUMN kind TEXT NOT NULL DEFAULT 'INSTANT'
    CHECK (kind IN ('INSTANT', 'BULK'));
-- What cancelling gave back: an instant order's price, a bulk order's units
-- not delivered.
ALTER TABLE orders ADD COLUMN refunded_minor {int} NOT NULL DEFAULT 0;
UPDATE orders SET refunded_minor = unit_price_minor WHERE status = 'CANCELLED';

-- A bulk order's product lines. Its units are numbered within the order
-- (stockId first_stock_id .. first_stock_id + quantity - 1), delivered in that
-- order: the first `delivered` have codes, the last `cancelled` were cancelled,
-- those between wait.
CREATE TABLE order_lines (
    order_id                  {int} NOT NULL REFERENCES orders(id),
    line                      {int} NOT NULL,
    sku                       TEXT NOT NULL REFERENCES products(sku),
    quantity                  {int} NOT NULL CHECK (quantity > 0),
    first_stock_id            {int} NOT NULL,
    unit_price_minor          {int} NOT NULL CHECK (unit_price_minor > 0),
    unit_price_original_minor {int} NOT NULL,
    delivered                 {int} NOT NULL DEFAULT 0,
    cancelled                 {int} NOT NULL DEFAULT 0,
    CHECK (delivered >= 0 AND cancelled >= 0 AND delivered + cancelled <= quantity),
    PRIMARY KEY (order_id, line)
) {without_rowid};
-- The fulfiller's queue of lines, beside waiting_orders: only what waits.
CREATE INDEX waiting_lines ON order_lines (sku, order_id) WHERE delivered + cancelled < quantity;
-- Instant orders alone in the instant queues.
DROP INDEX waiting_orders;
CREATE INDEX waiting_orders ON orders (sku, id) WHERE status = 'PROCESSING' AND kind = 'INSTANT';

-- A product's quantity tiers, JSON [[from, to or null, price_minor], ...] from
-- quantity 1 up; NULL: one tier, price_minor from 1.
ALTER TABLE products ADD COLUMN price_tiers TEXT;
"""

#: A code is sold to one unit of one order: (order_id, stock_id) is unique where
#: order_id alone was (an instant order's one unit is stockId 1). key_id is
#: indexed: opening checks one code per data key, and resealing finds the old ones.
_CODES_PER_UNIT = Statement.differing(
    sqlite="""
CREATE TABLE codes_per_unit (
    id            INTEGER PRIMARY KEY,
    sku           TEXT NOT NULL REFERENCES products(sku),
    fingerprint   BLOB NOT NULL,
    redeem_code   BLOB NOT NULL,
    pin_code      BLOB,
    key_id        INTEGER NOT NULL,
    order_id      INTEGER REFERENCES orders(id),
    stock_id      INTEGER,
    added_at_us   INTEGER NOT NULL,
    UNIQUE (sku, fingerprint),
    UNIQUE (order_id, stock_id)
);
INSERT INTO codes_per_unit (id, sku, fingerprint, redeem_code, pin_code, key_id, order_id,
    stock_id, added_at_us)
SELECT id, sku, fingerprint, redeem_code, pin_code, key_id, order_id,
    CASE WHEN order_id IS NULL THEN NULL ELSE 1 END, added_at_us FROM codes;
DROP TABLE codes;
ALTER TABLE codes_per_unit RENAME TO codes;
CREATE INDEX unsold_codes ON codes (sku, id) WHERE order_id IS NULL;
CREATE INDEX codes_by_key ON codes (key_id, id);
""",
    postgres="""
ALTER TABLE codes ADD COLUMN stock_id BIGINT;
UPDATE codes SET stock_id = 1 WHERE order_id IS NOT NULL;
DO $$
DECLARE v_name text;
BEGIN
    SELECT c.conname INTO v_name FROM pg_constraint c
    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
    WHERE c.conrelid = 'codes'::regclass AND c.contype = 'u' AND a.attname = 'order_id'
      AND array_length(c.conkey, 1) = 1;
    EXECUTE format('ALTER TABLE codes DROP CONSTRAINT %I', v_name);
END $$;
ALTER TABLE codes ADD CONSTRAINT codes_one_per_unit UNIQUE (order_id, stock_id);
CREATE INDEX codes_by_key ON codes (key_id, id);
""",
)

#: A step's pieces: DDL (with fragments), DDL per dialect, or a transaction.
Piece = str | Statement | Callable[[CodeCipher], Unit[None]]
MIGRATIONS: tuple[tuple[Piece, ...], ...] = (
    (_INITIAL,),
    (_FULFILLMENT,),
    (_SECURITY, _AUDIT_IS_APPEND_ONLY),
    (_seal_codes,),
    (_CLIENT_ORDER_NUMBERS,),
    (_IDEMPOTENCY_KEYS,),
    (_CLIENT_REQUEST_IDS, _MAX_BALANCE),
    (_BULK_ORDERS, _CODES_PER_UNIT),
)
SCHEMA_VERSION = len(MIGRATIONS)
#: PostgreSQL versions stored by an earlier numbering, and what they mean here.
LEGACY_VERSIONS = {Dialect.POSTGRES: {1: 5}}


def migrate(dialect: Dialect, found: int, cipher: CodeCipher) -> Unit[None]:
    """Applies the steps after version `found` (the caller records the new version)."""
    for step in MIGRATIONS[found:]:
        for piece in step:
            if isinstance(piece, str):
                yield Statement(piece).script()
            elif isinstance(piece, Statement):
                yield piece.script()
            else:
                yield from piece(cipher)


def compiled_step(version: int, dialect: Dialect) -> str:
    """The DDL of step `version` (1-based) in `dialect`, for tests that build old databases."""
    pieces = [Statement(p) if isinstance(p, str) else p for p in MIGRATIONS[version - 1]]
    return "\n".join(p.script_text(dialect) for p in pieces if isinstance(p, Statement))


# --- PostgreSQL routines -----------------------------------------------------------


@dataclass(frozen=True)
class Routine:
    name: str
    definition: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.definition.encode()).hexdigest()


def plpgsql(statement: Statement, **expressions: str) -> str:
    """A statement inside a PL/pgSQL body: each :name becomes the function's
    argument p_name, or the expression given for it. So the function runs the
    very statement text the transactions run."""
    compiled = statement.compiled(Dialect.POSTGRES)
    text = compiled.text
    for number, name in reversed(list(enumerate(compiled.names, start=1))):
        text = text.replace(f"${number}", expressions.get(name, f"p_{name}"))
    return text


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _place_instant_order() -> str:
    """An instant order's writes in one statement: one round trip, as SQLite does
    them in one hop to its thread (transactions.apply_order_plan, whose steps
    and statements these are). A balance spent meanwhile raises IO001, which
    rolls the whole statement back. With an Idempotency-Key, the key is held
    first (in use elsewhere: it says so), a stored answer is returned as it is,
    and the answer is stored with the order."""
    price = {"currency": "p_pay_currency", "amount_minor": "p_unit_price_minor"}
    created = plpgsql(
        sql.INSERT_AUDIT,
        event=_literal(AuditEvent.ORDER_CREATED.value),
        details="json_build_object('sku', p_sku, 'status', v_status)::text",
    )
    completed = plpgsql(
        sql.INSERT_AUDIT,
        event=_literal(AuditEvent.ORDER_COMPLETED.value),
        details=f"json_build_object('stockId', {_literal(str(FIRST_UNIT))})::text",
    )
    ledger = plpgsql(
        sql.INSERT_LEDGER,
        currency="p_pay_currency",
        amount_minor="-p_unit_price_minor",
        kind=_literal(LedgerKind.ORDER.value),
        order_id="v_order_id",
    )
    remember = plpgsql(
        sql.REMEMBER_KEY,
        # The id the client knows the request by (Caller.known_request_id).
        request_id="coalesce(p_client_request_id, p_request_id, '')",
        transaction_id="p_transaction_id",
        status="v_status",
        refusal="NULL",
    )
    sell_code = plpgsql(
        sql.SELL_CODE, order_id="v_order_id", stock_id=str(FIRST_UNIT), code_id="code_id"
    )
    processing, completed_status = OrderStatus.PROCESSING.value, OrderStatus.COMPLETED.value
    return f"""
CREATE FUNCTION place_instant_order(
    p_transaction_id text, p_account_id bigint, p_client_order_number text,
    p_dup_check boolean, p_sku text, p_pay_currency text, p_unit_price_minor bigint,
    p_original_currency text, p_unit_price_original_minor bigint, p_fx_rate text,
    p_fx_as_of text, p_at bigint, p_api_key text, p_request_id text,
    p_client_request_id text, p_idempotency_key text, p_fingerprint text,
    OUT key_state text, OUT remembered_fingerprint text, OUT remembered_request_id text,
    OUT remembered_transaction_id text, OUT remembered_status text,
    OUT remembered_refusal text,
    OUT duplicate_of text, OUT new_order_id bigint, OUT order_status text, OUT code_id bigint,
    OUT code_key_id bigint, OUT code_redeem bytea, OUT code_pin bytea)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
-- No variable is named as a column: each :parameter becomes p_... or v_...
DECLARE
    v_key_free boolean;
    v_claimed text;
    v_status text;
    v_order_id bigint;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        {plpgsql(sql.LOCK_KEY)} INTO v_key_free;
        IF NOT v_key_free THEN
            key_state := 'in_use';
            RETURN;
        END IF;
        {plpgsql(sql.RECALL_KEY)} INTO remembered_fingerprint, remembered_request_id,
            remembered_transaction_id, remembered_status, remembered_refusal;
        IF FOUND THEN
            key_state := 'remembered';
            RETURN;
        END IF;
    END IF;
    IF p_client_order_number <> '' THEN
        {plpgsql(sql.CLAIM_CLIENT_ORDER_NUMBER)} INTO v_claimed;
        IF v_claimed IS NULL AND p_dup_check THEN
            {plpgsql(sql.CLIENT_ORDER_NUMBER_HOLDER)} INTO duplicate_of;
            RETURN;
        END IF;
    END IF;
    {plpgsql(sql.DEBIT, **price)};
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the balance does not cover the order' USING ERRCODE = 'IO001';
    END IF;
    {plpgsql(sql.CODE_FOR_NEW_ORDER)}
        INTO code_id, code_key_id, code_redeem, code_pin;
    v_status := CASE WHEN code_id IS NULL THEN {_literal(processing)}
                     ELSE {_literal(completed_status)} END;
    {plpgsql(sql.INSERT_ORDER, status="v_status")} INTO v_order_id;
    {ledger};
    {created};
    IF code_id IS NOT NULL THEN
        {sell_code};
        {completed};
    END IF;
    IF p_idempotency_key IS NOT NULL THEN
        {remember};
    END IF;
    new_order_id := v_order_id;
    order_status := v_status;
END $$;
"""


ROUTINES: Mapping[str, Routine] = {
    "place_instant_order": Routine("place_instant_order", _place_instant_order()),
}
