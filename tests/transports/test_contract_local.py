"""The transport contract for the transports that are not HTTP APIs (test_contract.py covers those):
SMTP against a real aiosmtpd server, the built-in file transport, and the in-memory one.

- a send answers one status from the closed vocabulary for every envelope recipient, and what
  arrives is the envelope and the MIME without Bcc;
- what a transport cannot carry raises UnsupportedFeature before anything is sent (SMTP: non-ASCII
  addresses to a server without SMTPUTF8; file and memory carry any address);
- failures map onto the error tree: SMTP 4xx -> TemporaryError, 535 -> CredentialsError, 5xx on
  MAIL or DATA -> PermanentError, 5xx on one RCPT -> that recipient rejected only; an unreachable
  server or unwritable directory is temporary; a reply lost after the final "." is ambiguous;
- verify checks without delivering anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pytest

from app.transports.base import Address, Transport, TransportContext
from app.transports.errors import (
    CredentialsError,
    PermanentError,
    TemporaryError,
    TransportError,
    UnsupportedFeature,
)
from app.transports.file import FileConfig
from app.transports.memory import MemoryTransport
from app.transports.registry import TRANSPORTS, build
from app.transports.result import RecipientResult, RecipientStatus, SendResult
from tests.smtpd import DROP, SmtpServer, StartServer
from tests.transports._messages import outgoing
from tests.transports.test_contract import CASES as HTTP_CASES

pytestmark = pytest.mark.anyio

LOCAL = ("smtp", "file", "memory")
VOCABULARY = set(get_args(RecipientStatus))
TO, CC, BCC = "to@example.com", "cc@example.com", "bcc@example.com"


@dataclass(frozen=True)
class Delivery:
    """One message as it reached the other side: the envelope and the content."""

    recipients: list[str]
    mime: bytes


@dataclass
class Local:
    transport: Transport
    delivered: Callable[[], list[Delivery]]


def _eml(path: Path) -> Delivery:
    """An .eml of the file transport: X-Postroom-Envelope-* lines on top of the MIME."""
    lines = path.read_bytes().split(b"\r\n")
    envelope = [line for line in lines if line.startswith(b"X-Postroom-Envelope-")]
    recipients = [
        line.split(b":", 1)[1].strip().strip(b"<>").decode()
        for line in envelope
        if line.startswith(b"X-Postroom-Envelope-To:")
    ]
    assert lines[: len(envelope)] == envelope, "the envelope goes on top"
    return Delivery(recipients, b"\r\n".join(lines[len(envelope) :]))


def test_every_registered_transport_is_covered_by_a_contract() -> None:
    assert set(LOCAL) | set(HTTP_CASES) == set(TRANSPORTS)
    assert not set(LOCAL) & set(HTTP_CASES)


@pytest.fixture
def contract_server(smtp_server_factory: StartServer) -> SmtpServer:
    return smtp_server_factory(auth_mechanisms=())


@pytest.fixture(params=LOCAL)
async def local(
    request: pytest.FixtureRequest,
    contract_server: SmtpServer,
    smtp_context: TransportContext,
    tmp_path: Path,
) -> AsyncIterator[Local]:
    name: str = request.param
    settings: dict[str, dict[str, Any]] = {
        "smtp": {"host": contract_server.host, "port": contract_server.port},
        "file": {"directory": str(tmp_path / "outbox")},
        "memory": {},
    }
    config = TRANSPORTS[name].config.model_validate(settings[name])
    transport = build(name, "contract", config, smtp_context)
    if isinstance(transport, MemoryTransport):
        memory = transport

        def delivered() -> list[Delivery]:
            return [Delivery(list(m.recipients), m.mime) for m in memory.sent]

    elif isinstance(config, FileConfig):
        directory = config.directory

        def delivered() -> list[Delivery]:
            return [_eml(p) for p in sorted(directory.glob("*.eml"))]

    else:

        def delivered() -> list[Delivery]:
            return [Delivery(t.rcpt_tos, t.data) for t in contract_server.transactions]

    yield Local(transport, delivered)
    await transport.aclose()


async def test_a_send_answers_every_recipient_in_the_vocabulary(local: Local) -> None:
    sent = outgoing(cc=(Address(CC),), bcc=(Address(BCC),))

    result = await local.transport.send(sent)

    assert list(result.recipients) == [TO, CC, BCC] == list(sent.recipients)
    assert {r.status for r in result.recipients.values()} <= VOCABULARY
    assert {r.status for r in result.recipients.values()} == {"sent"}
    assert result.provider_id is None or isinstance(result.provider_id, str)
    [delivery] = local.delivered()
    assert delivery.recipients == [TO, CC, BCC]
    assert delivery.mime == sent.mime
    assert b"bcc@example.com" not in delivery.mime


async def test_an_unknown_option_raises_before_anything_is_sent(local: Local) -> None:
    with pytest.raises(UnsupportedFeature) as caught:
        await local.transport.send(outgoing(extra={"sendAt": "2030-01-01T00:00:00Z"}))

    assert caught.value.feature == "the option 'sendAt'"
    assert caught.value.code == "EUNSUPPORTED"
    assert local.delivered() == []


async def test_verify_checks_without_delivering(local: Local) -> None:
    report = await local.transport.verify()

    assert report.ok, report
    assert report.steps
    assert local.delivered() == []


async def test_non_ascii_addresses_are_carried(local: Local) -> None:
    """The aiosmtpd test server offers SMTPUTF8; file and memory take any address."""
    sent = dataclasses.replace(outgoing(), recipients=("josé@example.com",))

    result = await local.transport.send(sent)

    assert result.recipients == {"josé@example.com": result.recipients["josé@example.com"]}
    assert result.recipients["josé@example.com"].status == "sent"
    assert [d.recipients for d in local.delivered()] == [["josé@example.com"]]


# --- SMTP: what it cannot carry, and its errors, against aiosmtpd -------------------------------


async def test_smtp_without_smtputf8_refuses_non_ascii_addresses_before_mail(
    smtp_server_factory: StartServer, smtp_context: TransportContext
) -> None:
    # A server without ESMTP (EHLO refused, HELO taken) offers no SMTPUTF8.
    server = smtp_server_factory(replies={"EHLO": "502 5.5.1 EHLO not implemented"})
    transport = build("smtp", "contract", server.config(), smtp_context)

    with pytest.raises(UnsupportedFeature) as caught:
        await transport.send(dataclasses.replace(outgoing(), recipients=("josé@example.com",)))

    assert caught.value.code == "EUNSUPPORTED"
    assert "SMTPUTF8" in caught.value.feature
    assert server.sessions[0].verbs[:2] == ["EHLO", "HELO"]
    assert "MAIL" not in server.sessions[0].verbs
    assert server.transactions == []

    ascii_only = await transport.send(outgoing())
    assert ascii_only.recipients[TO].status == "sent", "only what it cannot carry is refused"


@pytest.mark.parametrize(
    ("server_settings", "settings", "expected", "reply_code", "before_data"),
    [
        pytest.param({"replies": {"greeting": "421 4.3.2 busy"}}, {}, TemporaryError, 421, True),
        pytest.param({"replies": {"MAIL": "451 4.3.0 later"}}, {}, TemporaryError, 451, True),
        pytest.param({"replies": {"MAIL": "550 5.7.1 no"}}, {}, PermanentError, 550, True),
        pytest.param({"replies": {"DATA": "554 5.5.1 no"}}, {}, PermanentError, 554, True),
        pytest.param({"replies": {"DATA_END": "452 4.3.1 full"}}, {}, TemporaryError, 452, False),
        pytest.param({"replies": {"DATA_END": "552 5.3.4 big"}}, {}, PermanentError, 552, False),
        pytest.param(
            {"users": {"alice": "right"}},
            {"user": "alice", "pass": "wrong"},
            CredentialsError,
            535,
            True,
            id="auth-535",
        ),
    ],
)
async def test_smtp_replies_map_onto_the_error_tree(
    smtp_server_factory: StartServer,
    smtp_context: TransportContext,
    server_settings: dict[str, Any],
    settings: dict[str, Any],
    expected: type[TransportError],
    reply_code: int,
    before_data: bool,
) -> None:
    server = smtp_server_factory(**server_settings)
    transport = build("smtp", "contract", server.config(**settings), smtp_context)

    with pytest.raises(TransportError) as caught:
        await transport.send(outgoing())

    assert type(caught.value) is expected
    assert caught.value.reply_code == reply_code
    assert caught.value.before_data is before_data
    assert caught.value.ambiguous is False
    assert isinstance(caught.value.__cause__, Exception), "raised `from` the library's error"
    assert server.transactions == [] or not before_data


@pytest.mark.parametrize(
    ("reply", "status"), [("550 5.1.1 no such user", "rejected"), ("452 4.2.2 full", "deferred")]
)
async def test_smtp_one_refused_rcpt_is_that_recipient_only(
    smtp_server_factory: StartServer,
    smtp_context: TransportContext,
    reply: str,
    status: RecipientStatus,
) -> None:
    server = smtp_server_factory(rcpt_replies={CC: reply})
    transport = build("smtp", "contract", server.config(), smtp_context)

    result = await transport.send(outgoing(cc=(Address(CC),), bcc=(Address(BCC),)))

    assert {r: v.status for r, v in result.recipients.items()} == {
        TO: "sent",
        CC: status,
        BCC: "sent",
    }
    assert result.recipients[CC] == RecipientResult(status, int(reply[:3]), reply[4:])
    [transaction] = server.transactions
    assert transaction.rcpt_tos == [TO, BCC]


@pytest.mark.parametrize("pipelining", [True, False])
async def test_smtp_every_rcpt_refused_is_data_and_nothing_is_sent(
    smtp_server_factory: StartServer, smtp_context: TransportContext, pipelining: bool
) -> None:
    server = smtp_server_factory(replies={"RCPT": "550 5.1.1 unknown"}, pipelining=pipelining)
    transport = build("smtp", "contract", server.config(), smtp_context)

    result = await transport.send(outgoing(cc=(Address(CC),)))

    assert {r: (v.status, v.code) for r, v in result.recipients.items()} == {
        TO: ("rejected", 550),
        CC: ("rejected", 550),
    }
    # Pipelined, DATA went with the RCPTs and was refused for want of a recipient; then RSET.
    assert ("DATA" in server.sessions[0].verbs) is pipelining
    assert "RSET" in server.sessions[0].verbs
    assert server.transactions == []


async def test_smtp_an_unreachable_server_is_temporary_and_before_data(
    smtp_server_factory: StartServer, smtp_context: TransportContext
) -> None:
    server = smtp_server_factory()
    server.stop()
    transport = build("smtp", "contract", server.config(connectionTimeout=2000), smtp_context)

    with pytest.raises(TemporaryError) as caught:
        await transport.send(outgoing())

    assert caught.value.code == "ECONNECTION"
    assert caught.value.before_data
    assert not caught.value.ambiguous
    assert isinstance(caught.value.__cause__, OSError)


async def test_smtp_a_reply_lost_after_the_final_dot_is_temporary_and_ambiguous(
    smtp_server_factory: StartServer, smtp_context: TransportContext
) -> None:
    server = smtp_server_factory(replies={"DATA_END": DROP})
    transport = build("smtp", "contract", server.config(), smtp_context)

    with pytest.raises(TemporaryError) as caught:
        await transport.send(outgoing())

    assert caught.value.ambiguous
    assert not caught.value.before_data
    assert len(server.transactions) == 1, "the server had the whole message"


# --- file and memory ---------------------------------------------------------------------------


async def test_file_an_unwritable_directory_is_temporary(
    tmp_path: Path, smtp_context: TransportContext
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the outbox directory should be")
    config = FileConfig(directory=blocker / "outbox")
    transport = build("file", "builtin", config, smtp_context)

    with pytest.raises(TemporaryError) as caught:
        await transport.send(outgoing())

    assert caught.value.code == "EFILE"
    assert isinstance(caught.value.__cause__, OSError)
    assert str(blocker) in caught.value.message


async def test_file_each_recipient_set_is_its_own_file_and_a_retry_replaces_it(
    tmp_path: Path, smtp_context: TransportContext
) -> None:
    directory = tmp_path / "outbox"
    transport = build("file", "builtin", FileConfig(directory=directory), smtp_context)
    both = outgoing(cc=(Address(CC),))
    one = dataclasses.replace(both, recipients=(CC,))

    first = await transport.send(both)
    again = await transport.send(both)
    other = await transport.send(one)

    assert first.provider_id == again.provider_id != other.provider_id
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        {str(first.provider_id), str(other.provider_id)}
    )
    assert [_eml(directory / str(other.provider_id)).recipients] == [[CC]]


async def test_memory_passes_the_responders_answer_and_errors_through(
    smtp_context: TransportContext,
) -> None:
    transport = build("memory", "memory", TRANSPORTS["memory"].config(), smtp_context)
    assert isinstance(transport, MemoryTransport)
    refused = TemporaryError("try later", code="EAPI", reply_code=451)
    answers: list[SendResult | TransportError] = [
        SendResult(
            {TO: RecipientResult("sent", 250), CC: RecipientResult("rejected", 550, "unknown")}
        ),
        refused,
    ]

    def responder(message: object) -> SendResult:
        answer = answers.pop(0)
        if isinstance(answer, TransportError):
            raise answer
        return answer

    transport.responder = responder

    partial = await transport.send(outgoing(cc=(Address(CC),)))
    with pytest.raises(TemporaryError) as caught:
        await transport.send(outgoing())

    assert {r: v.status for r, v in partial.recipients.items()} == {TO: "sent", CC: "rejected"}
    assert caught.value is refused
    assert len(transport.sent) == 2, "a send is recorded even when it fails"
