"""The parser on the samples as the relays send them, and on what is not a report."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.events.bounces.dsn import MAX_REPORT_BYTES, NotAReport, parse
from tests.events.bounces.conftest import SAMPLE_MESSAGE_ID, SAMPLE_VERP, sample


@pytest.mark.parametrize(
    ("name", "email", "event", "bounce", "status"),
    [
        ("postfix.eml", "nobody@example.org", "bounced", "hard", "5.1.1"),
        ("exchange-online.eml", "ann@contoso.com", "bounced", "hard", "5.1.10"),
        ("gmail.eml", "nobody@gmail.com", "bounced", "hard", "5.1.1"),
        ("exim-delayed.eml", "dave@slow.example.net", "deferred", None, "4.0.0"),
        ("arf-abuse.eml", "carol@mail.example.net", "complained", None, None),
    ],
)
def test_each_relays_report(
    name: str, email: str, event: str, bounce: str | None, status: str | None
) -> None:
    report = parse(sample(name))
    [recipient] = report.recipients
    assert (recipient.email, recipient.event, recipient.bounce_type, recipient.status) == (
        email,
        event,
        bounce,
        status,
    )
    assert report.original_message_id == SAMPLE_MESSAGE_ID
    assert any(SAMPLE_VERP in address for address in report.addresses)
    assert report.kind == ("arf" if name.startswith("arf") else "dsn")


def test_the_diagnostic_and_time_come_from_the_report() -> None:
    [postfix] = parse(sample("postfix.eml")).recipients
    assert postfix.diagnostic == (
        "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in virtual"
        " mailbox table"
    )
    assert postfix.occurred_at == datetime(2026, 12, 5, 10, 15, 2, tzinfo=UTC)
    [gmail] = parse(sample("gmail.eml")).recipients
    assert gmail.occurred_at == datetime(2026, 12, 5, 10, 31, 9, tzinfo=UTC)  # Last-Attempt-Date
    [complaint] = parse(sample("arf-abuse.eml")).recipients
    assert complaint.diagnostic == "abuse"


def test_a_soft_failure_is_a_soft_bounce() -> None:
    raw = sample("postfix.eml", recipient=("Status: 5.1.1", "Status: 4.2.2"))
    [recipient] = parse(raw).recipients
    assert (recipient.event, recipient.bounce_type, recipient.status) == (
        "bounced",
        "soft",
        "4.2.2",
    )


def test_the_same_report_gives_the_same_event_ids() -> None:
    first, again = parse(sample("gmail.eml")), parse(sample("gmail.eml"))
    assert first.event_id(first.recipients[0]) == again.event_id(again.recipients[0])
    other = parse(sample("postfix.eml"))
    assert first.event_id(first.recipients[0]) != other.event_id(other.recipients[0])


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"From: a@example.com\r\nSubject: Out of office\r\n\r\nI am away.\r\n", "text/plain"),
        (b"not a message at all", "text/plain"),
        (
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
            b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n",
            "without a message/delivery-status",
        ),
        (
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
            b"--x\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; a\r\n"
            b"\r\n--x--\r\n",
            "names no recipient",
        ),
    ],
)
def test_what_is_not_a_report_is_refused_saying_why(raw: bytes, says: str) -> None:
    with pytest.raises(NotAReport, match=says):
        parse(raw)


def test_a_report_over_one_mebibyte_is_refused() -> None:
    raw = sample("postfix.eml")
    with pytest.raises(NotAReport, match="over 1048576 bytes"):
        parse(raw + b"x" * (MAX_REPORT_BYTES - len(raw) + 1))
