"""The key that encrypts stored secret values, and the AEAD around it.

    cipher = SecretCipher.from_settings(settings)
    blob = cipher.encrypt(value, aad=...)          # creates the key file on first use
    cipher.decrypt(blob, aad=..., key_id=row.key_id)

The key is SPINDLE_SECRETS_KEY (32 bytes in base64, standard or URL-safe alphabet) or, when that is
unset, `<data_dir>/secrets.key`, created with mode 0600 the first time a value is encrypted. Values
are sealed with AES-256-GCM (a fresh 96-bit nonce each, `cryptography`'s AESGCM); the associated
data binds a ciphertext to its repo and key name, so rows swapped in the database do not decrypt.
Each row also stores `key_id`, a digest of the key that sealed it: a service started with another
key says so at start-up, naming SPINDLE_SECRETS_KEY, instead of failing runs one by one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from app.config import Settings

KEY_BYTES = 32
NONCE_BYTES = 12
FORMAT_VERSION = b"\x01"
KEY_FILE_NAME = "secrets.key"


class SecretsKeyError(Exception):
    """The key is missing, malformed, readable by others, or not the one the stored values were
    sealed with; the message names SPINDLE_SECRETS_KEY or the key file."""


class SecretDecryptError(Exception):
    """A stored value that does not open with this key (tampered, or sealed with another key)."""


def decode_key(text: str, *, source: str) -> bytes:
    """32 key bytes from base64 text (standard or URL-safe alphabet, padding optional)."""
    cleaned = text.strip()
    padded = cleaned + "=" * (-len(cleaned) % 4)
    alphabet = "-_" if ("-" in cleaned or "_" in cleaned) else "+/"
    try:
        key = base64.b64decode(padded, altchars=alphabet.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise SecretsKeyError(
            f"{source} is not base64: it must be {KEY_BYTES} random bytes in base64 "
            "(e.g. `openssl rand -base64 32`)"
        ) from None
    if len(key) != KEY_BYTES:
        raise SecretsKeyError(
            f"{source} must be {KEY_BYTES} random bytes in base64, not {len(key)} bytes "
            "(e.g. `openssl rand -base64 32`)"
        )
    return key


def key_id(key: bytes) -> str:
    """A public name of the key: stored with each value, compared at start-up."""
    return hmac.new(key, b"spindle secrets key id", hashlib.sha256).hexdigest()[:16]


def aad_for(repo_id: int, name: str) -> bytes:
    """The associated data of a stored value: its repo row and key name."""
    return f"spindle repo_secret v1\0{repo_id}\0{name}".encode()


class SecretCipher:
    """Seals and opens secret values with the configured key (see the module docstring)."""

    def __init__(self, *, key: bytes | None, key_file: Path) -> None:
        self._key = key
        self.key_file = key_file
        self.from_environment = key is not None

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretCipher:
        configured = settings.secrets_key
        key = (
            decode_key(configured.get_secret_value(), source="SPINDLE_SECRETS_KEY")
            if configured is not None
            else None
        )
        return cls(key=key, key_file=settings.data_dir / KEY_FILE_NAME)

    @property
    def source(self) -> str:
        return "SPINDLE_SECRETS_KEY" if self.from_environment else f"the key file {self.key_file}"

    def key(self, *, create: bool) -> bytes | None:
        """The key; from the key file when SPINDLE_SECRETS_KEY is unset (made if `create`)."""
        if self._key is None:
            self._key = self._read_key_file() if not create else self._read_or_create_key_file()
        return self._key

    def current_key_id(self, *, create: bool = False) -> str | None:
        key = self.key(create=create)
        return key_id(key) if key is not None else None

    def encrypt(self, value: str, *, aad: bytes) -> tuple[bytes, str]:
        """(sealed blob, key id) of `value`."""
        key = self.key(create=True)
        assert key is not None
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(key).encrypt(nonce, value.encode("utf-8"), aad)
        return FORMAT_VERSION + nonce + sealed, key_id(key)

    def decrypt(self, blob: bytes, *, aad: bytes, stored_key_id: str) -> str:
        key = self.key(create=False)
        if key is None:
            raise SecretsKeyError(
                f"secrets are stored but there is no key: set SPINDLE_SECRETS_KEY or restore {self.key_file}"
            )
        if stored_key_id != key_id(key):
            raise SecretDecryptError(f"sealed with key {stored_key_id}, not with {self.source}")
        if blob[:1] != FORMAT_VERSION or len(blob) < 1 + NONCE_BYTES + 16:
            raise SecretDecryptError("not a sealed value of this version")
        try:
            return (
                AESGCM(key).decrypt(blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :], aad).decode("utf-8")
            )
        except (InvalidTag, UnicodeDecodeError):
            raise SecretDecryptError(
                "does not open with this key (tampered, or sealed with another key)"
            ) from None

    # -- the key file ----------------------------------------------------------------------------

    def _read_key_file(self) -> bytes | None:
        try:
            info = self.key_file.stat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            raise SecretsKeyError(f"the secrets key file {self.key_file} is not a regular file")
        if info.st_mode & 0o077:
            # A key others can read protects nothing; refuse rather than use it.
            raise SecretsKeyError(
                f"the secrets key file {self.key_file} is readable by other users "
                f"(mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 it, or set SPINDLE_SECRETS_KEY"
            )
        return decode_key(self.key_file.read_text(), source=f"the secrets key file {self.key_file}")

    def _read_or_create_key_file(self) -> bytes:
        existing = self._read_key_file()
        if existing is not None:
            return existing
        self.key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(KEY_BYTES)
        # Written whole under a temporary name, then linked into place: link() fails when the file
        # exists, so two processes creating it at once keep one key (the first one's), and nobody
        # ever reads a half-written file.
        temporary = self.key_file.with_name(f".{KEY_FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(base64.b64encode(key).decode("ascii") + "\n")
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(temporary, self.key_file)
            except FileExistsError:
                found = self._read_key_file()
                assert found is not None
                return found
        finally:
            temporary.unlink(missing_ok=True)
        return key
