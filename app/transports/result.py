"""What a transport reports: one status per recipient; partial failure is data, not an error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RecipientStatus = Literal[
    "sent", "queued", "rejected", "invalid", "failed", "deferred", "suppressed"
]
"""The closed vocabulary every transport maps its provider's answer onto.

sent: the server took responsibility (SMTP 250, provider accepted);
queued: a provider accepted it for later sending; rejected / invalid: permanently refused for this
recipient; failed: permanently failed for another reason; deferred: refused for now, retry;
suppressed: not sent, the address is on Postroom's suppression list (set by the dispatcher before
sending, never by a transport).
"""

FINAL_OK: frozenset[RecipientStatus] = frozenset({"sent", "queued"})
PERMANENT: frozenset[RecipientStatus] = frozenset({"rejected", "invalid", "failed"})


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """The outcome for one envelope recipient."""

    status: RecipientStatus
    code: int | None = None
    """SMTP reply code or HTTP status, when there was one."""
    message: str = ""
    """The server's reply text or the provider's reason."""


@dataclass(slots=True)
class SendResult:
    """The outcome of one send: per-recipient results and what the server said of the message."""

    recipients: dict[str, RecipientResult]
    provider_id: str | None = None
    """SMTP: the reply to the final '.'; HTTP providers: their message id."""
    reply_code: int | None = None
    tls_version: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def all(
        cls,
        recipients: list[str],
        status: RecipientStatus,
        *,
        code: int | None = None,
        message: str = "",
        provider_id: str | None = None,
    ) -> SendResult:
        """Every recipient got the same answer."""
        result = RecipientResult(status, code, message)
        return cls(
            recipients={r: result for r in recipients}, provider_id=provider_id, reply_code=code
        )
