"""Screenshots of the dashboard's pages with realistic data, for the docs.

    .venv/bin/python scripts/dashboard_screenshots.py docs/dashboard

Three agents on an in-memory network (alice, whose dashboard is shown; bob and carol, trusted at different tiers;
dave, whose trust request waits), about thirty tasks made and served (one failed, one still running with
progress), a two-party collaboration, receipts. One PNG per page, 1280 px wide, at most 1400 px tall (a dense
page shorter: each PNG stays under 200 KB). Needs Playwright (the dev extra) and Debian's chromium (``apt-get
install chromium``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Literal

from playwright.sync_api import Page, sync_playwright

from coworker import Agent, CallContext, MemoryNetwork
from coworker._errors import SkillFailed
from coworker.core.trust import TrustTier

WIDTH, MAX_HEIGHT = 1280, 1400
MAX_BYTES = 195_000  # each PNG, for the repository's sake
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
TOPICS = ["MLS group messaging", "XMTP identity updates", "Ed25519 receipts", "agent trust tiers",
          "task retries", "JSON Schema forms"]


def build(root: Path) -> tuple[Agent, Agent, Agent, Agent, threading.Event]:
    """The agents and their history; the Event lets alice's running task finish."""
    network = MemoryNetwork()
    alice, bob, carol, dave = (Agent(name, network=network, data_dir=root / name)
                               for name in ("alice", "bob", "carol", "dave"))
    finish = threading.Event()
    reported = threading.Event()

    @alice.skill(min_trust_tier=TrustTier.KNOWN)
    def echo(text: str, times: int = 1) -> dict[str, str]:
        """Say it again."""
        return {"text": text * times}

    @alice.skill(min_trust_tier=TrustTier.KNOWN)
    def summarize(text: str, max_words: int = 50) -> dict[str, object]:
        """Summarize a text in at most max_words words."""
        words = text.split()
        return {"summary": " ".join(words[:max_words]), "word_count": len(words)}

    @alice.skill(min_trust_tier=TrustTier.INTERNAL)
    def translate(text: str, target: Literal["fr", "de", "es", "ja"] = "fr", formal: bool = False,
                  temperature: float = 0.2, glossary: dict[str, str] | None = None) -> dict[str, str]:
        """Translate text into the target language, optionally formal, with a glossary of fixed terms."""
        return {"text": f"[{target}{' formal' if formal else ''}] {text}"}

    @alice.skill(min_trust_tier=TrustTier.KNOWN)
    def write(topic: str, notes: str = "") -> dict[str, str]:
        """Write a short report on a topic from notes."""
        return {"report": f"# {topic}\n\n{notes}"}

    @alice.skill(min_trust_tier=TrustTier.KNOWN)
    def index(path: str, ctx: CallContext) -> dict[str, int]:
        """Index a document store (slow: reports progress)."""
        ctx.progress(0.4, f"indexed 400 of 1000 documents under {path}")
        reported.set()
        finish.wait(60)
        return {"documents": 1000}

    @alice.skill(min_trust_tier=TrustTier.KNOWN)
    def fetch_page(url: str) -> str:
        """Fetch a web page (fails for hosts it cannot reach)."""
        raise RuntimeError(f"could not reach {url}")

    @bob.skill(min_trust_tier=TrustTier.KNOWN)
    def research(topic: str) -> dict[str, str]:
        """Research a topic and summarize what is known."""
        return {"summary": f"{topic}: three sources agree on the basics; one disagrees on the details."}

    @carol.skill(min_trust_tier=TrustTier.KNOWN)
    def shout(text: str) -> str:
        """Upper-case a text."""
        return text.upper()

    for agent in (alice, bob, carol, dave):
        agent.start()
    alice.set_trust(bob.wallet, TrustTier.INTERNAL)
    alice.set_trust(carol.wallet, TrustTier.KNOWN)
    bob.set_trust(alice.wallet, TrustTier.KNOWN)
    carol.set_trust(alice.wallet, TrustTier.KNOWN)
    alice.connect(bob.wallet)  # their cards: the pages show their names and skills
    alice.connect(carol.wallet)

    for i in range(9):
        bob.call(alice.wallet, "echo", {"text": f"ping {i} ", "times": 2})
    for i, topic in enumerate(TOPICS):
        carol.call(alice.wallet, "summarize", {"text": f"Notes on {topic}. " * (i + 3), "max_words": 12})
        alice.call(bob.wallet, "research", {"topic": topic})
    bob.call(alice.wallet, "translate", {"text": "Good morning", "target": "de", "formal": True})
    bob.call(alice.wallet, "translate", {"text": "See you soon", "target": "ja"})
    for word in ("hello", "ship it", "done"):
        alice.call(carol.wallet, "shout", {"text": word})
    with contextlib.suppress(SkillFailed):  # the failed task the pages show
        carol.call(alice.wallet, "fetch_page", {"url": "https://unreachable.example"})
    alice.collaborate(bob.wallet, "Research MLS and write a report", plan=[
        {"id": "dig", "skill": "research", "agent": "peer", "input": {"topic": "MLS"}},
        {"id": "report", "skill": "write", "agent": "self",
         "input": {"topic": "MLS", "notes": "{{dig.output.summary}}"}}])
    team = alice.create_group("research desk", [bob.wallet, carol.wallet],
                              description="papers on MLS: bob researches, carol reviews")
    team.discover()  # each member's skills as its trust of alice allows
    assert dave.request_trust(alice.wallet, TrustTier.KNOWN, "I run the nightly builds and need echo") == "pending"
    bob.request(alice.wallet, "index", {"path": "/srv/docs"})
    if not reported.wait(10):
        raise RuntimeError("the running task did not report")
    return alice, bob, carol, dave, finish


def shoot(page: Page, url: str, out: Path) -> None:
    page.goto(url)
    page.locator("#live").filter(has_text=re.compile("^live$")).wait_for(timeout=10_000)
    if url.endswith("/groups"):  # ask the group, from the page, which skills each member shows
        page.get_by_role("button", name="Discover").click()
        page.get_by_text("last asked").wait_for(timeout=10_000)
    height = min(page.evaluate("document.documentElement.scrollHeight"), MAX_HEIGHT)
    while True:
        page.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": WIDTH, "height": height}, full_page=True)
        size = out.stat().st_size
        if size <= MAX_BYTES:
            break
        height = int(height * MAX_BYTES / size * 0.97)  # a dense page (long tables) is cut shorter
    print(f"{out} {out.stat().st_size // 1024} KB", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder for the PNGs (docs/dashboard)")
    args = parser.parse_args()
    logging.getLogger("coworker").setLevel(logging.CRITICAL)  # the failed task's traceback is meant
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium on PATH: apt-get install chromium", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        alice, *others, finish = build(Path(tmp))
        dashboard = alice.start_dashboard(port=0)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
                page = browser.new_page(viewport={"width": WIDTH, "height": 500})  # full page: the page's height
                page.goto(dashboard.login_link())
                running = alice.list_tasks("working", direction="in")[0]
                collab = alice.collaborations()[0]
                shots = [("overview", "/"), ("trust", "/trust"), ("tasks", "/tasks"),
                         ("task", f"/tasks/in/{running['task_id']}?peer={running['peer']}"),
                         ("messages", "/messages"), ("skills", "/skills"), ("peers", "/peers"),
                         ("collaborations", "/collaborations"), ("groups", "/groups"), ("receipts", "/receipts")]
                assert collab["state"] == "completed", collab
                for name, path in shots:
                    shoot(page, dashboard.url + path, args.out / f"{name}.png")
                browser.close()
        finally:
            finish.set()
            for agent in (*others, alice):
                agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
