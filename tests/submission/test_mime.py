"""A submitted message as POST /messages' MessageIn: what it holds is kept, and what MessageIn
cannot carry is refused with the reason, never dropped."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage

import pytest

from app.submission.mime import Refused, message_in


def raw(message: EmailMessage) -> bytes:
    return message.as_bytes(policy=email.policy.SMTP)


def test_headers_addresses_and_parts_are_kept() -> None:
    message = EmailMessage()
    message["From"] = "Billing <billing@example.com>"
    message["To"] = "Ann <ann@example.org>"
    message["Cc"] = "undisclosed-recipients:;"
    message["Bcc"] = "Audit Team <audit@example.org>"
    message["Reply-To"] = "help@example.com, desk@example.com"
    message["Subject"] = "Facture n° 42"
    message["X-Note"] = "Grüße"
    message["References"] = "<a@example.com> <b@example.com>"
    message["X-Postroom-Server"] = "billing"
    message["X-Postroom-Resource"] = "invoice/42"
    message["Date"] = "Mon, 1 Jan 2024 00:00:00 +0000"
    message["Message-ID"] = "<app@example.com>"
    message["Received"] = "from app by relay"
    message.set_content("Montant dû : 10 €\n", charset="iso-8859-15", cte="quoted-printable")
    message.add_alternative("<p>Montant dû</p>", subtype="html")
    message.add_attachment(b"a,b\n", maintype="text", subtype="csv", filename="détail.csv")
    message.add_attachment(b"\x89PNG", maintype="image", subtype="png")  # no filename

    second_to = b"To: Ann <ann@example.org>\r\nTo: bob@example.org\r\n"  # two lines: one list
    body = message_in(
        raw(message).replace(b"To: Ann <ann@example.org>\r\n", second_to),
        "bounces@example.com",
        ["ann@example.org", "bob@example.org", "audit@example.org", "carl@example.org"],
    )

    assert body.model_dump(mode="json", by_alias=True, exclude_none=True) == {
        "from": {"email": "billing@example.com", "name": "Billing"},
        "to": [{"email": "ann@example.org", "name": "Ann"}, {"email": "bob@example.org"}],
        "cc": [],
        "bcc": [
            {"email": "audit@example.org", "name": "Audit Team"},
            {"email": "carl@example.org"},
        ],
        "replyTo": [{"email": "help@example.com"}, {"email": "desk@example.com"}],
        "subject": "Facture n° 42",
        "text": "Montant dû : 10 €\n",
        "html": "<p>Montant dû</p>\n",
        "attachments": [
            {"filename": "détail.csv", "contentType": "text/csv", "content": "YSxiCg=="},
            {"filename": "attachment-2.png", "contentType": "image/png", "content": "iVBORw=="},
        ],
        "headers": {"X-Note": "Grüße", "References": "<a@example.com> <b@example.com>"},
        "server": "billing",
        "resource": "invoice/42",
        "ignoreSuppressions": False,
    }


def test_raw_utf8_headers_and_an_8bit_body_are_read_as_utf8() -> None:
    data = (
        "From: Zoë <zoë@example.com>\r\nTo: José <josé@example.org>\r\nSubject: café\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "naïve\r\n"
    ).encode()
    body = message_in(data, "zoë@example.com", ["josé@example.org"])
    assert body.from_ is not None
    assert (body.from_.name, body.from_.email) == ("Zoë", "zoë@example.com")
    assert [(a.name, a.email) for a in body.to] == [("José", "josé@example.org")]
    assert (body.subject, body.text) == ("café", "naïve\n")


def test_html_alone_a_message_without_from_and_files_without_a_body() -> None:
    html = b"To: ann@example.org\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n"
    body = message_in(html, "app@example.com", ["ann@example.org"])
    assert body.from_ is not None
    assert body.from_.email == "app@example.com"  # MAIL FROM, as an MTA adds a missing From
    assert (body.text, body.html) == (None, "<p>hi</p>\n")

    files = EmailMessage()
    files["From"] = "app@example.com"
    files.make_mixed()
    part = EmailMessage()
    part.set_content(b"%PDF", maintype="application", subtype="pdf", filename="a.pdf")
    files.attach(part)
    body = message_in(raw(files), "app@example.com", ["ann@example.org"])
    assert (body.text, body.html) == ("", None)
    assert [a.filename for a in body.attachments] == ["a.pdf"]


def _related() -> EmailMessage:
    message = EmailMessage()
    message.set_content("t")
    message.add_alternative('<img src="cid:x">', subtype="html")
    html = message.get_body(("html",))
    assert isinstance(html, EmailMessage)
    html.add_related(b"PNG", maintype="image", subtype="png", cid="<x>")
    return message


def _calendar() -> EmailMessage:
    message = EmailMessage()
    message.set_content("t")
    message.add_alternative("BEGIN:VCALENDAR\nEND:VCALENDAR\n", subtype="calendar")
    return message


def _attached_message() -> EmailMessage:
    message = EmailMessage()
    message.set_content("see attached")
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("inner body")
    message.add_attachment(inner)
    return message


def _second_inline_text() -> EmailMessage:
    message = EmailMessage()
    message.set_content("body")
    message.make_mixed()
    footer = EmailMessage()
    footer.set_content("footer")
    message.attach(footer)
    return message


SIGNED = (
    b"--b\r\nContent-Type: text/plain\r\n\r\nsigned\r\n--b\r\n"
    b"Content-Type: application/pkcs7-signature\r\n\r\nsig\r\n--b--\r\n"
)


def _with(headers: str, body: bytes | EmailMessage = b"t") -> bytes:
    content = raw(body) if isinstance(body, EmailMessage) else b"\r\n" + body
    return headers.replace("\n", "\r\n").encode() + content


REFUSED = {
    "inline images": (
        _with("From: a@example.com\nTo: ann@example.org\n", _related()),
        "554 5.6.1 multipart/related (inline images, cid: links) cannot be kept",
    ),
    "a calendar invitation": (
        _with("From: a@example.com\nTo: ann@example.org\n", _calendar()),
        "554 5.6.1 a multipart/alternative with a text/calendar part",
    ),
    "a signed message": (
        _with("From: a@example.com\nTo: ann@example.org\nContent-Type: multipart/signed; "
              'protocol="application/pkcs7-signature"; boundary=b\n', SIGNED),
        "554 5.6.1 a multipart/signed message cannot be kept",
    ),
    "an attached message": (
        _with("From: a@example.com\nTo: ann@example.org\n", _attached_message()),
        "554 5.6.1 an attached message (message/rfc822) cannot be kept",
    ),
    "a second inline body": (
        _with("From: a@example.com\nTo: ann@example.org\n", _second_inline_text()),
        "554 5.6.1 a second inline body (text/plain) cannot be kept",
    ),
    "a header twice": (
        _with("From: a@example.com\nTo: ann@example.org\nX-A: 1\nx-a: 2\n"),
        "554 5.6.0 the header x-a is given twice",
    ),
    "Resent-From": (
        _with("From: a@example.com\nTo: ann@example.org\nResent-From: b@example.com\n"),
        "554 5.6.1 Resent-From cannot be kept",
    ),
    "another Sender": (
        _with("From: a@example.com\nSender: b@example.com\nTo: ann@example.org\n"),
        "554 5.6.1 a Sender other than the From cannot be kept",
    ),
    "two authors": (
        _with("From: a@example.com, b@example.com\nTo: ann@example.org\n"),
        "554 5.6.1 From names 2 addresses",
    ),
    "a To that is no envelope recipient": (
        _with("From: a@example.com\nTo: ann@example.org, eve@example.org\n"),
        "554 5.6.0 eve@example.org is in To or Cc but not an envelope recipient",
    ),
    "a body not in its charset": (
        _with("From: a@example.com\nTo: ann@example.org\nContent-Type: text/plain; "
              "charset=utf-8\nContent-Transfer-Encoding: 8bit\n", b"\xff\xfe"),
        "554 5.6.0 the text/plain part is not valid utf-8",
    ),
    "an unknown charset": (
        _with("From: a@example.com\nTo: ann@example.org\nContent-Type: text/plain; "
              "charset=x-martian\n"),
        "554 5.6.1 the text/plain part's charset x-martian is unknown",
    ),
    "a NUL": (
        _with("From: a@example.com\nTo: ann@example.org\n", b"a\0b"),
        "554 5.6.0 the text/plain part holds a NUL character",
    ),
    "a multipart without its boundary": (
        _with("From: a@example.com\nTo: ann@example.org\nContent-Type: multipart/mixed; "
              "boundary=zz\n", b"no parts here"),
        "554 5.6.0 a multipart/mixed part has no parts: its boundary is missing",
    ),
    "an invalid Reply-To": (
        _with("From: a@example.com\nTo: ann@example.org\nReply-To: nobody\n"),
        "554 5.6.0 replyTo[0].email: ",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_messagein_cannot_carry_is_refused_with_the_reason(case: str) -> None:
    data, reply = REFUSED[case]
    with pytest.raises(Refused) as refused:
        message_in(data, "a@example.com", ["ann@example.org"])
    assert refused.value.reply.startswith(reply), refused.value.reply
