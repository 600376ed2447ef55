"""The SES transport against moto's SES v2 server: a real HTTP exchange, a real SigV4 check of the
service name and region, and the stored message read back from moto's backend."""

from __future__ import annotations

import email
from collections.abc import AsyncIterator, Iterator
from email.policy import default as default_policy

import httpx
import pytest
from httpx_auth import AWS4Auth
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.server import ThreadedMotoServer
from moto.ses.models import ses_backends

from app.transports import ses
from app.transports.base import Address
from app.transports.errors import PermanentError
from tests.transports._messages import context, outgoing

pytestmark = pytest.mark.anyio

REGION = "eu-west-1"
AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
async def http(moto_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client
        await client.post(f"{moto_url}/moto-api/reset")


@pytest.fixture
def transport(moto_url: str, http: httpx.AsyncClient) -> ses.SesTransport:
    config = ses.SesConfig.model_validate(
        {"accessKeyId": AKID, "secretAccessKey": SECRET, "region": REGION, "endpointUrl": moto_url}
    )
    return ses.create("ses", config, context(http))


async def verify_identity(http: httpx.AsyncClient, moto_url: str, identity: str) -> None:
    """SES v2 CreateEmailIdentity: moto marks it verified at once."""
    response = await http.post(
        f"{moto_url}/v2/email/identities",
        json={"EmailIdentity": identity},
        auth=AWS4Auth(AKID, SECRET, REGION, "ses"),
    )
    response.raise_for_status()


async def test_moto_stores_the_raw_message_with_the_envelope(
    transport: ses.SesTransport, http: httpx.AsyncClient, moto_url: str
) -> None:
    await verify_identity(http, moto_url, "sender@example.com")
    message = outgoing(
        to=(),
        bcc=(Address("first@example.com"), Address("second@example.org", "Second")),
        undisclosed=True,
        subject="Grüße aus Köln",
    )

    result = await transport.send(message)

    stored = ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages
    assert len(stored) == 1
    assert result.provider_id == stored[0].id
    assert stored[0].source == "sender@example.com"
    assert stored[0].destinations == ["first@example.com", "second@example.org"]
    assert stored[0].raw_data.encode() == message.mime
    parsed = email.message_from_bytes(message.mime, policy=default_policy)
    assert parsed["To"] == "undisclosed-recipients:;"
    assert parsed["Subject"] == "Grüße aus Köln"
    assert "Bcc" not in parsed
    assert set(result.recipients) == {"first@example.com", "second@example.org"}
    assert {r.status for r in result.recipients.values()} == {"sent"}


async def test_moto_refuses_an_unverified_sender(transport: ses.SesTransport) -> None:
    with pytest.raises(PermanentError) as caught:
        await transport.send(outgoing())

    assert caught.value.reply_code == 400
    assert "MessageRejected" in str(caught.value)
    assert ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages == []
