"""The SQLite schema. Money is stored as integer minor units, rates as exact decimal text.

MIGRATIONS[n] takes a database from schema version n to n + 1 (PRAGMA
user_version); a new database runs them all. Never edit a released step: add
one. A step is SQL, or a function for what SQL cannot do (encrypting).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from server.keys import CodeCipher

_INITIAL = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    created_at_us INTEGER NOT NULL
);

CREATE TABLE api_keys (
    api_key       TEXT PRIMARY KEY,
    account_id    INTEGER NOT NULL REFERENCES accounts(id),
    secret_hash   TEXT NOT NULL,
    created_at_us INTEGER NOT NULL
) WITHOUT ROWID;

-- The current balance per currency, always equal to the sum of the ledger.
CREATE TABLE balances (
    account_id   INTEGER NOT NULL REFERENCES accounts(id),
    currency     TEXT NOT NULL,
    amount_minor INTEGER NOT NULL CHECK (amount_minor >= 0),
    PRIMARY KEY (account_id, currency)
) WITHOUT ROWID;

-- Every balance change, written in the transaction that made it.
CREATE TABLE ledger (
    id            INTEGER PRIMARY KEY,
    account_id    INTEGER NOT NULL REFERENCES accounts(id),
    currency      TEXT NOT NULL,
    amount_minor  INTEGER NOT NULL CHECK (amount_minor <> 0),
    kind          TEXT NOT NULL CHECK (kind IN ('TOP_UP', 'ORDER', 'REFUND')),
    order_id      INTEGER REFERENCES orders(id),
    created_at_us INTEGER NOT NULL
);
CREATE INDEX ledger_by_account ON ledger (account_id, currency);
CREATE INDEX ledger_by_order ON ledger (order_id) WHERE order_id IS NOT NULL;

CREATE TABLE products (
    sku                        TEXT PRIMARY KEY,
    name                       TEXT NOT NULL,
    brand                      TEXT NOT NULL,
    currency                   TEXT NOT NULL,
    price_minor                INTEGER NOT NULL CHECK (price_minor > 0),
    face_value_minor           INTEGER NOT NULL CHECK (face_value_minor >= 0),
    instant_delivery_supported INTEGER NOT NULL,
    details                    TEXT NOT NULL  -- JSON: the catalogue's descriptive fields
) WITHOUT ROWID;

CREATE TABLE rates (
    base          TEXT NOT NULL,
    quote         TEXT NOT NULL,
    rate          TEXT NOT NULL,
    as_of         TEXT NOT NULL,
    updated_at_us INTEGER NOT NULL,
    PRIMARY KEY (base, quote)
) WITHOUT ROWID;

-- An instant order is one unit of one product. Its id is the stockId of that unit.
CREATE TABLE orders (
    id                        INTEGER PRIMARY KEY,
    transaction_id            TEXT NOT NULL UNIQUE,
    account_id                INTEGER NOT NULL REFERENCES accounts(id),
    client_order_number       TEXT NOT NULL,
    sku                       TEXT NOT NULL REFERENCES products(sku),
    status                    TEXT NOT NULL
                              CHECK (status IN ('PROCESSING', 'COMPLETED', 'CANCELLED')),
    pay_currency              TEXT NOT NULL,
    unit_price_minor          INTEGER NOT NULL,
    original_currency         TEXT NOT NULL,
    unit_price_original_minor INTEGER NOT NULL,
    fx_rate                   TEXT,  -- NULL for same-currency orders
    fx_as_of                  TEXT,
    created_at_us             INTEGER NOT NULL
);
CREATE INDEX orders_by_account ON orders (account_id, id);
CREATE INDEX orders_by_client_number ON orders (account_id, client_order_number);

-- order_id is UNIQUE: a code is sold to at most one order, an order gets one code
CREATE TABLE codes (
    id            INTEGER PRIMARY KEY,
    sku           TEXT NOT NULL REFERENCES products(sku),
    redeem_code   TEXT NOT NULL,
    pin_code      TEXT,
    order_id      INTEGER UNIQUE REFERENCES orders(id),
    added_at_us   INTEGER NOT NULL,
    UNIQUE (sku, redeem_code)
);
CREATE INDEX unsold_codes ON codes (sku, id) WHERE order_id IS NULL;
"""

_FULFILLMENT = """
-- When the order became COMPLETED or CANCELLED.
ALTER TABLE orders ADD COLUMN finished_at_us INTEGER;
-- The fulfiller's queues: waiting orders per SKU, first come first served,
-- and by age for the deadline. Partial, so they hold only what waits.
CREATE INDEX waiting_orders ON orders (sku, id) WHERE status = 'PROCESSING';
CREATE INDEX waiting_since ON orders (created_at_us) WHERE status = 'PROCESSING';
"""

_SECURITY = """
-- The token signing key lives in the key file now, not beside the data.
DELETE FROM meta WHERE key = 'token_signing_key';

ALTER TABLE api_keys ADD COLUMN disabled_at_us INTEGER;
CREATE INDEX api_keys_by_account ON api_keys (account_id);

-- Codes sealed with AES-GCM (see server/keys.py): key_id names the data key,
-- fingerprint (an HMAC of sku and code) keeps a code from being stocked twice.
CREATE TABLE sealed_codes (
    id            INTEGER PRIMARY KEY,
    sku           TEXT NOT NULL REFERENCES products(sku),
    fingerprint   BLOB NOT NULL,
    redeem_code   BLOB NOT NULL,
    pin_code      BLOB,
    key_id        INTEGER NOT NULL,
    order_id      INTEGER UNIQUE REFERENCES orders(id),
    added_at_us   INTEGER NOT NULL,
    UNIQUE (sku, fingerprint)
);

-- Who did what, written in the transaction of the event itself. Append-only.
CREATE TABLE audit (
    id             INTEGER PRIMARY KEY,
    at_us          INTEGER NOT NULL,
    event          TEXT NOT NULL,
    account_id     INTEGER,
    api_key        TEXT,
    request_id     TEXT,
    transaction_id TEXT,
    details        TEXT  -- JSON
);
CREATE INDEX audit_by_account ON audit (account_id, at_us);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"""


def _seal_codes(db: sqlite3.Connection, cipher: CodeCipher) -> None:
    """Moves the codes of schema 2 into sealed_codes, encrypted, keeping their ids."""
    rows = db.execute("SELECT id, sku, redeem_code, pin_code, order_id, added_at_us FROM codes")
    for code_id, sku, redeem_code, pin_code, order_id, added_at_us in rows.fetchall():
        db.execute(
            "INSERT INTO sealed_codes (id, sku, fingerprint, redeem_code, pin_code, key_id,"
            " order_id, added_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                code_id,
                sku,
                cipher.fingerprint(sku, redeem_code),
                *cipher.seal_code(code_id, redeem_code, pin_code),
                cipher.active_key_id,
                order_id,
                added_at_us,
            ),
        )
    db.execute("DROP TABLE codes")
    db.execute("ALTER TABLE sealed_codes RENAME TO codes")
    db.execute("CREATE INDEX unsold_codes ON codes (sku, id) WHERE order_id IS NULL")


Migration = str | Callable[[sqlite3.Connection, CodeCipher], None]
MIGRATIONS: tuple[Migration, ...] = (_INITIAL, _FULFILLMENT, _SECURITY, _seal_codes)
SCHEMA_VERSION = len(MIGRATIONS)
