"""The web chat page at / in a real headless Chromium (Debian's `chromium`, driven by Playwright).

Playwright's own browser download does not work offline, so the system browser is launched by path
(AWQC_CHROMIUM overrides /usr/bin/chromium). `--no-sandbox` because CI runs as root. The screenshot
is kept as a test artifact: out/test-artifacts/chat-page.png.
"""

import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("AWQC_CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 60_000
ARTIFACTS = Path(__file__).resolve().parents[2] / "out/test-artifacts"
PAGE_ERRORS = []  # uncaught JavaScript exceptions on the page


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install -y chromium (.ci/run does)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            ctx = browser.new_context(viewport={"width": 1100, "height": 760})
            pg = ctx.new_page()
            pg.on("pageerror", lambda e: PAGE_ERRORS.append(str(e)))
            yield pg
        finally:
            browser.close()


def test_chat_page_streams_an_answer(server, page):
    from playwright.sync_api import expect

    page.goto(server.base_url + "/")
    # The server wants an API key: the page says so until one is typed in its API key field.
    expect(page.locator("#model-name")).to_have_text("(API key required)", timeout=TIMEOUT_MS)
    page.fill("#api-key", server.api_key)
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#model-name")).to_have_text(server.model, timeout=TIMEOUT_MS)

    # Greedy and short, so the answer is quick and stable.
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "32")

    page.fill("#prompt", "What is the capital of France?")
    page.click("#send")
    done = page.wait_for_selector('#messages .msg.assistant[data-done="1"]', timeout=TIMEOUT_MS)
    answer = done.inner_text()
    assert answer.strip(), "empty assistant message"
    assert "error" not in (done.get_attribute("class") or "").split(), f"the page shows an error: {answer!r}"
    assert page.locator("#messages .msg.user").first.inner_text() == "What is the capital of France?"
    expect(page.locator("#stats")).to_contain_text("tokens/s", timeout=TIMEOUT_MS)
    assert page.input_value("#prompt") == ""

    # A second turn: the conversation is kept (two user and two assistant messages).
    page.fill("#prompt", "And of Italy?")
    page.press("#prompt", "Enter")
    page.wait_for_function(
        """() => document.querySelectorAll('#messages .msg.assistant[data-done="1"]').length === 2""",
        timeout=TIMEOUT_MS)
    second = page.locator("#messages .msg.assistant").nth(1)
    assert second.inner_text().strip()
    assert "error" not in (second.get_attribute("class") or "").split(), second.inner_text()
    assert page.locator("#messages .msg.user").count() == 2

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page.png"), full_page=True)
    assert not PAGE_ERRORS, PAGE_ERRORS
