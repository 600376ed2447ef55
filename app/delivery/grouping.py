"""How a message's pending recipients become SMTP transactions (or API calls).

Visible mail (to/cc/bcc) is one transaction with everyone in the envelope. A group (`recipients`)
through a custom server is one transaction per chunk of `maxRecipientsPerMessage`, everyone in the
envelope and `To: undisclosed-recipients:;`; a group of one goes in To. Through the built-in
server, and for recipients with their own template data, each recipient gets a message of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_CHUNK = 50

Mode = Literal["visible", "undisclosed", "single"]


@dataclass(frozen=True, slots=True)
class Batch:
    mode: Mode
    recipients: tuple[str, ...]
    """Envelope recipients of this transaction."""


def plan(
    *,
    group: bool,
    group_size: int,
    pending: list[str],
    personal: frozenset[str] = frozenset(),
    chunk: int | None,
    builtin: bool,
    each: bool = False,
) -> list[Batch]:
    """The transactions that deliver `pending`.

    `group_size` is the group's whole size (a retry may have fewer pending); `personal` are the
    recipients with template data of their own; `each`: every member of a group gets a message
    of its own (one-click unsubscribe: each carries its own signed link).
    """
    if not pending:
        return []
    if not group:
        return [Batch("visible", tuple(pending))]
    if builtin or group_size == 1 or each:
        return [Batch("single", (rcpt,)) for rcpt in pending]
    singles = [Batch("single", (rcpt,)) for rcpt in pending if rcpt in personal]
    shared = [rcpt for rcpt in pending if rcpt not in personal]
    size = chunk or DEFAULT_CHUNK
    chunks = [
        Batch("undisclosed", tuple(shared[i : i + size])) for i in range(0, len(shared), size)
    ]
    return singles + chunks
