"""/api/v1/templates and /api/v1/themes: CRUD, limits, compile checks and the render endpoint."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.themes.schemas import MAX_SOURCE
from tests.themes.conftest import BRAND, RESET, create

pytestmark = pytest.mark.anyio


def fields(response: httpx.Response) -> list[str]:
    return [d["field"] for d in response.json()["error"]["details"]]


async def test_template_crud(admin: httpx.AsyncClient) -> None:
    created = await create(admin, "templates", RESET)
    assert {k: created[k] for k in RESET} == RESET
    assert created["createdAt"] == created["updatedAt"]

    assert (await admin.get("/api/v1/templates/password_reset")).json() == created
    listed = (await admin.get("/api/v1/templates")).json()
    assert [t["name"] for t in listed["items"]] == ["password_reset"]

    replaced = await admin.put(
        "/api/v1/templates/password_reset", json={"subject": "Reset", "text": "Go: {{ link }}"}
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["html"] is None
    assert replaced.json()["description"] == ""
    assert replaced.json()["updatedAt"] > created["updatedAt"]

    patched = await admin.patch(
        "/api/v1/templates/password_reset", json={"html": "<p>{{ link }}</p>", "subject": None}
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["subject"], patched.json()["text"], patched.json()["html"]) == (
        None,
        "Go: {{ link }}",
        "<p>{{ link }}</p>",
    )

    assert (await admin.delete("/api/v1/templates/password_reset")).status_code == 204
    missing = await admin.get("/api/v1/templates/password_reset")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_template_names_and_conflicts(admin: httpx.AsyncClient) -> None:
    await create(admin, "templates", RESET)
    again = await admin.post("/api/v1/templates", json=RESET)
    assert again.status_code == 409
    for name in ("has space", "dash-ed", "x" * 51, ""):
        response = await admin.post("/api/v1/templates", json={**RESET, "name": name})
        assert response.status_code == 422, name
        assert fields(response) == ["name"]
    assert (await admin.post("/api/v1/templates", json={"text": "x"})).status_code == 422
    renamed = await admin.put(
        "/api/v1/templates/password_reset", json={**RESET, "name": "other_name"}
    )
    assert renamed.status_code == 422
    assert fields(renamed) == ["name"]
    assert (await admin.put("/api/v1/templates/nope", json=RESET)).status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"description": "d" * 1001}, "description"),
        ({"subject": "s" * 999}, "subject"),
        ({"subject": "two\nlines"}, "subject"),
        ({"html": "h" * (MAX_SOURCE + 1)}, "html"),
        ({"text": None, "html": None}, "text"),
        ({"bogus": 1}, "bogus"),
    ],
)
async def test_template_limits(
    admin: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    response = await admin.post("/api/v1/templates", json={**RESET, **change})
    assert response.status_code == 422, response.text
    assert field in fields(response)


async def test_a_template_that_does_not_compile_is_refused_with_its_line(
    admin: httpx.AsyncClient,
) -> None:
    response = await admin.post(
        "/api/v1/templates",
        json={**RESET, "html": "<p>Hello</p>\n<p>{{ name }</p>"},
    )
    assert response.status_code == 422
    [detail] = response.json()["error"]["details"]
    assert detail["field"] == "html"
    assert detail["line"] == 2
    assert detail["message"].startswith("html, line 2: ")

    subject = await admin.post("/api/v1/templates", json={**RESET, "subject": "{% if %}"})
    assert fields(subject) == ["subject"]


async def test_a_sandbox_escape_is_refused_at_save(admin: httpx.AsyncClient) -> None:
    response = await admin.post(
        "/api/v1/templates", json={**RESET, "text": "ok\n{{ ''.__class__.__mro__ }}"}
    )
    assert response.status_code == 422
    [detail] = response.json()["error"]["details"]
    assert (detail["field"], detail["line"]) == ("text", 2)
    assert "sandbox" in detail["message"]


async def test_templates_are_for_admins(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    await create(admin, "templates", RESET)
    assert (await sender.get("/api/v1/templates")).status_code == 403
    assert (await sender.post("/api/v1/templates", json=RESET)).status_code == 403
    assert (
        await sender.post("/api/v1/templates/password_reset/render", json={})
    ).status_code == 403
    assert (await anon.get("/api/v1/themes")).status_code == 401


async def test_render_returns_the_parts_escaped_in_html_only(admin: httpx.AsyncClient) -> None:
    await create(admin, "templates", RESET)
    response = await admin.post(
        "/api/v1/templates/password_reset/render",
        json={"data": {"name": "Ann <Admin>", "link": "https://example.com/r?a=1&b=2"}},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "subject": "Reset your password, Ann <Admin>",
        "text": "Hello Ann <Admin>,\nreset it here: https://example.com/r?a=1&b=2",
        "html": (
            "<p>Hello Ann &lt;Admin&gt;,</p>"
            '<p><a href="https://example.com/r?a=1&amp;b=2">Reset it</a></p>'
        ),
    }


async def test_render_names_the_missing_variable(admin: httpx.AsyncClient) -> None:
    await create(admin, "templates", RESET)
    response = await admin.post(
        "/api/v1/templates/password_reset/render", json={"data": {"name": "Ann"}}
    )
    assert response.status_code == 422
    [detail] = response.json()["error"]["details"]
    assert detail["field"] == "data.link"
    assert detail["variable"] == "link"
    assert "'link'" in response.json()["error"]["message"]


async def test_render_refuses_a_sandbox_escape_with_a_422(admin: httpx.AsyncClient) -> None:
    await create(admin, "templates", {"name": "sly", "text": "{{ name|attr('__class__') }}"})
    response = await admin.post("/api/v1/templates/sly/render", json={"data": {"name": "x"}})
    assert response.status_code == 422
    [detail] = response.json()["error"]["details"]
    assert detail["field"] == "template"
    assert "refused by the sandbox" in detail["message"]


async def test_render_with_a_theme_shows_the_message_as_it_goes_out(
    admin: httpx.AsyncClient,
) -> None:
    await create(admin, "templates", {"name": "news", "subject": "News", "html": "<p>{{ n }}</p>"})
    await create(admin, "themes", BRAND)
    response = await admin.post(
        "/api/v1/templates/news/render", json={"data": {"n": 7}, "theme": "brand"}
    )
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["html"].startswith('<html><body style="color: #336699">')
    assert '<div class="content"><p>7</p></div>' in out["html"]
    assert "Acme Inc. &lt;unsubscribe&gt;" in out["html"]
    assert out["text"] == "7\n\nAcme Inc. <unsubscribe>"
    unknown = await admin.post("/api/v1/templates/news/render", json={"theme": "x"})
    assert unknown.status_code == 422
    assert fields(unknown) == ["theme"]
    assert (await admin.post("/api/v1/templates/none/render", json={})).status_code == 404


async def test_theme_crud(admin: httpx.AsyncClient) -> None:
    created = await create(admin, "themes", BRAND)
    assert {k: created[k] for k in BRAND} == BRAND
    assert (await admin.get("/api/v1/themes/brand")).json() == created
    assert [t["name"] for t in (await admin.get("/api/v1/themes")).json()["items"]] == ["brand"]

    patched = await admin.patch(
        "/api/v1/themes/brand", json={"text": None, "colors": {"primary": "navy"}}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["text"] is None
    assert patched.json()["colors"] == {"primary": "navy"}
    assert patched.json()["footer"] == BRAND["footer"]

    replaced = await admin.put("/api/v1/themes/brand", json={"html": "<div>{{ content }}</div>"})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["colors"] == {}
    assert replaced.json()["logoUrl"] is None

    assert (await admin.post("/api/v1/themes", json={**BRAND, "name": "brand"})).status_code == 409
    assert (await admin.delete("/api/v1/themes/brand")).status_code == 204
    assert (await admin.get("/api/v1/themes/brand")).status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"html": "<p>no slot</p>"}, "html"),
        ({"text": "no slot"}, "text"),
        ({"html": "{{ content }}{{ colors.accent }}"}, "html"),
        ({"html": "{{ content }}{% for %}"}, "html"),
        ({"html": "{{ content }}{{ content.__class__ }}"}, "html"),
        ({"colors": {"primary": "red; background: url(https://evil.test)"}}, "colors.primary"),
        ({"colors": {"bad name": "red"}}, "colors"),
        ({"colors": {f"c{i}": "red" for i in range(31)}}, "colors"),
        ({"logoUrl": "javascript:alert(1)"}, "logoUrl"),
        ({"footer": "f" * 2001}, "footer"),
        ({"html": None}, "html"),
    ],
)
async def test_theme_limits(admin: httpx.AsyncClient, change: dict[str, Any], field: str) -> None:
    response = await admin.post("/api/v1/themes", json={**BRAND, **change})
    assert response.status_code == 422, response.text
    assert any(f.startswith(field) for f in fields(response)), fields(response)


async def test_an_undefined_colour_is_named_at_save(admin: httpx.AsyncClient) -> None:
    response = await admin.post(
        "/api/v1/themes", json={**BRAND, "html": "{{ content }}\n{{ colors.accent }}"}
    )
    [detail] = response.json()["error"]["details"]
    assert (detail["field"], detail["line"]) == ("html", 2)
    assert "accent" in detail["message"]


async def test_a_profile_theme_must_exist_and_keeps_it_from_being_deleted(
    admin: httpx.AsyncClient,
) -> None:
    profile = {"name": "relay", "type": "smtp", "settings": {"host": "127.0.0.1"}}
    missing = await admin.post("/api/v1/servers", json={**profile, "theme": "brand"})
    assert missing.status_code == 422
    assert fields(missing) == ["theme"]

    await create(admin, "themes", BRAND)
    created = await admin.post("/api/v1/servers", json={**profile, "theme": "brand"})
    assert created.status_code == 201, created.text
    assert created.json()["theme"] == "brand"
    patched = await admin.patch("/api/v1/servers/relay", json={"theme": "nope"})
    assert patched.status_code == 422
    assert fields(patched) == ["theme"]

    in_use = await admin.delete("/api/v1/themes/brand")
    assert in_use.status_code == 409
    assert "relay" in in_use.json()["error"]["message"]
    assert (await admin.patch("/api/v1/servers/relay", json={"theme": None})).status_code == 200
    assert (await admin.delete("/api/v1/themes/brand")).status_code == 204


@pytest.mark.parametrize("name", ["a%00b", "x" * 51, "a-b"])
async def test_names_nothing_can_have_are_simply_not_found(
    admin: httpx.AsyncClient, name: str
) -> None:
    for kind in ("templates", "themes"):
        assert (await admin.get(f"/api/v1/{kind}/{name}")).status_code == 404
        assert (await admin.delete(f"/api/v1/{kind}/{name}")).status_code == 404
