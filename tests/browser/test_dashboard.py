"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (``make tools``
installs it). Each test serves the app on a real database and loads ``/`` like a person would.
``JOBTRAIL_SCREENSHOTS=docs`` makes ``test_screenshots`` write docs/dashboard.png and
docs/timeline.png (``make screenshots``); otherwise they go to a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from playwright.async_api import Page, async_playwright, expect

from tests.browser.seed import fleet, many_jobs, seed
from tests.helpers import READ_TOKEN, body_of, standard_headers, wait_for_projection

pytestmark = pytest.mark.slow

Client = TestClient[web.Request, web.Application]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS = Path(__file__).resolve().parents[2] / "docs"


@contextlib.asynccontextmanager
async def browser_page(client: Client, width: int = 1280, height: int = 800) -> AsyncIterator[Page]:
    """A fresh browser tab on the served dashboard; fails the test on any script error."""
    if shutil.which("chromium") is None:
        pytest.fail("chromium is missing: `make tools` installs it (apt package chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(str(client.make_url("/")))
            yield page
            assert not errors, errors
        finally:
            await browser.close()


async def sign_in(page: Page, token: str = READ_TOKEN) -> None:
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("#token", token)
    await page.click("#login-form button[type=submit]")


async def send(client: Client, payload: dict[str, Any]) -> None:
    body = body_of(payload)
    response = await client.post("/api/webhooks/github", data=body, headers=standard_headers(body))
    assert response.status == 200, await response.text()


def row(page: Page, job_id: str) -> Any:
    return page.locator(f'.grid-body .grid-row[data-job="{job_id}"]')


async def test_a_person_signs_in_watches_filters_and_opens_a_timeline(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    await send(client, {"job_id": "vm-1", "status": "provisioning", "agent_id": "agent-7"})
    await send(client, {"job_id": "vm-1", "status": "heartbeat"})
    await send(client, {"job_id": "vm-2", "status": "failed", "error": "disk full"})
    await send(client, {"job_id": "other-3", "status": "running"})
    await wait_for_projection(pool)
    async with browser_page(client) as page:
        # It asks for the token, once: a reload in the same tab goes straight in.
        await sign_in(page)
        await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        await expect(page.locator(".grid-body .grid-row")).to_have_count(3)
        await expect(row(page, "vm-2").locator(".col-message")).to_have_text("disk full")
        await page.reload()
        await expect(page.locator("#login")).to_be_hidden()
        await expect(page.locator("#connection")).to_have_attribute("data-state", "live")

        # A new signed callback shows up without a reload, within 2 s.
        sent = time.monotonic()
        await send(client, {"job_id": "vm-new", "status": "queued", "message": "hello"})
        await expect(row(page, "vm-new")).to_be_visible(timeout=2000)
        assert time.monotonic() - sent < 2
        await send(client, {"job_id": "vm-new", "status": "running"})
        await expect(row(page, "vm-new").locator(".col-status")).to_contain_text(
            "running", timeout=2000
        )

        # Status filter and search.
        await page.select_option("#status-filter", "failed")
        await expect(page.locator(".grid-body .grid-row")).to_have_count(1)
        await expect(row(page, "vm-2")).to_be_visible()
        await page.select_option("#status-filter", "")
        await page.fill("#search", "vm-")
        await expect(page.locator(".grid-body .grid-row")).to_have_count(3)
        await expect(row(page, "other-3")).to_have_count(0)
        await page.fill("#search", "")

        # The keyboard: focus the table, move down to vm-1 (newest first), open it.
        await page.focus(".grid")
        await page.keyboard.press("Home")
        for _ in range(3):
            await page.keyboard.press("ArrowDown")
        await expect(row(page, "vm-1")).to_have_class("grid-row active")
        await page.keyboard.press("Enter")
        drawer = page.locator(".drawer")
        await expect(drawer).to_be_visible()
        await expect(drawer.locator("h2")).to_have_text("vm-1")
        await expect(drawer.locator(".events .event")).to_have_count(2)
        await expect(drawer.locator(".heartbeat-chart")).to_be_visible()
        # A change of the open job appears in its timeline.
        await send(client, {"job_id": "vm-1", "status": "succeeded"})
        await expect(drawer.locator(".events .event")).to_have_count(3, timeout=3000)
        await page.keyboard.press("Escape")
        await expect(drawer).to_be_hidden()
        assert await page.evaluate("document.activeElement.classList.contains('grid')")


async def test_payload_text_is_shown_as_text_and_runs_nothing(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    img = '<img src=x onerror="window.__pwned = 1">'
    script = "<script>window.__pwned = 2</script>"
    await send(
        client,
        {
            "job_id": "xss",
            "status": "failed",
            "message": img + script,
            "error": script,
            "agent_id": img[:60],
            "details": {"html": img},
        },
    )
    await wait_for_projection(pool)
    async with browser_page(client) as page:
        await sign_in(page)
        await expect(row(page, "xss").locator(".col-message")).to_have_text(script)
        await row(page, "xss").click()
        drawer = page.locator(".drawer")
        await expect(drawer.locator(".facts")).to_contain_text(img + script)
        payload = drawer.locator(".payload").first  # JSON text: quotes come escaped
        await expect(payload).to_contain_text('"html": "<img src=x onerror=')
        await expect(payload).to_contain_text(script)
        await page.wait_for_timeout(300)
        assert await page.evaluate("window.__pwned") is None
        assert await page.locator("img[src=x]").count() == 0
        assert await page.locator("body script:not([src])").count() == 0


async def test_an_event_shows_the_exact_request_and_whether_its_signature_verifies(
    client: Client, pool: asyncpg.Pool[Any]
) -> None:
    body = (
        b'{\n  "job_id": "vm-raw",\t"status": "running",\n  "price": 1.50, "zero": -0.0,'
        b' "note": "caf\\u00e9 <img src=x onerror=\\"window.__pwned = 3\\">"\n}'
    )
    response = await client.post("/api/webhooks/github", data=body, headers=standard_headers(body))
    assert response.status == 200, await response.text()
    event_id = (await response.json())["event_id"]
    await wait_for_projection(pool)
    async with browser_page(client) as page:
        await sign_in(page)
        await row(page, "vm-raw").click()
        event = page.locator(f"#event-{event_id}")
        async with page.expect_response(lambda r: r.url.endswith(f"/api/events/{event_id}")):
            await event.locator(".request-details summary").click()
        request = event.locator(".request")
        await expect(request.locator(".badge.signature")).to_have_text(
            "signature re-verifies (the primary key)"
        )
        shown = request.locator(".request-body")
        await expect(shown).to_contain_text('"price": 1.5,')
        await expect(shown).to_contain_text('"note": "café <img src=x')
        await expect(request.locator(".request-headers")).to_contain_text("webhook-signature")
        await request.locator(".request-toggle").click()
        await expect(shown).to_have_class("payload request-body raw")
        assert await shown.evaluate("el => el.textContent") == body.decode()
        await request.locator(".request-toggle").click()
        await expect(shown).to_contain_text('"price": 1.5,')
        # A reload of the timeline (the job changed) keeps the request open.
        await send(client, {"job_id": "vm-raw", "status": "heartbeat"})
        await expect(page.locator(".drawer .events .event")).to_have_count(2, timeout=3000)
        await expect(event.locator(".request .badge.signature")).to_be_visible()
        assert await page.evaluate("window.__pwned") is None
        assert await page.locator("img[src=x]").count() == 0


async def test_a_wrong_token_is_asked_for_again(client: Client) -> None:
    async with browser_page(client) as page:
        await sign_in(page, token="not-the-token")
        await expect(page.locator("#login-error")).to_have_text("That token was refused.")
        await sign_in(page)
        await expect(page.locator("#connection")).to_have_attribute("data-state", "live")


async def test_ten_thousand_jobs_and_a_phone(client: Client, pool: asyncpg.Pool[Any]) -> None:
    await seed(pool, many_jobs(10_000))
    await wait_for_projection(pool, within_s=60)
    async with browser_page(client, width=390, height=844) as page:
        started = time.monotonic()
        await sign_in(page)
        await expect(page.locator("#count")).to_have_text("10,000 jobs", timeout=20000)
        loaded_s = time.monotonic() - started
        # Only the rows in view exist; the page stays responsive while scrolling to the end.
        assert await page.locator(".grid-body .grid-row").count() < 80
        await page.focus(".grid")
        await page.keyboard.press("End")
        await expect(row(page, "bulk-00000")).to_be_visible()
        await page.fill("#search", "bulk-0420")
        await expect(page.locator(".grid-body .grid-row")).to_have_count(10)
        # Nothing is wider than the phone.
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, width
        assert loaded_s < 20


async def test_screenshots(client: Client, pool: asyncpg.Pool[Any], tmp_path: Path) -> None:
    target = DOCS if os.environ.get("JOBTRAIL_SCREENSHOTS") == "docs" else tmp_path
    await seed(pool, fleet(datetime.now(UTC)))
    await wait_for_projection(pool)
    for i, status in enumerate(["queued", "heartbeat", "heartbeat", "failed"]):
        await send(client, {"job_id": f"vm-{1100 + i % 2}", "status": status})
    async with browser_page(client) as page:
        await sign_in(page)
        await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        await expect(page.locator(".grid-body .grid-row").first).to_be_visible()
        await page.wait_for_timeout(300)
        await page.screenshot(path=str(target / "dashboard.png"))
        await page.fill("#search", "vm-0042")  # a long history, a gap, and silent now
        await row(page, "vm-0042").click()
        await expect(page.locator(".drawer .events .event").first).to_be_visible()
        await page.wait_for_timeout(200)
        await page.screenshot(path=str(target / "timeline.png"))
    for name in ("dashboard.png", "timeline.png"):
        assert (target / name).stat().st_size > 10_000
