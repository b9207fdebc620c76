"""``coworker mcp`` driven by the official MCP client, over stdio and streamable HTTP.

The MCP server runs as ``coworker mcp ME.py`` in its own process (agent "me" with code skills); the peer runs
as ``coworker serve ALICE.py`` in another (see :mod:`tests.test_xmtp_processes`); both meet over XMTP through
the devnet.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from coworker import AsyncAgent
from coworker._process import read_line
from coworker.devnet import DevnetServer

from .test_xmtp_processes import ServedAgent, served_app

pytestmark = pytest.mark.integration

ME = '''
from coworker import Agent, CallContext

agent = Agent("me")


@agent.skill("shout", description="Upper-case a text", output_schema={
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
def shout(text: str) -> dict:
    return {"text": text.upper()}


@agent.skill("count")
def count(n: int, ctx: CallContext) -> int:
    for i in range(n):
        ctx.progress((i + 1) / n, f"step {i + 1}")
    return n
'''

ALICE = '''
import asyncio
from pathlib import Path

from coworker import Agent, CallContext, TrustTier

RUNS = Path({runs!r})
agent = Agent("alice")


@agent.skill("summarize", description="Summarize text")
def summarize(text: str, max_words: int = 50) -> dict:
    words = text.split()
    return {{"summary": " ".join(words[:max_words]), "word_count": len(words)}}


@agent.skill("slow")
async def slow(seconds: float, ctx: CallContext) -> str:
    ctx.progress(0.5, "half way")
    await asyncio.sleep(seconds)  # simulated work: a skill that runs longer than the MCP wait
    return "done"


@agent.skill(min_trust_tier=TrustTier.INTERNAL)
def secret() -> str:
    return "the secret"


@agent.skill("private")
def private() -> str:
    return "hidden"


agent.hide_skill("private")
'''


@pytest.fixture
def alice(xmtp_node: DevnetServer, home: Path, tmp_path: Path) -> Iterator[ServedAgent]:
    yield from served_app(ALICE, "alice", home, tmp_path)


@pytest.fixture
async def me(alice: ServedAgent, tmp_path: Path) -> tuple[Path, str, str]:
    """The MCP agent's app file, its wallet and alice's wallet; alice trusts it at KNOWN."""
    agent = AsyncAgent("me")
    wallet = agent.wallet
    agent.close()
    alice_wallet = (await alice.ask("status"))["wallet"]
    await alice.ask("set_trust", wallet=wallet, tier=1)
    app = tmp_path / "me_app.py"
    app.write_text(ME)
    return app, wallet, alice_wallet


class Watcher:
    """What the server sent besides answers: tools/list_changed."""

    def __init__(self) -> None:
        self.tools_changed = asyncio.Event()

    async def __call__(self, message: Any) -> None:
        root = getattr(message, "root", message)
        if isinstance(root, types.ToolListChangedNotification):
            self.tools_changed.set()


async def tool_names(client: Client, watcher: Watcher, wanted: str) -> list[str]:
    """The tool names once ``wanted`` is among them (the pinned peer is discovered in the background)."""
    names = [t.name for t in (await client.list_tools()).tools]
    if wanted not in names:
        await asyncio.wait_for(watcher.tools_changed.wait(), 60)
        names = [t.name for t in (await client.list_tools()).tools]
    return names


@asynccontextmanager
async def stdio_client(app: Path | None, *extra: str) -> AsyncIterator[tuple[Client, Watcher]]:
    """``coworker mcp [APP] EXTRA...`` as an MCP host starts it."""
    watcher = Watcher()
    where = [str(app)] if app is not None else []
    params = StdioServerParameters(command=sys.executable, args=["-m", "coworker", "mcp", *where, *extra],
                                   env=dict(os.environ))
    async with Client(params, mode="legacy", message_handler=watcher, read_timeout_seconds=90) as client:
        yield client, watcher


async def exercise(client: Client, watcher: Watcher) -> str:
    """What an MCP host does with ``coworker mcp --peer ALICE --wait 2``, over any transport: list the tools (no
    above-tier or hidden one of alice's), call a local skill, with progress, call alice's skill, call one that
    outlives the wait (a task id, then its result from the task tool), and get an error without a traceback.
    Returns the long call's task id."""
    names = await tool_names(client, watcher, "alice__summarize")
    assert {"peers", "connect", "call", "task", "cancel", "request_trust", "shout", "count",
            "alice__summarize", "alice__slow"} <= set(names)
    assert not {"alice__secret", "alice__private"} & set(names)  # above our tier, hidden: never tools

    local = await client.call_tool("shout", {"text": "hi"})
    assert not local.is_error and local.structured_content == {"text": "HI"}

    reports: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, message))

    counted = await client.call_tool("count", {"n": 3}, progress_callback=on_progress)
    assert counted.structured_content == {"result": 3}
    assert reports and reports[-1] == (1.0, "step 3")  # reports may be coalesced, the last one arrives

    remote = await client.call_tool("alice__summarize", {"text": "a b c", "max_words": 2})
    assert not remote.is_error and remote.structured_content == {"summary": "a b", "word_count": 3}

    reports.clear()
    pending = await client.call_tool("alice__slow", {"seconds": 4}, progress_callback=on_progress)
    assert not pending.is_error and pending.structured_content is not None
    assert pending.structured_content["state"] in ("submitted", "working")
    assert ("half way" in [m for _, m in reports])
    task_id: str = pending.structured_content["task_id"]
    for _ in range(15):  # each waits for the task's end up to the MCP wait (2 s here)
        fetched = await client.call_tool("task", {"task_id": task_id, "wait": 30})
        if '"working"' not in fetched.content[0].text:
            break
    assert '"completed"' in fetched.content[0].text and '"done"' in fetched.content[0].text

    missing = await client.call_tool("alice__summarize", {"max_words": 2})
    assert missing.is_error and missing.content[0].text.startswith("INVALID_INPUT:")
    assert "Traceback" not in missing.content[0].text
    return task_id


async def test_stdio_lists_and_calls_local_and_peer_skills_with_progress_and_long_calls(
        me: tuple[Path, str, str], alice: ServedAgent) -> None:
    app, _, alice_wallet = me
    async with stdio_client(app, "--peer", alice_wallet, "--wait", "2") as (client, watcher):
        task_id = await exercise(client, watcher)

    async with stdio_client(app, "--wait", "2") as (client, _):  # a new MCP process finds the stored task
        again = await client.call_tool("task", {"task_id": task_id})
        assert '"completed"' in again.content[0].text and '"done"' in again.content[0].text


async def cancel_a_slow_call(client: Any) -> None:
    """Start alice's slow skill through MCP, cancel the call once it runs at alice, and check the session goes on
    (a call made after the cancel is answered: the cancel went before it)."""
    started = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    call = asyncio.create_task(client.call_tool("alice__slow", {"seconds": 3600}, progress_callback=on_progress))
    await asyncio.wait_for(started.wait(), 30)  # running at the peer
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    after = await client.call_tool("alice__summarize", {"text": "x"})
    assert not after.is_error

async def test_canceling_an_mcp_call_cancels_the_task_at_the_peer(
        me: tuple[Path, str, str], alice: ServedAgent) -> None:
    app, _, alice_wallet = me
    async with stdio_client(app, "--peer", alice_wallet, "--wait", "40") as (client, watcher):
        await tool_names(client, watcher, "alice__slow")
        await cancel_a_slow_call(client)
    await alice.stop()
    stopped = AsyncAgent("alice", passphrase="")
    try:
        served = [t for t in stopped.list_tasks(direction="in") if t["skill"] == "slow"]
        assert [t["state"] for t in served] == ["canceled"]
    finally:
        stopped.close()


def spawn(app: Path, *args: str) -> subprocess.Popen[bytes]:
    """``coworker mcp APP ARGS...`` with its stderr on a pipe."""
    return subprocess.Popen([sys.executable, "-m", "coworker", "mcp", str(app), *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def test_http_needs_the_bearer_token_and_serves_the_tools(me: tuple[Path, str, str],
                                                                 alice: ServedAgent) -> None:
    app, _, alice_wallet = me
    process = spawn(app, "--http", "0", "--peer", alice_wallet)
    try:
        assert process.stderr is not None
        line = await asyncio.to_thread(read_line, process.stderr.fileno(), 60)
        assert "http://127.0.0.1:" in line, line
        url = line.split()[-1]
        token = (app.parent / "home" / "agents" / "me" / "mcp_token").read_text()
        assert (app.parent / "home" / "agents" / "me" / "mcp_token").stat().st_mode & 0o077 == 0

        async with httpx.AsyncClient() as plain:
            refused = await plain.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            assert refused.status_code == 401
            rebinding = await plain.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                         headers={"Authorization": f"Bearer {token}", "Host": "evil.example"})
            assert rebinding.status_code in (403, 421)

        import httpx2
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http, \
                Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert "shout" in names and "call" in names
            shouted = await client.call_tool("shout", {"text": "ok"})
            assert shouted.structured_content == {"text": "OK"}
            called = await client.call_tool("call", {"wallet": alice_wallet, "skill": "summarize",
                                                     "input": {"text": "one two"}})
            assert not called.is_error and '"word_count": 2' in called.content[0].text
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture
def served_me(me: tuple[Path, str, str], home: Path, tmp_path: Path) -> Iterator[ServedAgent]:
    """Agent "me" (ME's skills) already running as ``coworker serve`` in its own process."""
    (tmp_path / "served").mkdir()
    yield from served_app(ME.replace("{", "{{").replace("}", "}}"), "me", home, tmp_path / "served")


async def test_coworker_mcp_drives_an_agent_already_running_through_its_control_port(
        me: tuple[Path, str, str], alice: ServedAgent, served_me: ServedAgent) -> None:
    _, wallet, alice_wallet = me
    async with stdio_client(None, "--agent", "me", "--peer", alice_wallet, "--wait", "40") as (client, watcher):
        names = await tool_names(client, watcher, "alice__summarize")
        assert {"peers", "call", "task", "cancel", "shout", "count", "alice__summarize", "alice__slow"} <= set(names)
        assert not {"alice__secret", "alice__private"} & set(names)

        shouted = await client.call_tool("shout", {"text": "hi"})  # runs in the serving process
        assert not shouted.is_error and shouted.structured_content == {"text": "HI"}

        reports: list[tuple[float, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            reports.append((progress, message))

        counted = await client.call_tool("count", {"n": 3}, progress_callback=on_progress)
        assert counted.structured_content == {"result": 3}
        assert reports and reports[-1] == (1.0, "step 3")

        reports.clear()
        slow = await client.call_tool("alice__slow", {"seconds": 0.5}, progress_callback=on_progress)
        assert not slow.is_error and slow.structured_content == {"result": "done"}
        assert (0.5, "half way") in reports

        await cancel_a_slow_call(client)
    status = await served_me.ask("status")
    assert status["wallet"] == wallet  # the served agent went on serving all along
    await alice.stop()
    stopped = AsyncAgent("alice", passphrase="")
    try:
        served = [t["state"] for t in stopped.list_tasks(direction="in") if t["skill"] == "slow"]
        assert sorted(served) == ["canceled", "completed"]
    finally:
        stopped.close()


async def test_over_http_the_same_calls_progress_long_calls_and_cancellation(
        me: tuple[Path, str, str], alice: ServedAgent) -> None:
    app, _, alice_wallet = me
    process = spawn(app, "--http", "0", "--peer", alice_wallet, "--wait", "2")
    try:
        assert process.stderr is not None
        url = (await asyncio.to_thread(read_line, process.stderr.fileno(), 60)).split()[-1]
        token = (app.parent / "home" / "agents" / "me" / "mcp_token").read_text()
        import httpx2

        watcher = Watcher()
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http, \
                Client(streamable_http_client(url, http_client=http), mode="legacy", message_handler=watcher,
                       read_timeout_seconds=90) as client:
            await exercise(client, watcher)
            await cancel_a_slow_call(client)
    finally:
        process.terminate()
        process.wait(30)
    await alice.stop()
    stopped = AsyncAgent("alice", passphrase="")
    try:
        slow = [t for t in stopped.list_tasks(direction="in") if t["skill"] == "slow"]
        assert sorted(t["state"] for t in slow) == ["canceled", "completed"]  # the long call, the canceled one
    finally:
        stopped.close()
