"""The control port under attack from another local process: what a connection may cost the agent is bounded.

The agent runs in a child process (an AsyncAgent on a MemoryNetwork, serving its control port) so that its memory
can be measured and a crash would show as its exit, not as pytest's; the bounds themselves are also checked
in-process with small limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, MemoryNetwork
from coworker._errors import LocalProtocolError
from coworker.agent.control import CONTROL_FILE, MAX_REQUEST_BYTES, ControlClient, ControlServer

AGENT = """
import asyncio, sys
from coworker import AsyncAgent, MemoryNetwork

async def main() -> None:
    agent = AsyncAgent("target", network=MemoryNetwork(), data_dir=sys.argv[1])
    await agent.start()
    print("ready", flush=True)
    await agent.serve()

asyncio.run(main())
"""
MB = 1024 * 1024


class AgentProcess:
    def __init__(self, process: subprocess.Popen[str], data_dir: Path) -> None:
        self.process = process
        self.pid = process.pid
        info = json.loads((data_dir / CONTROL_FILE).read_text())
        self.port: int = info["port"]
        self.token: str = info["token"]
        client = ControlClient.find(data_dir)
        assert client is not None
        self.client = client

    def megabytes(self, field: str) -> float:
        """VmRSS (resident now) or VmHWM (the peak) of the agent process, in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")

    def ask(self, line: bytes) -> dict[str, Any]:
        """Send one raw line on a fresh connection and return the agent's answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(line)
            with sock.makefile("rb") as stream:
                answer = stream.readline()
        assert answer, f"the agent closed the connection without an answer (exit status {self.process.poll()})"
        reply: dict[str, Any] = json.loads(answer)
        return reply


@pytest.fixture
def agent_process(tmp_path: Path) -> Iterator[AgentProcess]:
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to measure the agent's memory")
    data_dir = tmp_path / "target"
    process = subprocess.Popen([sys.executable, "-c", AGENT, str(data_dir)], stdout=subprocess.PIPE,
                               env={**os.environ, "COWORKER_HOME": str(tmp_path)}, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        agent = AgentProcess(process, data_dir)
        yield agent
        if process.poll() is None:
            agent.client.request("stop", 30)
            process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        if process.stdout is not None:
            process.stdout.close()


def closed_by_peer(sock: socket.socket, bound: float = 30.0) -> bool:
    """Whether the agent closes this connection (reading and dropping whatever it answered first)."""
    sock.settimeout(bound)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset: the agent closed with our bytes unread
        return True
    return True


def test_many_connections_with_long_unterminated_lines_leave_the_agents_memory_bounded(
        agent_process: AgentProcess) -> None:
    before = agent_process.megabytes("VmRSS")
    line = b"A" * int(3.9 * MB)  # no newline: the old port buffered each whole, up to 4 MB a connection
    connections = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", agent_process.port), timeout=60)
            connections.append(sock)
            with contextlib.suppress(OSError):  # the agent closed it: over the line limit, or too many connections
                sock.sendall(line)
        peak = agent_process.megabytes("VmHWM")
        assert peak - before < 100, f"RSS {before:.0f} MB before, peak {peak:.0f} MB after 200 x 3.9 MB"
        assert all(closed_by_peer(sock) for sock in connections)
    finally:
        for sock in connections:
            sock.close()
    assert agent_process.client.request("status")["name"] == "target"


@pytest.mark.parametrize("token", ["\u00fc" * 43, "\u2603", 5, None, ["x"], {"token": "x"}])
def test_a_token_that_is_not_ascii_or_not_a_string_is_a_wrong_token_and_the_agent_keeps_serving(
        agent_process: AgentProcess, token: Any) -> None:
    line = json.dumps({"token": token, "cmd": "status", "args": {}}).encode() + b"\n"
    assert agent_process.ask(line)["error"]["message"] == "wrong control token"
    assert agent_process.client.request("status")["name"] == "target"


def test_a_deeply_nested_request_line_is_refused_without_crashing_the_agent(agent_process: AgentProcess) -> None:
    reply = agent_process.ask(b"[" * 500_000 + b"\n")  # json.loads overflows the C stack on this
    assert reply["ok"] is False and "JSON object" in reply["error"]["message"]
    assert agent_process.client.request("status")["name"] == "target"


# ---- the bounds, in-process with small limits -----------------------------------------------------------------


@pytest.fixture
async def idle_agent(tmp_path: Path) -> AsyncIterator[AsyncAgent]:
    agent = AsyncAgent("idle", network=MemoryNetwork(), data_dir=tmp_path / "idle")
    yield agent
    agent.close()


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the agent closes the connection (within a bound), reading what it answered first."""
    with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread
        await asyncio.wait_for(reader.read(), 10)
    return True


async def serving(agent: AsyncAgent, **limits: Any) -> tuple[ControlServer, int, str]:
    server = ControlServer(agent, on_stop=lambda: None, **limits)
    await server.start()
    info = json.loads((agent.data_dir / CONTROL_FILE).read_text())
    return server, info["port"], info["token"]


async def test_a_connection_that_sends_half_a_line_is_closed_after_the_read_timeout(idle_agent: AsyncAgent) -> None:
    server, port, _ = await serving(idle_agent, read_timeout=0.05)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b'{"token": "')
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the agent, without an answer
        writer.close()
    finally:
        await server.close()


async def test_connections_over_the_limit_are_told_the_port_is_busy_and_closed(idle_agent: AsyncAgent) -> None:
    server, port, token = await serving(idle_agent, max_connections=2)
    opened = []
    try:
        for _ in range(2):  # each answered once, so the agent counts it, and kept open
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened.append(writer)
            writer.write(json.dumps({"token": token, "cmd": "status"}).encode() + b"\n")
            assert json.loads(await asyncio.wait_for(reader.readline(), 10))["ok"] is True
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened.append(writer)
        busy = json.loads(await asyncio.wait_for(reader.readline(), 10))
        assert busy["error"]["type"] == "TransportError" and "busy" in busy["error"]["message"]
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        for writer in opened:
            writer.close()
        await server.close()


async def test_a_line_over_the_limit_closes_the_connection(idle_agent: AsyncAgent) -> None:
    server, port, _ = await serving(idle_agent)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"A" * (1024 * 1024 + 1))  # 1 MiB: the longest line the CLI needs (see MAX_REQUEST_BYTES)
        assert await closed(reader)
        writer.close()
    finally:
        await server.close()


async def test_a_request_as_big_as_a_network_message_fits_even_when_it_is_not_ascii(idle_agent: AsyncAgent) -> None:
    server, _, _ = await serving(idle_agent)
    client = ControlClient.find(idle_agent.data_dir)
    assert client is not None
    try:
        # 980,000 bytes of UTF-8; escaped as \\u00e9 it would be 2.9 MB, over the limit
        status = await asyncio.to_thread(client.request, "status", 30, padding="\u00e9" * 490_000)
        assert status["name"] == "idle"
        with pytest.raises(LocalProtocolError, match="over its control port's limit"):
            client.request("call", wallet=idle_agent.wallet, skill="echo", input={"text": "x" * MAX_REQUEST_BYTES})
    finally:
        await server.close()
