"""Mail server pages over HTTP: the form makes the same profile the API would, keeps secrets it
leaves empty, and verifies and tests the unsaved form against a real SMTP server."""

from __future__ import annotations

import re

import httpx
import pytest
import trustme

from app.console import forms
from app.console.servers import TYPES
from tests.conftest import ADMIN
from tests.console.helpers import login
from tests.smtpd import StartServer

pytestmark = pytest.mark.anyio

SMTP_FORM = {
    "type": "smtp",
    "name": "relay",
    "description": "the office relay",
    "senderEmail": "postroom@example.com",
    "settings.host": "127.0.0.1",
    "settings.security": "starttls_required",
    "settings.user": "alice",
    "settings.pass": "secret-1",
    "settings.pool": "true",
}


def test_every_type_has_a_form_of_its_own_settings() -> None:
    paths = {t: {f.path for g in forms.settings_groups(t) for f in g.fields} for t in TYPES}
    assert {
        "settings.security",
        "settings.port",
        "settings.pass",
        "settings.proxy",
        "settings.name",
        "settings.caCertificates",
        "settings.clientKey",
        "settings.oauth2.clientSecret",
        "settings.connectionTimeout",
    } <= paths["smtp"]
    assert "settings.secure" not in paths["smtp"]  # one choice of security, not three flags
    assert paths["ses"] >= {"settings.accessKeyId", "settings.secretAccessKey", "settings.region"}
    assert paths["mailgun"] >= {"settings.apiKey", "settings.domain", "settings.region"}
    assert paths["msgraph"] >= {"settings.tenantId", "settings.clientSecret", "settings.userId"}
    assert "settings.apiKey" in paths["mandrill"]
    assert "settings.apiKey" in paths["sendgrid"]


async def test_create_edit_keep_secret_default_duplicate_delete(
    browser_client: httpx.AsyncClient, admin: httpx.AsyncClient, smtp_ca: trustme.CA
) -> None:
    smtp_ca_pem = smtp_ca.cert_pem.bytes().decode()
    csrf = await login(browser_client, *ADMIN)
    files = {"settings.caCertificates.file": ("ca.pem", smtp_ca_pem.encode(), "text/plain")}
    created = await browser_client.post(
        "/console/servers/new", data=SMTP_FORM | {"csrf": csrf}, files=files
    )
    assert created.status_code == 303, created.text
    assert created.headers["location"] == "/console/servers/relay?saved=1"
    stored = (await admin.get("/api/v1/servers/relay")).json()
    settings = stored["settings"]
    assert (settings["secure"], settings["ignoreTLS"], settings["requireTLS"]) == (
        False,
        False,
        True,
    )
    assert settings["passSet"] is True
    assert settings["pool"] is True
    assert settings["caCertificates"] == smtp_ca_pem
    assert stored["description"] == "the office relay"

    page = await browser_client.get("/console/servers/relay")
    assert "secret-1" not in page.text
    assert "set, leave empty to keep" in page.text
    assert re.search(r'<option value="starttls_required" selected>', page.text)

    # saving with the password left empty keeps it; the CA stays as the textarea holds it
    edit = {k: v for k, v in SMTP_FORM.items() if k != "settings.pass"} | {
        "csrf": csrf,
        "settings.port": "2525",
        "settings.security": "tls",
        "settings.caCertificates": smtp_ca_pem,
    }
    saved = await browser_client.post("/console/servers/relay", data=edit)
    assert saved.status_code == 303, saved.text
    settings = (await admin.get("/api/v1/servers/relay")).json()["settings"]
    assert settings["passSet"] is True
    assert (settings["port"], settings["secure"]) == (2525, True)
    assert settings["pool"] is True
    unticked = {k: v for k, v in edit.items() if k != "settings.pool"}
    assert (await browser_client.post("/console/servers/relay", data=unticked)).status_code == 303
    assert (await admin.get("/api/v1/servers/relay")).json()["settings"]["pool"] is False

    cleared = await browser_client.post(
        "/console/servers/relay", data=edit | {"settings.pass.clear": "1"}
    )
    assert cleared.status_code == 303
    assert (await admin.get("/api/v1/servers/relay")).json()["settings"]["passSet"] is False

    bad = await browser_client.post(
        "/console/servers/relay", data=edit | {"settings.port": "70000"}
    )
    assert bad.status_code == 422
    assert 'id="f-settings-port-err"' in bad.text

    copy = await browser_client.post(
        "/console/servers/relay/duplicate", data={"csrf": csrf, "name": "relay2"}
    )
    assert copy.status_code == 303, copy.text
    assert (await admin.get("/api/v1/servers/relay2")).json()["isDefault"] is False
    made = await browser_client.post("/console/servers/relay2/default", data={"csrf": csrf})
    assert made.status_code == 303
    assert (await admin.get("/api/v1/servers")).json()["default"] == "relay2"
    confirm = await browser_client.get("/console/servers/relay2/delete")
    assert "It is the default" in confirm.text
    deleted = await browser_client.post("/console/servers/relay2/delete", data={"csrf": csrf})
    assert deleted.status_code == 303
    assert (await admin.get("/api/v1/servers/relay2")).status_code == 404


async def test_a_refused_form_names_the_field_and_stores_nothing(
    browser_client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    csrf = await login(browser_client, *ADMIN)
    form = SMTP_FORM | {"csrf": csrf, "settings.host": "bad host", "settings.pass": "hunter2"}
    refused = await browser_client.post("/console/servers/new", data=form)
    assert refused.status_code == 422
    assert 'id="f-settings-host-err"' in refused.text
    assert "hunter2" not in refused.text  # a secret is never echoed back
    assert 'value="the office relay"' not in refused.text  # (a textarea holds it instead)
    assert "the office relay" in refused.text
    assert (await admin.get("/api/v1/servers")).json()["items"] == []


async def test_verify_and_test_use_the_unsaved_form(
    browser_client: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(tls="starttls", users={"alice": "secret-1"})
    csrf = await login(browser_client, *ADMIN)
    form = SMTP_FORM | {"csrf": csrf, "settings.port": str(server.port)}
    assert (await browser_client.post("/console/servers/new", data=form)).status_code == 303
    # unsaved: the CA the server needs; without it verify fails at TLS with a hint
    failed = await browser_client.post("/console/servers/relay/verify", data=form)
    assert failed.status_code == 200, failed.text[failed.text.find("probe") :]
    assert '<li class="failed">' in failed.text
    assert "Hint:" in failed.text
    trusting = form | {"settings.caCertificates": server.ca_pem}
    passed = await browser_client.post(
        "/console/servers/relay/verify", data=trusting, headers={"HX-Request": "true"}
    )
    assert passed.status_code == 200
    assert passed.text.lstrip().startswith('<div id="probe"')  # the fragment, for htmx
    assert "passed</span>" in passed.text
    assert '<li class="failed">' not in passed.text
    assert server.sessions[-1].tls_version is not None
    stored = (await admin.get("/api/v1/servers/relay")).json()["settings"]
    assert stored.get("caCertificates") is None  # verify saved nothing

    sent = await browser_client.post(
        "/console/servers/relay/test", data=trusting | {"to": "ops@example.com"}
    )
    assert sent.status_code == 200
    assert "Test mail to ops@example.com" in sent.text
    [transaction] = server.transactions
    assert transaction.rcpt_tos == ["ops@example.com"]
