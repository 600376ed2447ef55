"""Addresses at the API's edge: the fast path for common addresses answers exactly what
email-validator answers for the whole address, whatever the address; and addresses at local
domains (.local, localhost, single-label names), refused by default with a 422 that says how to
allow them, accepted everywhere an address is taken when POSTROOM_ALLOW_LOCAL_DOMAINS is on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings
from app.delivery.dispatcher import Dispatcher
from app.schemas import _email, _no_control, _validated, is_local_domain, local_domains
from app.wiring import Core
from tests.delivery.conftest import add_smtp_profile, record, send
from tests.smtpd import StartServer

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
local_parts = st.one_of(
    st.from_regex(
        r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,30}(\.[A-Za-z0-9_-]{1,40}){0,3}", fullmatch=True
    ),
    st.text(alphabet=ATEXT + ".", min_size=0, max_size=70),
    st.sampled_from(["Postmaster", "ABUSE", "info", "a.b", ".a", "a.", "a..b", '"q"', "é", "a b"]),
    st.text(max_size=8),
)
labels = st.one_of(
    st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", fullmatch=True),
    st.text(alphabet="abcXYZ019-", min_size=0, max_size=70),
    st.sampled_from(["xn--bcher-kva", "xn--zz", "ab--cd", "bücher", "BÜCHER", "", "-a", "a-"]),
)
tlds = st.sampled_from(
    ["com", "ORG", "example", "test", "local", "localhost", "invalid", "onion", "arpa", "45", "c0m"]
)
domains = st.one_of(
    st.builds(lambda ls, tld: ".".join([*ls, tld]), st.lists(labels, max_size=5), tlds),
    st.text(max_size=12),
)


def whole(address: str) -> str:
    """What every address went through before the fast path."""
    _no_control(address)
    return _validated(address)


def outcome(check: Callable[[str], str], address: str) -> tuple[str, str]:
    try:
        return ("ok", check(address))
    except ValueError as err:
        return ("refused", str(err))


@hypothesis_settings(max_examples=1500, deadline=None)
@given(local=local_parts, domain=domains)
@example(local="a", domain="")
@example(local="a" * 64, domain="b" * 63 + "." + "c" * 63 + "." + "d" * 63 + ".com")
@example(local="a" * 200, domain="b" * 50 + ".com")
@example(local="Info", domain="Example.COM")
@example(local="a", domain="xn--bcher-kva.example")
def test_every_address_is_judged_as_email_validator_judges_it(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    assert outcome(_email, address) == outcome(whole, address)


@pytest.mark.parametrize(
    ("given_", "normalized"),
    [("Ann@Example.COM", "Ann@example.com"), ("POSTMASTER@x.org", "postmaster@x.org")],
)
def test_domains_and_rfc_2142_mailboxes_are_normalised(given_: str, normalized: str) -> None:
    assert _email(given_) == normalized


LOCAL = ["root@localhost", "alerts@corp.local", "ops@corp", "nas@box.home.arpa"]


@pytest.mark.parametrize(
    ("domain", "local"),
    [
        ("localhost", True),
        ("corp", True),
        ("corp.local", True),
        ("x.localhost", True),
        ("nas.home.arpa", True),
        ("example.com", False),
        ("host.lan", False),  # accepted anyway: not a reserved name
        ("invalid", False),
        ("x.test", False),
        ("", False),
    ],
)
def test_local_domains(domain: str, local: bool) -> None:
    assert is_local_domain(domain) is local


@pytest.mark.parametrize("address", LOCAL)
def test_local_domains_follow_the_setting(address: str) -> None:
    with pytest.raises(ValueError, match="POSTROOM_ALLOW_LOCAL_DOMAINS=true"):
        _email(address)
    with local_domains(True):
        assert _email(address) == address
    with pytest.raises(ValueError, match="POSTROOM_ALLOW_LOCAL_DOMAINS"):
        _email(address)  # the block ended


def test_allowed_local_domains_are_still_checked() -> None:
    with local_domains(True):
        assert _email("Root@LOCALHOST") == "Root@localhost"
        assert _email("a@bücher.local") == "a@bücher.local"
        for bad in ("a..b@corp.local", "a@under_score.local", "a@-corp", "a@x.invalid"):
            with pytest.raises(ValueError, match=r"after the @-sign|periods") as caught:
                _email(bad)
            assert "POSTROOM_ALLOW_LOCAL_DOMAINS" not in str(caught.value)
        assert _email("ann@host.lan") == "ann@host.lan"


@pytest.fixture(params=[False, True], ids=["default", "allowed"])
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The suite's settings (tests/conftest.py), with local domains refused, then allowed."""
    return settings.model_copy(update={"allow_local_domains": request.param})


def refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    details = [d for d in error["details"] if d["field"] == field]
    assert details, response.text
    assert "POSTROOM_ALLOW_LOCAL_DOMAINS=true" in details[0]["message"]


@pytest.mark.anyio
async def test_messages(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    settings: Settings,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    body: dict[str, Any] = {
        "from": "reports@corp.local",
        "to": ["root@localhost"],
        "cc": [{"email": "ops@corp", "name": "Ops"}],
        "subject": "Disk",
        "text": "full",
    }
    if not settings.allow_local_domains:
        refused(await sender.post("/api/v1/messages", json=body), "from.email")
        refused(await sender.post("/api/v1/messages", json={**body, "from": None}), "to[0].email")
        return
    bounds = {"allowedFrom": ["corp.local"]}
    assert (await admin.patch("/api/v1/users/sender", json=bounds)).status_code == 200
    message_id = await send(sender, **body)
    await Dispatcher(
        runtime.sessions, settings, runtime.transports, runtime.metrics, runtime.ledger
    ).drain()

    assert (await record(sender, message_id))["status"] == "sent"
    [received] = server.transactions
    assert received.mail_from == "reports@corp.local"
    assert received.rcpt_tos == ["root@localhost", "ops@corp"]
    assert received.message["Cc"] == "Ops <ops@corp>"


@pytest.mark.anyio
async def test_profile_and_branding_senders(admin: httpx.AsyncClient, settings: Settings) -> None:
    profile = {
        "name": "relay",
        "type": "smtp",
        "senderEmail": "alerts@corp.local",
        "settings": {"host": "127.0.0.1", "port": 25},
    }
    branding = {"emails": {"senderEmail": "bi@reports", "senderName": "BI"}}
    created = await admin.post("/api/v1/servers", json=profile)
    posted = await admin.post("/api/branding", json=branding)
    tested = await admin.post("/api/v1/servers/relay/test", json={"to": "root@localhost"})

    if not settings.allow_local_domains:
        refused(created, "senderEmail")
        refused(posted, "emails.senderEmail")
        return
    assert created.status_code == 201, created.text
    assert created.json()["senderEmail"] == "alerts@corp.local"
    assert posted.status_code == 200, posted.text
    assert (await admin.get("/api/branding")).json() == branding
    assert tested.status_code == 200, tested.text  # accepted; nothing listens on port 25
    patched = await admin.patch("/api/v1/servers/relay", json={"description": "kept"})
    assert patched.status_code == 200, patched.text


@pytest.mark.parametrize("allowed", [False, True])
def test_postroom_send_follows_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allowed: bool
) -> None:
    monkeypatch.setenv("POSTROOM_DATA_DIR", str(tmp_path / "cli-data"))
    monkeypatch.delenv("POSTROOM_DATABASE_URL", raising=False)
    monkeypatch.setenv("POSTROOM_ADMIN_PASSWORD", "cli-admin-password")
    monkeypatch.setenv("POSTROOM_ALLOW_LOCAL_DOMAINS", str(allowed).lower())

    sent = CliRunner().invoke(
        cli, ["send", "--to", "root@localhost", "--from", "cron@corp.local", "--text", "hi"]
    )

    assert (sent.exit_code == 0) is allowed, sent.output
    if not allowed:
        assert sent.exit_code == 2  # one line saying how to allow them, not a traceback
        assert "POSTROOM_ALLOW_LOCAL_DOMAINS=true" in sent.output
