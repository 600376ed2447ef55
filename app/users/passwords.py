"""Password hashing: argon2id with OWASP's minimum (19 MiB, 2 passes, 1 lane), through libpass."""

from __future__ import annotations

import secrets

from passlib.hash import argon2

_hasher = argon2.using(type="ID", memory_cost=19_456, rounds=2, parallelism=1)
DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
"""Verified against when the user does not exist, so both cases cost the same."""


def hash_password(password: str) -> str:
    return str(_hasher.hash(password))


def verify_password(password: str, password_hash: str) -> bool:
    return bool(_hasher.verify(password, password_hash))


def generate_password() -> str:
    return secrets.token_urlsafe(18)
