"""The web console in a real browser (Playwright driving Debian's Chromium) against a live server.

Screenshots of each page go to test-artifacts/screenshots/ (not committed) for a person to look at.
Chromium is required in CI (`.ci/run` installs it); elsewhere these tests skip without it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pybase64
import pytest

from tests.conftest import LiveServer, invoke_cli, make_image
from tests.receivers import webhook_receiver
from tests.waiting import wait_for_task

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
if CHROMIUM is None and os.environ.get("CI") != "true":
    pytest.skip("Chromium is not installed (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM is not None, "CI needs Chromium: .ci/run installs it"
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert errors == [], "the page threw"


def new_key(live: LiveServer, credits: str, *flags: str) -> str:
    done = invoke_cli("keys", "create", "--credits", credits, "--json", *flags, env=live.env)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout.strip().splitlines()[-1])["key"])


balance_is = """([name, balance]) => [...document.querySelectorAll('#keys tr')]
    .some((row) => row.textContent.includes(name) && row.querySelector('.balance').textContent === balance)"""
"""A page function: whether the key named `name` shows `balance` in the admin table."""


balance_is = """([name, balance]) => [...document.querySelectorAll('#keys tr')]
    .some((row) => row.textContent.includes(name) && row.querySelector('.balance').textContent === balance)"""
"""A page function: whether the key named `name` shows `balance` in the admin table."""


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, live: LiveServer, key: str) -> None:
    page.goto(live.base + "/")
    page.fill("#api-key", key)
    page.click("button[type=submit]")
    page.wait_for_selector("#prompt")


def available(live: LiveServer, key: str) -> float:
    usage = httpx.get(f"{live.base}/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
    return float(usage["available"])


def test_a_wrong_key_is_told_and_a_right_one_signs_in(page: Any, live_server: LiveServer) -> None:
    page.goto(live_server.base + "/")
    page.fill("#api-key", "ig-not-a-key")
    page.click("button[type=submit]")
    page.wait_for_selector("[role=alert]")
    assert "This key was refused" in page.inner_text("[role=alert]")
    shot(page, "sign-in-refused")
    page.fill("#api-key", live_server.key)
    page.press("#api-key", "Enter")  # the keyboard alone signs in
    page.wait_for_selector("#prompt")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement !== document.body"), "the page can be walked with Tab"
    assert page.is_visible("nav") and not page.is_visible("#nav-admin"), "a user key sees no admin page"
    page.goto(live_server.base + "/#/admin")
    page.wait_for_selector("#prompt")
    assert "Admin" not in page.inner_text("main h1")


def test_edit_two_images_with_previews_and_the_quoted_price_charged(
    page: Any, live_server: LiveServer, tmp_path: Path
) -> None:
    key = new_key(live_server, "500")
    sign_in(page, live_server, key)
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(make_image(320, 240))
    second.write_bytes(make_image(200, 300))
    page.set_input_files("#files", [str(first), str(second)])
    page.wait_for_selector(".thumb >> nth=1")
    page.fill("#prompt", "put 图1 onto 图2, sepia")
    page.select_option("#size", "1536x1024")
    page.dispatch_event("#prompt", "change")
    page.wait_for_selector("#quote .message.ok")
    price = float(page.inner_text("#quote").split("Price: ")[1].split(" ")[0])
    before = available(live_server, key)
    page.click("#run")
    page.wait_for_selector("img.result", timeout=30_000)
    assert page.locator("img.partial").count() == 2, "the streamed partial previews were shown"
    assert "Made by the classic engine" in page.inner_text("#progress")
    assert "client.images.edit" in page.inner_text("#python") and "image[]=@first.png" in page.inner_text("#curl")
    shot(page, "playground-edit")
    assert available(live_server, key) == before - price


def test_generate_and_a_402_when_credits_run_out(page: Any, live_server: LiveServer) -> None:
    key = new_key(live_server, "6")
    sign_in(page, live_server, key)
    page.fill("#prompt", "a red circle on white")
    page.click("#run")
    page.wait_for_selector("img.result", timeout=30_000)
    page.click("#run")
    page.wait_for_selector("#progress [role=alert]")
    assert "Not enough credits" in page.inner_text("#progress")
    shot(page, "playground-402")


def test_an_async_task_updates_to_done_and_usage_shows_it(page: Any, live_server: LiveServer) -> None:
    key = new_key(live_server, "200")
    url = "data:image/png;base64," + pybase64.b64encode(make_image(640, 480)).decode()
    auth = {"Authorization": f"Bearer {key}"}
    with webhook_receiver() as hook:
        body = {
            "model": "gpt-image-2",
            "input": {"prompt": "pencil sketch", "image_urls": [url], "resolution": "4K"},
            "callBackUrl": hook.url,
        }
        created = httpx.post(f"{live_server.base}/api/v1/jobs/createTask", json=body, headers=auth)
        task_id = created.json()["data"]["taskId"]
        sign_in(page, live_server, key)
        page.goto(f"{live_server.base}/#/tasks/{task_id}")
        page.wait_for_selector("#task-state.state-success", timeout=30_000)
        page.wait_for_selector(".results img")
        wait_for_task(
            lambda: httpx.get(f"{live_server.base}/v1/tasks/{task_id}", headers=auth).json()["deliveries"],
            done=lambda found: bool(found) and found[0]["state"] == "delivered",
            what="the callback delivered",
        )
    page.reload()
    page.wait_for_selector("#deliveries td:has-text('delivered')")
    shot(page, "task")
    page.goto(f"{live_server.base}/#/tasks")
    page.wait_for_selector(f"a[href='#/tasks/{task_id}']")
    page.wait_for_selector("td img[src^='/files/']")
    shot(page, "tasks")
    page.goto(f"{live_server.base}/#/usage")
    page.wait_for_selector("svg.chart rect")
    page.wait_for_selector("#ledger tbody tr")
    assert "grant" in page.inner_text("#ledger") and task_id in page.inner_text("#ledger")
    shot(page, "usage")


def test_an_admin_creates_a_key_and_grants_it_credits(page: Any, live_server: LiveServer) -> None:
    admin = new_key(live_server, "0", "--admin")
    sign_in(page, live_server, admin)
    page.wait_for_selector("#nav-admin:not([hidden])")
    page.click("#nav-admin")
    page.wait_for_selector("#new-name")
    page.fill("#new-name", "console-made")
    page.fill("#new-credits", "25")
    page.click("form.card button[type=submit]")
    page.wait_for_selector("#admin-message .message.ok")
    made = page.inner_text("#admin-message")
    raw = made.split("(shown once): ")[1].split(" ")[0]
    assert raw.startswith("ig-") and available(live_server, raw) == 25
    row = page.locator("#keys tr", has_text="console-made")
    row.locator("input").fill("75")
    row.locator("button", has_text="Grant").click()
    page.wait_for_function(balance_is, arg=["console-made", "100"])
    assert available(live_server, raw) == 100
    row.locator("input").fill("40")
    row.locator("button", has_text="Deduct").click()
    page.wait_for_function(balance_is, arg=["console-made", "60"])
    page.once("dialog", lambda dialog: dialog.accept("30"))
    row.locator("button", has_text="Limits").click()
    page.wait_for_selector("#keys tr:has-text('console-made') td.limits:has-text('30/min')")
    page.wait_for_selector("#channels, main p.muted")
    shot(page, "admin")


def test_the_chinese_console(browser: Any, live_server: LiveServer) -> None:
    context = browser.new_context(locale="zh-CN", viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        sign_in(page, live_server, live_server.key)
        assert page.inner_text("main h1") == "试用" and page.inner_text("nav a[href='#/tasks']") == "任务"
        assert page.inner_text("label[for=prompt]") == "提示词"
        shot(page, "playground-zh-phone")
        page.select_option("#language", "en")
        page.wait_for_function("() => document.querySelector('main h1').textContent === 'Playground'")
    finally:
        context.close()
