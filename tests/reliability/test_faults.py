"""SMTP faults through the whole path (POST -> outbox -> dispatcher -> a misbehaving aiosmtpd):
reliability checks 8, 9, 10, 13, 15, 16 and 17. Retries run on a fake clock; nothing sleeps for
the retry waits."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import statistics
import struct
import threading
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Attempt, Message
from app.wiring import Core
from tests.delivery.conftest import add_smtp_profile, record, send
from tests.reliability.conftest import FakeClock, Report, play
from tests.smtpd import DROP, SmtpServer, StartServer

pytestmark = pytest.mark.anyio

RCPT = "rcpt@example.com"
TWO_HOURS = 7200.0
FAST = {"connectionTimeout": 2000, "greetingTimeout": 400, "socketTimeout": 400}
"""Timeouts (ms) short enough for a stall to be seen quickly."""


def copies(server: SmtpServer, message_id: str) -> int:
    """Complete copies of a message at the sink (a drop mid-content records nothing)."""
    return sum(1 for t in server.transactions if t.message["Message-ID"] == message_id)


@dataclass
class Case:
    name: str
    server: dict[str, Any]
    expect: str
    """"deferred" or "failed"."""
    settings: dict[str, Any] = field(default_factory=dict)
    id: str = ""


def reply_matrix() -> list[Case]:
    cases = [
        Case(
            f"{code}_at_{stage}", {"replies": {stage: f"{code} 4.3.0 try again later"}}, "deferred"
        )
        for code in (421, 450, 451, 452)
        for stage in ("greeting", "MAIL", "RCPT", "DATA", "DATA_END")
    ]
    cases += [
        Case(f"{code}_at_{stage}", {"replies": {stage: f"{code} 5.7.1 refused"}}, "failed")
        for code in (500, 501, 503, 550, 552, 553, 554)
        for stage in ("MAIL", "DATA_END")
    ]
    return cases


async def run_cases(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, factory: StartServer, cases: list[Case]
) -> None:
    for index, case in enumerate(cases):
        server = factory(**case.server)
        case.server["instance"] = server
        await add_smtp_profile(admin, server, name=f"c{index}", settings=case.settings)
        case.id = await send(sender, to=[RCPT], server=f"c{index}", subject=case.name)


async def test_reply_matrix_4xx_deferred_5xx_permanent(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    clock: FakeClock,
    smtp_server_factory: StartServer,
    report: Report,
) -> None:
    """Check 8: 421/450/451/452 at greeting, MAIL, RCPT, DATA or end-of-DATA -> deferred, >= 2
    attempts in 2 simulated hours; 500/501/503/550/552/553/554 on MAIL or end-of-DATA -> failed
    after exactly 1 attempt."""
    cases = reply_matrix()
    await run_cases(admin, sender, smtp_server_factory, cases)
    await play(runtime, dispatcher, clock, TWO_HOURS, granularity=30)

    temporary: list[int] = []
    permanent: list[int] = []
    for case in cases:
        saved = await record(admin, case.id)
        outcomes = {a["outcome"] for a in saved["attemptLog"]}
        if case.expect == "deferred":
            assert saved["status"] == "queued", (case.name, saved["status"])
            assert outcomes == {"deferred"}, (case.name, outcomes)
            assert saved["recipients"][0]["status"] == "deferred", case.name
            assert saved["attempts"] >= 2, case.name
            temporary.append(saved["attempts"])
        else:
            assert saved["status"] == "failed", (case.name, saved["status"])
            assert saved["attempts"] == 1, case.name
            assert outcomes == {"failed"}, (case.name, outcomes)
            permanent.append(saved["attempts"])
    report(
        8,
        f"{len(temporary)} 4xx cases deferred with {min(temporary)}-{max(temporary)} attempts in "
        f"2 h; {len(permanent)} 5xx cases failed after {set(permanent)} attempt",
    )


class ResetServer:
    """A TCP server that answers the greeting and EHLO as told, then resets the connection (RST,
    SO_LINGER 0) when it reads the command `reset_on`."""

    def __init__(self, reset_on: str) -> None:
        self.reset_on = reset_on.encode()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.host = "127.0.0.1"
        self.commands: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with closing(conn):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                if self.reset_on == b"greeting":
                    continue
                conn.sendall(b"220 reset.test ESMTP\r\n")
                for line in conn.makefile("rb"):
                    self.commands.append(line.strip())
                    if line.upper().startswith(self.reset_on):
                        break
                    conn.sendall(b"250 ok\r\n")

    def close(self) -> None:
        self.listener.close()


async def test_resets_and_timeouts_at_any_stage_are_deferred(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    report: Report,
) -> None:
    """Check 8: a TCP reset or a timeout at any stage -> deferred (and retried)."""
    stages = ("EHLO", "MAIL", "RCPT", "DATA", "DATA_END")
    cases = [Case(f"drop_at_{s}", {"replies": {s: DROP}}, "deferred") for s in stages]
    cases.append(Case("drop_at_greeting", {"replies": {"greeting": DROP}}, "deferred"))
    cases += [
        Case(f"stall_at_{s}", {"delays": {s: 2.0}}, "deferred", settings=FAST) for s in stages
    ]
    cases.append(Case("stall_at_greeting", {"greeting_delay": 2.0}, "deferred", settings=FAST))
    await run_cases(admin, sender, smtp_server_factory, cases)
    resets = [ResetServer(stage) for stage in ("greeting", "EHLO", "MAIL", "RCPT", "DATA")]
    for index, server in enumerate(resets):
        profile = f"rst{index}"
        await add_smtp_profile(admin, server, name=profile)  # type: ignore[arg-type]
        case = Case(f"rst_at_{server.reset_on.decode()}", {}, "deferred")
        case.id = await send(sender, to=[RCPT], server=profile, subject=case.name)
        cases.append(case)
    try:
        await dispatcher.drain()
    finally:
        for server in resets:
            server.close()

    codes: Counter[str] = Counter()
    for case in cases:
        saved = await record(admin, case.id)
        assert saved["status"] == "queued", (case.name, saved)
        [attempt] = saved["attemptLog"]
        assert attempt["outcome"] == "deferred", (case.name, attempt)
        assert saved["recipients"][0]["status"] == "deferred", case.name
        codes[attempt["errorCode"]] += 1
    assert set(codes) <= {"ECONNECTION", "ETIMEDOUT", "EPROTOCOL"}, codes
    report(8, f"{len(cases)} reset/drop/stall cases deferred ({dict(codes)})")


async def test_one_refused_recipient_and_one_deferred_recipient(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    clock: FakeClock,
    smtp_server_factory: StartServer,
    report: Report,
) -> None:
    """Check 9: RCPT 250/550/250 -> r2 failed, r1 and r3 once; 250/451/250 -> the retry goes to r2
    only, and the sink ends with r1 = r2 = r3 = 1."""
    r1, r2, r3 = "r1@example.com", "r2@example.com", "r3@example.com"
    refusing = smtp_server_factory(rcpt_replies={r2: "550 5.1.1 no such user"})
    busy = smtp_server_factory(rcpt_replies={r2: "451 4.2.1 mailbox busy"})
    await add_smtp_profile(admin, refusing, name="refusing")
    await add_smtp_profile(admin, busy, name="busy")
    refused_id = await send(sender, to=[r1, r2, r3], server="refusing")
    deferred_id = await send(sender, to=[r1, r2, r3], server="busy")
    await dispatcher.drain()
    busy.rcpt_replies.clear()
    await play(runtime, dispatcher, clock, TWO_HOURS)

    refused = await record(admin, refused_id)
    statuses = {r["email"]: r["status"] for r in refused["recipients"]}
    assert statuses == {r1: "sent", r2: "rejected", r3: "sent"}
    assert refused["status"] == "partially_sent"
    assert refused["attempts"] == 1
    first = Counter(r for t in refusing.transactions for r in t.rcpt_tos)
    assert first == {r1: 1, r3: 1}

    retried = await record(admin, deferred_id)
    assert retried["status"] == "sent"
    second = Counter(r for t in busy.transactions for r in t.rcpt_tos)
    assert second == {r1: 1, r2: 1, r3: 1}
    assert [t.rcpt_tos for t in busy.transactions] == [[r1, r3], [r2]]
    report(
        9,
        f"250/550/250: r2 {statuses[r2]}, sink {dict(first)}; 250/451/250: retry to "
        f"{busy.transactions[-1].rcpt_tos}, sink {dict(second)}",
    )


async def test_refused_credentials_stay_deferred_for_the_whole_lifetime(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    clock: FakeClock,
    smtp_server_factory: StartServer,
    report: Report,
) -> None:
    """Check 10 (SMTP 535): deferred, 0 failed before the lifetime (Postroom's 24 h, not 5 days),
    the profile's health says failing; it fails only once the lifetime is over."""
    server = smtp_server_factory(users={"alice": "right-password"})
    await add_smtp_profile(admin, server, settings={"user": "alice", "pass": "wrong-password"})
    message_id = await send(sender, to=[RCPT])
    lifetime = runtime.settings.max_message_age
    await play(runtime, dispatcher, clock, lifetime - 1, granularity=60)

    before = await record(admin, message_id)
    assert before["status"] == "queued"
    outcomes = Counter(a["outcome"] for a in before["attemptLog"])
    assert outcomes == {"deferred": before["attempts"]}
    assert {a["errorCode"] for a in before["attemptLog"]} == {"EAUTH"}
    health = (await admin.get("/api/v1/servers/relay")).json()["health"]
    assert health["status"] == "failing"
    assert "EAUTH" in health["error"]
    assert server.transactions == []

    await play(runtime, dispatcher, clock, 2 * runtime.settings.retry_max)
    after = await record(admin, message_id)
    assert after["status"] == "failed"
    report(
        10,
        f"SMTP 535: {before['attempts']} attempts all deferred (0 failed) over "
        f"{lifetime / 3600:g} h, health={health['status']}; failed only after the lifetime",
    )


async def p95_latency_ms(runtime: Core, ids: list[str]) -> float:
    """95th percentile of sent_at - created_at over these messages, once all are sent."""
    async with runtime.sessions() as session:
        rows = (
            await session.execute(
                select(Message.created_at, Message.sent_at, Message.status).where(
                    Message.id.in_(ids)
                )
            )
        ).all()
    assert {row.status for row in rows} == {"sent"}
    latencies = sorted((row.sent_at - row.created_at).total_seconds() * 1000 for row in rows)
    return float(statistics.quantiles(latencies, n=20)[-1])


async def wait_for(
    runtime: Core, *, sent: Sequence[str] = (), attempted: str = "", within: float = 30.0
) -> None:
    """Wait until these messages are all sent, or until that one has an attempt recorded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        async with runtime.sessions() as session:
            done = await session.scalar(
                select(func.count()).where(Message.id.in_(sent), Message.status == "sent")
            )
            tried = attempted and await session.scalar(
                select(func.count()).where(Attempt.message_pk == attempted)
            )
        if (not sent or done == len(sent)) and (not attempted or tried):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the dispatcher did not get there in time")


async def test_a_stalled_greeting_does_not_hold_up_other_mail(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    report: Report,
) -> None:
    """Check 13: a server that accepts TCP and never greets; greetingTimeout 2 s -> the attempt
    ends within 2-3 s, deferred; meanwhile 100 messages to a healthy sink complete with their p95
    latency up by less than 1 s."""
    healthy = smtp_server_factory()
    stalled = smtp_server_factory(greeting_delay=3600)
    await add_smtp_profile(admin, healthy, name="healthy")
    await add_smtp_profile(admin, stalled, name="stalled", settings={"greetingTimeout": 2000})
    dispatcher.wakeup = runtime.notifier  # the intake wakes this dispatcher
    stopping = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stopping))
    try:
        alone = [await send(sender, to=[f"a{i}@example.com"], server="healthy") for i in range(100)]
        await wait_for(runtime, sent=alone)
        baseline = await p95_latency_ms(runtime, alone)

        stuck = await send(sender, to=[RCPT], server="stalled")
        await stalled.wait_until(lambda: len(stalled.sessions) == 1, within=5)
        beside = [
            await send(sender, to=[f"b{i}@example.com"], server="healthy") for i in range(100)
        ]
        await wait_for(runtime, sent=beside)
        during = await p95_latency_ms(runtime, beside)
        await wait_for(runtime, attempted=stuck)
    finally:
        stopping.set()
        await running
    saved = await record(admin, stuck)
    [attempt] = saved["attemptLog"]
    assert saved["status"] == "queued"
    assert attempt["outcome"] == "deferred"
    assert attempt["errorCode"] == "ETIMEDOUT"
    assert 2000 <= attempt["durationMs"] <= 3000
    assert during - baseline < 1000
    report(
        13,
        f"stalled greeting cut after {attempt['durationMs']:.0f} ms (deferred); healthy p95 "
        f"{baseline:.0f} ms alone, {during:.0f} ms beside it (+{during - baseline:.0f} ms)",
    )


async def test_a_drop_in_the_middle_of_the_content_is_retried_to_one_copy(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    clock: FakeClock,
    smtp_server_factory: StartServer,
    report: Report,
) -> None:
    """Check 15: the connection closes after 354 + 1 KiB -> deferred, retried, exactly one
    complete copy at the sink, nothing partial recorded as delivered.

    A small message fits the socket buffers whole, so the client has written its final "." when
    it sees the close: that attempt is (rightly) counted ambiguous. A large one sees the close
    mid-content: not ambiguous."""
    bodies = {"small": "0123456789abcdef\n" * 400, "large": ("x" * 900 + "\n") * 8000}
    servers = {size: smtp_server_factory(drop_mid_data_after=1024) for size in bodies}
    ids = {}
    for size, body in bodies.items():
        await add_smtp_profile(admin, servers[size], name=size)
        ids[size] = await send(sender, to=[RCPT], server=size, text=body)
    await dispatcher.drain()
    ambiguous = {}
    for size, message_id in ids.items():
        first = await record(admin, message_id)
        assert first["status"] == "queued"
        [attempt] = first["attemptLog"]
        assert attempt["outcome"] == "deferred"
        assert first["recipients"][0]["status"] == "deferred"
        assert servers[size].transactions == []
        ambiguous[size] = attempt["ambiguous"]
        servers[size].drop_mid_data_after = None
    assert ambiguous["large"] is False

    await play(runtime, dispatcher, clock, TWO_HOURS)
    counts = {}
    for size, message_id in ids.items():
        saved = await record(admin, message_id)
        assert saved["status"] == "sent"
        counts[size] = copies(servers[size], saved["messageId"])
        assert counts[size] == 1
        [delivered] = servers[size].transactions
        assert delivered.message.get_content().replace("\r\n", "\n") == bodies[size]
        assert [a["outcome"] for a in saved["attemptLog"]] == ["deferred", "sent"]
    report(
        15,
        f"drop after 354 + 1 KiB: deferred then {counts} complete copy at the sink, 0 partial "
        f"delivered (ambiguous: {ambiguous})",
    )


async def test_a_drop_after_the_final_dot_is_retried_and_counted_ambiguous(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    clock: FakeClock,
    smtp_server_factory: StartServer,
    report: Report,
) -> None:
    """Check 16: the connection drops after the final "." and before the 250 (RFC 1047) -> retried;
    at most 2 copies with the same Message-ID; ambiguous_attempts_total + 1."""
    server = smtp_server_factory(replies={"DATA_END": DROP})
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=[RCPT])
    before = dispatcher.metrics.value("postroom_ambiguous_attempts_total")
    await dispatcher.drain()
    server.replies.clear()
    await play(runtime, dispatcher, clock, TWO_HOURS)
    saved = await record(admin, message_id)
    assert saved["status"] == "sent"
    assert [a["ambiguous"] for a in saved["attemptLog"]] == [True, False]
    count = copies(server, saved["messageId"])
    assert count <= 2
    assert len({t.message["Message-ID"] for t in server.transactions}) == 1
    increment = dispatcher.metrics.value("postroom_ambiguous_attempts_total") - before
    assert increment == 1
    metrics = (await admin.get("/metrics")).text
    assert "postroom_ambiguous_attempts_total 1" in metrics
    report(16, f"{count} copies with one Message-ID; ambiguous_attempts_total +{increment}")


class SelfSigned:
    """A certificate that signs itself, for `SmtpServer(certificate=...)`."""

    def __init__(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()
        self.key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def configure_cert(self, context: ssl.SSLContext) -> None:
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".pem") as file:
            file.write(self.pem + self.key_pem)
            file.flush()
            context.load_cert_chain(file.name)


SECRET_VERBS = ("AUTH", "MAIL", "RCPT", "DATA")


def content_commands(server: SmtpServer) -> int:
    """Commands that carry credentials or mail, over every session the server saw."""
    return sum(1 for s in server.sessions for verb in s.verbs if verb.upper() in SECRET_VERBS)


async def test_tls_is_verified_and_never_falls_back_to_plaintext(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    clock: FakeClock,
    smtp_server_factory: StartServer,
    report: Report,
) -> None:
    """Check 17: a self-signed certificate with validation on -> fails, 0 AUTH/MAIL at the server;
    the same server with its certificate configured as CA -> delivered; STARTTLS required but not
    offered -> 0 AUTH; a server limited to TLS 1.1 -> fails; no plaintext fallback on retries."""
    own = SelfSigned()
    users = {"alice": "tls-password"}
    auth = {"user": "alice", "pass": "tls-password", "ignoreTLS": False}
    untrusted = smtp_server_factory(tls="starttls", certificate=own, users=users)
    trusted = smtp_server_factory(tls="starttls", certificate=own, users=users)
    stripped = smtp_server_factory(users=users)
    old_tls = smtp_server_factory(
        tls="starttls", certificate=own, users=users, max_tls_version=ssl.TLSVersion.TLSv1_1
    )
    implicit = smtp_server_factory(tls="implicit", certificate=own, users=users)
    await add_smtp_profile(admin, untrusted, name="untrusted", settings=auth)
    await add_smtp_profile(
        admin, trusted, name="trusted", settings={**auth, "caCertificates": own.pem}
    )
    await add_smtp_profile(admin, stripped, name="stripped", settings={**auth, "requireTLS": True})
    await add_smtp_profile(
        admin, old_tls, name="old_tls", settings={**auth, "caCertificates": own.pem}
    )
    await add_smtp_profile(admin, implicit, name="implicit", settings={**auth, "secure": True})
    ids = {
        name: await send(sender, to=[RCPT], server=name)
        for name in ("untrusted", "trusted", "stripped", "old_tls", "implicit")
    }
    await play(runtime, dispatcher, clock, 600)

    results: dict[str, str] = {}
    for name, server in (
        ("untrusted", untrusted),
        ("stripped", stripped),
        ("old_tls", old_tls),
        ("implicit", implicit),
    ):
        saved = await record(admin, ids[name])
        assert saved["status"] == "queued", name
        assert saved["attempts"] >= 2, name
        assert {a["errorCode"] for a in saved["attemptLog"]} == {"ETLS"}, name
        assert content_commands(server) == 0, (name, [s.commands for s in server.sessions])
        assert server.transactions == []
        results[name] = f"{saved['attempts']} attempts, 0 AUTH/MAIL"
    good = await record(admin, ids["trusted"])
    assert good["status"] == "sent"
    [transaction] = trusted.transactions
    assert transaction.tls_version in ("TLSv1.2", "TLSv1.3")
    assert transaction.authenticated_as == "alice"
    report(
        17,
        f"self-signed: {results['untrusted']}; implicit TLS self-signed: {results['implicit']}; "
        f"with its CA: sent over {transaction.tls_version}; STARTTLS stripped: "
        f"{results['stripped']}; TLS <= 1.1: {results['old_tls']}",
    )
