"""The suppression list and webhooks pages: the services behind the API, through forms, for
admins only, every POST with the session's CSRF token."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy import func, select

from app.suppressions.models import Suppression
from app.webhooks.models import WebhookDelivery
from app.wiring import Core
from tests.conftest import ADMIN, SENDER
from tests.console.helpers import csrf_of, login

pytestmark = pytest.mark.anyio

HOOK = "http://127.0.0.1:9/hooks/postroom"


async def _count(runtime: Core) -> int:
    async with runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Suppression)) or 0)


async def test_add_search_page_and_remove_a_suppression(
    browser_client: httpx.AsyncClient, runtime: Core
) -> None:
    csrf = await login(browser_client, *ADMIN)
    for address, reason in (("ann@example.org", "manual"), ("bob@example.net", "complaint")):
        added = await browser_client.post(
            "/console/suppressions",
            data={"csrf": csrf, "address": address, "profile": "", "reason": reason},
        )
        assert added.status_code == 303, added.text
    scoped = await browser_client.post(
        "/console/suppressions",
        data={"csrf": csrf, "address": "Ann@Example.org", "profile": "builtin", "reason": "manual"},
    )
    assert scoped.status_code == 303
    again = await browser_client.post(
        "/console/suppressions",
        data={"csrf": csrf, "address": "ann@example.org", "profile": "", "reason": "manual"},
    )
    assert again.status_code == 409
    assert "already suppressed globally" in again.text
    bad = await browser_client.post(
        "/console/suppressions",
        data={"csrf": csrf, "address": "not an address", "profile": "nosuch", "reason": "manual"},
    )
    assert bad.status_code == 422
    assert 'id="a-address-err"' in bad.text
    assert await _count(runtime) == 3

    page = await browser_client.get("/console/suppressions", params={"q": "example.net"})
    assert "bob@example.net" in page.text
    assert "ann@example.org" not in page.text
    by_reason = await browser_client.get("/console/suppressions", params={"reason": "complaint"})
    assert "bob@example.net" in by_reason.text
    assert "ann@example.org" not in by_reason.text
    by_profile = await browser_client.get("/console/suppressions", params={"profile": "builtin"})
    assert by_profile.text.count("ann@example.org") == 1  # the scoped entry, in its row
    assert "bob@example.net" not in by_profile.text

    exported = await browser_client.get("/console/suppressions/export", params={"q": "ann"})
    assert exported.headers["content-type"].startswith("text/csv")
    assert exported.text.count("ann@example.org") == 2
    assert "bob@example.net" not in exported.text

    confirm = await browser_client.get(
        "/console/suppressions/remove", params={"address": "ann@example.org", "profile": ""}
    )
    assert confirm.status_code == 200
    assert "Remove ann@example.org" in confirm.text
    assert await _count(runtime) == 3  # a GET changes nothing
    removed = await browser_client.post(
        "/console/suppressions/remove",
        data={"csrf": csrf_of(confirm.text), "address": "ann@example.org", "profile": ""},
    )
    assert removed.status_code == 303
    assert await _count(runtime) == 2
    gone = await browser_client.post(
        "/console/suppressions/remove",
        data={"csrf": csrf, "address": "ann@example.org", "profile": ""},
    )
    assert gone.status_code == 404


async def test_the_list_pages_with_a_cursor(
    browser_client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    rows = "address\n" + "".join(f"p{i:02}@example.org\n" for i in range(60))
    imported = await admin.post(
        "/api/v1/suppressions/import", content=rows, headers={"Content-Type": "text/csv"}
    )
    assert imported.status_code == 200, imported.text
    await login(browser_client, *ADMIN)
    first = await browser_client.get("/console/suppressions")
    assert "p59@example.org" in first.text
    assert "p09@example.org" not in first.text
    found = re.search(r'href="(/console/suppressions\?[^"]*cursor=[^"]+)"', first.text)
    assert found is not None
    second = await browser_client.get(found.group(1).replace("&amp;", "&"))
    assert "p09@example.org" in second.text
    assert "p59@example.org" not in second.text


async def test_csv_import_is_all_or_nothing(
    browser_client: httpx.AsyncClient, runtime: Core
) -> None:
    csrf = await login(browser_client, *ADMIN)
    bad = "address,reason\ngood@example.org,manual\nworse@example.org,spite\n"
    refused = await browser_client.post(
        "/console/suppressions/import",
        data={"csrf": csrf},
        files={"file": ("list.csv", bad.encode(), "text/csv")},
    )
    assert refused.status_code == 422
    assert "row 3.reason" in refused.text
    assert await _count(runtime) == 0
    good = "address,profile,reason\ngood@example.org,,manual\nfine@example.org,builtin,\n"
    done = await browser_client.post(
        "/console/suppressions/import",
        data={"csrf": csrf},
        files={"file": ("list.csv", good.encode(), "text/csv")},
    )
    assert done.status_code == 200, done.text
    assert "Imported 2 rows: 2 added" in done.text
    assert await _count(runtime) == 2


async def test_forms_without_the_csrf_token_are_refused(
    browser_client: httpx.AsyncClient, runtime: Core
) -> None:
    await login(browser_client, *ADMIN)
    added = await browser_client.post(
        "/console/suppressions", data={"address": "x@example.org", "reason": "manual"}
    )
    assert added.status_code == 403
    imported = await browser_client.post(
        "/console/suppressions/import",
        data={"csrf": "stale"},
        files={"file": ("l.csv", b"address\nx@example.org\n", "text/csv")},
    )
    assert imported.status_code == 403
    hook = await browser_client.post("/console/webhooks", data={"url": HOOK})
    assert hook.status_code == 403
    assert await _count(runtime) == 0
    assert "No webhook endpoint yet." in (await browser_client.get("/console/webhooks")).text


async def test_senders_get_403_and_no_link(
    browser_client: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    """`sender` makes the user."""
    csrf = await login(browser_client, *SENDER)
    dashboard = await browser_client.get("/console/")
    assert "/console/suppressions" not in dashboard.text
    assert "/console/webhooks" not in dashboard.text
    for path in ("/console/suppressions", "/console/webhooks", "/console/suppressions/export"):
        assert (await browser_client.get(path)).status_code == 403, path
    posted = await browser_client.post(
        "/console/suppressions", data={"csrf": csrf, "address": "x@example.org"}
    )
    assert posted.status_code == 403


async def test_a_webhook_shows_its_secret_once_and_queues_a_test(
    browser_client: httpx.AsyncClient, runtime: Core
) -> None:
    csrf = await login(browser_client, *ADMIN)
    none_checked = await browser_client.post(
        "/console/webhooks", data={"csrf": csrf, "url": HOOK, "description": "ops"}
    )
    assert none_checked.status_code == 422
    assert 'id="w-types-err"' in none_checked.text
    created = await browser_client.post(
        "/console/webhooks",
        data={"csrf": csrf, "url": HOOK, "eventTypes": ["bounced", "complained"]},
    )
    assert created.status_code == 200, created.text
    secret = re.search(r'<code id="secret">(whsec_[^<]+)</code>', created.text)
    assert secret is not None
    endpoint = re.search(r'action="/console/webhooks/([0-9a-f]{32})/test"', created.text)
    assert endpoint is not None
    page = f"/console/webhooks/{endpoint.group(1)}"
    for again in (await browser_client.get(page), await browser_client.get("/console/webhooks")):
        assert again.status_code == 200
        assert HOOK in again.text
        assert secret.group(1) not in again.text
        assert "whsec_" not in again.text
    assert "bounced, complained" in (await browser_client.get("/console/webhooks")).text

    tested = await browser_client.post(f"{page}/test", data={"csrf": csrf})
    assert tested.status_code == 303
    log = await browser_client.get(tested.headers["location"])
    assert "webhook.test" in log.text
    async with runtime.sessions() as session:
        rows = list(await session.scalars(select(WebhookDelivery)))
    assert [(r.event_type, r.status) for r in rows] == [("webhook.test", "queued")]

    off = await browser_client.post(f"{page}/enabled", data={"csrf": csrf, "enabled": "false"})
    assert off.status_code == 303
    assert ">Enable</button>" in (await browser_client.get(page)).text
    rotated = await browser_client.post(f"{page}/rotate", data={"csrf": csrf})
    fresh = re.search(r'<code id="secret">(whsec_[^<]+)</code>', rotated.text)
    assert fresh is not None
    assert fresh.group(1) != secret.group(1)

    assert (await browser_client.get(f"{page}/delete")).status_code == 200
    deleted = await browser_client.post(f"{page}/delete", data={"csrf": csrf})
    assert deleted.status_code == 303
    assert (await browser_client.get(page)).status_code == 404
