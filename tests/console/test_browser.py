"""The console in Debian's chromium: what a newcomer does on the first day, in order.

Log in; add an SMTP relay with STARTTLS required and a private CA through the form; verify it
(each step listed), break it without saving and see the failing step and its hint; send a test
that reaches the sink; post a message with the API and find it in the records by recipient;
open it and see its attempt; the dashboard; add a suppression and a webhook (its secret shown
once) and queue a test event; issue an API token (shown once), use it and revoke it; find those
changes in the audit log; a sender cannot open the servers page; a form without its CSRF token
is refused; log out. axe-core checks every page on the way."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trustme

from tests.conftest import ADMIN
from tests.console.browser import LiveServer, check_accessibility, screenshot
from tests.smtpd import SmtpServer

pytestmark = pytest.mark.browser
"""They share one live server and one page, in order: pytest-xdist runs a file on one worker
(`--dist loadfile` in pyproject.toml)."""

TIMEOUT = 15_000


@pytest.fixture(scope="module")
def sink(smtp_ca: trustme.CA, smtp_certificate: trustme.LeafCert) -> Iterator[SmtpServer]:
    """The relay: STARTTLS with a certificate from a private CA, and a login."""
    with SmtpServer(
        tls="starttls", ca=smtp_ca, certificate=smtp_certificate, users={"relay": "relay-pass"}
    ) as server:
        yield server


@pytest.fixture(scope="module")
def context(browser: Any, live_server: LiveServer) -> Iterator[Any]:
    made = browser.new_context(base_url=live_server.url)
    made.set_default_timeout(TIMEOUT)
    yield made
    made.close()


@pytest.fixture(scope="module")
def page(context: Any) -> Iterator[Any]:
    """One tab for the whole story; it collects CSP violations, which must stay none."""
    tab = context.new_page()
    tab.csp_violations = []
    tab.on(
        "console",
        lambda message: (
            tab.csp_violations.append(message.text)
            if "Content Security Policy" in message.text
            else None
        ),
    )
    yield tab
    assert tab.csp_violations == []
    tab.close()


def log_in(page: Any, name: str, password: str) -> None:
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("button[type=submit]")


def test_log_in(page: Any, axe_source: str) -> None:
    page.goto("/console/servers")
    assert "/console/login" in page.url
    check_accessibility(page, axe_source)
    log_in(page, ADMIN[0], "not-the-password")
    assert page.locator("[role=alert]").inner_text() == "Wrong user name or password."
    log_in(page, ADMIN[0], ADMIN[1])
    page.wait_for_url(re.compile(r"/console/servers$"))  # back where it wanted to go
    assert page.locator("h1").inner_text() == "Mail servers"
    check_accessibility(page, axe_source)


def test_add_an_smtp_relay_with_starttls_required_and_a_custom_ca(
    page: Any, axe_source: str, sink: SmtpServer
) -> None:
    page.click("text=Add a mail server")
    page.select_option("#type", "smtp")
    page.click("text=Next")
    check_accessibility(page, axe_source)
    page.fill("#f-name", "relay")
    page.fill("#f-senderEmail", "postroom@example.com")
    page.fill("#f-settings-host", "127.0.0.1")
    page.select_option("#f-settings-security", "starttls_required")
    # htmx swaps in the port that goes with the mode
    page.locator("#port-hint strong", has_text="587").wait_for()
    page.fill("#f-settings-port", str(sink.port))
    page.fill("#f-settings-user", "relay")
    page.fill("#f-settings-pass", "relay-pass")
    page.set_input_files(
        "#f-settings-caCertificates-file",
        files=[{"name": "ca.pem", "mimeType": "text/plain", "buffer": sink.ca_pem.encode()}],
    )
    page.click("button.primary:text('Save')")
    page.wait_for_url(re.compile(r"/console/servers/relay\?saved=1"))
    assert page.locator("[role=status]").inner_text() == "Saved."
    assert page.locator("#f-settings-pass").get_attribute("placeholder") == (
        "set, leave empty to keep"
    )
    assert page.locator("#f-settings-pass").input_value() == ""
    assert "BEGIN CERTIFICATE" in page.locator("#f-settings-caCertificates").input_value()
    check_accessibility(page, axe_source)


def test_verify_lists_each_step(page: Any, axe_source: str, sink: SmtpServer) -> None:
    page.click("text=Verify (unsaved values)")
    page.wait_for_selector("#report-h")
    assert "passed" in page.locator("#report-h").inner_text()
    steps = page.locator("ol.steps li")
    names = [steps.nth(i).locator("strong").inner_text() for i in range(steps.count())]
    assert names[:4] == ["dns", "connect", "greeting", "ehlo"], names
    assert {"tls", "auth"} <= set(names), names
    assert page.locator("ol.steps li.failed").count() == 0
    assert all("ms" in steps.nth(i).locator(".duration").inner_text() for i in range(len(names)))
    screenshot(page, "console-server-verify.png")
    check_accessibility(page, axe_source)

    # an unsaved change is what verify tries: a port nothing listens on fails at connect
    page.fill("#f-settings-port", "1")
    page.click("text=Verify (unsaved values)")
    page.wait_for_selector("ol.steps li.failed")
    assert "failed" in page.locator("#report-h").inner_text()
    assert "Hint:" in page.locator("ol.steps li.failed").inner_text()
    page.fill("#f-settings-port", str(sink.port))


def test_send_a_test_mail(page: Any, sink: SmtpServer) -> None:
    before = len(sink.transactions)
    page.fill("#f-to", "ops@example.com")
    page.click("text=Send test")
    page.wait_for_selector("#test-h")
    assert "sent" in page.locator("#test-h").inner_text()
    assert len(sink.transactions) == before + 1
    transaction = sink.transactions[-1]
    assert transaction.rcpt_tos == ["ops@example.com"]
    assert transaction.tls_version is not None  # STARTTLS, trusted through the uploaded CA


def test_find_the_test_mail_in_the_records(page: Any) -> None:
    """The done criterion's last step, in the browser only: the test mail just sent is in the
    sending records, found by its recipient."""
    page.click("text=Sending records")
    page.fill("#q-recipient", "ops@example.com")
    page.click("button:text('Search')")
    page.wait_for_url(re.compile(r"recipient=ops%40example.com"))
    rows = page.locator("tbody tr")
    assert rows.count() == 1
    subject = "Congratulation! Your mail server is configured successfully."
    assert subject in rows.first.inner_text()
    page.click(f"text={subject}")
    page.wait_for_url(re.compile(r"/console/records/[0-9a-f]{32}$"))
    assert page.locator("tr.attempt").count() == 1
    assert "ops@example.com" in page.content()


def test_find_a_message_posted_with_the_api(
    page: Any, axe_source: str, live_server: LiveServer, sink: SmtpServer
) -> None:
    with live_server.api() as api:
        posted = api.post(
            "/api/v1/messages",
            json={
                "from": "postroom@example.com",
                "to": ["customer@example.org"],
                "subject": "Your invoice",
                "text": "Attached.",
            },
        )
    assert posted.status_code == 202, posted.text
    message_id = posted.json()["id"]
    page.click("text=Sending records")
    check_accessibility(page, axe_source)
    page.fill("#q-recipient", "customer@example.org")
    page.click("button:text('Search')")
    page.wait_for_url(re.compile(r"recipient=customer%40example.org"))
    rows = page.locator("tbody tr")
    assert rows.count() == 1
    assert "Your invoice" in rows.first.inner_text()
    screenshot(page, "console-records.png")
    page.click("text=Your invoice")
    page.wait_for_url(re.compile(f"/console/records/{message_id}$"))
    for _ in range(50):  # the dispatcher delivers it through the relay, the default profile
        if page.locator("tr.attempt").count():
            break
        page.wait_for_timeout(200)
        page.reload()
    attempt = page.locator("tr.attempt").first.inner_text()
    assert "relay" in attempt
    assert "sent" in attempt
    assert "customer@example.org" in page.locator("table").first.inner_text()
    check_accessibility(page, axe_source)
    assert any(t.rcpt_tos == ["customer@example.org"] for t in sink.transactions)


def test_dashboard(page: Any, axe_source: str) -> None:
    page.click("text=Dashboard")
    assert page.locator("svg.chart rect.bar-sent").count() >= 1
    assert "alive" in page.locator("#loops-h + table").inner_text()
    screenshot(page, "console-dashboard.png")
    check_accessibility(page, axe_source)


def test_a_template_previews_as_it_is_typed(page: Any, axe_source: str) -> None:
    page.click("text=Templates")
    check_accessibility(page, axe_source)
    page.click("text=New template")
    page.fill("#t-name", "welcome")
    page.fill("#t-subject", "Welcome {{ name }}")
    page.fill("#t-data", '{"name": "Ann"}')
    page.fill("#t-html", "<p>Hello <b>{{ name }}</b></p>")
    frame = page.frame_locator("iframe[name=preview]")
    frame.locator("b", has_text="Ann").wait_for()  # no click: it follows the typing
    assert "Welcome Ann" in frame.locator("body").inner_text()
    check_accessibility(page, axe_source)
    page.click("button.primary:text('Save')")
    page.wait_for_url(re.compile(r"/console/templates/welcome\?saved=1"))
    for path in ("/console/branding", "/console/users"):
        page.goto(path)
        check_accessibility(page, axe_source)


def test_add_a_suppression_and_a_webhook(page: Any, axe_source: str) -> None:
    page.click("text=Suppressions")
    page.fill("#a-address", "gone@example.org")
    page.select_option("#a-reason", "complaint")
    page.click("button:text('Add')")
    page.wait_for_url(re.compile(r"/console/suppressions\?done=added$"))
    assert "complaint" in page.locator("tbody tr", has_text="gone@example.org").inner_text()
    page.click("text=Webhooks")
    page.fill("#w-url", "http://127.0.0.1:9/hooks/postroom")
    page.uncheck("#w-type-opened")
    page.click("button:text('Add endpoint')")
    assert page.locator("#secret").inner_text().startswith("whsec_")
    check_accessibility(page, axe_source)
    page.click("text=Send test event")
    page.locator("tr.delivery", has_text="webhook.test").wait_for()
    page.reload()
    assert page.locator("#secret").count() == 0


def test_issue_and_revoke_an_api_token(page: Any, axe_source: str, live_server: LiveServer) -> None:
    page.goto(f"/console/users/{ADMIN[0]}")
    page.fill("#t-name", "nightly report")
    page.click("button:text('Issue token')")
    token = page.locator("#token").inner_text()
    assert token.startswith("pr_")
    check_accessibility(page, axe_source)
    bearer = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{live_server.url}/api/v1/servers", headers=bearer).status_code == 200
    row = page.locator("tr.token", has_text="nightly report")
    assert "active" in row.inner_text()
    row.locator("button:text('Revoke')").click()
    page.wait_for_url(re.compile(r"/console/users/admin#tokens$"))
    assert "revoked" in page.locator("tr.token", has_text="nightly report").inner_text()
    assert page.locator("#token").count() == 0
    assert httpx.get(f"{live_server.url}/api/v1/servers", headers=bearer).status_code == 401


def test_the_audit_log_shows_who_changed_what(page: Any, axe_source: str) -> None:
    page.click("text=Audit log")
    assert page.locator("h1").inner_text() == "Audit log"
    relay = page.locator("tr.audit-entry", has_text="server.create").last
    assert "relay" in relay.inner_text()
    assert "settings.pass: changed" in relay.inner_text()
    assert "relay-pass" not in page.content()
    revoked = page.locator("tr.audit-entry", has_text="token.revoke").first.inner_text()
    assert "nightly report" in revoked
    assert (
        "gone@example.org"
        in page.locator("tr.audit-entry", has_text="suppression.create").inner_text()
    )
    check_accessibility(page, axe_source)
    page.select_option("#l-action", "suppression.create")
    page.click("button:text('Search')")
    page.wait_for_url(re.compile(r"action=suppression.create"))
    rows = page.locator("tr.audit-entry")
    assert rows.count() == 1
    assert f"{ADMIN[0]} (console)" in rows.first.inner_text()
    check_accessibility(page, axe_source)


@pytest.mark.parametrize(
    "path",
    [
        "/console/servers/new",
        "/console/servers/relay/duplicate",
        "/console/servers/relay/delete",
        "/console/themes/new",
        f"/console/users/{ADMIN[0]}",
        f"/console/users/{ADMIN[0]}/delete",
        "/console/records?from=not-a-date",
        "/console/servers/nosuchprofile",
        "/console/suppressions",
        "/console/webhooks",
    ],
)
def test_the_other_pages_pass_axe(page: Any, axe_source: str, path: str) -> None:
    page.goto(path)
    check_accessibility(page, axe_source)


def test_a_form_without_its_csrf_token_is_refused(page: Any) -> None:
    response = page.request.post(
        "/console/servers/new", form={"type": "smtp", "name": "sneaky", "settings.host": "x"}
    )
    assert response.status == 403
    page.goto("/console/servers")
    assert "sneaky" not in page.content()


def test_log_out(page: Any) -> None:
    page.click("text=Log out")
    page.wait_for_url(re.compile(r"/console/login$"))
    page.goto("/console/")
    assert "/console/login" in page.url


def test_a_sender_cannot_open_the_servers_page(
    browser: Any, live_server: LiveServer, axe_source: str
) -> None:
    with live_server.api() as api:
        made = api.post(
            "/api/v1/users",
            json={"name": "clerk", "role": "sender", "password": "clerk-password-1"},
        )
    assert made.status_code == 201, made.text
    context = browser.new_context(base_url=live_server.url)
    try:
        tab = context.new_page()
        tab.goto("/console/login")
        log_in(tab, "clerk", "clerk-password-1")
        tab.wait_for_url(re.compile(r"/console/$"))
        assert "Mail servers" not in tab.locator("nav").inner_text()
        check_accessibility(tab, axe_source)
        response = tab.goto("/console/servers")
        assert response is not None
        assert response.status == 403
        assert "for admins" in tab.content()
        tab.goto("/console/records")
        assert "Your invoice" not in tab.content()  # the admin's message is not the clerk's
    finally:
        context.close()


def test_verify_works_with_javascript_off(
    browser: Any, live_server: LiveServer, sink: SmtpServer
) -> None:
    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    try:
        tab = context.new_page()
        tab.goto("/console/login")
        log_in(tab, ADMIN[0], ADMIN[1])
        tab.goto("/console/servers/relay")
        tab.click("text=Verify (unsaved values)")  # a plain form post to the verify action
        tab.wait_for_selector("#report-h")
        assert "passed" in tab.locator("#report-h").inner_text()
        assert tab.locator("#f-settings-host").input_value() == "127.0.0.1"  # form kept
    finally:
        context.close()
