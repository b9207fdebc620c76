"""The MCP bridge in-process, on the in-memory network: the peers the owner pins for MCP, ``coworker mcp pin``.

The bridge is driven by calling its MCP handlers directly (no MCP session): what they return is what an MCP host
receives. ``tests/test_mcp_server.py`` runs ``coworker mcp`` in its own process with the official MCP client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from coworker import AsyncAgent, CallContext, MemoryNetwork, TrustTier
from coworker.agent.control import pin, unpin
from coworker.agent.mcp_backends import AgentBackend
from coworker.agent.mcp_server import McpBridge
from coworker.cli.main import main


@pytest.fixture
async def pair(home: Path) -> AsyncIterator[tuple[AsyncAgent, AsyncAgent]]:
    """Agent "me" and peer "bob" (skill echo, KNOWN), bob trusting me at KNOWN; both started."""
    net = MemoryNetwork()
    me, bob = AsyncAgent("me", network=net), AsyncAgent("bob", network=net)

    @bob.skill(description="Echo the text back.")
    def echo(text: str) -> str:
        return text

    @bob.skill(min_trust_tier=TrustTier.INTERNAL)
    def secret() -> str:
        return "the secret"

    bob.set_trust(me.wallet, TrustTier.KNOWN)
    await me.start()
    await bob.start()
    try:
        yield me, bob
    finally:
        await me.stop()
        await bob.stop()
        me.close()
        bob.close()


async def names(bridge: McpBridge) -> list[str]:
    return [t.name for t in (await bridge._list_tools(None, None)).tools]


async def call(bridge: McpBridge, name: str, args: dict[str, Any]) -> types.CallToolResult:
    return await bridge._call_tool(None, types.CallToolRequestParams(name=name, arguments=args))


async def test_a_peer_pinned_for_mcp_has_its_visible_skills_served_as_tools(
        pair: tuple[AsyncAgent, AsyncAgent]) -> None:
    me, bob = pair
    bridge = McpBridge(me, wait=10)
    await bridge.connect_pinned()
    assert not [n for n in await names(bridge) if n.startswith("bob__")]

    assert pin(me.store, bob.wallet.lower()) and not pin(me.store, bob.wallet)
    await bridge.connect_pinned()
    assert [n for n in await names(bridge) if n.startswith("bob__")] == ["bob__echo"]  # secret: above our tier
    echoed = await call(bridge, "bob__echo", {"text": "hi"})
    assert not echoed.is_error and echoed.structured_content == {"result": "hi"}
    listed = await call(bridge, "peers", {})
    assert {"name": "bob", "pinned": True}.items() <= json.loads(listed.content[0].text)[0].items()

    assert unpin(me.store, bob.wallet)
    await bridge.refresh()
    assert not [n for n in await names(bridge) if n.startswith("bob__")]


async def test_coworker_mcp_pin_unpin_and_pins_go_through_the_running_agent(
        pair: tuple[AsyncAgent, AsyncAgent], capsys: pytest.CaptureFixture[str]) -> None:
    me, bob = pair

    def run(*argv: str) -> str:
        assert main(["mcp", *argv, "--agent", "me"]) == 0
        return capsys.readouterr().out

    assert "pinned " + bob.wallet in await asyncio.to_thread(run, "pin", bob.wallet.lower())
    assert "(it was already)" in await asyncio.to_thread(run, "pin", bob.wallet)
    assert me.store.pinned_peers() == [bob.wallet]
    assert json.loads(await asyncio.to_thread(run, "pins", "--json")) == [bob.wallet]
    assert "unpinned" in await asyncio.to_thread(run, "unpin", bob.wallet)
    assert me.store.pinned_peers() == []


def test_coworker_mcp_pin_is_durable_while_the_agent_is_stopped(home: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    AsyncAgent("me").close()
    wallet = "0x" + "b0" * 20
    assert main(["mcp", "pin", wallet, "--agent", "me"]) == 0
    assert main(["mcp", "pins", "--agent", "me"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].lower() == wallet
    again = AsyncAgent("me")
    try:
        assert [w.lower() for w in again.store.pinned_peers()] == [wallet]
    finally:
        again.close()
    assert main(["mcp", "pin", "--agent", "me"]) != 0  # pin needs a peer


class Session:
    """What the bridge tells an MCP session: each tools/list_changed, counted."""

    def __init__(self) -> None:
        self.changes = 0
        self.changed = asyncio.Event()

    async def send_tool_list_changed(self) -> None:
        self.changes += 1
        self.changed.set()


class CountingBackend(AgentBackend):
    """An in-process backend that signals each discovery of a peer."""

    def __init__(self, agent: AsyncAgent) -> None:
        super().__init__(agent)
        self.connects = 0
        self.connected = asyncio.Event()

    async def connect(self, wallet: str, timeout: float) -> dict[str, Any]:
        try:
            return await super().connect(wallet, timeout)
        finally:
            self.connects += 1
            self.connected.set()

    async def reached(self, count: int) -> None:
        """Until ``count`` discoveries ended in all."""
        while self.connects < count:
            self.connected.clear()
            await self.connected.wait()


async def test_the_pinned_peers_are_discovered_again_each_period_and_only_a_changed_list_is_announced(
        pair: tuple[AsyncAgent, AsyncAgent]) -> None:
    me, bob = pair
    pin(me.store, bob.wallet)
    backend = CountingBackend(me)
    bridge, session = McpBridge(backend, wait=10), Session()
    bridge._sessions.append(session)
    async with asyncio.TaskGroup() as group:
        fresh = group.create_task(bridge.keep_fresh(0.01))
        await asyncio.wait_for(session.changed.wait(), 10)  # bob's skills, first discovered
        assert "bob__echo" in await names(bridge) and session.changes == 1
        await asyncio.wait_for(backend.reached(backend.connects + 3), 10)
        assert session.changes == 1  # discovered again, nothing changed: nothing announced

        session.changed.clear()

        @bob.skill()
        def shout(text: str) -> str:
            return text.upper()

        await asyncio.wait_for(session.changed.wait(), 10)
        assert "bob__shout" in await names(bridge) and session.changes == 2
        fresh.cancel()


async def test_a_trust_grant_to_us_refreshes_the_tools_at_once(pair: tuple[AsyncAgent, AsyncAgent]) -> None:
    me, bob = pair
    pin(me.store, bob.wallet)
    bridge, session = McpBridge(me, wait=10), Session()
    bridge._sessions.append(session)
    async with asyncio.TaskGroup() as group:
        fresh = group.create_task(bridge.keep_fresh(3600))  # no period passes in this test
        await asyncio.wait_for(session.changed.wait(), 10)
        assert "bob__secret" not in await names(bridge)
        session.changed.clear()
        assert await me.request_trust(bob.wallet, TrustTier.INTERNAL) == "pending"
        await bob.approve_trust(me.wallet)  # bob tells us: trust.grant
        await asyncio.wait_for(session.changed.wait(), 10)
        assert "bob__secret" in await names(bridge)
        fresh.cancel()


async def test_our_set_trust_of_a_peer_makes_the_bridge_discover_the_pinned_peers_again(
        pair: tuple[AsyncAgent, AsyncAgent]) -> None:
    me, bob = pair
    pin(me.store, bob.wallet)
    backend = CountingBackend(me)
    bridge = McpBridge(backend, wait=10)
    async with asyncio.TaskGroup() as group:
        fresh = group.create_task(bridge.keep_fresh(3600))
        await asyncio.wait_for(backend.reached(1), 10)
        me.set_trust(bob.wallet, TrustTier.KNOWN)
        await asyncio.wait_for(backend.reached(2), 10)  # at once: the period is an hour
        fresh.cancel()


async def test_a_local_task_is_stored_and_found_again_by_a_new_mcp_process(tmp_path: Path) -> None:
    from coworker.agent.owner_tasks import OwnerTasks

    agent = AsyncAgent("me", network=MemoryNetwork(), data_dir=tmp_path / "me")
    release = asyncio.Event()

    @agent.skill()
    async def slow(text: str) -> str:
        await release.wait()
        return text.upper()

    async with agent:
        tasks = OwnerTasks(agent)
        task_id = tasks.run_skill("slow", {"text": "hi"})
        assert agent.get_result(task_id)["state"] == "working"  # stored before it ran
        release.set()
        assert (await tasks.state(task_id, wait=10))["state"] == "completed"
        again = await OwnerTasks(agent).state(task_id)  # what a new MCP process sees
        assert (again["state"], again["result"]) == ("completed", "HI")
        assert agent.stats()["outbox"]["payloads_sent"] == 0  # nothing of it went anywhere
    agent.close()


async def test_a_local_task_the_agent_was_running_when_it_stopped_runs_again_when_it_starts(tmp_path: Path) -> None:
    from coworker.agent.owner_tasks import OwnerTasks

    net, attempts = MemoryNetwork(), []
    first = AsyncAgent("me", network=net, data_dir=tmp_path / "me")
    never = asyncio.Event()

    @first.skill("work")
    async def stuck(text: str) -> str:
        await never.wait()
        return text

    async with first:
        task_id = OwnerTasks(first).run_skill("work", {"text": "again"})
    first.close()

    second = AsyncAgent("me", network=net, data_dir=tmp_path / "me")

    @second.skill("work")
    def work(text: str, ctx: CallContext) -> str:
        attempts.append(ctx.attempt)
        return text.upper()

    async with second:
        runtime = second._runtime
        assert runtime is not None
        await runtime._link.tasks.idle(10)  # the resumed task ran, and its outcome is stored
        result = second.get_result(task_id)
        assert (result["state"], result["result"], attempts) == ("completed", "AGAIN", [2])
        assert second.stats()["outbox"]["payloads_sent"] == 0  # its answer was to the agent itself: not sent
    second.close()


async def test_a_host_of_the_newest_protocol_era_hears_of_a_changed_tool_list_on_its_listen_stream(
        pair: tuple[AsyncAgent, AsyncAgent]) -> None:
    # Hosts on MCP 2026-07-28 get no unsolicited notification: they open subscriptions/listen and the change
    # comes on it (the legacy-era sessions get notifications/tools/list_changed, tested above).
    from mcp import Client
    from mcp.shared.subscriptions import ToolsListChanged

    me, bob = pair
    bridge = McpBridge(me, peers=[bob.wallet], wait=10)
    async with Client(bridge.server) as client, client.listen(tools_list_changed=True) as events:
        assert events.honored.tools_list_changed
        assert "bob__echo" not in [t.name for t in (await client.list_tools()).tools]
        await bridge.connect_pinned()  # bob's skills become tools: the list changed
        await bridge._changed()
        event = await asyncio.wait_for(anext(events), 10)
        assert isinstance(event, ToolsListChanged)
        assert "bob__echo" in [t.name for t in (await client.list_tools()).tools]
