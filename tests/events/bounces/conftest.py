"""Helpers for the bounce tests: the samples in tests/data/dsn, rewritten to be about a message
the test sent (its VERP envelope sender, its Message-ID, its recipient)."""

from __future__ import annotations

from pathlib import Path

from tests.delivery.conftest import dispatcher

__all__ = ["dispatcher"]

SAMPLES = Path(__file__).parents[2] / "data" / "dsn"
SAMPLE_VERP = "bounces+q3z4v6d2nq7h5m2wplh6zutvyyqz7k2sfkdf4ab3xzr3ugfg7kma@bounces.example.com"
SAMPLE_MESSAGE_ID = "<5f0c2d3e9a7b41c8b1e6d4f2a9c8b7e1@example.com>"


def sample(
    name: str,
    *,
    verp: str | None = None,
    message_id: str | None = None,
    recipient: tuple[str, str] | None = None,
) -> bytes:
    """A sample report, about another envelope sender, Message-ID or recipient (old, new)."""
    text = (SAMPLES / name).read_text()
    if verp is not None:
        text = text.replace(SAMPLE_VERP, verp)
    if message_id is not None:
        text = text.replace(SAMPLE_MESSAGE_ID, message_id)
    if recipient is not None:
        text = text.replace(*recipient)
    return text.encode()
