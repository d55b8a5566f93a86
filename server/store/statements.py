"""Every SQL statement the stores run, each written once for both backends.

Named parameters and {fragments} are translated per backend by sql.py. The
few statements that exist for one backend alone say why where they stand.
Statuses and ledger kinds are spelt as the schema's CHECK constraints spell
them; the Python values that fill them come from the domain's enums.
"""

from __future__ import annotations

from server.store.sql import Statement

# --- orders ------------------------------------------------------------------------

#: An order with its code, if it is an instant order that has one: what
#: `rows.order_from_row` reads (a bulk order's lines are read by ORDER_LINES).
_ORDER = """
    SELECT o.id, o.transaction_id, o.client_order_number, o.sku, o.status, o.pay_currency,
           o.unit_price_minor, o.original_currency, o.unit_price_original_minor, o.fx_rate,
           o.fx_as_of, o.created_at_us, o.kind, o.refunded_minor, c.id AS code_id,
           c.key_id AS code_key_id, c.redeem_code, c.pin_code
    FROM orders o LEFT JOIN codes c ON c.order_id = o.id AND o.kind = 'INSTANT'
"""
_OF_ACCOUNT = "WHERE o.transaction_id = :transaction_id AND o.account_id = :account_id"
ORDER_BY_TRANSACTION_ID = Statement(_ORDER + _OF_ACCOUNT)
#: The order a customer cancels, locked until the cancellation commits.
ORDER_TO_CANCEL = Statement(_ORDER + _OF_ACCOUNT + " {lock_order}")


def _orders_of_account(*filters: str) -> tuple[Statement, Statement]:
    """(count, page) of an account's orders with the filters that are set, newest first."""
    where = " AND ".join(["o.account_id = :account_id", *filters])
    return (
        Statement(f"SELECT count(*) FROM orders o WHERE {where}"),  # noqa: S608
        Statement(f"{_ORDER} WHERE {where} ORDER BY o.id DESC LIMIT :limit OFFSET :offset"),
    )


_BY_TRANSACTION_ID = "o.transaction_id = :transaction_id"
_BY_CLIENT_ORDER_NUMBER = "o.client_order_number = :client_order_number"
#: Keyed by (filter by transaction id, filter by clientOrderNumber). Four texts
#: rather than one with "(:x = '' OR ...)", which would keep SQLite off the indexes.
ORDERS_OF_ACCOUNT = {
    (False, False): _orders_of_account(),
    (True, False): _orders_of_account(_BY_TRANSACTION_ID),
    (False, True): _orders_of_account(_BY_CLIENT_ORDER_NUMBER),
    (True, True): _orders_of_account(_BY_TRANSACTION_ID, _BY_CLIENT_ORDER_NUMBER),
}

#: The lines of bulk orders, in order: what `rows.line_from_row` reads.
ORDER_LINES = Statement(
    "SELECT order_id, line, sku, quantity, first_stock_id, unit_price_minor,"
    " unit_price_original_minor, delivered, cancelled FROM order_lines"
    " WHERE order_id = ANY(:order_ids) ORDER BY order_id, line"
)
#: The codes of some units of an order (at most a page of stockIds).
UNIT_CODES = Statement(
    "SELECT stock_id, id, key_id, redeem_code, pin_code FROM codes"
    " WHERE order_id = :order_id AND stock_id = ANY(:stock_ids) ORDER BY stock_id"
)

# --- placing an order --------------------------------------------------------------

_PRICED_PRODUCT = (
    "SELECT sku, name, brand, currency, price_minor, face_value_minor,"
    " instant_delivery_supported, price_tiers FROM products"
)
PRICED_PRODUCT = Statement(_PRICED_PRODUCT + " WHERE sku = :sku")
PRICED_PRODUCTS = Statement(_PRICED_PRODUCT + " WHERE sku = ANY(:skus)")
BALANCES = Statement("SELECT currency, amount_minor FROM balances WHERE account_id = :account_id")
_RATES = "SELECT base, quote, rate, as_of, updated_at_us FROM rates"
RATE = Statement(_RATES + " WHERE base = :base AND quote = :quote")
ALL_RATES = Statement(_RATES + " ORDER BY base, quote")
CLIENT_ORDER_NUMBER_HOLDER = Statement(
    "SELECT transaction_id FROM client_order_numbers"
    " WHERE account_id = :account_id AND client_order_number = :client_order_number"
)
#: Claims the number for the order, unless an order has it: then no row is
#: returned. The primary key makes the duplicate check exact across replicas.
CLAIM_CLIENT_ORDER_NUMBER = Statement(
    "INSERT INTO client_order_numbers (account_id, client_order_number, transaction_id)"
    " VALUES (:account_id, :client_order_number, :transaction_id)"
    " ON CONFLICT DO NOTHING RETURNING transaction_id"
)
#: Conditional, so that no balance ever goes negative: changes nothing when it
#: does not cover the amount.
DEBIT = Statement(
    "UPDATE balances SET amount_minor = amount_minor - :amount_minor"
    " WHERE account_id = :account_id AND currency = :currency AND amount_minor >= :amount_minor"
)
#: The oldest unsold code for a new order, unless orders (instant, or bulk lines)
#: already wait for the SKU: they are served first, in order, and the new one
#: queues behind them.
CODE_FOR_NEW_ORDER = Statement(
    "SELECT id, key_id, redeem_code, pin_code FROM codes {unsold_codes_index}"
    " WHERE sku = :sku AND order_id IS NULL AND NOT EXISTS"
    " (SELECT 1 FROM orders w WHERE w.sku = :sku AND w.status = 'PROCESSING'"
    "  AND w.kind = 'INSTANT')"
    " AND NOT EXISTS (SELECT 1 FROM order_lines l"
    "  WHERE l.sku = :sku AND l.delivered + l.cancelled < l.quantity)"
    " ORDER BY id LIMIT 1 {skip_locked}"
)
INSERT_ORDER = Statement(
    "INSERT INTO orders (transaction_id, account_id, client_order_number, sku, status,"
    " pay_currency, unit_price_minor, original_currency, unit_price_original_minor,"
    " fx_rate, fx_as_of, created_at_us)"
    " VALUES (:transaction_id, :account_id, :client_order_number, :sku, :status,"
    " :pay_currency, :unit_price_minor, :original_currency, :unit_price_original_minor,"
    " :fx_rate, :fx_as_of, :at)"
    " RETURNING id"
)
SELL_CODE = Statement(
    "UPDATE codes SET order_id = :order_id, stock_id = :stock_id WHERE id = :code_id"
)
#: A bulk order: its row (the first line's SKU, prices on the lines), then its lines.
INSERT_BULK_ORDER = Statement(
    "INSERT INTO orders (transaction_id, account_id, client_order_number, sku, status,"
    " pay_currency, unit_price_minor, original_currency, unit_price_original_minor,"
    " fx_rate, fx_as_of, created_at_us, kind)"
    " VALUES (:transaction_id, :account_id, :client_order_number, :sku, 'PROCESSING',"
    " :pay_currency, 0, :original_currency, 0, :fx_rate, :fx_as_of, :at, 'BULK')"
    " RETURNING id"
)
INSERT_ORDER_LINE = Statement(
    "INSERT INTO order_lines (order_id, line, sku, quantity, first_stock_id, unit_price_minor,"
    " unit_price_original_minor) VALUES (:order_id, :line, :sku, :quantity, :first_stock_id,"
    " :unit_price_minor, :unit_price_original_minor)"
)

# PostgreSQL places an order in two round trips: these facts in one query
# (SQLite reads them with the statements above, in its write transaction,
# where each costs microseconds), then place_instant_order (schema.py).
ORDER_FACTS = Statement(
    "SELECT (SELECT k FROM idempotency_keys k WHERE k.account_id = :account_id"
    "  AND k.idempotency_key = :idempotency_key) AS remembered,"
    " (SELECT p FROM products p WHERE p.sku = :sku) AS product,"
    " ARRAY(SELECT b FROM balances b WHERE b.account_id = :account_id) AS balances,"
    " ARRAY(SELECT r FROM rates r WHERE r.base ="
    "  (SELECT currency FROM products WHERE sku = :sku)) AS rates,"
    " (SELECT transaction_id FROM client_order_numbers WHERE account_id = :account_id"
    "  AND client_order_number = :client_order_number) AS duplicate_of"
)
PLACE_INSTANT_ORDER = Statement(
    "SELECT * FROM place_instant_order(:transaction_id, :account_id, :client_order_number,"
    " :dup_check, :sku, :pay_currency, :unit_price_minor, :original_currency,"
    " :unit_price_original_minor, :fx_rate, :fx_as_of, :at, :api_key, :request_id,"
    " :client_request_id, :idempotency_key, :fingerprint)"
)

# --- idempotency keys --------------------------------------------------------------

#: Taken first by a transaction that may store the answer to a key, so that one
#: request at a time holds a key: on PostgreSQL an advisory lock, held until the
#: transaction ends and never waited for (taken elsewhere: the key is in use).
#: SQLite's writers are serialized, so there a key is always free.
LOCK_KEY = Statement.differing(
    sqlite="SELECT 1",
    postgres="SELECT pg_try_advisory_xact_lock(hashtextextended(:idempotency_key, :account_id))",
)
RECALL_KEY = Statement(
    "SELECT fingerprint, request_id, transaction_id, status, refusal FROM idempotency_keys"
    " WHERE account_id = :account_id AND idempotency_key = :idempotency_key"
)
REMEMBER_KEY = Statement(
    "INSERT INTO idempotency_keys (account_id, idempotency_key, fingerprint, request_id,"
    " transaction_id, status, refusal, created_at_us) VALUES (:account_id, :idempotency_key,"
    " :fingerprint, :request_id, :transaction_id, :status, :refusal, :at)"
)
#: Keys older than the retention, a bounded batch at a time.
FORGET_KEYS = Statement(
    "DELETE FROM idempotency_keys WHERE (account_id, idempotency_key) IN"
    " (SELECT account_id, idempotency_key FROM idempotency_keys"
    "  WHERE created_at_us < :before LIMIT :limit)"
)

# --- fulfillment -------------------------------------------------------------------

WAITING_SKUS = Statement(
    "SELECT sku FROM orders WHERE status = 'PROCESSING' AND kind = 'INSTANT'"
    " UNION SELECT sku FROM order_lines WHERE delivered + cancelled < quantity"
)
#: What waits for codes of the SKUs, oldest order first across both kinds: an
#: instant order's one unit (line 0), a bulk line's units not yet delivered; of
#: orders placed since :not_before only (the older ones are past their deadline).
WAITING_UNITS = Statement(
    "SELECT id AS order_id, 0 AS line, sku, 1 AS units FROM orders"
    " WHERE status = 'PROCESSING' AND kind = 'INSTANT' AND sku = ANY(:skus)"
    " AND created_at_us >= :not_before"
    " UNION ALL SELECT l.order_id, l.line, l.sku, l.quantity - l.delivered - l.cancelled"
    " FROM order_lines l JOIN orders o ON o.id = l.order_id"
    " WHERE l.delivered + l.cancelled < l.quantity AND l.sku = ANY(:skus)"
    " AND o.created_at_us >= :not_before"
    " ORDER BY order_id, line LIMIT :limit"
)
SKUS_IN_STOCK = Statement(
    "SELECT sku FROM products WHERE sku = ANY(:skus) AND EXISTS"
    " (SELECT 1 FROM codes {unsold_codes_index}"
    "  WHERE codes.sku = products.sku AND codes.order_id IS NULL)"
)
#: Orders of both kinds, locked (skipping those another fulfiller or a
#: cancellation holds). Whoever changes a bulk order's lines holds its order
#: row first, so lines need no lock of their own and no two lock in turn.
CLAIM_WAITING_ORDERS = Statement(
    "SELECT id, transaction_id, sku, kind FROM orders WHERE id = ANY(:ids)"
    " AND status = 'PROCESSING'"
    " ORDER BY id {skip_locked}"
)
WAITING_LINES = Statement(
    "SELECT order_id, line, sku, first_stock_id, delivered,"
    " quantity - delivered - cancelled AS waiting FROM order_lines"
    " WHERE order_id = ANY(:order_ids) AND delivered + cancelled < quantity"
    " ORDER BY order_id, line"
)
DELIVER_TO_LINE = Statement(
    "UPDATE order_lines SET delivered = delivered + :count"
    " WHERE order_id = :order_id AND line = :line"
)
#: The bulk orders among :ids still PROCESSING whose units no longer wait.
BULK_ORDERS_DONE = Statement(
    "SELECT id FROM orders o WHERE o.id = ANY(:ids) AND o.status = 'PROCESSING'"
    " AND NOT EXISTS (SELECT 1 FROM order_lines l"
    "  WHERE l.order_id = o.id AND l.delivered + l.cancelled < l.quantity)"
)
#: Cancels the units that still wait; returns what each line gives back.
CANCEL_WAITING_UNITS = Statement(
    "UPDATE order_lines SET cancelled = quantity - delivered"
    " WHERE order_id = ANY(:order_ids) AND delivered + cancelled < quantity"
    " RETURNING order_id, cancelled * unit_price_minor AS refund_minor"
)
#: The bulk orders among :order_ids that had a unit delivered.
DELIVERED_ANY = Statement(
    "SELECT DISTINCT order_id FROM order_lines WHERE order_id = ANY(:order_ids) AND delivered > 0"
)
SET_REFUNDED = Statement("UPDATE orders SET refunded_minor = :refunded_minor WHERE id = :id")
CLAIM_UNSOLD_CODES = Statement(
    "SELECT id FROM codes {unsold_codes_index} WHERE sku = :sku AND order_id IS NULL"
    " ORDER BY id LIMIT :count {skip_locked}"
)
ANY_OVERDUE = Statement(
    "SELECT 1 FROM orders WHERE status = 'PROCESSING' AND created_at_us < :before LIMIT 1"
)
CLAIM_OVERDUE_ORDERS = Statement(
    "SELECT id, kind FROM orders WHERE status = 'PROCESSING' AND created_at_us < :before"
    " ORDER BY created_at_us LIMIT :limit {skip_locked}"
)
#: PROCESSING -> :status; an order no longer PROCESSING is left alone, which
#: makes every step safe to repeat.
FINISH_ORDERS = Statement(
    "UPDATE orders SET status = :status, finished_at_us = :at,"
    " refunded_minor = CASE WHEN :status = 'CANCELLED' AND kind = 'INSTANT'"
    "  THEN unit_price_minor ELSE refunded_minor END"
    " WHERE id = ANY(:ids) AND status = 'PROCESSING'"
    " RETURNING id, account_id, transaction_id, pay_currency, unit_price_minor, kind"
)
#: How far each order has come: its status and, for a bulk order, its units delivered.
PROGRESS_AMONG = Statement(
    "SELECT o.transaction_id, o.status, (SELECT CAST(coalesce(sum(l.delivered), 0) AS BIGINT)"
    "  FROM order_lines l WHERE l.order_id = o.id) AS delivered"
    " FROM orders o WHERE o.transaction_id = ANY(:transaction_ids)"
)

# --- money -------------------------------------------------------------------------

#: Adds to a balance (creating it); returns the new balance, or no row when
#: the sum would pass :max_minor (the schema's CHECK is the backstop).
CREDIT = Statement(
    "INSERT INTO balances (account_id, currency, amount_minor)"
    " VALUES (:account_id, :currency, :amount_minor)"
    " ON CONFLICT (account_id, currency) DO UPDATE"
    " SET amount_minor = balances.amount_minor + excluded.amount_minor"
    " WHERE balances.amount_minor + excluded.amount_minor <= :max_minor"
    " RETURNING amount_minor"
)
INSERT_LEDGER = Statement(
    "INSERT INTO ledger (account_id, currency, amount_minor, kind, order_id, created_at_us)"
    " VALUES (:account_id, :currency, :amount_minor, :kind, :order_id, :at)"
)

# --- catalogue, rates, credentials, audit ------------------------------------------

_PRODUCT = (
    "SELECT sku, name, brand, currency, price_minor, face_value_minor,"
    " instant_delivery_supported, price_tiers, details FROM products"
)
PRODUCTS = (
    Statement("SELECT count(*) FROM products"),
    Statement(_PRODUCT + " ORDER BY sku LIMIT :limit OFFSET :offset"),
)
PRODUCTS_BY_SKU = (
    Statement("SELECT count(*) FROM products WHERE sku = ANY(:skus)"),
    Statement(_PRODUCT + " WHERE sku = ANY(:skus) ORDER BY sku LIMIT :limit OFFSET :offset"),
)
PRODUCT_CURRENCIES = Statement("SELECT DISTINCT currency FROM products ORDER BY currency")
KNOWN_SKUS = Statement("SELECT sku FROM products WHERE sku = ANY(:skus)")
CREDENTIALS = Statement(
    "SELECT api_key, account_id, secret_hash, disabled_at_us IS NULL AS active"
    " FROM api_keys WHERE api_key = :api_key"
)
API_KEY_ACTIVE = Statement(
    "SELECT 1 FROM api_keys WHERE api_key = :api_key AND account_id = :account_id"
    " AND disabled_at_us IS NULL"
)
#: request_id is ours; client_request_id the caller's, as given (anyone can repeat it).
INSERT_AUDIT = Statement(
    "INSERT INTO audit (at_us, event, account_id, api_key, request_id, client_request_id,"
    " transaction_id, details) VALUES (:at, :event, :account_id, :api_key, :request_id,"
    " :client_request_id, :transaction_id, :details)"
)
AUDIT_TRAIL = Statement(
    "SELECT at_us, event, account_id, api_key, request_id, client_request_id, transaction_id,"
    " details FROM audit WHERE account_id = :account_id AND at_us >= :since ORDER BY id"
)

# --- operations --------------------------------------------------------------------

#: Whether the database answers at all (readiness).
PING = Statement("SELECT 1 AS alive")
#: Per product: codes in stock, orders waiting for it, and since when the oldest waits.
STOCK_LEVELS = Statement(
    "SELECT p.sku,"
    " (SELECT count(*) FROM codes c {unsold_codes_index}"
    "  WHERE c.sku = p.sku AND c.order_id IS NULL) AS unsold,"
    " (SELECT count(*) FROM orders w WHERE w.sku = p.sku AND w.status = 'PROCESSING'"
    "  AND w.kind = 'INSTANT') + (SELECT CAST(coalesce(sum(l.quantity - l.delivered"
    "  - l.cancelled), 0) AS BIGINT)"
    "  FROM order_lines l WHERE l.sku = p.sku AND l.delivered + l.cancelled < l.quantity)"
    "  AS waiting,"
    " (SELECT min(w.created_at_us) FROM orders w WHERE w.status = 'PROCESSING' AND (w.sku = p.sku"
    "  AND w.kind = 'INSTANT' OR w.id IN (SELECT l.order_id FROM order_lines l WHERE l.sku = p.sku"
    "  AND l.delivered + l.cancelled < l.quantity))) AS oldest_waiting_us"
    " FROM products p ORDER BY p.sku"
)
ALL_BALANCES = Statement(
    "SELECT a.id AS account_id, a.name, b.currency, b.amount_minor"
    " FROM balances b JOIN accounts a ON a.id = b.account_id ORDER BY a.id, b.currency"
)
ORDERS_BY_STATUS = Statement(
    "SELECT status, count(*) AS orders FROM orders WHERE created_at_us >= :since GROUP BY status"
)

# --- administration ----------------------------------------------------------------

#: On PostgreSQL the account's row lock serializes its key creations, so that
#: counting its active keys holds until the new one is added.
ACCOUNT = Statement("SELECT id FROM accounts WHERE id = :account_id {for_update}")
INSERT_ACCOUNT = Statement(
    "INSERT INTO accounts (name, created_at_us) VALUES (:name, :at) RETURNING id"
)
ACTIVE_KEYS = Statement(
    "SELECT count(*) FROM api_keys WHERE account_id = :account_id AND disabled_at_us IS NULL"
)
INSERT_API_KEY = Statement(
    "INSERT INTO api_keys (api_key, account_id, secret_hash, created_at_us)"
    " VALUES (:api_key, :account_id, :secret_hash, :at)"
)
DISABLE_API_KEY = Statement(
    "UPDATE api_keys SET disabled_at_us = :at"
    " WHERE api_key = :api_key AND disabled_at_us IS NULL RETURNING account_id"
)
UPSERT_PRODUCT = Statement(
    "INSERT INTO products (sku, name, brand, currency, price_minor, face_value_minor,"
    " instant_delivery_supported, price_tiers, details)"
    " VALUES (:sku, :name, :brand, :currency, :price_minor, :face_value_minor,"
    " :instant_delivery_supported, :price_tiers, :details)"
    " ON CONFLICT (sku) DO UPDATE SET name = excluded.name, brand = excluded.brand,"
    " currency = excluded.currency, price_minor = excluded.price_minor,"
    " face_value_minor = excluded.face_value_minor,"
    " instant_delivery_supported = excluded.instant_delivery_supported,"
    " price_tiers = excluded.price_tiers, details = excluded.details"
)
UPSERT_RATE = Statement(
    "INSERT INTO rates (base, quote, rate, as_of, updated_at_us)"
    " VALUES (:base, :quote, :rate, :as_of, :at)"
    " ON CONFLICT (base, quote) DO UPDATE SET rate = excluded.rate,"
    " as_of = excluded.as_of, updated_at_us = excluded.updated_at_us"
)
#: The ids of `count` new codes, drawn before the insert because each sealed
#: value names its row. PostgreSQL draws from the sequence, safe with other
#: writers; SQLite's writers are serialized, so the next ids are free.
NEW_CODE_IDS = Statement.differing(
    sqlite="WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)"
    " SELECT (SELECT coalesce(max(id), 0) FROM codes) + i FROM n",
    postgres="SELECT nextval(pg_get_serial_sequence('codes', 'id'))"
    " FROM generate_series(1, :count)",
)
INSERT_CODE = Statement(
    "INSERT INTO codes (id, sku, fingerprint, redeem_code, pin_code, key_id, added_at_us)"
    " VALUES (:id, :sku, :fingerprint, :redeem_code, :pin_code, :key_id, :at)"
)
CODES_TO_RESEAL = Statement(
    "SELECT id, key_id, redeem_code, pin_code FROM codes WHERE key_id <> :active_key_id"
    " ORDER BY id LIMIT :limit {skip_locked}"
)
RESEAL_CODE = Statement(
    "UPDATE codes SET redeem_code = :redeem_code, pin_code = :pin_code, key_id = :key_id"
    " WHERE id = :id"
)
#: The first code sealed with each data key: what opening checks the key file with.
#: A walk of the index codes_by_key, one probe per data key (a handful), not a
#: scan of the codes: opening costs the same with ten codes or ten million.
ONE_CODE_PER_KEY = Statement("""
    WITH RECURSIVE data_keys(key_id) AS (
        SELECT min(key_id) FROM codes
        UNION ALL
        SELECT (SELECT min(c.key_id) FROM codes c WHERE c.key_id > d.key_id)
        FROM data_keys d WHERE d.key_id IS NOT NULL
    )
    SELECT id, sku, fingerprint, key_id, redeem_code FROM codes WHERE id IN (
        SELECT (SELECT min(c.id) FROM codes c WHERE c.key_id = d.key_id)
        FROM data_keys d WHERE d.key_id IS NOT NULL)
""")


def _name_each_statement() -> None:
    """Each statement is named as it is here (in lower case), for metrics and traces."""
    for name, value in globals().items():
        statements = value.values() if isinstance(value, dict) else [value]
        for entry in statements:
            for statement in entry if isinstance(entry, tuple) else [entry]:
                if isinstance(statement, Statement):
                    statement.name = name.lower()


_name_each_statement()
