"""A caller killed while its first DM with a peer is being created still reaches that peer afterwards.

The SDK creates a DM in steps: it stores the group locally, fetches the peer's key packages, publishes a commit
adding the peer, then sends the welcome that lets the peer join. Here the devnet holds one of those calls (before
or after storing it), the test SIGKILLs the caller's sidecar meanwhile, the transport restarts it and sends
again: the peer must receive that message and the next. Killed in the key fetch or before the commit was stored,
the caller was left with a DM holding only itself, and every later send went nowhere. And a transport closed
while a send is in flight answers that send before its sidecar exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from coworker.devnet import DevnetServer, _server
from coworker.store.identity import Identity
from coworker.transports.base import Incoming
from coworker.transports.xmtp.transport import XmtpNetwork, XmtpTransport

pytestmark = pytest.mark.integration

SEND_WELCOMES = f"/{_server._MLS}/SendWelcomeMessages"
BOUND = 60.0  # seconds any one step may take


class WelcomeGate:
    """Holds the devnet's next call of ``method`` (after storing it, with ``store_first``) until released; then
    fails it (the caller was killed meanwhile), or serves it (``serve_after``)."""

    def __init__(self, method: str = SEND_WELCOMES, store_first: bool = False, serve_after: bool = False) -> None:
        self.method, self.store_first, self.serve_after = method, store_first, serve_after
        self.original = _server._RPCS[method]
        self.held = threading.Event()
        self.calls = 0
        self._release: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _hold(self, server: DevnetServer, request: Any, context: Any) -> Any:
        self.calls += 1
        _server._RPCS[self.method] = self.original  # only the first call is held
        if self.store_first:
            await self.original.impl(server, request, context)
        self._loop = asyncio.get_running_loop()
        self._release = self._loop.create_future()
        self.held.set()
        await self._release
        if self.serve_after:
            return await self.original.impl(server, request, context)
        raise _server.RpcError(_server.grpc.StatusCode.UNAVAILABLE, "the welcome was lost")

    def arm(self) -> None:
        _server._RPCS[self.method] = _server._Rpc(self.original.request, self._hold)

    def release(self) -> None:
        loop, release = self._loop, self._release
        if loop is not None and release is not None:
            loop.call_soon_threadsafe(lambda: release.done() or release.set_result(None))

    def restore(self) -> None:
        _server._RPCS[self.method] = self.original
        self.release()


FETCH_KEYS = f"/{_server._MLS}/FetchKeyPackages"
# Where the caller is killed while it makes its first DM with the peer: in which call to the network, and whether
# the network had stored that call's data already. A kill in "keys" or "commit" left a DM without the peer.
GATES = {
    "welcome": (SEND_WELCOMES, False),
    "welcome-stored": (SEND_WELCOMES, True),
    "commit": (f"/{_server._MLS}/SendGroupMessages", False),
    "commit-stored": (f"/{_server._MLS}/SendGroupMessages", True),
    "query": (f"/{_server._MLS}/QueryGroupMessages", False),
    "keys": (FETCH_KEYS, False),
}


@pytest.fixture(params=sorted(GATES))
def gate(request: pytest.FixtureRequest) -> Iterator[WelcomeGate]:
    held = WelcomeGate(*GATES[request.param])
    yield held
    held.restore()


class Member:
    def __init__(self, transport: XmtpTransport, identity: Identity, inbox: asyncio.Queue[Incoming]) -> None:
        self.transport, self.identity, self.inbox = transport, identity, inbox

    async def receive(self) -> dict[str, Any]:
        incoming = await asyncio.wait_for(self.inbox.get(), BOUND)
        data: dict[str, Any] = json.loads(incoming.data)
        return data


@pytest.fixture
async def members(xmtp_node: DevnetServer, tmp_path: Path) -> AsyncIterator[list[Member]]:
    opened: list[Member] = []

    async def open_member(name: str) -> Member:
        identity = Identity.generate()
        inbox: asyncio.Queue[Incoming] = asyncio.Queue()
        transport = await XmtpNetwork("local").open(identity, tmp_path / name, inbox.put_nowait)
        assert isinstance(transport, XmtpTransport)
        member = Member(transport, identity, inbox)
        opened.append(member)
        return member

    await open_member("caller")
    await open_member("peer")
    yield opened
    for member in opened:
        await member.transport.close()


async def test_a_caller_killed_before_its_first_welcome_left_still_reaches_the_peer(
        members: list[Member], gate: WelcomeGate) -> None:
    caller, peer = members
    first_pid = caller.transport.pid
    assert first_pid is not None
    gate.arm()
    sending = asyncio.create_task(caller.transport.send(peer.identity.address, b'{"n": 1}'))
    assert await asyncio.to_thread(gate.held.wait, BOUND), "the caller never sent the DM's welcome"
    os.kill(first_pid, signal.SIGKILL)
    gate.release()
    await asyncio.wait_for(sending, BOUND)  # sent again by the restarted sidecar
    assert caller.transport.restarts == 1 and caller.transport.pid != first_pid
    assert await peer.receive() == {"n": 1}
    await asyncio.wait_for(caller.transport.send(peer.identity.address, b'{"n": 2}'), BOUND)
    assert await peer.receive() == {"n": 2}


async def test_closing_a_caller_answers_its_send_in_flight_before_the_sidecar_exits(
        members: list[Member], monkeypatch: pytest.MonkeyPatch) -> None:
    caller, peer = members
    transport = caller.transport
    closing = asyncio.Event()
    pending: list[int] = []
    seen = transport._event

    def watch(event: dict[str, Any], ready: asyncio.Future[None]) -> None:
        if event.get("event") == "closing":
            pending.append(int(event["pending"]))
            closing.set()
        seen(event, ready)

    monkeypatch.setattr(transport, "_event", watch)
    gate = WelcomeGate(FETCH_KEYS, serve_after=True)
    gate.arm()
    try:
        sending = asyncio.create_task(transport.send(peer.identity.address, b'{"n": 1}'))
        assert await asyncio.to_thread(gate.held.wait, BOUND), "the caller never fetched the peer's key packages"
        stopping = asyncio.create_task(transport.close())
        await asyncio.wait_for(closing.wait(), BOUND)
        assert pending == [1]
        gate.release()
        await asyncio.wait_for(sending, BOUND)  # answered before the sidecar exited, not failed
        await asyncio.wait_for(stopping, BOUND)
    finally:
        gate.restore()
    assert transport.restarts == 0
    assert await peer.receive() == {"n": 1}
