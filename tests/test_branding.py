"""Sisense 0.9's GET/POST /branding: the system sender, used when nothing else names one."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio

URL = "/api/branding"


async def test_empty_at_first(admin: httpx.AsyncClient) -> None:
    response = await admin.get(URL)
    assert response.status_code == 200
    assert response.json() == {"emails": {"senderEmail": None, "senderName": None}}


async def test_the_sisense_body_is_accepted(admin: httpx.AsyncClient) -> None:
    posted = await admin.post(URL, json={"emails": {"senderEmail": "username@newdomain.com"}})
    assert posted.status_code == 200, posted.text
    assert posted.json() == {
        "emails": {"senderEmail": "username@newdomain.com", "senderName": None}
    }
    assert (await admin.get(URL)).json() == posted.json()


async def test_special_characters_in_the_local_part(admin: httpx.AsyncClient) -> None:
    for address in (
        "reports#weekly@example.com",
        "a&b@example.com",
        "bi+ops#1&2@example.co.uk",
        "o'neil@example.com",
    ):
        posted = await admin.post(
            URL, json={"emails": {"senderEmail": address, "senderName": "BI"}}
        )
        assert posted.status_code == 200, posted.text
        expected = {"emails": {"senderEmail": address, "senderName": "BI"}}
        assert (await admin.get(URL)).json() == expected


async def test_fields_left_out_stay_and_null_clears(admin: httpx.AsyncClient) -> None:
    await admin.post(URL, json={"emails": {"senderEmail": "a@example.com", "senderName": "A"}})
    await admin.post(URL, json={"emails": {"senderName": "Reports"}})
    assert (await admin.get(URL)).json() == {
        "emails": {"senderEmail": "a@example.com", "senderName": "Reports"}
    }
    await admin.post(URL, json={"emails": {}})
    await admin.post(URL, json={})
    assert (await admin.get(URL)).json()["emails"]["senderEmail"] == "a@example.com"
    await admin.post(URL, json={"emails": {"senderName": None}})
    assert (await admin.get(URL)).json() == {
        "emails": {"senderEmail": "a@example.com", "senderName": None}
    }


async def test_invalid_bodies_are_422(admin: httpx.AsyncClient) -> None:
    await admin.post(URL, json={"emails": {"senderEmail": "keep@example.com"}})
    for payload, field in [
        ({"emails": {"senderEmail": "not-an-address"}}, "emails.senderEmail"),
        ({"emails": {"senderEmail": "a@@example.com"}}, "emails.senderEmail"),
        ({"emails": {"senderEmail": "a@example.com\r\nBcc: b@example.com"}}, "emails.senderEmail"),
        ({"emails": {"senderEmail": 42}}, "emails.senderEmail"),
        ({"emails": {"senderName": "A\nB"}}, "emails.senderName"),
        ({"emails": {"senderName": "n" * 201}}, "emails.senderName"),
        ({"emails": {"replyTo": "a@example.com"}}, "emails.replyTo"),
        ({"logo": "x.png"}, "logo"),
        ({"emails": "a@example.com"}, "emails"),
    ]:
        response = await admin.post(URL, json=payload)
        assert response.status_code == 422, (payload, response.text)
        assert [d["field"] for d in response.json()["error"]["details"]] == [field]
        assert (await admin.get(URL)).json()["emails"]["senderEmail"] == "keep@example.com"


async def test_the_branding_sender_is_used(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    message = {"to": ["ann@example.com"], "subject": "hi", "text": "hello"}
    await admin.post(URL, json={"emails": {"senderEmail": "bi#1&2@example.com"}})
    accepted = await sender.post("/api/v1/messages", json=message)
    assert accepted.status_code == 202, accepted.text
    records = await admin.get("/api/v1/messages")
    assert records.status_code == 200, records.text
    assert "bi#1&2@example.com" in records.text
