"""The providers' published specs in ../shared/reference/provider-specs as test checks.

`check_<provider>(request, message)` validates a request a transport built against its provider's
spec and fails with every error's path; the answer helpers build the responses the specs document.
Used by test_provider_schemas.py; see its docstring and the folder's README.md.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
from dataclasses import dataclass
from email.headerregistry import AddressHeader
from email.message import EmailMessage
from email.parser import BytesHeaderParser, Parser
from email.policy import HTTP
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from app.schemas import a_labels
from app.transports.base import OutgoingMessage

MANDRILL = "mandrill-send-raw.schema.json"
SENDGRID = "sendgrid-mail-send.schema.json"
SES = "ses-v2-send-email.schema.json"
KEY = "test-key-123"
"""Every provider's API key in these tests."""

SPECS = Path(
    os.environ.get("POSTROOM_PROVIDER_SPECS")
    or Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "provider-specs"
)
"""The repo is a checkout next to ../shared in CI; POSTROOM_PROVIDER_SPECS points elsewhere."""


@functools.cache
def spec(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SPECS / name).read_text())
    return loaded


FORMATS = FormatChecker()


@FORMATS.checks("email")
def rfc5321_mailbox(instance: object) -> bool:
    """JSON Schema's `email` is RFC 5321's Mailbox, which is ASCII (`idn-email` is RFC 6531's);
    jsonschema's own check only looks for an @."""
    if not isinstance(instance, str):
        return True
    local, at, domain = instance.rpartition("@")
    return bool(local and at and domain) and instance.isascii()


@functools.cache
def validator(name: str) -> Draft202012Validator:
    schema = spec(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FORMATS)


def assert_valid(checker: Draft202012Validator, instance: object, what: str) -> None:
    """Fail with every schema error: where in the body, what is wrong, which schema rule."""
    errors = sorted(checker.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [
            f"  at {e.json_path}: {e.message[:300]}"
            f" (schema: {'/'.join(map(str, e.absolute_schema_path))})"
            for e in errors
        ]
        pytest.fail(f"{what}, against the provider's schema:\n" + "\n".join(lines), pytrace=False)


def fail_if(problems: list[str], what: str) -> None:
    if problems:
        pytest.fail(f"{what}, against the provider's spec:\n  " + "\n  ".join(problems), False)


# Requests: what each provider's spec says of one.


def mime_of(data: bytes, what: str) -> EmailMessage:
    """A complete message as SES's RawMessageData describes one: headers and a body separated by
    one blank line, the required header fields, well-formed MIME parts, no line over 1,000
    characters. Parsed as text, so a UTF-8 (RFC 6532) address reads back as itself."""
    problems = [] if b"\r\n\r\n" in data else ["no blank line between the headers and the body"]
    problems += ["a line over 1,000 characters"] if max(map(len, data.split(b"\r\n"))) > 998 else []
    parsed = Parser(policy=default_policy).parsestr(data.decode("utf-8", "surrogateescape"))
    assert isinstance(parsed, EmailMessage)
    problems += [f"no {name} header" for name in ("From", "Date") if parsed[name] is None]
    problems += [
        f"{part.get_content_type()}: {part.defects}" for part in parsed.walk() if part.defects
    ]
    fail_if(problems, what)
    return parsed


def ascii_form(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.encode('idna').decode()}"


def header_recipients(mime: EmailMessage) -> set[str]:
    return {
        address.addr_spec.lower()
        for name in ("to", "cc", "bcc")
        for header in mime.get_all(name, [])
        if isinstance(header, AddressHeader)
        for address in header.addresses
    }


def check_mandrill(request: httpx.Request, message: OutgoingMessage) -> None:
    body = json.loads(request.content)
    assert_valid(validator(MANDRILL), body, "the Mandrill send-raw body")
    # $comment: raw_message is the full MIME text as a JSON string, NOT base64.
    mime_of(body["raw_message"].encode(), "raw_message")
    assert body["to"] == [ascii_form(r) for r in message.recipients]


def check_sendgrid(request: httpx.Request, message: OutgoingMessage) -> None:
    body = json.loads(request.content)
    assert_valid(validator(SENDGRID), body, "the SendGrid mail/send body")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    fail_if(sendgrid_header_problems(body.get("headers", {})), "the SendGrid headers")
    assert not ("reply_to" in body and "reply_to_list" in body), "reply_to or reply_to_list"
    reached = {
        entry["email"]
        for p in body["personalizations"]
        for kind in ("to", "cc", "bcc")
        for entry in p.get(kind, ())
    }
    assert reached == {ascii_form(r) for r in message.recipients}


def sendgrid_header_problems(headers: dict[str, object]) -> list[str]:
    """What the spec's description of `headers` asks and its schema (`type: object`) can't say:
    string values, "properly encoded if they contain unicode characters", no reserved name."""
    documented = spec(SENDGRID)["properties"]["personalizations"]["items"]["properties"]
    reserved = {n.lower() for n in re.findall(r"`([^`]+)`", documented["headers"]["description"])}
    assert {"x-sg-id", "dkim-signature", "reply-to", "bcc"} <= reserved
    problems = [f"{n}: not a string" for n, v in headers.items() if not isinstance(v, str)]
    problems += [f"{n}: {v!r} is not encoded" for n, v in headers.items() if not str(v).isascii()]
    return problems + [f"{n}: reserved by SendGrid" for n in headers if n.lower() in reserved]


def check_ses(request: httpx.Request, message: OutgoingMessage) -> None:
    body = json.loads(request.content)
    assert_valid(validator(SES), body, "the SES SendEmail body")
    assert request.url.path == spec(SES)["x-http"]["requestUri"]
    # RawMessageData: a botocore blob, base64 in the rest-json body (contentEncoding: base64).
    raw = base64.b64decode(body["Content"]["Raw"]["Data"], validate=True)
    mime_of(raw, "Content.Raw.Data")
    # Destination: no SMTPUTF8, so a 7-bit local part and a Punycode domain.
    destination = body["Destination"]["ToAddresses"]
    fail_if([f"{a}: not ASCII" for a in destination if not a.isascii()], "the SES Destination")
    assert destination == [ascii_form(r) for r in message.recipients]


def check_graph(request: httpx.Request, message: OutgoingMessage) -> None:
    """graph-sendmail.md, "Request: MIME variant", "To check it in a test"."""
    problems = []
    if not request.headers["content-type"].startswith("text/plain"):
        problems.append(f"Content-Type is {request.headers['content-type']}, not text/plain")
    if not re.fullmatch(rb"[A-Za-z0-9+/=\r\n]+", request.content):
        problems.append("the body is not base64")
    fail_if(problems, "the Graph sendMail MIME request")
    mime = mime_of(base64.b64decode(request.content), "the base64 body")
    missing = [f"no {name} header" for name in ("From", "To", "Subject") if mime[name] is None]
    fail_if(missing, "the Graph sendMail MIME request")
    # Recipients come from the MIME headers only: they must be the envelope, Bcc included.
    assert header_recipients(mime) == {a_labels(r).lower() for r in message.recipients}


@functools.cache
def mailgun_fields() -> dict[str, tuple[bool, frozenset[str] | None]]:
    """The field table of mailgun-messages-mime.md: name -> (required, enum or None)."""
    fields: dict[str, tuple[bool, frozenset[str] | None]] = {}
    text = (SPECS / "mailgun-messages-mime.md").read_text()
    table = text.split("## Fields", 1)[1].split("\n## ", 1)[0]
    for row in re.findall(r"^\| `([^`]+)` \| ([^|]+) \| ([^|]+) \|", table, re.MULTILINE):
        name, kind, required = (cell.strip() for cell in row)
        enum: frozenset[str] | None = None
        if re.fullmatch(r"(`[^`]+`)(/`[^`]+`)*|string, enum `[^`]+`", kind):
            enum = frozenset(re.findall(r"`([^`]+)`", kind))
        fields[name] = (required == "**yes**", enum)
    assert fields["to"] == (True, None), "the field table was misread"
    assert fields["message"][0], "the field table was misread"
    assert fields["o:tracking"][1] == frozenset({"yes", "no", "true", "false", "htmlonly"})
    return fields


@dataclass(frozen=True)
class FormPart:
    name: str
    filename: str | None
    value: bytes


def form_parts(request: httpx.Request) -> list[FormPart]:
    """The multipart/form-data body split on its boundary, each value byte for byte."""
    head = BytesHeaderParser(policy=HTTP).parsebytes(
        f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    )
    delimiter = b"--" + str(head.get_param("boundary")).encode()
    chunks = request.content.split(b"\r\n" + delimiter)
    assert request.content.startswith(delimiter + b"\r\n")
    assert chunks[-1] == b"--\r\n"
    parts = []
    for chunk in chunks[:-1]:
        headers, _, value = chunk.partition(b"\r\n\r\n")
        disposition = BytesHeaderParser(policy=HTTP).parsebytes(headers.split(b"\r\n", 1)[1])
        name = disposition.get_param("name", header="content-disposition")
        filename = disposition.get_param("filename", header="content-disposition")
        parts.append(FormPart(str(name), None if filename is None else str(filename), value))
    return parts


def check_mailgun(request: httpx.Request, message: OutgoingMessage) -> None:
    """mailgun-messages-mime.md, "Checks a test can make on a request Postroom builds"."""
    table = mailgun_fields()
    problems = []
    if not re.fullmatch(r"/v3/[^/]+/messages\.mime", request.url.path):
        problems.append(f"path {request.url.path}")
    basic = "Basic " + base64.b64encode(f"api:{KEY}".encode()).decode()
    if request.headers["authorization"] != basic:
        problems.append("Authorization is not Basic api:<key>")
    if not request.headers["content-type"].startswith("multipart/form-data; boundary="):
        problems.append(f"Content-Type is {request.headers['content-type']}")
    parts = form_parts(request)
    names = {part.name for part in parts}
    problems += [
        f"{name}: required, missing"
        for name, (req, _) in table.items()
        if req and name not in names
    ]
    options = 0
    for part in parts:
        if part.name not in table and not re.fullmatch(r"(h|v):.+", part.name):
            problems.append(f"{part.name}: not a field of messages.mime")
        enum = table.get(part.name, (False, None))[1]
        if enum is not None and part.value.decode() not in enum:
            problems.append(f"{part.name}: {part.value.decode()!r} is not one of {sorted(enum)}")
        if part.name[:2] in ("o:", "h:", "v:", "t:"):
            options += len(part.value)
    if options > 16 * 1024:
        problems.append(f"send options total {options} bytes, over 16 KB")
    files = [part for part in parts if part.name == "message"]
    if len(files) != 1 or not files[0].filename:
        problems.append("message: must be exactly one part, uploaded as a file (with a filename)")
    fail_if(problems, "the Mailgun messages.mime form")
    assert files[0].value == message.mime
    mime_of(files[0].value, "the message part")
    # Mailgun delivers to exactly the `to` fields: every envelope recipient, Bcc ones included.
    assert [p.value.decode() for p in parts if p.name == "to"] == list(message.recipients)


# Answers: the ones each provider's spec documents.

SES_STATUSES = {
    "TooManyRequestsException": 429,
    "LimitExceededException": 400,
    "AccountSuspendedException": 400,
    "SendingPausedException": 400,
    "MessageRejected": 400,
    "MailFromDomainNotVerifiedException": 400,
    "NotFoundException": 404,
    "BadRequestException": 400,
}
"""The httpStatusCode of each SendEmail error shape in botocore's sesv2 service-2.json (the
schema file lists the names only, in x-postroom-errors)."""


def mandrill_answer_schema() -> dict[str, Any]:
    documented = spec(MANDRILL)["x-postroom-responses"]["send-raw"]["200"]
    schema: dict[str, Any] = documented["content"]["application/json"]["schema"]
    return schema


def mandrill_accepted(message: OutgoingMessage) -> httpx.Response:
    answer = [
        {"email": r, "status": "sent", "_id": f"id{i}"} for i, r in enumerate(message.recipients)
    ]
    assert_valid(Draft202012Validator(mandrill_answer_schema()), answer, "our Mandrill 200 answer")
    return httpx.Response(200, json=answer)


def example_answers(responses: dict[str, Any]) -> list[tuple[str, httpx.Response]]:
    """An OpenAPI `responses` object's refusals, answered with their documented examples."""
    answers = []
    for status, documented in sorted(responses.items()):
        if status.startswith("2"):
            continue
        schema = documented["content"]["application/json"]["schema"]
        body = schema.get("example", {"errors": [{"message": "documented, without an example"}]})
        assert_valid(Draft202012Validator(schema), body, f"the documented {status} answer")
        answers.append((f"{status} {json.dumps(body)}", httpx.Response(int(status), json=body)))
    return answers


def sendgrid_accepted(message: OutgoingMessage) -> httpx.Response:
    assert "202" in spec(SENDGRID)["x-postroom-responses"]
    return httpx.Response(202, headers={"X-Message-Id": "sg-1"})


def ses_refusals() -> list[tuple[str, httpx.Response]]:
    names = spec(SES)["x-postroom-errors"]
    assert set(names) == set(SES_STATUSES), "a SendEmail error without a known HTTP status"
    return [
        (
            f"{SES_STATUSES[name]} {name}",
            httpx.Response(
                SES_STATUSES[name], headers={"x-amzn-ErrorType": name}, json={"message": name}
            ),
        )
        for name in names
    ]


def ses_accepted(message: OutgoingMessage) -> httpx.Response:
    assert "MessageId" in spec(SES)["x-postroom-response-shape"]["members"]
    return httpx.Response(200, json={"MessageId": "0100018c-1"})


@functools.cache
def mailgun_responses() -> dict[int, object]:
    """The responses table of mailgun-messages-mime.md: status -> the documented body."""
    text = (SPECS / "mailgun-messages-mime.md").read_text()
    table = text.split("## Responses", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d{3}) \| `([^`]+)`", table, re.MULTILINE)
    return {int(status): json.loads(body) for status, body in rows}


def mailgun_accepted(message: OutgoingMessage) -> httpx.Response:
    return httpx.Response(200, json=mailgun_responses()[200])


def mailgun_refusals() -> list[tuple[str, httpx.Response]]:
    answers = []
    for status, body in mailgun_responses().items():
        if status == 401:
            # The correction: the spec documents a JSON string, in practice it is plain text.
            answers.append(("401 Forbidden (plain text)", httpx.Response(401, text="Forbidden")))
        if status != 200:
            answers.append((f"{status} {json.dumps(body)}", httpx.Response(status, json=body)))
    return answers


def graph_refusals() -> list[tuple[str, httpx.Response]]:
    """graph-sendmail.md documents one error of the MIME variant, with its body."""
    text = (SPECS / "graph-sendmail.md").read_text()
    found = re.findall(r"gives `(\d{3})` with `(\{.+?\})`", text)
    assert found, "graph-sendmail.md documents no error answer any more"
    return [
        (f"{status} {body}", httpx.Response(int(status), content=body)) for status, body in found
    ]
