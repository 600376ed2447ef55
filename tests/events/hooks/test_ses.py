"""SES notifications through SNS: the samples re-signed with a certificate made here, which the
hooks fetch from an SNS host (the `Sns` seam serves it); the subscription confirmation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.events.hooks.conftest import Hooks, SnsHost
from tests.events.hooks.signing import CERT_URL, sample

pytestmark = pytest.mark.anyio

TOPIC = "arn:aws:sns:us-west-2:123456789012:MyTopic"


def envelope(name: str) -> dict[str, Any]:
    body: dict[str, Any] = sample("ses", name)["body"]
    return body


def ses_id(name: str) -> str:
    return str(json.loads(envelope(name)["Message"])["mail"]["messageId"])


async def ses(hooks: Hooks, **settings: Any) -> None:
    await hooks.profile("ses", "aws", **settings)


@pytest.mark.parametrize(
    ("name", "version", "expected"),
    [
        ("bounce-permanent", "1", [("jane@example.com", "bounced", "hard")]),
        ("bounce-transient", "2", [("jane@example.com", "bounced", "soft")]),
        ("complaint", "1", [("richard@example.com", "complained", None)]),
        ("delivery", "2", [("jane@example.com", "delivered", None)]),
        ("event-publishing-delivery-delay", "1", [("recipient@example.com", "deferred", None)]),
    ],
)
async def test_a_signed_notification_is_stored_on_its_message_and_recipient(
    hooks: Hooks,
    sns: SnsHost,
    name: str,
    version: str,
    expected: list[tuple[str, str, str | None]],
) -> None:
    await ses(hooks)
    people = [email for email, _, _ in expected]
    message_pk = await hooks.sent([*people, "bystander@example.com"], ses_id(name))
    response = await hooks.post("aws", sns.key.sign(envelope(name), version=version))
    assert response.status_code == 200, response.text
    stored = await hooks.events(message_pk)
    assert [(e.email, e.type, e.bounce_type) for e in stored] == expected
    assert all(e.recipient_pk is not None and e.source == "ses" for e in stored)
    assert sns.urls() == [CERT_URL]


async def test_the_bounce_keeps_the_diagnostic(hooks: Hooks, sns: SnsHost) -> None:
    await ses(hooks)
    await hooks.sent(["jane@example.com"], ses_id("bounce-permanent"))
    await hooks.post("aws", sns.key.sign(envelope("bounce-permanent")))
    [event] = await hooks.all_events()
    assert event.diagnostic_code == "5.1.1"
    assert event.reason == "smtp; 550 5.1.1 <jane@example.com>... User"


async def test_the_certificate_is_fetched_once_per_url(hooks: Hooks, sns: SnsHost) -> None:
    await ses(hooks)
    for name in ("bounce-permanent", "complaint", "delivery"):
        assert (await hooks.post("aws", sns.key.sign(envelope(name)))).status_code == 200
    assert sns.urls() == [CERT_URL]


async def test_a_forged_signature_is_a_401_and_stores_nothing(hooks: Hooks, sns: SnsHost) -> None:
    await ses(hooks)
    await hooks.sent(["jane@example.com"], ses_id("bounce-permanent"))
    signed = json.loads(sns.key.sign(envelope("bounce-permanent")))
    signed["Message"] = signed["Message"].replace("Permanent", "Transient")
    assert (await hooks.post("aws", json.dumps(signed).encode())).status_code == 401
    sample_as_published = json.dumps(envelope("bounce-permanent")).encode()  # EXAMPLE... signature
    assert (await hooks.post("aws", sample_as_published)).status_code == 401
    unsigned = {k: v for k, v in signed.items() if k != "Signature"}
    assert (await hooks.post("aws", json.dumps(unsigned).encode())).status_code == 401
    assert await hooks.all_events() == []
    assert hooks.counted("ses", "refused") == 3


@pytest.mark.parametrize(
    "url",
    [
        "https://attacker.example/SimpleNotificationService-x.pem",
        "https://my-bucket.s3.amazonaws.com/SimpleNotificationService-x.pem",
        "http://sns.us-west-2.amazonaws.com/SimpleNotificationService-x.pem",
        "https://sns.us-west-2.amazonaws.com.attacker.example/x.pem",
        "https://sns.us-west-2.amazonaws.com/not-a-certificate.txt",
    ],
)
async def test_a_certificate_anywhere_but_an_sns_host_is_never_fetched(
    hooks: Hooks, sns: SnsHost, url: str
) -> None:
    await ses(hooks)
    response = await hooks.post("aws", sns.key.sign(envelope("complaint"), cert_url=url))
    assert response.status_code == 401
    assert "SigningCertURL" in response.json()["error"]["message"]
    assert sns.requests == []


async def test_a_subscription_is_confirmed_only_once_it_verifies(
    hooks: Hooks, sns: SnsHost
) -> None:
    await ses(hooks)
    confirmation = envelope("sns-subscription-confirmation")
    forged = json.loads(sns.key.sign(confirmation))
    forged["Token"] = "another-token"
    assert (await hooks.post("aws", json.dumps(forged).encode())).status_code == 401
    elsewhere = dict(
        confirmation, SubscribeURL="https://attacker.example/?Action=ConfirmSubscription"
    )
    assert (await hooks.post("aws", sns.key.sign(elsewhere))).status_code == 401
    assert [r.url.path for r in sns.requests] == ["/SimpleNotificationService-test.pem"]

    response = await hooks.post("aws", sns.key.sign(confirmation))
    assert response.status_code == 200, response.text
    assert response.json()["note"] == f"subscription to {TOPIC} confirmed"
    assert sns.urls()[-1] == confirmation["SubscribeURL"]
    assert await hooks.all_events() == []


async def test_only_the_profiles_topics_are_accepted(hooks: Hooks, sns: SnsHost) -> None:
    await ses(hooks, webhookTopicArns=["arn:aws:sns:eu-west-1:123456789012:postroom-events"])
    response = await hooks.post("aws", sns.key.sign(envelope("complaint")))
    assert response.status_code == 401
    assert "webhookTopicArns" in response.json()["error"]["message"]
    assert sns.requests == []
    bad = await hooks.admin.patch(
        "/api/v1/servers/aws", json={"settings": {"webhookTopicArns": ["not-an-arn"]}}
    )
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"].startswith("settings.webhookTopicArns")


async def test_an_unreachable_certificate_host_is_a_503_so_sns_retries(
    hooks: Hooks, sns: SnsHost
) -> None:
    await ses(hooks)
    sns.key.pem = b"not a certificate"
    response = await hooks.post("aws", sns.key.sign(envelope("complaint")))
    assert response.status_code == 503
    assert await hooks.all_events() == []
    assert hooks.counted("ses", "unavailable") == 1


async def test_a_notification_that_is_not_ses_json_is_a_400(hooks: Hooks, sns: SnsHost) -> None:
    await ses(hooks)
    broken = dict(envelope("complaint"), Message='{"notificationType": "Complaint"')
    response = await hooks.post("aws", sns.key.sign(broken))
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == "Message"
    no_mail = dict(envelope("complaint"), Message='{"notificationType": "Complaint"}')
    response = await hooks.post("aws", sns.key.sign(no_mail))
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == "Message.mail"
