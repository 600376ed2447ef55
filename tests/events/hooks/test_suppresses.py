"""Issue 14, end to end: each provider's sample hard bounce and complaint, correctly signed, puts
its recipient on the suppression list, and the next message to that address is not sent (a real
SMTP sink gets nothing for it) while its companion is; the same sample with a forged signature is
a 401 and changes nothing, so the next message is delivered.

The first message really goes through the provider's profile (a memory transport answering with
the provider's message id); the following ones through an SMTP profile and a real SMTP server.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.delivery.conftest import add_smtp_profile, record, send
from tests.events.hooks.conftest import MAILGUN_KEY, MANDRILL_KEY, MANDRILL_URL, Hooks, SnsHost
from tests.events.hooks.signing import (
    SendgridKey,
    SnsKey,
    mailgun_body,
    mandrill_request,
    sample,
)
from tests.smtpd import SmtpServer, StartServer

pytestmark = pytest.mark.anyio

COMPANION = "companion@example.com"
BYSTANDER = "bystander@example.com"
"""On the first message with the sample's recipient; no event names it, so it stays sendable."""

Signed = tuple[bytes, dict[str, str]]


@dataclass(frozen=True)
class Provider:
    """A provider's profile and how its webhook requests are signed: with the profile's key, or
    forged (with a key the profile does not know)."""

    type_: str
    profile: str
    settings: Callable[[Hooks], dict[str, Any]]
    sign: Callable[[Hooks, SnsHost, Any, bool], Signed]


def _ses(hooks: Hooks, sns: SnsHost, body: Any, forged: bool) -> Signed:
    key = SnsKey() if forged else sns.key  # the certificate host serves only sns.key's
    return key.sign(body), {}


def _sendgrid(hooks: Hooks, sns: SnsHost, body: Any, forged: bool) -> Signed:
    raw = json.dumps(body).encode()
    return raw, (SendgridKey() if forged else hooks.sendgrid).headers(raw)


def _mailgun(hooks: Hooks, sns: SnsHost, body: Any, forged: bool) -> Signed:
    return mailgun_body("not-the-key" if forged else MAILGUN_KEY, body["event-data"]), {}


def _mandrill(hooks: Hooks, sns: SnsHost, body: Any, forged: bool) -> Signed:
    return mandrill_request("not-the-key" if forged else MANDRILL_KEY, MANDRILL_URL, body)


SES = Provider("ses", "aws", lambda hooks: {}, _ses)
SENDGRID = Provider(
    "sendgrid", "sg", lambda hooks: {"webhookPublicKey": hooks.sendgrid.public}, _sendgrid
)
MAILGUN = Provider("mailgun", "mg", lambda hooks: {"webhookSigningKey": MAILGUN_KEY}, _mailgun)
MANDRILL = Provider(
    "mandrill",
    "md",
    lambda hooks: {"webhookKey": MANDRILL_KEY, "webhookUrl": MANDRILL_URL},
    _mandrill,
)


@dataclass(frozen=True)
class Case:
    provider: Provider
    sample: str
    """The file under provider-specs/events/<provider type>/."""
    address: str
    """The recipient the sample reports on."""
    provider_id: str
    """What the provider answered the send with, which the sample's event refers to."""
    reason: str
    """The suppression's reason."""

    @property
    def body(self) -> Any:
        """As the provider posts it, before signing (Mandrill's is a list of events)."""
        loaded = sample(self.provider.type_, self.sample)
        return loaded["events"] if self.provider is MANDRILL else loaded["body"]

    def __str__(self) -> str:
        return f"{self.provider.type_}-{self.sample}"


SES_BOUNCE_ID = "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000"
SES_COMPLAINT_ID = "000001378603177f-7a5433e7-8edb-42ae-af10-f0181f34d6ee-000000"
SENDGRID_ID = "14c5d75ce93.dfd.64b469"
MANDRILL_ID = "fa239ebedd0a4831a3eefa59e880d8b2"
MANDRILL_EMAIL = "example.webhook@mandrillapp.com"

CASES = [
    Case(SES, "bounce-permanent", "jane@example.com", SES_BOUNCE_ID, "hard_bounce"),
    Case(SES, "complaint", "richard@example.com", SES_COMPLAINT_ID, "complaint"),
    Case(SENDGRID, "bounce", "example@test.com", SENDGRID_ID, "hard_bounce"),
    Case(SENDGRID, "spamreport", "example@test.com", SENDGRID_ID, "complaint"),
    Case(
        MAILGUN,
        "failed-permanent",
        "slava@mailgun.com",
        "<20180622211249.1.2A6098970A380E12@example.org>",
        "hard_bounce",
    ),
    Case(
        MAILGUN,
        "complained",
        "foo@example.com",
        "<20130718032413.263EE2E0926@example.com>",
        "complaint",
    ),
    Case(MANDRILL, "hard-bounce", MANDRILL_EMAIL, MANDRILL_ID, "hard_bounce"),
    Case(MANDRILL, "spam", MANDRILL_EMAIL, MANDRILL_ID, "complaint"),
]


async def first_message_through_the_provider(
    hooks: Hooks, case: Case, smtp_server_factory: StartServer
) -> SmtpServer:
    """The provider's profile (the default) sends the first message; then an SMTP profile
    `relay` on a real server, for the messages that follow, which go through real transports."""
    await hooks.profile(case.provider.type_, case.provider.profile, **case.provider.settings(hooks))
    await hooks.sent([case.address, BYSTANDER], case.provider_id)
    hooks.monkeypatch.delattr(hooks.runtime.transports, "get")  # `sent` put a memory one there
    sink = smtp_server_factory()
    await add_smtp_profile(hooks.admin, sink)
    return sink


async def post_sample(hooks: Hooks, sns: SnsHost, case: Case, *, forged: bool) -> int:
    content, headers = case.provider.sign(hooks, sns, case.body, forged)
    response = await hooks.post(case.provider.profile, content, headers)
    return response.status_code


async def suppressed(hooks: Hooks) -> list[tuple[str, str | None, str, str]]:
    listed = await hooks.admin.get("/api/v1/suppressions")
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    return sorted((e["address"], e["profile"], e["reason"], e["source"]) for e in items)


async def send_through_relay(hooks: Hooks, to: list[str]) -> dict[str, Any]:
    """A message to `to` through the SMTP profile, dispatched; its record."""
    message_id = await send(hooks.admin, to=to, server="relay")
    await hooks.dispatcher.drain()
    return await record(hooks.admin, message_id)


def recipient(saved: dict[str, Any], email: str) -> dict[str, Any]:
    [found] = [r for r in saved["recipients"] if r["email"] == email]
    assert isinstance(found, dict)
    return found


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_a_signed_sample_suppresses_its_recipient_for_the_next_message(
    hooks: Hooks, sns: SnsHost, smtp_server_factory: StartServer, case: Case
) -> None:
    sink = await first_message_through_the_provider(hooks, case, smtp_server_factory)

    assert await post_sample(hooks, sns, case, forged=False) == 200
    assert await suppressed(hooks) == [(case.address, None, case.reason, case.provider.type_)]

    alone = await send_through_relay(hooks, [case.address])
    assert alone["status"] == "suppressed"
    assert sink.sessions == [], "not even a connection for a message to no one sendable"
    together = await send_through_relay(hooks, [case.address, COMPANION])
    assert together["status"] == "sent"
    for saved in (alone, together):
        mine = recipient(saved, case.address)
        assert mine["status"] == "suppressed"
        assert mine["response"] == f"on the suppression list: {case.reason}"
        assert [e["type"] for e in mine["events"]] == ["queued", "suppressed"]
    assert recipient(together, COMPANION)["status"] == "sent"
    assert [t.rcpt_tos for t in sink.transactions] == [[COMPANION]]


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_a_forged_sample_changes_nothing(
    hooks: Hooks, sns: SnsHost, smtp_server_factory: StartServer, case: Case
) -> None:
    sink = await first_message_through_the_provider(hooks, case, smtp_server_factory)

    assert await post_sample(hooks, sns, case, forged=True) == 401
    assert await suppressed(hooks) == []
    assert await hooks.all_events() == []

    saved = await send_through_relay(hooks, [case.address, COMPANION])
    assert saved["status"] == "sent"
    assert recipient(saved, case.address)["status"] == "sent"
    assert [sorted(t.rcpt_tos) for t in sink.transactions] == [sorted([case.address, COMPANION])]
