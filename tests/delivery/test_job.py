"""One delivery attempt, without a database or a network: a job built by hand, transports that
answer from a script, and the results and attempt rows the job keeps for the outbox to write."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from app.delivery.job import Delivery, Job, hold_back
from app.delivery.links import Links
from app.delivery.rows import QueuedMessage, QueuedRecipient
from app.delivery.stored import StoredMessage
from app.delivery.verp import Verp
from app.metrics import Metrics
from app.servers.models import ServerProfile
from app.suppressions.models import GLOBAL
from app.suppressions.service import Listed
from app.transports.base import OutgoingMessage, VerifyReport
from app.transports.errors import ConfigurationError, PermanentError, TemporaryError
from app.transports.result import RecipientResult, RecipientStatus, SendResult

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
Answer = dict[str, RecipientStatus] | BaseException | float | None
"""A scripted answer to one send: statuses by recipient (the others get no answer), an error to
raise, seconds to hang, or None: every recipient sent."""


class FakeTransport:
    """Implements app.transports.base.Transport: answers each send with the next scripted answer
    and keeps what it was given."""

    def __init__(self, name: str, *answers: Answer) -> None:
        self.name = name
        self.answers = list(answers)
        self.sent: list[OutgoingMessage] = []

    async def send(self, message: OutgoingMessage) -> SendResult:
        self.sent.append(message)
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, float):
            await asyncio.sleep(answer)
            answer = None
        if answer is None:
            return SendResult.all(list(message.recipients), "sent", code=250, message="OK")
        recipients = {r: RecipientResult(status, 550, "no") for r, status in answer.items()}
        return SendResult(recipients, provider_id="250 queued", reply_code=250)

    async def verify(self) -> VerifyReport:
        return VerifyReport()

    async def aclose(self) -> None:
        return None


class FakeTransports:
    """The live transports, as the delivery sees them: the built-in one and one per profile."""

    def __init__(self, *profiles: FakeTransport) -> None:
        self.builtin = FakeTransport("builtin")
        self.verp = Verp(b"k" * 32)
        self.by_name = {transport.name: transport for transport in profiles}

    def get(self, profile: ServerProfile) -> FakeTransport:
        return self.by_name[profile.name]

    def signer(self, profile: ServerProfile | None) -> None:
        return None


def profile(name: str = "relay", **fields: Any) -> ServerProfile:
    return ServerProfile(name=name, type="smtp", settings={}, **fields)


def job(
    *emails: str,
    via: ServerProfile | None = None,
    fallback: ServerProfile | None = None,
    group: bool = False,
    server: str | None = None,
) -> Job:
    payload: dict[str, Any] = {
        "subject": "Hello",
        "text": "Hello there",
        "from": {"email": "app@example.com", "name": "App"},
    }
    if group:
        payload["group"] = [{"email": email, "name": ""} for email in emails]
    else:
        payload["to"] = [{"email": email} for email in emails]
    message = QueuedMessage(
        id="0" * 31 + "1",
        message_id="<1@example.com>",
        server=server or (via.name if via is not None else None),
        theme=None,
        created_at=NOW,
        send_at=None,
        next_attempt_at=NOW,
        sent_at=None,
    )
    recipients = [
        QueuedRecipient(i, email, "group" if group else "to", "pending", None)
        for i, email in enumerate(emails, 1)
    ]
    return Job(message, StoredMessage.of(payload), 3, recipients, via, fallback)


def delivery(transports: FakeTransports, *, timeout: float = 5.0) -> Delivery:
    return Delivery(transports, Links(b"l" * 32, None), Metrics(), attempt_timeout=timeout)


def statuses(done: Job) -> dict[str, str]:
    return {email: result.status for email, result in done.results.items()}


def outcomes(done: Job) -> list[tuple[str, str, str | None, int]]:
    return [(a["server"], a["outcome"], a["error_code"], a["recipients"]) for a in done.attempts]


async def test_a_visible_message_is_one_transaction_and_one_attempt_row() -> None:
    relay = FakeTransport("relay")
    done = job("ann@example.com", "bob@example.com", via=profile())
    await delivery(FakeTransports(relay)).attempt(done)
    [sent] = relay.sent
    assert sent.recipients == ("ann@example.com", "bob@example.com")
    assert sent.envelope_from == "app@example.com"
    assert b"Subject: Hello" in sent.mime
    assert statuses(done) == {"ann@example.com": "sent", "bob@example.com": "sent"}
    assert outcomes(done) == [("relay", "sent", None, 2)]
    [row] = done.attempts
    assert (row["message_pk"], row["number"], row["reply_code"]) == (done.message.id, 3, 250)
    assert done.delivered_any
    assert done.servers == dict.fromkeys(statuses(done), "relay")


async def test_a_recipient_without_an_answer_is_deferred_and_the_attempt_partial() -> None:
    relay = FakeTransport("relay", {"ann@example.com": "rejected"})
    done = job("ann@example.com", "bob@example.com", via=profile())
    await delivery(FakeTransports(relay)).attempt(done)
    assert statuses(done) == {"ann@example.com": "rejected", "bob@example.com": "deferred"}
    assert done.results["bob@example.com"].message == "no answer for this recipient"
    assert outcomes(done) == [("relay", "partial", None, 2)]
    assert not done.delivered_any


async def test_a_failure_before_data_goes_to_the_fallback() -> None:
    refused = TemporaryError("connection refused", code="ECONNECTION", before_data=True)
    relay, backup = FakeTransport("relay", refused), FakeTransport("backup")
    done = job("ann@example.com", via=profile(fallback="backup"), fallback=profile("backup"))
    await delivery(FakeTransports(relay, backup)).attempt(done)
    assert len(relay.sent) == len(backup.sent) == 1
    assert statuses(done) == {"ann@example.com": "sent"}
    assert outcomes(done) == [("relay", "deferred", "ECONNECTION", 1), ("backup", "sent", None, 1)]
    assert done.servers == {"ann@example.com": "backup"}


async def test_a_failure_after_data_does_not_go_to_the_fallback() -> None:
    lost = TemporaryError("connection lost after the final dot", code="ECONNECTION", ambiguous=True)
    relay, backup = FakeTransport("relay", lost), FakeTransport("backup")
    done = job("ann@example.com", via=profile(fallback="backup"), fallback=profile("backup"))
    runner = delivery(FakeTransports(relay, backup))
    await runner.attempt(done)
    assert backup.sent == []
    assert statuses(done) == {"ann@example.com": "deferred"}
    assert runner.metrics.value("postroom_ambiguous_attempts_total") == 1


async def test_a_connection_level_error_defers_the_rest_of_the_group_untried() -> None:
    down = TemporaryError("no route", code="ECONNECTION", before_data=True, retry_after=30.0)
    relay = FakeTransport("relay", down)
    members = [f"m{i}@example.com" for i in range(4)]
    done = job(*members, via=profile(max_recipients_per_message=2), group=True)
    await delivery(FakeTransports(relay)).attempt(done)
    assert len(relay.sent) == 1, "the second chunk is not tried against a server that is down"
    assert statuses(done) == dict.fromkeys(members, "deferred")
    assert outcomes(done) == [("relay", "deferred", "ECONNECTION", 2)]
    assert done.retry_after == 30.0


async def test_a_refused_chunk_does_not_stop_the_next() -> None:
    refused = PermanentError("message refused", code="EMESSAGE", reply_code=554)
    relay = FakeTransport("relay", refused)
    members = [f"m{i}@example.com" for i in range(4)]
    done = job(*members, via=profile(max_recipients_per_message=2), group=True)
    await delivery(FakeTransports(relay)).attempt(done)
    assert [m.recipients for m in relay.sent] == [tuple(members[:2]), tuple(members[2:])]
    assert all(b"To: undisclosed-recipients:;" in m.mime for m in relay.sent)
    assert statuses(done) == {
        **dict.fromkeys(members[:2], "failed"),
        **dict.fromkeys(members[2:], "sent"),
    }
    assert outcomes(done) == [("relay", "failed", "EMESSAGE", 2), ("relay", "sent", None, 2)]
    assert done.results[members[0]].code == 554


async def test_a_refused_configuration_is_kept_for_the_profiles_health() -> None:
    refused = ConfigurationError("certificate not trusted", code="ETLS")
    runner = delivery(FakeTransports(FakeTransport("relay", refused)))
    done = job("ann@example.com", via=profile())
    await runner.attempt(done)
    assert done.config_error == "ETLS: certificate not trusted"
    assert statuses(done) == {"ann@example.com": "deferred"}
    assert runner.metrics.value("postroom_configuration_errors_total", profile="relay", code="ETLS")


async def test_an_attempt_past_the_timeout_is_cut_and_counted_ambiguous() -> None:
    relay = FakeTransport("relay", 5.0)
    runner = delivery(FakeTransports(relay), timeout=0.05)
    done = job("ann@example.com", "bob@example.com", via=profile())
    await runner.attempt(done)
    assert statuses(done) == {"ann@example.com": "deferred", "bob@example.com": "deferred"}
    [row] = done.attempts
    assert (row["server"], row["error_code"], row["ambiguous"]) == ("relay", "ETIMEDOUT", True)
    assert "POSTROOM_ATTEMPT_TIMEOUT (0.05 s)" in row["error"]
    assert runner.metrics.value("postroom_ambiguous_attempts_total") == 1


async def test_a_bug_is_recorded_as_a_deferred_internal_error() -> None:
    runner = delivery(FakeTransports(FakeTransport("relay", RuntimeError("a bug"))))
    done = job("ann@example.com", via=profile())
    await runner.attempt(done)
    assert statuses(done) == {"ann@example.com": "deferred"}
    [row] = done.attempts
    assert (row["outcome"], row["error_code"]) == ("deferred", "EINTERNAL")
    assert row["error"] == "internal error: RuntimeError: a bug"
    assert runner.metrics.value("postroom_internal_errors_total") == 1


async def test_a_profile_that_is_gone_defers_without_sending() -> None:
    transports = FakeTransports()
    done = job("ann@example.com", server="gone")
    await delivery(transports).attempt(done)
    assert transports.builtin.sent == []
    assert done.results["ann@example.com"].status == "deferred"
    assert "server profile 'gone' no longer exists" in done.results["ann@example.com"].message
    assert done.attempts == []


async def test_a_group_through_the_builtin_server_is_one_message_per_member() -> None:
    transports = FakeTransports()
    done = job("ann@example.com", "bob@example.com", group=True)
    await delivery(transports).attempt(done)
    assert [m.recipients for m in transports.builtin.sent] == [
        ("ann@example.com",),
        ("bob@example.com",),
    ]
    assert outcomes(done) == [("builtin", "sent", None, 1), ("builtin", "sent", None, 1)]


async def test_a_suppressed_recipient_is_held_back_and_the_others_sent() -> None:
    relay = FakeTransport("relay")
    done = job("ann@example.com", "bob@example.com", via=profile())
    listed = Listed({}, {"bob@example.com": {GLOBAL: "hard bounce"}})
    hold_back(done, listed)
    await delivery(FakeTransports(relay)).attempt(done)
    [sent] = relay.sent
    assert sent.recipients == ("ann@example.com",)
    assert statuses(done) == {"bob@example.com": "suppressed", "ann@example.com": "sent"}
