"""International addresses: IDN domains go out as A-labels (bob@xn--bcher-kva.example, as
nodemailer sends them) in the envelope and the headers, so they need no SMTPUTF8; only a
non-ASCII local part does, and a server without SMTPUTF8 fails that recipient only."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from app.delivery.compose import compose, new_message_id
from app.delivery.grouping import Batch
from app.delivery.stored import StoredMessage
from app.schemas import a_label_domain, a_labels
from app.transports import smtp
from app.transports.base import OutgoingMessage
from app.transports.errors import UnsupportedFeature
from app.transports.smtp import NEEDS_SMTPUTF8
from tests.smtpd import SmtpServer, make_message

pytestmark = pytest.mark.anyio

BOB = "bob@bücher.example"
BOB_WIRE = "bob@xn--bcher-kva.example"
JOSE = "josé@example.com"
ANN = "ann@example.com"


def composed(sender: str, to: list[dict[str, Any]], recipients: tuple[str, ...]) -> OutgoingMessage:
    """The message as the delivery engine composes it (app.delivery.compose)."""
    from_ = {"email": sender, "name": "Bücher Team"}
    payload = {"subject": "Grüße", "text": "Hallo", "to": to, "from": from_}
    return compose(
        StoredMessage.of(payload),
        batch=Batch("visible", recipients),
        message_id=new_message_id(sender),
        date=datetime(2026, 1, 2, tzinfo=UTC),
    )


def test_a_labels():
    assert a_labels(BOB) == BOB_WIRE
    assert a_labels("Bob@BÜCHER.example") == BOB_WIRE.replace("bob", "Bob")
    assert a_labels("josé@bücher.example") == "josé@xn--bcher-kva.example"
    assert a_labels(ANN) == ANN
    assert a_label_domain("例え.テスト") == "xn--r8jz45g.xn--zckzah"


@pytest.mark.parametrize("smtputf8", [True, False])
async def test_idn_domains_go_out_as_a_labels(smtp_server_factory, smtp_context, smtputf8):
    server: SmtpServer = smtp_server_factory(smtputf8=smtputf8)
    message = composed("noreply@bücher.example", [{"email": BOB, "name": "Bob"}], (BOB,))

    result = await smtp.create("t", server.config(), smtp_context).send(message)

    assert result.recipients[BOB].status == "sent", "results keep the address as given"
    [received] = server.transactions
    assert received.mail_from == "noreply@xn--bcher-kva.example"
    assert received.rcpt_tos == [BOB_WIRE]
    assert "SMTPUTF8" not in received.mail_options
    assert received.data.isascii()
    assert received.message["To"] == f"Bob <{BOB_WIRE}>"
    assert received.message["From"].addresses[0].addr_spec == "noreply@xn--bcher-kva.example"
    assert received.message["Message-ID"].endswith("@xn--bcher-kva.example>")


@pytest.mark.parametrize("pipelining", [True, False])
async def test_without_smtputf8_only_the_non_ascii_local_part_fails(
    smtp_server_factory, smtp_context, pipelining
):
    server = smtp_server_factory(smtputf8=False, pipelining=pipelining)
    recipients = (JOSE, ANN, BOB)
    message = dataclasses.replace(make_message(), recipients=recipients)

    result = await smtp.create("t", server.config(), smtp_context).send(message)

    assert result.recipients[JOSE].status == "failed"  # permanent, for this recipient only
    assert result.recipients[JOSE].message == NEEDS_SMTPUTF8
    assert result.recipients[ANN].status == "sent"
    assert result.recipients[BOB].status == "sent"
    [received] = server.transactions
    assert received.rcpt_tos == [ANN, BOB_WIRE]
    assert "SMTPUTF8" not in received.mail_options


async def test_without_smtputf8_and_no_other_recipient_nothing_is_sent(
    smtp_server_factory, smtp_context
):
    """The message as a whole cannot go: UnsupportedFeature before MAIL, so the profile's
    fallback may carry it (tests/delivery/test_smtp_delivery.py)."""
    server = smtp_server_factory(smtputf8=False)
    message = dataclasses.replace(make_message(), recipients=(JOSE, "zoë@bücher.example"))

    with pytest.raises(UnsupportedFeature) as caught:
        await smtp.create("t", server.config(), smtp_context).send(message)

    assert caught.value.before_data
    assert "MAIL" not in server.sessions[0].verbs
    assert server.transactions == []


async def test_a_non_ascii_sender_needs_smtputf8(smtp_server_factory, smtp_context):
    server = smtp_server_factory(smtputf8=False)
    message = dataclasses.replace(make_message(), envelope_from="josé@bücher.example")

    with pytest.raises(UnsupportedFeature) as caught:
        await smtp.create("t", server.config(), smtp_context).send(message)

    assert "josé@xn--bcher-kva.example" in caught.value.feature
    assert "SMTPUTF8" in caught.value.feature
    assert server.transactions == []


async def test_with_smtputf8_a_non_ascii_local_part_is_sent(smtp_server, smtp_context):
    message = dataclasses.replace(make_message(), recipients=("josé@bücher.example", ANN))

    result = await smtp.create("t", smtp_server.config(), smtp_context).send(message)

    assert {r.status for r in result.recipients.values()} == {"sent"}
    [received] = smtp_server.transactions
    assert received.rcpt_tos == ["josé@xn--bcher-kva.example", ANN]
    assert "SMTPUTF8" in received.mail_options


async def test_the_same_mailbox_in_both_forms_gets_one_rcpt(smtp_server, smtp_context):
    message = dataclasses.replace(make_message(), recipients=(BOB, BOB_WIRE))

    result = await smtp.create("t", smtp_server.config(), smtp_context).send(message)

    assert set(result.recipients) == {BOB, BOB_WIRE}
    assert {r.status for r in result.recipients.values()} == {"sent"}
    assert smtp_server.transactions[0].rcpt_tos == [BOB_WIRE]
