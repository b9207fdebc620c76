"""The dashboard over HTTP: closed to everyone but the owner (login link once, cookie, Host, Origin, headers, paths),
peer-chosen strings escaped, and its JSON API doing what the pages ask. The pages in a real browser:
tests/test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coworker import AsyncAgent, MemoryNetwork
from coworker.core.trust import TrustTier
from coworker.dashboard import Dashboard
from coworker.dashboard.security import COOKIE, Sessions
from coworker.store.records import TrustRequest

EVIL = '<img src=x onerror="alert(1)">'


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[tuple[AsyncAgent, AsyncAgent]]:
    network = MemoryNetwork()
    alice = AsyncAgent("alice", network=network, data_dir=tmp_path / "alice")
    bob = AsyncAgent("bob", network=network, data_dir=tmp_path / "bob")

    @alice.skill(min_trust_tier=TrustTier.KNOWN)
    def echo(text: str, times: int = 1) -> dict[str, str]:
        """Say it again."""
        return {"text": text * times}

    @bob.skill(min_trust_tier=TrustTier.KNOWN)
    def shout(text: str) -> str:
        return text.upper()

    await alice.start()
    await bob.start()
    try:
        yield alice, bob
    finally:
        await bob.stop()
        await alice.stop()


@pytest.fixture
async def dashboard(agents: tuple[AsyncAgent, AsyncAgent]) -> Dashboard:
    return await agents[0].start_dashboard(port=0)


def _origin(dashboard: Dashboard) -> dict[str, str]:
    return {"origin": dashboard.url}


@contextlib.asynccontextmanager
async def _logged_in(dashboard: Dashboard) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        response = await client.get(dashboard.login_link())
        assert response.status_code == 303 and response.headers["location"] == "/"
        yield client


async def test_the_login_link_works_once_and_sets_a_strict_httponly_cookie(dashboard: Dashboard) -> None:
    link = dashboard.login_link()
    async with httpx.AsyncClient() as client:
        first = await client.get(link)
        assert first.status_code == 303 and first.headers["location"] == "/"
        cookie = first.headers["set-cookie"].lower()
        assert cookie.startswith(COOKIE + "=") and "httponly" in cookie and "samesite=strict" in cookie
        assert (await client.get(dashboard.url + "/api/overview")).status_code == 200
    async with httpx.AsyncClient() as other:
        second = await other.get(link)
        assert second.status_code == 401 and "used already or has expired" in second.text
        assert COOKIE not in second.headers.get("set-cookie", "")
        assert (await other.get(dashboard.url + "/api/overview")).status_code == 401


def test_links_expire_and_sessions_end() -> None:
    now = [1000.0]
    sessions = Sessions(clock=lambda: now[0])
    late = sessions.link_token()
    now[0] += 301
    assert sessions.redeem(late) is None
    session = sessions.redeem(sessions.link_token())
    assert session is not None and sessions.check(session)
    assert not sessions.check("forged") and not sessions.check(None)
    sessions.end(session)
    assert not sessions.check(session)
    idle = sessions.redeem(sessions.link_token())
    now[0] += 13 * 3600
    assert not sessions.check(idle)


async def test_without_a_session_the_api_answers_401_and_pages_send_to_the_login_notice(dashboard: Dashboard) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        for path in ("/api/overview", "/api/tasks", "/api/trust", "/api/messages", "/api/receipts.csv",
                     "/api/events"):
            response = await client.get(path)
            assert response.status_code == 401, path
            assert response.json()["error"]["type"] == "Unauthorized"
        for path in ("/", "/trust", "/tasks", "/messages", "/skills", "/peers", "/collaborations", "/receipts"):
            response = await client.get(path)
            assert response.status_code == 303 and response.headers["location"] == "/login", path
        notice = await client.get("/login")
        assert notice.status_code == 401 and "coworker dashboard --agent alice" in notice.text
        refused = await client.post("/api/trust/set", json={"wallet": "0x" + "1" * 40, "tier": "privileged"},
                                    headers=_origin(dashboard))
        assert refused.status_code == 401
    async with httpx.AsyncClient(base_url=dashboard.url, cookies={COOKIE: "not-a-session"}) as forger:
        assert (await forger.get("/api/overview")).status_code == 401


async def test_a_change_from_a_foreign_origin_or_without_one_is_refused(
        agents: tuple[AsyncAgent, AsyncAgent], dashboard: Dashboard) -> None:
    alice, bob = agents
    async with _logged_in(dashboard) as client:
        body = {"wallet": bob.wallet, "tier": "privileged"}
        for headers in ({"origin": "http://evil.example"}, {"origin": "null"}, {},
                        {"origin": dashboard.url.replace("http:", "https:")}):
            response = await client.post("/api/trust/set", json=body, headers=headers)
            assert response.status_code == 403, headers
        assert alice.trust_tier(bob.wallet) == TrustTier.UNTRUSTED
        done = await client.post("/api/trust/set", json=body, headers=_origin(dashboard))
        assert done.status_code == 200 and done.json() == {"tier": "privileged"}
        assert alice.trust_tier(bob.wallet) == TrustTier.PRIVILEGED


async def test_a_foreign_host_is_refused(dashboard: Dashboard) -> None:
    async with _logged_in(dashboard) as client:
        assert (await client.get("/api/overview")).status_code == 200
        for host in ("evil.example", f"evil.example:{dashboard.port}", "127.0.0.1:1", "localhost"):
            response = await client.get("/api/overview", headers={"host": host})
            assert response.status_code == 421, host
        assert (await client.get("/api/overview", headers={"host": f"localhost:{dashboard.port}"})).status_code == 200


def _raw_get(port: int, target: str, cookie: str | None = None) -> int:
    """The status of a GET whose target is sent byte for byte (clients normalize ``..`` away)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        extra = f"Cookie: {COOKIE}={cookie}\r\n" if cookie else ""
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n".encode())
        head = sock.recv(4096).decode("latin-1")
    return int(head.split(" ", 2)[1])


async def test_dot_dot_paths_and_their_encodings_give_404(dashboard: Dashboard) -> None:
    async with _logged_in(dashboard) as client:
        session = client.cookies[COOKIE]
    targets = ["/../../etc/passwd", "/assets/../app.py", "/assets/..%2fapp.py", "/assets/%2e%2e/%2e%2e/etc/passwd",
               "/assets/%2e%2e%2fviews.py", "/assets/..%5capp.py", "/assets/%252e%252e%252fapp.py",
               "/assets/dashboard.js/../../app.py", "/%2e%2e/%2e%2e/etc/passwd", "/assets/templates/base.html",
               "/assets/../templates/base.html", "/assets/", "/assets/.%2e/security.py"]
    for cookie in (None, session):
        for target in targets:
            status = await asyncio.to_thread(_raw_get, dashboard.port, target, cookie)
            assert status == 404, (target, cookie is not None, status)
    assert await asyncio.to_thread(_raw_get, dashboard.port, "/assets/dashboard.js") == 200


async def test_every_response_carries_the_security_headers_and_no_cors(dashboard: Dashboard) -> None:
    async with _logged_in(dashboard) as client:
        for path in ("/", "/api/overview", "/assets/dashboard.js", "/login", "/nothing-here"):
            response = await client.get(path, headers={"origin": "http://evil.example"})
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert not [h for h in response.headers if h.lower().startswith("access-control-")], path
        preflight = await client.options("/api/trust/set", headers={"origin": "http://evil.example",
                                                                   "access-control-request-method": "POST"})
        assert preflight.status_code in (403, 405)
        assert not [h for h in preflight.headers if h.lower().startswith("access-control-")]


async def test_peer_chosen_strings_show_as_text(agents: tuple[AsyncAgent, AsyncAgent], dashboard: Dashboard) -> None:
    alice, bob = agents
    now = time.time()
    alice.store.touch_peer(bob.wallet, now, name=EVIL, card={"skills": [{"name": EVIL, "description": EVIL,
                                                                          "min_trust_tier": 1}]})
    alice.store.add_trust_request(TrustRequest(bob.wallet, TrustTier.KNOWN, EVIL, "r1", now))
    alice.store.flush()
    async with _logged_in(dashboard) as client:
        for path in ("/trust", "/peers", "/"):
            page = (await client.get(path)).text
            assert "<img src=x" not in page and "onerror=\"alert" not in page, path
        trust_page = (await client.get("/trust")).text
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in trust_page
        assert EVIL in str((await client.get("/api/trust")).json())  # the API gives the data as it is, as JSON


async def test_the_dashboard_listens_on_loopback_by_default_and_moves_to_the_next_free_port(
        agents: tuple[AsyncAgent, AsyncAgent], dashboard: Dashboard) -> None:
    bob = agents[1]
    assert dashboard.host == "127.0.0.1" and dashboard.url == f"http://127.0.0.1:{dashboard.port}"
    second = await bob.start_dashboard(port=dashboard.port)  # taken by alice's: bob's takes a later one
    try:
        assert second.host == "127.0.0.1" and second.port > dashboard.port
    finally:
        await second.stop()
    import inspect

    assert inspect.signature(AsyncAgent.serve).parameters["dashboard_host"].default == "127.0.0.1"
    assert inspect.signature(AsyncAgent.start_dashboard).parameters["host"].default == "127.0.0.1"


async def test_approving_a_request_from_the_api_lets_the_peer_call(
        agents: tuple[AsyncAgent, AsyncAgent], dashboard: Dashboard) -> None:
    alice, bob = agents
    assert await bob.request_trust(alice.wallet, TrustTier.KNOWN, "let me echo") == "pending"
    async with _logged_in(dashboard) as client:
        pending = (await client.get("/api/trust")).json()["pending"]
        assert [(p["wallet"], p["tier"], p["reason"]) for p in pending] == [(bob.wallet, "known", "let me echo")]
        approved = await client.post("/api/trust/approve", json={"wallet": bob.wallet, "tier": "known"},
                                     headers=_origin(dashboard))
        assert approved.json() == {"tier": "known"}
        assert await bob.call(alice.wallet, "echo", {"text": "hi"}) == {"text": "hi"}
        audit = (await client.get("/api/trust")).json()["audit"]
        assert [(e["event"], e["by"]) for e in audit][:2] == [("set", "owner"), ("requested", "peer")]
        tasks = (await client.get("/api/tasks", params={"direction": "in"})).json()["tasks"]
        assert [(t["skill"], t["state"], t["peer"]) for t in tasks] == [("echo", "completed", bob.wallet)]
        messages = (await client.get("/api/messages")).json()["messages"]
        assert {(m["direction"], m["kind"], m["verdict"]) for m in messages} >= {
            ("in", "trust.request", "handled"), ("in", "call.request", "handled"), ("out", "call.result", "sent")}


async def test_trying_a_skill_runs_it_as_a_local_task(agents: tuple[AsyncAgent, AsyncAgent],
                                                      dashboard: Dashboard) -> None:
    alice, _ = agents
    async with _logged_in(dashboard) as client:
        skills = (await client.get("/skills")).text
        assert 'name="input.text"' in skills and 'name="input.times" data-kind="integer"' in skills
        started = (await client.post("/api/skills/try", json={"skill": "echo", "input": {"text": "ab", "times": 2}},
                                     headers=_origin(dashboard))).json()
        assert started["url"] == f"/tasks/in/{started['task_id']}?peer={alice.wallet}"
        assert (await dashboard.app.owner_tasks.state(started["task_id"], wait=10))["state"] == "completed"
        task = (await client.get(f"/api/tasks/in/{started['task_id']}", params={"peer": alice.wallet})).json()
        assert task["task"]["state"] == "completed" and task["task"]["result"] == {"text": "abab"}
        page = (await client.get(started["url"])).text
        assert "abab" in page
        bad = await client.post("/api/skills/try", json={"skill": "echo", "input": {"times": 2}},
                                headers=_origin(dashboard))
        assert bad.status_code == 400 and bad.json()["error"]["path"] == "text"


async def test_receipts_are_listed_verified_and_exported(agents: tuple[AsyncAgent, AsyncAgent],
                                                         dashboard: Dashboard) -> None:
    alice, bob = agents
    alice.set_trust(bob.wallet, TrustTier.KNOWN)
    bob.set_trust(alice.wallet, TrustTier.KNOWN)
    assert await alice.call(bob.wallet, "shout", {"text": "hey"}) == "HEY"
    assert await bob.call(alice.wallet, "echo", {"text": "yo"}) == {"text": "yo"}
    async with _logged_in(dashboard) as client:
        receipts = (await client.get("/api/receipts")).json()["receipts"]
        assert {(r["direction"], r["skill"], r["valid"]) for r in receipts} == {("out", "shout", True),
                                                                                ("in", "echo", True)}
        made = next(r for r in receipts if r["direction"] == "out")
        check = (await client.post("/api/receipts/verify", json={"direction": "out", "task_id": made["task_id"]},
                                   headers=_origin(dashboard))).json()
        assert check == {"valid": True, "problem": None, "signer": bob.wallet}
        rows = list(csv.DictReader(io.StringIO((await client.get("/api/receipts.csv")).text)))
        assert {(r["direction"], r["skill"], r["valid"]) for r in rows} == {("out", "shout", "True"),
                                                                            ("in", "echo", "True")}
        exported: Any = (await client.get("/api/receipts.json")).json()
        assert len(exported) == 2 and all(r["receipt"]["signature"] for r in exported)


async def test_a_peer_is_pinned_for_mcp_and_unpinned_from_the_peers_page(
        agents: tuple[AsyncAgent, AsyncAgent], dashboard: Dashboard) -> None:
    alice, bob = agents
    bob.set_trust(alice.wallet, TrustTier.KNOWN)
    await alice.connect(bob.wallet)
    async with _logged_in(dashboard) as client:
        assert "Pin for MCP" in (await client.get("/peers")).text
        pinned = await client.post("/api/peers/mcp", json={"wallet": bob.wallet, "pinned": True},
                                   headers=_origin(dashboard))
        assert pinned.json() == {"wallet": bob.wallet, "pinned": True}
        assert alice.store.pinned_peers() == [bob.wallet]
        assert "its skills are tools of" in (await client.get("/peers")).text
        await client.post("/api/peers/mcp", json={"wallet": bob.wallet, "pinned": False}, headers=_origin(dashboard))
        assert alice.store.pinned_peers() == []


async def test_groups_are_listed_created_and_discovered_from_the_groups_page(
        agents: tuple[AsyncAgent, AsyncAgent], dashboard: Dashboard) -> None:
    alice, bob = agents
    bob.set_trust(alice.wallet, TrustTier.KNOWN)
    async with _logged_in(dashboard) as client:
        assert "No groups yet" in (await client.get("/groups")).text
        created = (await client.post("/api/groups/create", json={"name": "papers", "members": bob.wallet,
                                                                 "description": EVIL}, headers=_origin(dashboard)))
        assert created.status_code == 200, created.text
        group_id = created.json()["group_id"]
        found = (await client.post("/api/groups/discover", json={"group_id": group_id},
                                   headers=_origin(dashboard))).json()
        assert found["members"][bob.wallet]["skills"] == ["shout"]
        page = (await client.get("/groups")).text
        assert "papers" in page and "shout" in page and bob.wallet in page and "<img src=x" not in page
        listed = (await client.get("/api/groups")).json()["groups"]
        assert [(g["name"], g["state"], g["admin"]) for g in listed] == [("papers", "joined", True)]
        assert {m["wallet"] for m in listed[0]["members"]} == {alice.wallet, bob.wallet}
        bad = await client.post("/api/groups/create", json={"name": "x", "members": "not-a-wallet"},
                                headers=_origin(dashboard))
        assert bad.status_code == 400


@pytest.mark.integration
async def test_the_overview_of_an_agent_on_xmtp_shows_its_inbox_installations_and_the_local_node(
        xmtp_node: Any, tmp_path: Path) -> None:
    from coworker.transports.xmtp.transport import XmtpNetwork

    agent = AsyncAgent("carol", network=XmtpNetwork("local"), data_dir=tmp_path / "carol")
    await agent.start()
    try:
        dashboard = await agent.start_dashboard(port=0)
        async with _logged_in(dashboard) as client:
            overview = (await client.get("/api/overview")).json()
            page = (await client.get("/")).text
    finally:
        await agent.stop()
    xmtp = overview["xmtp"]
    assert overview["network"] == "local" and xmtp["inboxId"] and xmtp["installations"] == 1 and xmtp["streaming"]
    assert overview["devnet"] == {"port": 5556, "up": True}
    assert overview["writes"]["limit"] == 3000 and overview["writes"]["window_s"] == 300
    assert xmtp["inboxId"] in page and "1 of 10" in page and "of 3000 in the last 300 s" in page


async def test_bad_query_parameters_get_a_clear_answer_and_the_dashboard_goes_on(dashboard: Dashboard) -> None:
    async with _logged_in(dashboard) as client:
        for path, status in (("/tasks?before=soon", 400), ("/tasks?state=bogus", 404), ("/tasks?peer=nobody", 404),
                             ("/tasks/in/nothing?peer=0x" + "1" * 40, 404), ("/tasks/sideways/x", 404),
                             ("/receipts?before=x", 400)):
            response = await client.get(path)
            assert response.status_code == status, path
            assert "Traceback" not in response.text
        for path in ("/api/tasks?before=soon", "/api/tasks?state=bogus", "/api/tasks/out/nothing"):
            response = await client.get(path)
            assert response.status_code == 400 and response.json()["error"]["message"], path
        bodies: list[Any] = [b"not json", b"[1, 2]", b"[" * 5000, {"wallet": 7}, {"wallet": "0x" + "1" * 40,
                                                                                  "tier": "god"}]
        for body in bodies:
            kwargs: dict[str, Any] = {"json": body} if isinstance(body, dict) else {"content": body}
            response = await client.post("/api/trust/set", headers=_origin(dashboard), **kwargs)
            assert response.status_code == 400, body
        assert (await client.get("/api/overview")).status_code == 200
