"""A real browser on a real server: Debian's chromium driven by Playwright, `postroom`'s app in
uvicorn on a free port over a migrated SQLite file, and axe-core from the npm registry.

One browser and one server for the browser tests; they share a page."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import uvicorn

from app.config import Settings
from app.main import create_app
from tests.conftest import ADMIN

CHROMIUM = os.environ.get("POSTROOM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
AXE_VERSION = "4.14.1"
AXE_URL = f"https://registry.npmjs.org/axe-core/-/axe-core-{AXE_VERSION}.tgz"
AXE_INTEGRITY = "sha512-" + (
    "FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ=="
)
"""npm's integrity of the tarball: what is run in the page is the file npm publishes."""
AXE_CACHE = Path(__file__).parent / ".axe" / f"axe-{AXE_VERSION}.min.js"
SCREENSHOTS = os.environ.get("POSTROOM_CONSOLE_SCREENSHOTS")
"""A directory to save the README's screenshots into (docs/); unset: none are taken."""


def unavailable(reason: str) -> NoReturn:
    """Outside CI a missing browser skips; in CI (env CI set) it fails: .ci/deps installs it."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/deps should have provided it)")
    pytest.skip(reason)


@dataclass
class LiveServer:
    url: str
    settings: Settings

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=ADMIN, timeout=30)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The whole app with its dispatcher, in uvicorn in a thread, on SQLite (as CI runs it);
    stopped after the browser tests, so its dispatcher does not run beside the rest."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("console-live") / "data",
        database_url=None,
        admin_user=ADMIN[0],
        admin_password=ADMIN[1],
        dispatcher=True,
        poll_interval=0.2,
        migrate_on_start=True,
        secret_keys="",
        _env_file=None,
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="console-live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the console's test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield LiveServer(f"http://127.0.0.1:{port}", settings)
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One chromium for the browser tests (they are one module). Not per session: Playwright's
    sync API holds an event loop in this thread while it runs, and the anyio tests of the next
    modules need the thread to themselves."""
    if not Path(CHROMIUM).exists():
        unavailable(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (the dev extra)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


def _fetch_axe() -> str:
    response = httpx.get(AXE_URL, timeout=60, follow_redirects=True)
    response.raise_for_status()
    digest = base64.b64encode(hashlib.sha512(response.content).digest()).decode()
    assert f"sha512-{digest}" == AXE_INTEGRITY, "axe-core's tarball does not match its integrity"
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        member = archive.extractfile("package/axe.min.js")
        assert member is not None
        return member.read().decode()


@pytest.fixture(scope="session")
def axe_source() -> str:
    if AXE_CACHE.exists():
        return AXE_CACHE.read_text()
    try:
        source = _fetch_axe()
    except httpx.HTTPError as err:
        unavailable(f"axe-core could not be fetched from the npm registry: {err}")
    AXE_CACHE.parent.mkdir(exist_ok=True)
    AXE_CACHE.write_text(source)
    return source


SERIOUS = ("serious", "critical")


def check_accessibility(page: Any, axe: str) -> None:
    """axe-core on the page as shown: no serious or critical violation. Injected through the
    DevTools protocol, which the page's CSP (script-src 'self') does not govern."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(axe)
    result = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 3)}))"
    )
    serious = [v for v in result if v["impact"] in SERIOUS]
    assert not serious, f"{page.url}: {serious}"


def screenshot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=True)
