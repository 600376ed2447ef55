"""HTTP provider faults through the whole path (POST -> outbox -> dispatcher -> respx), on a fake
clock: reliability check 11, and check 10 for HTTP 401/403."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest
import respx

from app.delivery.dispatcher import Dispatcher
from app.wiring import Core
from tests.conftest import allow_sender
from tests.delivery.conftest import record, send
from tests.reliability.conftest import FakeClock, Report, attempt_times, play

pytestmark = pytest.mark.anyio

RCPT = "ann@example.com"


async def add_provider(admin: httpx.AsyncClient, type_: str, name: str, base: str) -> None:
    settings: dict[str, Any] = {"apiKey": f"{type_}-key-{name}", "baseUrl": base}
    body = {"name": name, "type": type_, "senderEmail": "noreply@example.com", "settings": settings}
    response = await admin.post("/api/v1/servers", json=body)
    assert response.status_code == 201, response.text
    await allow_sender(admin, name)


def sendgrid_url(name: str) -> str:
    return f"https://{name}.sendgrid.test/v3/mail/send"


async def test_provider_answers_map_to_retry_or_fail(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    clock: FakeClock,
    respx_mock: respx.MockRouter,
    report: Report,
) -> None:
    """Check 11: 429 + Retry-After: 120 -> the next attempt >= 120 s later; 500/502/503/504 and
    connect/read timeouts -> deferred; 400/404/413/422 -> failed after 1 attempt; a 200 whose
    per-recipient status is rejected/invalid -> those recipients permanent."""
    answers: dict[str, Any] = {
        "s429": httpx.Response(429, headers={"Retry-After": "120"}, json={"errors": []}),
        **{f"s{code}": httpx.Response(code, json={"errors": []}) for code in (500, 502, 503, 504)},
        "connect_timeout": httpx.ConnectTimeout("connect timed out"),
        "read_timeout": httpx.ReadTimeout("read timed out"),
        **{f"s{code}": httpx.Response(code, json={"errors": []}) for code in (400, 404, 413, 422)},
    }
    ids: dict[str, str] = {}
    for name, answer in answers.items():
        await add_provider(admin, "sendgrid", name, f"https://{name}.sendgrid.test")
        route = respx_mock.post(sendgrid_url(name))
        if isinstance(answer, Exception):
            route.mock(side_effect=answer)
        else:
            route.mock(return_value=answer)
        ids[name] = await send(sender, to=[RCPT], server=name)
    await add_provider(admin, "mandrill", "mixed", "https://mixed.mandrill.test")
    respx_mock.post("https://mixed.mandrill.test/messages/send-raw.json").respond(
        200,
        json=[
            {"email": "r1@example.com", "status": "sent", "_id": "a"},
            {"email": "r2@example.com", "status": "rejected", "reject_reason": "hard-bounce"},
            {"email": "r3@example.com", "status": "invalid"},
        ],
    )
    mixed = await send(
        sender, to=["r1@example.com", "r2@example.com", "r3@example.com"], server="mixed"
    )
    await play(runtime, dispatcher, clock, 600)

    deferred: Counter[str] = Counter()
    failed: list[str] = []
    for name, message_id in ids.items():
        saved = await record(admin, message_id)
        code = name.removeprefix("s")
        if code in ("400", "404", "413", "422"):
            assert saved["status"] == "failed", name
            assert saved["attempts"] == 1, name
            failed.append(code)
        else:
            assert saved["status"] == "queued", name
            assert saved["attempts"] >= 2, name
            assert {a["outcome"] for a in saved["attemptLog"]} == {"deferred"}, name
            deferred[name] = saved["attempts"]
    first, second = (await attempt_times(runtime, ids["s429"]))[:2]
    waited = (second - first).total_seconds()
    assert waited >= 120

    saved = await record(admin, mixed)
    statuses = {r["email"]: r["status"] for r in saved["recipients"]}
    assert statuses == {
        "r1@example.com": "sent",
        "r2@example.com": "rejected",
        "r3@example.com": "invalid",
    }
    assert saved["status"] == "partially_sent"
    assert saved["attempts"] == 1
    report(
        11,
        f"429 Retry-After 120: next attempt {waited:.0f} s later; deferred (attempts in 10 min): "
        f"{dict(deferred)}; failed after 1 attempt: {failed}; 200 per recipient: {statuses}",
    )


async def test_refused_api_credentials_stay_deferred_for_the_whole_lifetime(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    clock: FakeClock,
    respx_mock: respx.MockRouter,
    report: Report,
) -> None:
    """Check 10 (HTTP 401 and 403): deferred with 0 failed before the lifetime (24 h), the
    profiles' health says failing, and they fail only after it."""
    ids = {}
    for code in (401, 403):
        name = f"s{code}"
        await add_provider(admin, "sendgrid", name, f"https://{name}.sendgrid.test")
        respx_mock.post(sendgrid_url(name)).respond(code, json={"errors": [{"message": "no"}]})
        ids[code] = await send(sender, to=[RCPT], server=name)
    lifetime = runtime.settings.max_message_age
    await play(runtime, dispatcher, clock, lifetime - 1, granularity=60)

    attempts = {}
    for code, message_id in ids.items():
        saved = await record(admin, message_id)
        assert saved["status"] == "queued"
        assert {a["outcome"] for a in saved["attemptLog"]} == {"deferred"}
        assert {a["errorCode"] for a in saved["attemptLog"]} == {"EAUTH"}
        attempts[code] = saved["attempts"]
        health = (await admin.get(f"/api/v1/servers/s{code}")).json()["health"]
        assert health["status"] == "failing"
        assert "EAUTH" in health["error"]
    await play(runtime, dispatcher, clock, 2 * runtime.settings.retry_max)
    for message_id in ids.values():
        assert (await record(admin, message_id))["status"] == "failed"
    report(
        10,
        f"HTTP 401/403: {attempts} attempts, all deferred (0 failed) over {lifetime / 3600:g} h, "
        "health failing; failed only after the lifetime",
    )
