"""An MCP server's tools served as skills (add_mcp_server): small servers written here with the official MCP SDK,
run over stdio by the agent or served over streamable HTTP on 127.0.0.1 in the test's own loop: schemas, results,
progress, errors, cancellation, a tool set that changes, a server that dies and comes back, and trust tiers over
the devnet."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp.server.mcpserver import Context, MCPServer

from coworker import (
    AsyncAgent,
    CallContext,
    ConfigurationError,
    MemoryNetwork,
    SkillFailed,
    SkillNotFound,
    TaskCanceled,
    TrustTier,
)
from coworker.agent.mcp_client import McpServerLink, parse_target, skill_name, tool_output
from coworker.core.tasks import Progress
from coworker.devnet import DevnetServer
from coworker.transports.xmtp.transport import XmtpNetwork

SERVER = """\
    import asyncio, os, sys
    from pathlib import Path
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    Path(sys.argv[1]).write_text(str(os.getpid()))  # the test kills it by this pid
    server = MCPServer("test-tools")

    @server.tool(description="Add two numbers, reporting progress on the way.")
    async def add(a: int, b: int, ctx: Context) -> dict[str, int]:
        await ctx.report_progress(1, 2, "half way")
        await ctx.report_progress(2, 2, "done")
        return {"sum": a + b}

    @server.tool(description="Always fails.")
    def explode(where: str) -> str:
        raise ToolError(f"cannot open /home/owner/secret/{where}.txt")  # its text goes to the client

    server.run()
"""


def write_server(tmp_path: Path) -> tuple[list[str], Path]:
    """The server's argv (this interpreter runs it) and the file it writes its pid to."""
    script = tmp_path / "tools_server.py"
    script.write_text(textwrap.dedent(SERVER))
    pid_file = tmp_path / "server.pid"
    return [sys.executable, str(script), str(pid_file)], pid_file


def ctx() -> CallContext:
    return CallContext(caller="0x" + "1" * 40, trust_tier=TrustTier.INTERNAL, call_id="t", skill="s")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[AsyncAgent, AsyncAgent, McpServerLink, Path]]:
    """Alice serves the test MCP server with prefix "tools" and trusts Bob at INTERNAL, on the in-memory network."""
    network = MemoryNetwork()
    argv, pid_file = write_server(tmp_path)
    alice = AsyncAgent("alice", network=network, data_dir=tmp_path / "alice")
    bob = AsyncAgent("bob", network=network, data_dir=tmp_path / "bob")
    link = alice.add_mcp_server(argv, prefix="tools")
    alice.set_trust(bob.wallet, TrustTier.INTERNAL)
    await alice.start()
    await bob.start()
    yield alice, bob, link, pid_file
    await bob.stop()
    await alice.stop()
    alice.close()
    bob.close()


async def test_the_tools_become_skills_with_the_tools_input_schemas(served: Any) -> None:
    alice, _, link, _ = served
    assert link.skill_names == {"tools__add", "tools__explode"}
    add = alice.skills["tools__add"]
    assert add.min_trust_tier == TrustTier.INTERNAL and not alice.skill_hidden("tools__add")
    assert add.description == "Add two numbers, reporting progress on the way."
    assert add.input_schema["properties"].keys() == {"a", "b"}
    assert add.input_schema["required"] == ["a", "b"]
    assert add.input_schema["properties"]["a"]["type"] == "integer"


async def test_an_internal_peer_gets_the_result_and_the_tools_progress(served: Any) -> None:
    alice, bob, _, _ = served
    reports: list[Progress] = []
    result = await bob.call(alice.wallet, "tools__add", {"a": 2, "b": 3}, timeout=30, on_progress=reports.append)
    assert result == {"sum": 5}
    messages = [r.message for r in reports]
    assert "half way" in messages or "done" in messages  # reports are coalesced to a few a second
    assert all(r.progress in (0.5, 1.0) for r in reports if r.message in ("half way", "done"))


async def test_input_breaking_the_tools_schema_never_reaches_the_server(served: Any) -> None:
    from coworker import InvalidInput

    alice, bob, _, _ = served
    with pytest.raises(InvalidInput) as caught:
        await bob.call(alice.wallet, "tools__add", {"a": "two", "b": 3}, timeout=30)
    assert caught.value.path == "a"


async def test_a_tool_error_is_skill_failed_with_its_text_paths_blanked(served: Any) -> None:
    alice, bob, _, _ = served
    with pytest.raises(SkillFailed) as caught:
        await bob.call(alice.wallet, "tools__explode", {"where": "x"}, timeout=30)
    assert "cannot open <path>" in str(caught.value) and "/home/owner" not in str(caught.value)


async def test_a_killed_server_fails_the_next_call_clearly_and_is_restarted(served: Any) -> None:
    alice, bob, link, pid_file = served
    gate = asyncio.Event()

    async def held(delay: float) -> None:  # the restart waits for the test, not for a clock
        await gate.wait()

    link._pause = held
    first_pid = int(pid_file.read_text())
    os.kill(first_pid, signal.SIGKILL)
    with pytest.raises(SkillFailed) as caught:
        await bob.call(alice.wallet, "tools__add", {"a": 1, "b": 1}, timeout=30)
    assert str(caught.value) == "the MCP server tools is not running; restarting"  # no command line: peers see it
    gate.set()
    await asyncio.wait_for(link.ready.wait(), 30)
    assert await bob.call(alice.wallet, "tools__add", {"a": 1, "b": 1}, timeout=30) == {"sum": 2}
    assert int(pid_file.read_text()) != first_pid and link.restarts == 1


async def test_the_server_stops_with_the_agent(tmp_path: Path) -> None:
    argv, pid_file = write_server(tmp_path)
    agent = AsyncAgent("alice", network=MemoryNetwork(), data_dir=tmp_path / "alice")
    link = agent.add_mcp_server(argv)
    await agent.start()
    pid = int(pid_file.read_text())
    assert sorted(link.skill_names) == ["add", "explode"]
    await agent.stop()
    agent.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stdio_client waited for it to exit
    with pytest.raises(SkillFailed, match="not running"):
        await link.call("add", {"a": 1, "b": 2}, ctx())


async def test_a_server_that_does_not_start_fails_start_clearly_and_releases_the_agent(tmp_path: Path) -> None:
    agent = AsyncAgent("alice", network=MemoryNetwork(), data_dir=tmp_path / "alice")
    agent.add_mcp_server([sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(ConfigurationError, match="did not start"):
        await agent.start()
    assert not agent.running
    agent.close()


async def test_a_tool_named_like_a_registered_skill_is_refused_at_start(tmp_path: Path) -> None:
    argv, _ = write_server(tmp_path)
    agent = AsyncAgent("alice", network=MemoryNetwork(), data_dir=tmp_path / "alice")

    @agent.skill()
    def add(a: int, b: int) -> int:
        return a + b

    agent.add_mcp_server(argv)
    with pytest.raises(ConfigurationError, match=r"pass add_mcp_server\(prefix=\.\.\.\)"):
        await agent.start()
    assert not agent.running
    agent.close()


def test_commands_urls_names_and_results() -> None:
    assert parse_target("npx -y '@scope/my server'") == ("stdio", ["npx", "-y", "@scope/my server"])
    assert parse_target("http://127.0.0.1:8000/mcp") == ("http", ["http://127.0.0.1:8000/mcp"])
    assert parse_target("https://tools.example/mcp")[0] == "http"
    with pytest.raises(ConfigurationError, match="in clear"):
        parse_target("http://tools.example/mcp")
    with pytest.raises(ConfigurationError):
        parse_target("  ")
    assert skill_name(None, "get weather/now") == "get_weather_now"
    assert skill_name("gh", "1st") == "gh___1st"
    with pytest.raises(ConfigurationError):
        skill_name("bad prefix", "x")
    image = {"type": "image", "data": "AAAA", "mimeType": "image/png"}
    assert tool_output({"content": [{"type": "text", "text": "a"}, image]}) == "a\n[image/png image omitted]"
    assert tool_output({"content": [], "structuredContent": {"x": 1}}) == {"x": 1}
    with pytest.raises(SkillFailed, match="boom"):
        tool_output({"content": [{"type": "text", "text": "boom"}], "isError": True})


async def test_over_xmtp_an_internal_peer_calls_the_tool_and_a_known_one_cannot_see_it(
        xmtp_node: DevnetServer, tmp_path: Path) -> None:
    argv, _ = write_server(tmp_path)
    alice = AsyncAgent("alice", network=XmtpNetwork("local"), data_dir=tmp_path / "alice")
    bob = AsyncAgent("bob", network=XmtpNetwork("local"), data_dir=tmp_path / "bob")
    carol = AsyncAgent("carol", network=XmtpNetwork("local"), data_dir=tmp_path / "carol")
    alice.add_mcp_server(argv, prefix="tools")
    alice.set_trust(bob.wallet, TrustTier.INTERNAL)
    alice.set_trust(carol.wallet, TrustTier.KNOWN)
    await alice.start()
    await bob.start()
    await carol.start()
    try:
        assert await bob.call(alice.wallet, "tools__add", {"a": 20, "b": 22}, timeout=60) == {"sum": 42}
        assert "tools__add" in (await bob.connect(alice.wallet, timeout=60)).skills
        assert (await carol.connect(alice.wallet, timeout=60)).skills == []
        with pytest.raises(SkillNotFound):
            await carol.call(alice.wallet, "tools__add", {"a": 1, "b": 2}, timeout=60)
    finally:
        await carol.stop()
        await bob.stop()
        await alice.stop()
        for agent in (alice, bob, carol):
            agent.close()


def test_coworker_serve_mcp_server_serves_the_tools_through_the_blocking_agent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shlex

    from coworker import Agent
    from coworker.cli.main import build_parser
    from coworker.cli.network import _add_mcp_servers

    argv, _ = write_server(tmp_path)
    command = shlex.join(argv)
    args = build_parser().parse_args(["serve", "--mcp-server", command, "--mcp-server", "http://127.0.0.1:1/mcp"])
    assert args.mcp_server == [command, "http://127.0.0.1:1/mcp"]
    agent = Agent("alice", network=MemoryNetwork(), data_dir=tmp_path / "alice")
    _add_mcp_servers(agent, [command])
    assert "MCP servers: 1" in capsys.readouterr().err
    agent.start()
    try:
        assert {"add", "explode"} <= agent.skills.keys()
        assert agent.skills["add"].min_trust_tier == TrustTier.INTERNAL
    finally:
        agent.stop()
        agent.close()


# ---- streamable HTTP, cancellation ---------------------------------------------------------------------------


def http_tools(started: asyncio.Event, cancelled: asyncio.Event) -> MCPServer:
    """A server run in the test's loop: ``hold`` sets ``started``, then waits until it is cancelled and sets
    ``cancelled`` (what the server saw)."""
    server = MCPServer("http-tools")

    @server.tool(description="Add two numbers, reporting progress on the way.")
    async def add(a: int, b: int, ctx: Context) -> dict[str, int]:
        await ctx.report_progress(1, 2, "half way")
        return {"sum": a + b}

    @server.tool(description="Hold until cancelled.")
    async def hold(ctx: Context) -> str:
        await ctx.report_progress(0, 1, "holding")
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    return server


@contextlib.asynccontextmanager
async def serving_http(server: MCPServer) -> AsyncIterator[str]:
    """Serve ``server`` over streamable HTTP on a free port of 127.0.0.1 and yield its URL. The socket listens
    before uvicorn starts, so a client may connect at once (the connection waits in the backlog)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(server.streamable_http_app(), log_level="warning"))
    task = asyncio.create_task(web.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        web.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), 10)
        except TimeoutError:
            web.force_exit = True
            await asyncio.wait_for(task, 10)
        sock.close()


@pytest.fixture
async def served_over_http(tmp_path: Path) -> AsyncIterator[tuple[AsyncAgent, AsyncAgent, asyncio.Event,
                                                                   asyncio.Event]]:
    """Alice serves the HTTP server's tools with prefix "web" to Bob (INTERNAL); yields the events of ``hold``."""
    started, cancelled = asyncio.Event(), asyncio.Event()
    async with serving_http(http_tools(started, cancelled)) as url:
        network = MemoryNetwork()
        alice = AsyncAgent("alice", network=network, data_dir=tmp_path / "alice")
        bob = AsyncAgent("bob", network=network, data_dir=tmp_path / "bob")
        link = alice.add_mcp_server(url, prefix="web")
        assert link.kind == "http"
        alice.set_trust(bob.wallet, TrustTier.INTERNAL)
        await alice.start()
        await bob.start()
        try:
            yield alice, bob, started, cancelled
        finally:
            await bob.stop()
            await alice.stop()
            alice.close()
            bob.close()


async def test_over_streamable_http_a_peer_gets_the_tools_result_and_progress(served_over_http: Any) -> None:
    alice, bob, _, _ = served_over_http
    assert {"web__add", "web__hold"} <= alice.skills.keys()
    reports: list[Progress] = []
    result = await bob.call(alice.wallet, "web__add", {"a": 2, "b": 40}, timeout=30, on_progress=reports.append)
    assert result == {"sum": 42}
    assert [(r.progress, r.message) for r in reports if r.message == "half way"] == [(0.5, "half way")]


async def test_a_peer_cancelling_its_task_cancels_the_running_tool_at_the_server(served_over_http: Any) -> None:
    alice, bob, started, cancelled = served_over_http
    task_id = await bob.request(alice.wallet, "web__hold", timeout=30)
    await asyncio.wait_for(started.wait(), 30)
    assert await bob.cancel(task_id)
    with pytest.raises(TaskCanceled):
        await bob.wait(task_id, timeout=30)
    await asyncio.wait_for(cancelled.wait(), 30)  # the SDK sent notifications/cancelled; the server applied it
    assert alice.get_result(task_id)["state"] == bob.get_result(task_id)["state"] == "canceled"
    assert await bob.call(alice.wallet, "web__add", {"a": 1, "b": 1}, timeout=30) == {"sum": 2}  # still up


def test_a_plain_http_url_of_another_machine_is_refused_when_added(tmp_path: Path) -> None:
    agent = AsyncAgent("alice", network=MemoryNetwork(), data_dir=tmp_path / "alice")
    try:
        with pytest.raises(ConfigurationError, match="in clear"):
            agent.add_mcp_server("http://192.0.2.7:8000/mcp")
        with pytest.raises(ConfigurationError, match="in clear"):
            agent.add_mcp_server("http://tools.example/mcp")
        assert agent.add_mcp_server("https://tools.example/mcp").kind == "http"  # not started: never reached
        assert agent.add_mcp_server("http://[::1]:8000/mcp").kind == "http"
    finally:
        agent.close()


# ---- a tool set that changes ----------------------------------------------------------------------------------

CHANGING_SERVER = """\
    import json, os, sys
    from pathlib import Path
    from mcp.server.mcpserver import Context, MCPServer

    tools_file, pid_file = Path(sys.argv[1]), Path(sys.argv[2])
    pid_file.write_text(str(os.getpid()))
    server = MCPServer("changing-tools")

    def echo(text: str) -> str:
        return text

    def shout(text: str) -> str:
        return text.upper()

    def repeat(text: str, times: int) -> str:
        return text * times

    KINDS = {"echo": echo, "shout": shout, "repeat": repeat}
    current = json.loads(tools_file.read_text())  # {tool name: kind}
    for name, kind in current.items():
        server.add_tool(KINDS[kind], name=name, description=kind)

    @server.tool(description="Replace the tools by {name: kind} and say so (tools/list_changed).")
    async def set_tools(tools: dict[str, str], ctx: Context) -> str:
        for name in current:
            server.remove_tool(name)
        current.clear()
        current.update(tools)
        for name, kind in tools.items():
            server.add_tool(KINDS[kind], name=name, description=kind)
        tools_file.write_text(json.dumps(tools))
        await ctx.session.send_tool_list_changed()
        return "changed"

    server.run()
"""


@pytest.fixture
async def changing(tmp_path: Path) -> AsyncIterator[tuple[AsyncAgent, AsyncAgent, McpServerLink, Path, Path]]:
    """Alice serves CHANGING_SERVER (prefix "tools"; echo and loud=shout at first) to Bob (INTERNAL)."""
    script, tools_file, pid_file = tmp_path / "changing.py", tmp_path / "tools.json", tmp_path / "changing.pid"
    script.write_text(textwrap.dedent(CHANGING_SERVER))
    tools_file.write_text(json.dumps({"echo": "echo", "loud": "shout"}))
    network = MemoryNetwork()
    alice = AsyncAgent("alice", network=network, data_dir=tmp_path / "alice")
    bob = AsyncAgent("bob", network=network, data_dir=tmp_path / "bob")
    link = alice.add_mcp_server([sys.executable, str(script), str(tools_file), str(pid_file)], prefix="tools")
    alice.set_trust(bob.wallet, TrustTier.INTERNAL)
    await alice.start()
    await bob.start()
    try:
        yield alice, bob, link, tools_file, pid_file
    finally:
        await bob.stop()
        await alice.stop()
        alice.close()
        bob.close()


async def test_when_the_server_says_its_tools_changed_the_skills_are_added_changed_and_removed(
        changing: Any) -> None:
    alice, bob, link, _, _ = changing
    assert link.skill_names == {"tools__echo", "tools__loud", "tools__set_tools"}
    assert await bob.call(alice.wallet, "tools__loud", {"text": "hi"}, timeout=30) == {"result": "HI"}

    link.listed.clear()
    new = {"echo": "echo", "loud": "repeat", "extra": "shout"}
    await bob.call(alice.wallet, "tools__set_tools", {"tools": new}, timeout=30)
    await asyncio.wait_for(link.listed.wait(), 30)
    assert link.skill_names == {"tools__echo", "tools__loud", "tools__extra", "tools__set_tools"}
    assert alice.skills["tools__loud"].input_schema["required"] == ["text", "times"]  # changed: the new schema
    assert await bob.call(alice.wallet, "tools__loud", {"text": "ab", "times": 2}, timeout=30) == {"result": "abab"}
    assert await bob.call(alice.wallet, "tools__extra", {"text": "x"}, timeout=30) == {"result": "X"}
    assert "tools__extra" in (await bob.connect(alice.wallet, timeout=30)).skills

    link.listed.clear()
    await bob.call(alice.wallet, "tools__set_tools", {"tools": {"echo": "echo"}}, timeout=30)
    await asyncio.wait_for(link.listed.wait(), 30)
    assert link.skill_names == {"tools__echo", "tools__set_tools"}
    assert not {"tools__loud", "tools__extra"} & alice.skills.keys()
    for gone in ("tools__loud", "tools__extra"):
        with pytest.raises(SkillNotFound):
            await bob.call(alice.wallet, gone, {"text": "x"}, timeout=30)
    assert "tools__extra" not in (await bob.connect(alice.wallet, timeout=30)).skills


async def test_a_tool_gone_after_a_restart_loses_its_skill(changing: Any) -> None:
    alice, bob, link, tools_file, pid_file = changing
    paused, gate = asyncio.Event(), asyncio.Event()

    async def held(delay: float) -> None:  # the restart waits for the test, not for a clock
        paused.set()
        await gate.wait()

    link._pause = held
    tools_file.write_text(json.dumps({"echo": "echo"}))  # what the server has when it starts again
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    await asyncio.wait_for(paused.wait(), 30)
    link.listed.clear()
    gate.set()
    await asyncio.wait_for(link.listed.wait(), 30)
    assert link.skill_names == {"tools__echo", "tools__set_tools"} and "tools__loud" not in alice.skills
    with pytest.raises(SkillNotFound):
        await bob.call(alice.wallet, "tools__loud", {"text": "x"}, timeout=30)
    assert await bob.call(alice.wallet, "tools__echo", {"text": "still"}, timeout=30) == {"result": "still"}


async def test_a_changed_list_naming_a_tool_like_a_registered_skill_is_refused_and_the_skills_stay(
        changing: Any) -> None:
    import logging

    alice, bob, link, _, _ = changing
    refused = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "new list of tools is refused" in record.getMessage():
                refused.set()

    def clash(text: str) -> str:
        return "mine"

    alice.add_skill(clash, name="tools__clash")
    watch = Watch()
    logging.getLogger("coworker.mcp").addHandler(watch)
    try:
        await bob.call(alice.wallet, "tools__set_tools", {"tools": {"clash": "echo"}}, timeout=30)
        await asyncio.wait_for(refused.wait(), 30)
    finally:
        logging.getLogger("coworker.mcp").removeHandler(watch)
    assert link.skill_names == {"tools__echo", "tools__loud", "tools__set_tools"}
    assert await bob.call(alice.wallet, "tools__clash", {"text": "x"}, timeout=30) == "mine"
