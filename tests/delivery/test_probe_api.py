"""POST /servers/{name}/test and /verify against real SMTP servers."""

from __future__ import annotations

import httpx
import pytest

from app.delivery.probe import Candidate, text_of_test_mail
from app.transports.smtp import SmtpConfig
from tests.delivery.conftest import add_smtp_profile
from tests.smtpd import StartServer

pytestmark = pytest.mark.anyio


async def test_test_mail_goes_to_the_sender_by_default(
    admin: httpx.AsyncClient, smtp_server_factory: StartServer
) -> None:
    server = smtp_server_factory(users={"alice": "s3cret-pass"})
    await add_smtp_profile(admin, server, settings={"user": "alice", "pass": "s3cret-pass"})
    response = await admin.post("/api/v1/servers/relay/test", json={})
    assert response.status_code == 200, response.text
    outcome = response.json()
    assert outcome["ok"] is True
    assert outcome["to"] == "noreply@example.com"
    [transaction] = server.transactions
    assert transaction.rcpt_tos == ["noreply@example.com"]
    assert transaction.authenticated_as == "alice"
    mail = transaction.message
    assert mail["Subject"] == "Congratulation! Your mail server is configured successfully."
    body = mail.get_content()
    for expected in ("Host: 127.0.0.1", f"Port: {server.port}", "Type: smtp", "Username: alice"):
        assert expected in body


async def test_test_mail_with_unsaved_changes_keeps_the_stored_password(
    admin: httpx.AsyncClient, smtp_server_factory: StartServer
) -> None:
    old = smtp_server_factory(users={"alice": "s3cret-pass"})
    new = smtp_server_factory(users={"alice": "s3cret-pass"})
    await add_smtp_profile(admin, old, settings={"user": "alice", "pass": "s3cret-pass"})
    response = await admin.post(
        "/api/v1/servers/relay/test",
        json={"to": "me@example.com", "changes": {"settings": {"port": new.port}}},
    )
    assert response.json()["ok"] is True
    assert old.transactions == []
    assert new.transactions[0].authenticated_as == "alice"
    stored = (await admin.get("/api/v1/servers/relay")).json()
    assert stored["settings"]["port"] == old.port, "the changes were not saved"


async def test_test_mail_explains_a_refused_password(
    admin: httpx.AsyncClient, smtp_server_factory: StartServer
) -> None:
    server = smtp_server_factory(users={"alice": "right"})
    await add_smtp_profile(admin, server, settings={"user": "alice", "pass": "wrong-one"})
    outcome = (await admin.post("/api/v1/servers/relay/test", json={"to": "me@example.com"})).json()
    assert outcome["ok"] is False
    assert outcome["errorCode"] == "EAUTH"
    assert outcome["replyCode"] == 535
    assert "credentials" in outcome["hint"]
    assert "user and pass" in outcome["hint"]
    assert "wrong-one" not in str(outcome)


async def test_test_mail_explains_a_closed_port(
    admin: httpx.AsyncClient, smtp_server_factory: StartServer
) -> None:
    server = smtp_server_factory()
    server.stop()
    await add_smtp_profile(admin, server)
    outcome = (await admin.post("/api/v1/servers/relay/test", json={"to": "me@example.com"})).json()
    assert outcome["ok"] is False
    assert outcome["errorCode"] == "ECONNECTION"
    assert "port" in outcome["hint"]


async def test_test_mail_explains_an_untrusted_certificate(
    admin: httpx.AsyncClient, smtp_server_factory: StartServer
) -> None:
    server = smtp_server_factory(tls="starttls")
    await add_smtp_profile(admin, server, settings={"ignoreTLS": False, "requireTLS": True})
    outcome = (await admin.post("/api/v1/servers/relay/test", json={"to": "me@example.com"})).json()
    assert outcome["errorCode"] == "ETLS"
    assert "caCertificates" in outcome["hint"]
    trusted = await admin.post(
        "/api/v1/servers/relay/test",
        json={"to": "me@example.com", "changes": {"settings": {"caCertificates": server.ca_pem}}},
    )
    assert trusted.json()["ok"] is True
    assert trusted.json()["tlsVersion"].startswith("TLSv1.")


async def test_test_sends_are_throttled_per_profile(
    admin: httpx.AsyncClient, smtp_server_factory: StartServer
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    codes = [
        (await admin.post("/api/v1/servers/relay/test", json={"to": "me@example.com"})).status_code
        for _ in range(6)
    ]
    assert codes == [200] * 5 + [429]
    limited = await admin.post("/api/v1/servers/relay/test", json={"to": "me@example.com"})
    # the sliding estimate: 5 sends early in a minute weigh until 12 s into the next one
    assert 1 <= int(limited.headers["Retry-After"]) <= 72
    assert len(server.transactions) == 5


async def test_verify_reports_each_step_and_sends_nothing(
    admin: httpx.AsyncClient, smtp_server_factory: StartServer
) -> None:
    server = smtp_server_factory(tls="starttls", users={"alice": "s3cret-pass"})
    await add_smtp_profile(
        admin,
        server,
        settings={
            "ignoreTLS": False,
            "user": "alice",
            "pass": "s3cret-pass",
            "caCertificates": server.ca_pem,
        },
    )
    response = await admin.post("/api/v1/servers/relay/verify", json={})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["ok"] is True, report
    names = [step["name"] for step in report["steps"]]
    assert names[:3] == ["dns", "connect", "greeting"]
    assert {"ehlo", "tls", "auth", "quit"} <= set(names)
    tls = next(step for step in report["steps"] if step["name"] == "tls")
    assert tls["data"]["protocol"].startswith("TLSv1.")
    assert all(step["durationMs"] >= 0 for step in report["steps"])
    assert server.transactions == []
    assert all("MAIL" not in session.verbs for session in server.sessions)


async def test_verify_stops_at_the_failing_step(
    admin: httpx.AsyncClient, smtp_server_factory: StartServer
) -> None:
    server = smtp_server_factory(users={"alice": "right"})
    await add_smtp_profile(admin, server, settings={"user": "alice", "pass": "wrong-one"})
    report = (await admin.post("/api/v1/servers/relay/verify", json={})).json()
    assert report["ok"] is False
    assert report["errorCode"] == "EAUTH"
    assert report["steps"][-1]["name"] == "auth"
    assert report["steps"][-1]["ok"] is False
    assert report["hint"]


async def test_probes_need_an_admin(sender: httpx.AsyncClient) -> None:
    assert (await sender.post("/api/v1/servers/x/test", json={})).status_code == 403
    assert (await sender.post("/api/v1/servers/x/verify", json={})).status_code == 403


async def test_probing_an_unknown_profile_is_404(admin: httpx.AsyncClient) -> None:
    assert (await admin.post("/api/v1/servers/nope/verify", json={})).status_code == 404


def test_the_test_mail_names_the_port_it_connects_to() -> None:
    implicit = Candidate("tls", "smtp", SmtpConfig.model_validate({"secure": True}), None)
    plain = Candidate("plain", "smtp", SmtpConfig.model_validate({"host": "mx.example"}), None)
    assert "Host: localhost\nPort: 465\n" in text_of_test_mail(implicit)
    assert "Host: mx.example\nPort: 25\n" in text_of_test_mail(plain)


async def test_a_test_mail_is_kept_in_the_sending_records(
    admin: httpx.AsyncClient, smtp_server_factory: StartServer
) -> None:
    """Sent or refused, a test mail is found in the records like any other mail: its one
    attempt, its recipient's result and event (issue 15's "send a test, and find it")."""
    good = smtp_server_factory(users={"alice": "right"})
    await add_smtp_profile(admin, good, settings={"user": "alice", "pass": "right"})
    sent = (await admin.post("/api/v1/servers/relay/test", json={"to": "me@example.com"})).json()
    assert sent["ok"] is True
    found = (await admin.get("/api/v1/messages", params={"recipient": "me@example.com"})).json()
    [summary] = found["items"]
    assert summary["id"] == sent["record"]
    record = (await admin.get(f"/api/v1/messages/{sent['record']}")).json()
    assert (record["status"], record["server"], record["messageId"]) == (
        "sent",
        "relay",
        sent["messageId"],
    )
    [recipient] = record["recipients"]
    assert (recipient["email"], recipient["status"]) == ("me@example.com", "sent")
    assert [e["type"] for e in recipient["events"]] == ["queued", "sent"]
    [attempt] = record["attemptLog"]
    assert (attempt["outcome"], attempt["replyCode"]) == ("sent", 250)

    refused = (
        await admin.patch("/api/v1/servers/relay", json={"settings": {"pass": "wrong"}})
    ).status_code
    assert refused == 200
    failed = (await admin.post("/api/v1/servers/relay/test", json={"to": "you@example.com"})).json()
    assert failed["ok"] is False
    record = (await admin.get(f"/api/v1/messages/{failed['record']}")).json()
    assert record["status"] == "failed"
    [attempt] = record["attemptLog"]
    assert (attempt["outcome"], attempt["errorCode"], attempt["replyCode"]) == (
        "failed",
        "EAUTH",
        535,
    )
    assert "wrong" not in str(record)
