"""The dashboard's pages in a real browser (headless Chromium through Playwright): logging in with the one-time
link, approving a trust request, a task appearing, reporting progress and ending, cancelling one, trying a skill
from its form, and a peer-chosen name shown as text. Live changes are checked without a reload (a marker set on
the page before is still there after), every request a page makes goes to the dashboard's own origin, and no page
logs a console error or opens a dialog. Over HTTP alone: tests/test_dashboard.py."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from coworker import Agent, CallContext, MemoryNetwork
from coworker._errors import AccessDenied
from coworker.core.trust import TrustTier
from coworker.dashboard import Dashboard

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is a dev dependency: pip install -e .[dev]")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("CI"):  # CI installs it (.ci/run): its absence there is a failure
    pytest.fail("no chromium on PATH: .ci/run installs Debian's `chromium`", pytrace=False)
if CHROMIUM is None:
    pytest.skip("no chromium on PATH (CI installs Debian's `chromium`; `playwright install` is not used)",
                allow_module_level=True)

from playwright.sync_api import Browser, BrowserContext, Page, expect  # noqa: E402

EVIL = '<img src=x onerror="alert(1)">'
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
WAIT = 10_000  # ms: the longest any expectation waits

expect.set_options(timeout=WAIT)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Watched:
    """What a page did that it should not: requests elsewhere, console errors, uncaught errors, dialogs."""

    origin: str
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        page.on("request", lambda r: None if r.url.startswith(self.origin + "/") else self.foreign.append(r.url))
        page.on("console", lambda m: self.errors.append(f"console: {m.text} ({m.location.get('url')})")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("dialog", lambda d: (self.errors.append(f"dialog: {d.message}"), d.dismiss()))
        return page

    def allow(self, status: int, path: str) -> None:
        """Forget the console's report of an answer given on purpose (``path`` ends the URL, query aside)."""
        pattern = re.compile(rf"console: Failed to load resource: .* status of {status} .*\(http://[^/]+{re.escape(path)}"
                             r"(\?[^)]*)?\)")
        self.errors = [e for e in self.errors if not pattern.fullmatch(e)]

    def check(self) -> None:
        assert self.foreign == [], "requests to elsewhere than the dashboard"
        assert self.errors == []


@dataclass
class Signals:
    """Between the test and the skills: alice's ``chatty`` reported (step) and may end (finish); bob's ``slow``
    started and was cancelled."""

    step: threading.Event = field(default_factory=threading.Event)
    finish: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Setup:
    alice: Agent
    bob: Agent
    dashboard: Dashboard
    context: BrowserContext
    page: Page
    watched: Watched
    signals: Signals

    def goto(self, path: str) -> None:
        self.page.goto(self.dashboard.url + path)
        expect(self.page.locator("#live")).to_have_text("live")  # the event stream is up

    def mark(self) -> None:
        """Mark the page: a reload (or navigation) loses the mark; :meth:`kept` checks it."""
        self.page.evaluate("window.__kept = 1")

    def kept(self) -> None:
        assert self.page.evaluate("window.__kept") == 1, "the page was reloaded"


@pytest.fixture
def setup(browser: Browser, tmp_path: Path) -> Iterator[Setup]:
    network = MemoryNetwork()
    alice = Agent("alice", network=network, data_dir=tmp_path / "alice")
    bob = Agent("bob", network=network, data_dir=tmp_path / "bob")

    @alice.skill(min_trust_tier=TrustTier.KNOWN)
    def echo(text: str, times: int = 1) -> dict[str, str]:
        """Say it again."""
        return {"text": text * times}

    signals = Signals()

    @alice.skill(min_trust_tier=TrustTier.KNOWN)
    def chatty(ctx: CallContext) -> str:
        """Reports progress, then waits to be told to finish."""
        ctx.progress(0.5, "halfway there")
        signals.step.set()
        if not signals.finish.wait(WAIT / 1000):
            raise RuntimeError("not told to finish")
        return "all done"

    @bob.skill(min_trust_tier=TrustTier.KNOWN)
    async def slow(ctx: CallContext) -> str:
        """Runs until cancelled."""
        signals.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            signals.cancelled.set()
            raise
        return "slow done"

    alice.start()
    bob.start()
    dashboard = alice.start_dashboard(port=0)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT)
    watched = Watched(dashboard.url)
    page = watched.attach(context.new_page())
    try:
        yield Setup(alice, bob, dashboard, context, page, watched, signals)
    finally:
        signals.finish.set()
        context.close()
        bob.stop()
        alice.stop()


def _login(s: Setup) -> None:
    s.page.goto(s.dashboard.login_link())
    expect(s.page).to_have_url(s.dashboard.url + "/")
    expect(s.page.locator("#live")).to_have_text("live")


def _trust_each_other(s: Setup) -> None:
    s.alice.set_trust(s.bob.wallet, TrustTier.KNOWN)
    s.bob.set_trust(s.alice.wallet, TrustTier.KNOWN)


def test_the_login_link_opens_the_overview_once(setup: Setup, browser: Browser) -> None:
    s = setup
    link = s.dashboard.login_link()
    s.page.goto(link)
    expect(s.page).to_have_url(s.dashboard.url + "/")
    expect(s.page.locator("header .brand strong")).to_have_text("alice")
    expect(s.page.locator("h1")).to_be_visible()
    expect(s.page.locator("#live")).to_have_text("live")
    other = browser.new_context()
    try:
        stranger = s.watched.attach(other.new_page())
        response = stranger.goto(link)
        assert response is not None and response.status == 401
        expect(stranger.get_by_text("used already or has expired")).to_be_visible()
        api = stranger.request.get(s.dashboard.url + "/api/overview")
        assert api.status == 401
        stranger.goto(s.dashboard.url + "/trust")  # a page sends to the login notice
        expect(stranger).to_have_url(s.dashboard.url + "/login")
    finally:
        other.close()
    s.watched.allow(401, "/login")  # the link used already, and the login notice
    s.watched.check()


def test_approving_a_pending_trust_request_lets_the_peer_call(setup: Setup) -> None:
    s = setup
    with pytest.raises(AccessDenied):
        s.bob.call(s.alice.wallet, "echo", {"text": "hi"}, timeout=10)
    _login(s)
    s.goto("/trust")
    s.mark()
    expect(s.page.locator("#no-pending")).to_be_visible()
    assert s.bob.request_trust(s.alice.wallet, TrustTier.KNOWN, "let me echo") == "pending"
    row = s.page.locator(f"tr.pending[data-wallet='{s.bob.wallet}']")
    expect(row).to_be_visible()  # appeared live
    expect(row.locator(".reason")).to_have_text("let me echo")
    row.locator("form.approve select[name=tier]").select_option("internal")
    row.get_by_role("button", name="Approve").click()
    expect(row).to_have_count(0)
    expect(s.page.locator("#toast")).to_have_text("approved at internal")
    expect(s.page.locator(f"tr.peer[data-wallet='{s.bob.wallet}'] td.tier")).to_have_text("internal")
    s.kept()
    assert s.alice.trust_tier(s.bob.wallet) == TrustTier.INTERNAL
    assert s.bob.call(s.alice.wallet, "echo", {"text": "hi", "times": 2}, timeout=10) == {"text": "hihi"}
    s.watched.check()


def test_a_served_task_appears_reports_progress_and_completes_live(setup: Setup) -> None:
    s = setup
    _trust_each_other(s)
    _login(s)
    s.goto("/tasks")
    s.mark()
    task_id = s.bob.request(s.alice.wallet, "chatty", {})
    assert s.signals.step.wait(WAIT / 1000)
    row = s.page.locator(f"tr.task[data-task='{task_id}']")
    expect(row).to_be_visible()  # appeared without a reload
    expect(row.locator("td.state")).to_have_text("working")
    s.kept()
    row.get_by_role("link").click()
    expect(s.page).to_have_url(re.compile(rf"/tasks/in/{task_id}\?peer="))
    expect(s.page.locator("#live")).to_have_text("live")
    s.mark()
    expect(s.page.locator("#task-progress")).to_contain_text("halfway there")
    expect(s.page.locator("#task-progress")).to_contain_text("50%")
    expect(s.page.locator("#task-state")).to_have_text("working")
    s.signals.finish.set()
    expect(s.page.locator("#task-state")).to_have_text("completed")
    expect(s.page.locator("#task-result")).to_contain_text('"all done"')
    s.kept()
    assert s.bob.wait(task_id, timeout=10) == "all done"
    s.watched.check()


def test_cancelling_a_running_task_from_its_page(setup: Setup) -> None:
    s = setup
    _trust_each_other(s)
    _login(s)
    task_id = s.alice.request(s.bob.wallet, "slow", {})
    assert s.signals.started.wait(WAIT / 1000)
    s.goto(f"/tasks/out/{task_id}")
    s.mark()
    expect(s.page.locator("#task-state")).to_have_text("working")
    s.page.locator("#cancel-task").click()
    expect(s.page.locator("#task-state")).to_have_text("canceled")
    expect(s.page.locator("#cancel-task")).to_have_count(0)
    s.kept()
    assert s.alice.get_result(task_id)["state"] == "canceled"
    assert s.signals.cancelled.wait(WAIT / 1000), "bob's skill was not told to stop"
    s.watched.check()


def test_trying_a_skill_from_its_form_shows_the_result(setup: Setup) -> None:
    s = setup
    _login(s)
    s.goto("/skills")
    form = s.page.locator("#skill-echo form.try")
    expect(form.locator("input[name='input.times']")).to_have_attribute("type", "number")
    form.locator("[name='input.text']").fill("ab")
    form.locator("input[name='input.times']").fill("3")
    form.get_by_role("button", name="Run echo").click()
    expect(s.page).to_have_url(re.compile(r"/tasks/in/[^/?]+\?peer="))
    expect(s.page.locator("#task-state")).to_have_text("completed")
    expect(s.page.locator("#task-result")).to_contain_text('"text": "ababab"')
    s.goto("/skills")  # a bad input is refused with a toast saying where
    form = s.page.locator("#skill-echo form.try")
    text = form.locator("[name='input.text']")
    text.evaluate("el => el.removeAttribute('required')")  # past the browser's own check: the agent's refuses
    text.fill("")
    form.get_by_role("button", name="Run echo").click()
    expect(s.page.locator("#toast")).to_contain_text("(at text)")
    s.watched.allow(400, "/api/skills/try")
    expect(s.page).to_have_url(s.dashboard.url + "/skills")
    s.watched.check()


def test_a_peer_chosen_name_shows_as_text(setup: Setup) -> None:
    s = setup
    store: Any = s.alice.aio.store
    store.touch_peer(s.bob.wallet, time.time(), name=EVIL)
    store.flush()
    _login(s)
    for path in ("/peers", "/trust", "/"):
        s.goto(path)
        if path != "/":
            expect(s.page.locator(".name", has_text=EVIL).first).to_be_visible()
        assert s.page.locator("img[src=x]").count() == 0, path
        assert s.page.evaluate("document.querySelectorAll('img[onerror]').length") == 0, path
    s.watched.check()
