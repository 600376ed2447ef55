"""The VERP token: it round-trips, survives an MTA's case changes, and cannot be forged."""

from __future__ import annotations

import os

from cryptography.fernet import Fernet

from app.crypto import SecretBox
from app.delivery.verp import PURPOSE, Verp, VerpToken

VERP = Verp(SecretBox([Fernet.generate_key().decode()]).derive(PURPOSE))
MESSAGE = os.urandom(16).hex()


def test_a_token_names_the_message_and_the_recipient() -> None:
    address = VERP.address("bounces.example.com", MESSAGE, 123_456_789)
    assert address.endswith("@bounces.example.com")
    assert len(address.partition("@")[0]) <= 64  # SMTP's limit on a local part
    assert VERP.read(address) == VerpToken(MESSAGE, 123_456_789)
    assert VERP.read(f"Bounce Box <{address}>") == VerpToken(MESSAGE, 123_456_789)


def test_a_group_token_names_the_message_only() -> None:
    assert VERP.read(VERP.address("b.example.com", MESSAGE)) == VerpToken(MESSAGE, None)


def test_case_changes_do_not_matter() -> None:
    address = VERP.address("b.example.com", MESSAGE, 7)
    assert VERP.read(address.upper()) == VerpToken(MESSAGE, 7)


def test_a_forged_or_foreign_token_reads_as_none() -> None:
    address = VERP.address("b.example.com", MESSAGE, 7)
    local, _, domain = address.partition("@")
    flipped = local[:-1] + ("a" if local[-1] != "a" else "b")
    assert VERP.read(f"{flipped}@{domain}") is None
    other = Verp(SecretBox([Fernet.generate_key().decode()]).derive(PURPOSE))
    assert other.read(address) is None
    assert VERP.read("bounces+notatoken@b.example.com") is None
    assert VERP.read("someone@example.com") is None
