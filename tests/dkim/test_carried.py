"""What each transport hands on is exactly the signed bytes: compose signs `mime` and
`mime_with_bcc` with one signature, the raw-MIME providers (SES, Mailgun, Mandrill, Graph) send
those bytes as they are, and SES's signature leaves out the fields SES may rewrite. Also: any
content compose writes signs and verifies (hypothesis), and the delivery engine builds a profile's
signer once per key version."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import dkim
import httpx
import pytest
import respx
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.delivery.compose import compose
from app.delivery.grouping import Batch
from app.delivery.stored import StoredMessage
from app.dkim import keys
from app.dkim.signer import RELAXED, Signer, canonical_body
from app.servers import service as servers
from app.transports.base import OutgoingMessage
from app.transports.registry import TRANSPORTS, build
from app.wiring import Core
from tests.delivery.test_compose import bodies, names, one_line
from tests.dkim.conftest import add_key, signed_headers
from tests.servers.helpers import body
from tests.transports._messages import context
from tests.transports.test_contract import CASES

pytestmark = pytest.mark.anyio

DATE = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
KEY = keys.generate("ed25519-sha256")
RECORD = keys.record("ed25519-sha256", KEY.public).encode()


def dns(name: bytes, timeout: float = 5) -> bytes:
    assert name == b"s1._domainkey.example.com."
    return RECORD


def signed(transport_type: str = "smtp", **payload: Any) -> OutgoingMessage:
    payload.setdefault("subject", "Hello")
    payload.setdefault("text", "Hello there.")
    payload.setdefault("to", [{"email": "to@example.org", "name": "To Person"}])
    visible = [item["email"] for key in ("to", "cc", "bcc") for item in payload.get(key, ())]
    payload["from"] = {"email": "sender@example.com", "name": "Sender"}
    return compose(
        StoredMessage.of(payload),
        batch=Batch("visible", tuple(visible)),
        message_id="<m1@example.com>",
        date=DATE,
        dkim=Signer.through(transport_type, "example.com", "s1", KEY),
    )


def test_one_signature_holds_with_and_without_the_bcc_header() -> None:
    message = signed(bcc=[{"email": "hidden@example.org"}])
    assert message.mime_with_bcc is not None
    assert b"\r\nBcc: hidden@example.org\r\n" in message.mime_with_bcc
    field = message.mime.partition(b"\r\nFrom:")[0]
    assert field.startswith(b"DKIM-Signature:")
    assert message.mime_with_bcc.startswith(field)
    assert dkim.verify(message.mime, dnsfunc=dns)
    assert dkim.verify(message.mime_with_bcc, dnsfunc=dns)


def test_the_ses_signature_leaves_out_date_and_message_id() -> None:
    ses = signed("ses")
    assert dkim.verify(ses.mime, dnsfunc=dns)
    assert "date" not in signed_headers(ses.mime)
    assert "message-id" not in signed_headers(ses.mime)
    assert {"date", "message-id"} <= set(signed_headers(signed("smtp").mime))


def _mime_sent(provider: str, request: httpx.Request, message: OutgoingMessage) -> bytes:
    """The MIME a provider's request carries."""
    if provider == "ses":
        return base64.b64decode(json.loads(request.content)["Content"]["Raw"]["Data"])
    if provider == "mandrill":
        raw: str = json.loads(request.content)["raw_message"]
        return raw.encode()
    if provider == "msgraph":
        return base64.b64decode(request.content)
    assert provider == "mailgun"
    assert request.content.count(message.mime) == 1, "the file part is the signed bytes"
    return message.mime


@pytest.mark.parametrize("provider", ["ses", "mailgun", "mandrill", "msgraph"])
async def test_raw_mime_providers_send_the_signed_bytes(
    provider: str, respx_mock: respx.MockRouter
) -> None:
    case = CASES[provider]
    case.routes(respx_mock)
    route = respx_mock.post(case.url).mock(return_value=case.accepted())
    message = signed(provider, to=[{"email": "to@example.com"}], cc=[{"email": "cc@example.com"}])
    config = TRANSPORTS[provider].config.model_validate(case.settings)
    async with httpx.AsyncClient() as http:
        transport = build(provider, "carried", config, context(http))
        try:
            await transport.send(message)
        finally:
            await transport.aclose()
    sent = _mime_sent(provider, route.calls.last.request, message)
    assert sent == (message.mime_with_bcc or message.mime)
    assert dkim.verify(sent, dnsfunc=dns)


@given(subject=one_line, name=names, text=bodies, html=st.none() | bodies)
@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_whatever_compose_writes_signs_and_verifies(
    subject: str, name: str, text: str, html: str | None
) -> None:
    message = signed(
        subject=subject,
        text=text,
        html=html,
        to=[{"email": "to@example.org", "name": name}],
        attachments=[{"filename": f"{name or 'x'}.bin", "contentType": "application/octet-stream",
                      "content": base64.b64encode(text.encode()).decode()}],
    )  # fmt: skip
    assert dkim.verify(message.mime, dnsfunc=dns)


async def test_the_signer_is_built_once_per_key_version(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    assert (await admin.post("/api/v1/servers", json=body("smtp", "relay"))).status_code == 201

    async def profile() -> Any:
        async with runtime.sessions() as session:
            return await servers.get_profile(session, "relay")

    cache = runtime.transports
    assert cache.signer(await profile()) is None
    await add_key(admin, algorithm="ed25519-sha256", domain="contoso.example")
    first = cache.signer(await profile())
    assert first is not None
    assert cache.signer(await profile()) is first, "not parsed again per message"
    await add_key(admin, selector="s2", algorithm="ed25519-sha256")
    assert cache.signer(await profile()) is not first, "new keys: a new signer"
    rotated = await admin.post("/api/v1/servers/relay/dkim/rotate", json={"force": True})
    assert rotated.status_code == 200
    now = cache.signer(await profile())
    assert now is not None
    assert now.selector == "s2"
    patched = await admin.patch("/api/v1/servers/relay", json={"description": "renamed"})
    assert patched.status_code == 200
    assert cache.signer(await profile()) is now, "a profile change that is not the keys'"
    assert cache.signer(None) is None, "the built-in server does not sign"


@given(
    st.lists(st.sampled_from([b"a", b"=", b" ", b"  ", b"\t", b"\r\n", b"\r\n\r\n"])).map(b"".join)
)
def test_the_body_fast_path_canonicalizes_as_dkimpy_does(body: bytes) -> None:
    assert canonical_body(body) == RELAXED.canonicalize_body(body)
