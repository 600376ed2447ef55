"""The MIME that compose writes, read back by Python's email parser: every header and body
survives, lines stay within RFC 5322's limits, and the bytes are 7-bit for ASCII addresses."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from app.delivery.compose import to_mime
from app.messages.schemas import LINE_BREAKS
from app.transports.base import Address, Attachment, Content

DATE = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
one_line = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters=list(LINE_BREAKS)),
    max_size=300,
).map(str.strip)
names = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters=list(LINE_BREAKS)),
    max_size=60,
).map(str.strip)
bodies = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\0"))


def read(raw: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def lines_ok(raw: bytes) -> None:
    assert b"\n" not in raw.replace(b"\r\n", b""), "a bare LF"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert raw.isascii()


@settings(max_examples=150, deadline=None)
@given(subject=one_line, name=names, header=one_line, text=bodies, html=bodies)
def test_headers_and_bodies_survive_the_round_trip(
    subject: str, name: str, header: str, text: str, html: str
) -> None:
    content = Content(
        sender=Address("ann@example.com", name),
        to=tuple(Address(f"r{i}@example.com", name) for i in range(8)),
        subject=subject,
        text=text,
        html=html,
        headers=(("X-Note", header),),
    )
    raw = to_mime(content, "<1@example.com>", DATE)
    lines_ok(raw)
    message = read(raw)
    assert message["Subject"] == subject
    assert message["X-Note"] == header
    shown = [a.display_name for a in message["To"].addresses]
    if name.isascii():
        assert shown == [name] * 8
    else:  # a long name is several encoded-words; Python's address parser keeps a space
        # between them where RFC 2047 6.2 says to drop it
        assert ["".join(n.split()) for n in shown] == ["".join(name.split())] * 8
    assert message["From"].addresses[0].addr_spec == "ann@example.com"
    plain, rich = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None
    assert rich is not None
    assert plain.get_content().replace("\r\n", "\n").rstrip("\n") == text.rstrip("\n")
    assert rich.get_content().replace("\r\n", "\n").rstrip("\n") == html.rstrip("\n")


def test_bcc_only_when_asked_and_attachments_by_name() -> None:
    content = Content(
        sender=Address("ann@example.com", 'Ann "The Boss", Jr.'),
        bcc=(Address("hidden@example.com"),),
        undisclosed=True,
        subject="Report",
        text="See attached.",
        attachments=(Attachment("räport 1.pdf", "application/pdf", bytes(range(256)) * 3),),
    )
    plain = read(to_mime(content, "<2@example.com>", DATE))
    with_bcc = read(to_mime(content, "<2@example.com>", DATE, with_bcc=True))
    assert plain["Bcc"] is None
    assert with_bcc["Bcc"] == "hidden@example.com"
    assert plain["To"] == "undisclosed-recipients:;"
    assert plain["From"].addresses[0].display_name == 'Ann "The Boss", Jr.'
    assert plain["Date"] == "Wed, 02 Dec 2026 09:30:00 +0000"
    (attachment,) = plain.iter_attachments()
    assert attachment.get_filename() == "räport 1.pdf"
    assert attachment.get_content() == bytes(range(256)) * 3
    assert plain.get_content_type() == "multipart/mixed"


def test_ascii_text_with_short_lines_stays_7bit() -> None:
    content = Content(sender=Address("a@example.com"), to=(Address("b@example.com"),), text="hi")
    raw = to_mime(content, "<3@example.com>", DATE)
    assert b"Content-Transfer-Encoding: 7bit\r\n\r\nhi\r\n" in raw
    long_line = Content(sender=content.sender, to=content.to, text="x" * 2000)
    assert read(to_mime(long_line, "<4@example.com>", DATE))["Content-Transfer-Encoding"] in (
        "quoted-printable",
        "base64",
    )
