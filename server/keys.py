"""The service's secret keys, kept in a key file apart from the database.

A stolen database file alone gives away no code, PIN, secret or token key:

- codes and PINs are sealed with AES-256-GCM under a data key from this file,
  a random 96-bit nonce per value, and the code's row id and field as
  associated data, so a ciphertext copied to another row does not open;
- `(sku, redeemCode)` uniqueness is checked on an HMAC-SHA256 fingerprint
  keyed from this file, never on the code itself;
- bearer tokens are signed with a key from this file.

The file is JSON, created with mode 0600 when missing, but only for a database
that holds no sealed value: on opening, the store checks that the file opens one
stored code per data key and gives it its stored fingerprint (new keys would
leave every code unreadable and let a code in stock be stocked again). Data keys
have ids; each sealed value names its key, so `admin rotate-code-key` can add a
key, make it the active one and re-encrypt, while every process can still open
values sealed under an older key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12
#: Every key in the file is 32 random bytes, as made here.
_KEY_BYTES = 32


class KeyFileError(RuntimeError):
    """The key file is unreadable, malformed, or readable by others."""


@dataclass(frozen=True)
class KeyRing:
    token_signing_key: bytes
    fingerprint_key: bytes
    code_keys: dict[int, bytes]
    active_code_key: int


def load_or_create(path: str | Path) -> KeyRing:
    """The keys in `path`, creating the file (mode 0600) with new keys if missing."""
    path = Path(path)
    if not path.exists():
        ring = KeyRing(
            token_signing_key=secrets.token_bytes(32),
            fingerprint_key=secrets.token_bytes(32),
            code_keys={1: AESGCM.generate_key(bit_length=256)},
            active_code_key=1,
        )
        try:
            _write(path, ring, exclusive=True)
        except FileExistsError:  # another process created it first: use theirs
            pass
        else:
            return ring
    return _read(path)


def add_code_key(path: str | Path) -> KeyRing:
    """Adds a new data key and makes it the active one; older keys stay to open old values."""
    ring = load_or_create(path)
    new_id = max(ring.code_keys) + 1
    rotated = KeyRing(
        ring.token_signing_key,
        ring.fingerprint_key,
        {**ring.code_keys, new_id: AESGCM.generate_key(bit_length=256)},
        new_id,
    )
    _write(Path(path), rotated, exclusive=False)
    return rotated


class CodeCipher:
    """Seals and opens code values; re-reads the key file on meeting an unknown key id
    (another process rotated the key)."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()  # used from the database threads
        # A missing file is created on first need (`keys`), once the store has
        # checked that the database holds no value sealed with other keys.
        self._ring: KeyRing | None = _read(self._path) if self._path.exists() else None

    def reload(self) -> None:
        """Reads the key file again (after `add_code_key`)."""
        with self._lock:
            self._ring = _read(self._path)

    def keys(self) -> KeyRing:
        """The keys, creating the key file if it is missing."""
        with self._lock:
            if self._ring is None:
                self._ring = load_or_create(self._path)
            return self._ring

    @property
    def active_key_id(self) -> int:
        return self.keys().active_code_key

    def fingerprint(self, sku: str, redeem_code: str) -> bytes:
        message = sku.encode() + b"\0" + redeem_code.encode()
        return hmac.digest(self.keys().fingerprint_key, message, hashlib.sha256)

    def check_opens(
        self, code_id: int, key_id: int, redeem_code: bytes, sku: str, fingerprint: bytes
    ) -> None:
        """Raises KeyFileError unless this key file opens the stored code and gives it
        its stored fingerprint: other keys would open no code and fingerprint a code
        in stock differently, so that it could be stocked again."""
        if self._ring is None:
            raise KeyFileError(
                f"the key file {self._path} is missing, but the database holds codes sealed"
                " with its keys: restore it (new keys would open none of them)"
            )
        if key_id not in self._ring.code_keys:
            self.reload()  # another process may have rotated the key meanwhile
        if key_id not in self._ring.code_keys:
            raise KeyFileError(
                f"the key file {self._path} has no data key {key_id}, which seals codes in"
                " the database: restore the key file that goes with this database"
            )
        try:
            opened = self.open(code_id, "redeemCode", key_id, redeem_code)
        except InvalidTag:
            raise KeyFileError(
                f"the key file {self._path} does not open the database's codes (data key"
                f" {key_id}): restore the key file that goes with this database"
            ) from None
        if not hmac.compare_digest(self.fingerprint(sku, opened), fingerprint):
            raise KeyFileError(
                f"the key file {self._path} has another fingerprint key than the one the"
                " database's codes were stocked with: restore the key file that goes with it"
            )

    def seal_code(
        self, code_id: int, redeem_code: str, pin_code: str | None
    ) -> tuple[bytes, bytes | None]:
        """The sealed redeem code and PIN of the code in row `code_id`."""
        pin = None if pin_code is None else self.seal(code_id, "pinCode", pin_code)
        return self.seal(code_id, "redeemCode", redeem_code), pin

    def open_code(
        self, code_id: int, key_id: int, redeem_code: bytes, pin_code: bytes | None
    ) -> tuple[str, str | None]:
        pin = None if pin_code is None else self.open(code_id, "pinCode", key_id, pin_code)
        return self.open(code_id, "redeemCode", key_id, redeem_code), pin

    def seal(self, code_id: int, field: str, value: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        ring = self.keys()
        aead = AESGCM(ring.code_keys[ring.active_code_key])
        return nonce + aead.encrypt(nonce, value.encode(), _associated(code_id, field))

    def open(self, code_id: int, field: str, key_id: int, sealed: bytes) -> str:
        """The value; raises cryptography's InvalidTag if it was altered or moved."""
        nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        aead = AESGCM(self._key(key_id))
        return aead.decrypt(nonce, ciphertext, _associated(code_id, field)).decode()

    def _key(self, key_id: int) -> bytes:
        if self._ring is None or key_id not in self._ring.code_keys:
            self.reload()
        assert self._ring is not None  # reload read it, or raised
        return self._ring.code_keys[key_id]


def _associated(code_id: int, field: str) -> bytes:
    return f"instant-orders/codes/{code_id}/{field}".encode()


def _write(path: Path, ring: KeyRing, *, exclusive: bool) -> None:
    document = {
        "tokenSigningKey": _b64(ring.token_signing_key),
        "fingerprintKey": _b64(ring.fingerprint_key),
        "codeKeys": {str(key_id): _b64(key) for key_id, key in ring.code_keys.items()},
        "activeCodeKey": ring.active_code_key,
    }
    # Write a private temporary file, then rename: readers never see half a file.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(document, file)
        file.flush()
        os.fsync(file.fileno())
    if exclusive:
        try:
            os.link(temporary, path)  # fails if the file appeared meanwhile
        finally:
            temporary.unlink()
    else:
        temporary.replace(path)


def _read(path: Path) -> KeyRing:
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise KeyFileError(f"{path} is readable by others: chmod 600 it")
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeyFileError(f"the key file {path} is missing") from None
    except (OSError, ValueError) as error:
        raise KeyFileError(f"cannot read the key file {path}: {error}") from None
    try:
        return _ring(document)
    except (ValueError, TypeError, AttributeError) as error:
        raise KeyFileError(f"the key file {path} is malformed: {error}") from None


def _ring(document: dict[str, object]) -> KeyRing:
    """The keys of the document; ValueError (or TypeError) says what is wrong with it."""
    code_keys = document.get("codeKeys")
    if not isinstance(code_keys, dict) or not code_keys:
        raise ValueError("codeKeys holds no key")
    ring = KeyRing(
        token_signing_key=_decoded(document.get("tokenSigningKey"), "tokenSigningKey"),
        fingerprint_key=_decoded(document.get("fingerprintKey"), "fingerprintKey"),
        code_keys={int(k): _decoded(v, f"codeKeys.{k}") for k, v in code_keys.items()},
        active_code_key=_key_id(document.get("activeCodeKey")),
    )
    if ring.active_code_key not in ring.code_keys:
        raise ValueError(f"activeCodeKey {ring.active_code_key} is not among codeKeys")
    return ring


def _key_id(value: object) -> int:
    if not isinstance(value, int):
        raise ValueError("activeCodeKey is missing or not a number")
    return value


def _decoded(value: object, name: str) -> bytes:
    """A key: 32 bytes in base64, nothing else (an empty or truncated key is refused)."""
    if not isinstance(value, str):
        raise ValueError(f"{name} is missing or not text")
    try:
        key = base64.b64decode(value, validate=True)
    except ValueError:
        raise ValueError(f"{name} is not base64") from None
    if len(key) != _KEY_BYTES:
        raise ValueError(f"{name} is {len(key)} bytes, not {_KEY_BYTES}")
    return key


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()
