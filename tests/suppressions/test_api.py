"""The suppression list's API: add, search, page, delete, CSV out and in, and bad input."""

from __future__ import annotations

import csv
import io

import httpx
import pytest

pytestmark = pytest.mark.anyio

URL = "/api/v1/suppressions"


async def add(client: httpx.AsyncClient, address: str, **body: str) -> httpx.Response:
    return await client.post(URL, json={"address": address, **body})


async def add_profile(admin: httpx.AsyncClient, name: str) -> None:
    body = {"name": name, "type": "smtp", "settings": {"host": "127.0.0.1", "port": 2525}}
    response = await admin.post("/api/v1/servers", json=body)
    assert response.status_code == 201, response.text


async def test_add_read_delete(admin: httpx.AsyncClient) -> None:
    await add_profile(admin, "relay")
    response = await add(admin, "Ann@Bücher.Example", reason="complaint")
    assert response.status_code == 201, response.text
    entry = response.json()
    assert entry["address"] == "ann@xn--bcher-kva.example", "stored in the compared spelling"
    assert entry["profile"] is None
    assert entry["reason"] == "complaint"
    assert entry["source"] == "api"
    assert entry["eventId"] is None
    assert entry["messageId"] is None

    again = await add(admin, "ann@xn--bcher-kva.example")
    assert again.status_code == 409, "the same address in the same scope, spelt otherwise"
    scoped = await add(admin, "ann@bücher.example", profile="relay")
    assert scoped.status_code == 201
    assert scoped.json()["reason"] == "manual"

    listed = (await admin.get(URL)).json()
    assert [(e["address"], e["profile"]) for e in listed["items"]] == [
        ("ann@xn--bcher-kva.example", "relay"),
        ("ann@xn--bcher-kva.example", None),
    ]
    assert listed["nextCursor"] is None
    only = (await admin.get(URL, params={"profile": "relay"})).json()["items"]
    assert [e["profile"] for e in only] == ["relay"]
    complaints = (await admin.get(URL, params={"reason": "complaint"})).json()["items"]
    assert [e["profile"] for e in complaints] == [None]

    gone = await admin.delete(f"{URL}/ANN@bücher.example")
    assert gone.status_code == 204
    assert [e["profile"] for e in (await admin.get(URL)).json()["items"]] == ["relay"]
    missing = await admin.delete(f"{URL}/ann@bücher.example")
    assert missing.status_code == 404, "the global entry is gone; the profile's stays"
    gone = await admin.delete(f"{URL}/ann@bücher.example", params={"profile": "relay"})
    assert gone.status_code == 204
    assert (await admin.get(URL)).json()["items"] == []


async def test_search_and_cursor(admin: httpx.AsyncClient) -> None:
    for n in range(7):
        assert (await add(admin, f"user{n}@example.com")).status_code == 201
    assert (await add(admin, "other@example.org")).status_code == 201
    found = (await admin.get(URL, params={"q": "USER"})).json()["items"]
    assert sorted(e["address"] for e in found) == [f"user{n}@example.com" for n in range(7)]
    assert (await admin.get(URL, params={"q": "%"})).json()["items"] == [], "% is literal"

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "3", "q": "user"} | ({"cursor": cursor} if cursor else {})
        page = (await admin.get(URL, params=params)).json()
        seen += [e["address"] for e in page["items"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [f"user{n}@example.com" for n in reversed(range(7))], "latest first, once each"


async def test_bad_input_is_a_4xx_naming_the_field(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    bad = await add(admin, "not an address")
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"] == "address"
    bad = await add(admin, "ann@example.com", reason="bored")
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"] == "reason"
    bad = await add(admin, "ann@example.com", profile="nosuch")
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"] == "profile"
    bad = await admin.get(URL, params={"cursor": "x'; drop"})
    assert bad.status_code == 400
    assert bad.json()["error"]["details"][0]["field"] == "cursor"
    bad = await admin.get(URL, params={"q": "ann\x00"})
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"] == "q"
    bad = await admin.delete(f"{URL}/nobody")
    assert bad.status_code == 422
    assert (await sender.get(URL)).status_code == 403
    assert (await add(sender, "ann@example.com")).status_code == 403
    assert (await admin.get(URL)).json()["items"] == []


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_csv_round_trip(admin: httpx.AsyncClient) -> None:
    await add_profile(admin, "relay")
    assert (await add(admin, "ann@example.com", reason="hard_bounce")).status_code == 201
    assert (await add(admin, "bob@example.com", profile="relay")).status_code == 201
    assert (await add(admin, "o'brien+tag@example.com")).status_code == 201
    export = await admin.get(f"{URL}/export")
    assert export.status_code == 200
    assert export.headers["content-type"].startswith("text/csv")
    exported = rows(export.text)
    assert (
        export.text.splitlines()[0] == "address,profile,reason,source,eventId,messageId,createdAt"
    )
    assert [(r["address"], r["profile"], r["reason"]) for r in exported] == [
        ("o'brien+tag@example.com", "", "manual"),
        ("bob@example.com", "relay", "manual"),
        ("ann@example.com", "", "hard_bounce"),
    ]
    only = rows((await admin.get(f"{URL}/export", params={"profile": "relay"})).text)
    assert [r["address"] for r in only] == ["bob@example.com"]

    for entry in (await admin.get(URL)).json()["items"]:
        params = {"profile": entry["profile"]} if entry["profile"] else {}
        assert (await admin.delete(f"{URL}/{entry['address']}", params=params)).status_code == 204

    imported = await admin.post(
        f"{URL}/import", content=export.content, headers={"Content-Type": "text/csv"}
    )
    assert imported.status_code == 200, imported.text
    assert imported.json() == {"rows": 3, "added": 3}
    again = rows((await admin.get(f"{URL}/export")).text)
    assert sorted((r["address"], r["profile"], r["reason"], r["source"]) for r in again) == [
        ("ann@example.com", "", "hard_bounce", "import"),
        ("bob@example.com", "relay", "manual", "import"),
        ("o'brien+tag@example.com", "", "manual", "import"),
    ]

    files = {"file": ("list.csv", b"address\r\nann@example.com\r\nnew@example.com\r\n", "text/csv")}
    multipart = await admin.post(f"{URL}/import", files=files)
    assert multipart.status_code == 200, multipart.text
    assert multipart.json() == {"rows": 2, "added": 1}, "ann was already there"


async def test_a_bad_csv_names_row_and_column_and_imports_nothing(
    admin: httpx.AsyncClient,
) -> None:
    await add_profile(admin, "relay")
    body = (
        "address,profile,reason\n"
        "good@example.com,,manual\n"
        "also-good@example.com,relay,unsubscribe\n"
        "broken-address,,manual\n"
        "fine@example.com,nosuch,manual\n"
        "fine2@example.com,,sometimes\n"
    )
    response = await admin.post(f"{URL}/import", content=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 422, response.text
    details = response.json()["error"]["details"]
    assert [d["field"] for d in details] == ["row 4.address", "row 5.profile", "row 6.reason"]
    assert "nosuch" in details[1]["message"]
    assert (await admin.get(URL)).json()["items"] == [], "nothing half-imported"

    for content, headers, field in [
        ("email\nann@example.com\n", {"Content-Type": "text/csv"}, "row 1.address"),
        ("address,colour\nann@example.com,red\n", {"Content-Type": "text/csv"}, "row 1.colour"),
        ("address\nann@example.com,extra\n", {"Content-Type": "text/csv"}, "row 2.row"),
        ("address\nann@example.com\n", {"Content-Type": "application/json"}, "Content-Type"),
    ]:
        bad = await admin.post(f"{URL}/import", content=content, headers=headers)
        assert bad.status_code in (400, 422), bad.text
        assert bad.json()["error"]["details"][0]["field"] == field
    not_utf8 = await admin.post(
        f"{URL}/import",
        content=b"address\n\xff@example.com\n",
        headers={"Content-Type": "text/csv"},
    )
    assert not_utf8.status_code == 422
    assert not_utf8.json()["error"]["details"][0]["field"] == "file"
    no_file = await admin.post(f"{URL}/import", files={"other": ("x.csv", b"address\n")})
    assert no_file.status_code == 422
    assert no_file.json()["error"]["details"][0]["field"] == "file"
    assert (await admin.get(URL)).json()["items"] == []


async def test_unsubscribe_links_need_a_public_url(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    body = {"name": "relay", "type": "smtp", "listUnsubscribe": True, "settings": {}}
    refused = await admin.post("/api/v1/servers", json=body)
    assert refused.status_code == 422
    [detail] = refused.json()["error"]["details"]
    assert detail["field"] == "listUnsubscribe"
    assert "POSTROOM_PUBLIC_URL" in detail["message"]
    message = {"to": "ann@example.com", "from": "me@example.com", "text": "x",
               "listUnsubscribe": True}  # fmt: skip
    refused = await sender.post("/api/v1/messages", json=message)
    assert refused.status_code == 422
    assert refused.json()["error"]["details"][0]["field"] == "listUnsubscribe"
