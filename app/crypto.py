"""Secrets at rest: MultiFernet over keys from POSTROOM_SECRET_KEYS or a generated key file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.config import Settings

KEY_FILE = "secret.key"


class SecretBoxError(RuntimeError):
    """A stored secret cannot be decrypted with the configured keys."""


class SecretBox:
    """Encrypts secret values as one Fernet token per row; the first key encrypts, all decrypt."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one key")
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])
        self._first = base64.urlsafe_b64decode(keys[0].encode())

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for `purpose`, derived from the first key: the same on every replica
        that shares POSTROOM_SECRET_KEYS (or the key file), unknown to a reader of the database."""
        return hmac.new(self._first, purpose.encode(), hashlib.sha256).digest()

    def encrypt(self, values: dict[str, str]) -> str:
        return self._fernet.encrypt(json.dumps(values, sort_keys=True).encode()).decode()

    def decrypt(self, token: str) -> dict[str, str]:
        try:
            data: dict[str, str] = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as err:
            raise SecretBoxError("stored secrets do not decrypt with POSTROOM_SECRET_KEYS") from err
        return data

    def rotate(self, token: str) -> str:
        """Re-encrypt a token with the first key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as err:
            raise SecretBoxError("stored secrets do not decrypt with POSTROOM_SECRET_KEYS") from err


def load_secret_box(settings: Settings) -> SecretBox:
    """Keys from POSTROOM_SECRET_KEYS, else the data dir's key file (created 0600 if missing)."""
    keys = [k.strip() for k in settings.secret_keys.split(",") if k.strip()]
    if keys:
        return SecretBox(keys)
    return SecretBox([_key_file(settings.data_dir / KEY_FILE)])


def _key_file(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
        fh.flush()
        os.fsync(fh.fileno())  # on disk before any secret encrypted with it is committed
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return key.decode()
