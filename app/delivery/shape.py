"""How one message goes out: the transactions its pending recipients take and what each carries.

The dispatcher's send (app/delivery/job.py) and the raw view of a sent message
(app/messages/content.py) both go through it, so the raw view recomposes the very transaction
that was sent: the same batch, the same unsubscribe link, the same theme and signature.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.delivery.compose import compose
from app.delivery.grouping import Batch, plan
from app.delivery.links import Links, Unsubscribe
from app.delivery.rows import MessageRow, RecipientRow
from app.delivery.stored import StoredMessage
from app.delivery.transports import BUILTIN
from app.dkim.signer import Signer
from app.servers.models import ServerProfile
from app.themes.render import Layout
from app.transports.base import OutgoingMessage


class Shape:
    """One message with what decides its transactions: its recipients' rows, its profile (None:
    the built-in server), the theme it goes out in and the unsubscribe links."""

    def __init__(
        self,
        message: MessageRow,
        stored: StoredMessage,
        recipients: Sequence[RecipientRow],
        profile: ServerProfile | None,
        layout: Layout | None,
        links: Links,
    ) -> None:
        self.message = message
        self.stored = stored
        self.recipients = recipients
        self.profile = profile
        self.layout = layout
        self.links = links
        self.names = stored.group_names()
        wanted = stored.list_unsubscribe
        if wanted is None:
            wanted = profile is not None and profile.list_unsubscribe
        self.unsubscribes = bool(wanted) and links.base_url is not None
        """Whether it carries one-click unsubscribe links: its own `listUnsubscribe`, else its
        profile's (and the service knows its public URL)."""

    def batches(self, pending: list[str]) -> list[Batch]:
        """The transactions that deliver `pending` (app/delivery/grouping.py)."""
        profile = self.profile
        return plan(
            group=self.stored.group is not None,
            group_size=len(self.recipients),
            pending=pending,
            personal=frozenset(r.email for r in self.recipients if r.data),
            chunk=profile.max_recipients_per_message if profile is not None else None,
            builtin=profile is None,
            each=self.unsubscribes,
        )

    def compose(self, batch: Batch, dkim: Signer | None = None) -> OutgoingMessage:
        """The batch's message. Raises PermanentError (a theme that cannot be rendered) or
        ValueError (a header Python's email refuses)."""
        message = self.message
        return compose(
            self.stored,
            batch=batch,
            message_id=message.message_id,
            date=message.created_at,
            layout=self.layout,
            signature=self.profile.signature if self.profile is not None else None,
            names=self.names,
            unsubscribe_url=self._unsubscribe_url(batch),
            dkim=dkim,
        )

    def _unsubscribe_url(self, batch: Batch) -> str | None:
        """The batch's link: only a batch of one recipient can carry one (see `plan`'s `each`;
        visible mail to several people goes without)."""
        if len(batch.recipients) != 1 or not self.unsubscribes:
            return None
        profile = self.message.server or BUILTIN
        return self.links.url(Unsubscribe(batch.recipients[0], profile, self.message.id))
