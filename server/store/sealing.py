"""Checking, on opening, that the key file goes with the database."""

from __future__ import annotations

from server.keys import CodeCipher
from server.store import statements as sql
from server.store.sql import Unit


def check_key_file(cipher: CodeCipher) -> Unit[None]:
    """Raises KeyFileError unless the key file opens one code per data key of the
    database and gives it its stored fingerprint. Creates the key file only for a
    database that holds no sealed code: new keys for an existing one would make
    every code unreadable, and let a code in stock be stocked, and sold, twice."""
    codes = yield sql.ONE_CODE_PER_KEY.rows()
    for code in codes:
        cipher.check_opens(
            code["id"], code["key_id"], bytes(code["redeem_code"]), code["sku"],
            bytes(code["fingerprint"]),
        )  # fmt: skip
    if not codes:
        cipher.keys()
