"""The ops web page in a real headless Chromium (Debian's package), driven by Playwright."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.bridge.ops.test_ops_api import ACME, ADMIN, GLOBEX, ops_server, record_calls

CHROMIUM = Path("/usr/bin/chromium") if Path("/usr/bin/chromium").exists() else None
if CHROMIUM is None and shutil.which("chromium"):
    CHROMIUM = Path(shutil.which("chromium"))  # type: ignore[arg-type]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian package 'chromium'; .ci/system-deps installs it as root)",
)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            await instance.close()


async def sign_in(page, token: str) -> None:
    await page.fill("#token", token)
    await page.click("#signin")


async def test_list_open_play_and_refuse(tmp_path, browser):
    async with ops_server(tmp_path) as (archive, clock, http):
        acme1, globex, acme3 = await record_calls(archive, clock)
        record = await archive.get(acme1.call_id)
        wav_bytes = (archive.layout.root / f"{record.path}.wav").stat().st_size
        base = str(http._base_url).rstrip("/")
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        await page.goto(f"{base}/ops/")
        # A wrong token is refused and shows nothing.
        await sign_in(page, "not-a-token")
        await page.wait_for_selector("#error:not([hidden])")
        assert "401" in await page.text_content("#error")
        assert await page.is_hidden("#app")
        assert await page.locator("#calls tbody tr").count() == 0

        # The admin sees every call, newest first.
        await sign_in(page, ADMIN)
        await page.wait_for_selector("#calls tbody tr")
        rows = page.locator("#calls tbody tr")
        assert await rows.count() == 3
        assert [await rows.nth(i).get_attribute("data-call-id") for i in range(3)] == [
            acme3.call_id, globex.call_id, acme1.call_id]
        assert await page.is_hidden("#error")

        # Open a call: metadata, the recording in the audio element, the waveform, the transcript.
        await page.click(f'#calls tbody tr[data-call-id="{acme1.call_id}"]')
        await page.wait_for_selector("#detail:not([hidden])")
        await expect(page.locator("#transcript li")).to_have_count(2)
        texts = await page.locator("#transcript li .text").all_text_contents()
        assert texts == ["question 0", "answer 0"]
        src = await page.get_attribute("#player", "src")
        assert src and f"/api/recordings/{acme1.call_id}.wav?" in src
        # The browser itself loads and decodes the recording.
        await page.wait_for_function("() => document.getElementById('player').readyState >= 1")
        duration = await page.evaluate("document.getElementById('player').duration")
        assert duration == pytest.approx(record.recording_seconds, abs=0.05)
        fetched = await page.evaluate(
            "fetch(document.getElementById('player').src).then(r => r.arrayBuffer()).then(b => b.byteLength)")
        assert fetched == wav_bytes
        painted = await page.evaluate("""() => {
            const c = document.getElementById('waveform');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let top = 0, bottom = 0;
            for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
                if (d[(y * c.width + x) * 4 + 3] > 0) { if (y < c.height / 2) top++; else bottom++; }
            }
            return [top, bottom];
        }""")
        assert painted[0] > 1000 and painted[1] > 1000  # both channels drawn
        meta = await page.text_content("#d-meta")
        assert acme1.call_id in meta and "normal" in meta
        assert errors == []

        # A tenant token sees its own calls only, and cannot widen the filter.
        await page.click("#signout")
        assert await page.is_hidden("#app")
        await sign_in(page, GLOBEX)
        await expect(page.locator("#calls tbody tr")).to_have_count(1)
        assert await page.get_attribute("#calls tbody tr", "data-call-id") == globex.call_id
        assert await page.is_disabled("#f-tenant")
        assert await page.input_value("#f-tenant") == "globex"
        await page.close()


async def test_token_survives_reload_but_not_a_revoked_one(tmp_path, browser):
    async with ops_server(tmp_path) as (archive, clock, http):
        await record_calls(archive, clock)
        base = str(http._base_url).rstrip("/")
        page = await browser.new_page()
        await page.goto(f"{base}/ops/")
        await sign_in(page, ACME)
        await expect(page.locator("#calls tbody tr")).to_have_count(2)
        await page.reload()
        await expect(page.locator("#calls tbody tr")).to_have_count(2)
        # A token that stops being valid is refused on the next request and forgotten.
        await page.evaluate("sessionStorage.setItem('callbridge.token', 'revoked')")
        await page.reload()
        await page.wait_for_selector("#error:not([hidden])")
        assert "401" in await page.text_content("#error")
        assert await page.evaluate("sessionStorage.getItem('callbridge.token')") is None
        await page.close()


async def test_nothing_clipped_at_1280_px_and_the_favicon_loads(tmp_path, browser):
    async with ops_server(tmp_path) as (archive, clock, http):
        acme1, _, _ = await record_calls(archive, clock)
        base = str(http._base_url).rstrip("/")
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        console: list[str] = []
        page.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
        failed: list[str] = []
        page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
        await page.goto(f"{base}/ops/")
        await sign_in(page, ADMIN)
        await page.wait_for_selector("#calls tbody tr")
        await page.click(f'#calls tbody tr[data-call-id="{acme1.call_id}"]')
        await page.wait_for_selector("#detail:not([hidden])")
        await expect(page.locator("#transcript li")).to_have_count(2)
        await page.screenshot(path=str(tmp_path / "ops-1280.png"), full_page=True)

        # Every header and cell of the list is inside the window, left of the open detail panel,
        # and on top (the point at its centre is the cell itself, not the panel).
        detail = await page.locator("#detail").bounding_box()
        assert detail is not None
        cells = page.locator("#calls thead th, #calls tbody tr:first-child td")
        assert await cells.count() == 14
        for i in range(await cells.count()):
            box = await cells.nth(i).bounding_box()
            assert box is not None and box["width"] > 0
            assert box["x"] >= 0 and box["x"] + box["width"] <= detail["x"] <= 1280, (i, box, detail)
        status = page.locator("#calls thead th", has_text="Status")
        await expect(status).to_be_visible()
        on_top = await status.evaluate("""th => {
            const r = th.getBoundingClientRect();
            return document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2) === th;
        }""")
        assert on_top
        assert await page.evaluate("document.documentElement.scrollWidth") <= 1280

        # The favicon is the page's own asset, allowed by its CSP, and decodes as an image.
        href = await page.evaluate("document.querySelector('link[rel=icon]').href")
        assert href == f"{base}/ops/favicon.svg"
        loaded = await page.evaluate("""href => new Promise(done => {
            const img = new Image();
            img.onload = () => done(img.naturalWidth);
            img.onerror = () => done(0);
            img.src = href;
        })""", href)
        assert loaded > 0
        response = await page.request.get(href)
        assert response.status == 200 and response.headers["content-type"] == "image/svg+xml"
        assert failed == [] and console == []
        await page.close()
