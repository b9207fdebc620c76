"""Shared fixtures: every test gets its own COWORKER_HOME; the standard pair is two agents on one network."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, MemoryNetwork, Network, TrustTier
from coworker.core import batch
from coworker.devnet import DevnetServer, PortInUseError, running_devnet
from coworker.store.identity import Identity
from coworker.transports.base import Incoming, Transport
from coworker.transports.xmtp import node
from coworker.transports.xmtp.transport import XmtpNetwork

# Every test gets its own COWORKER_HOME (below); they all use the one Node side installed for the real home
# (`coworker setup`, which `make test` runs), and so do the processes they start.
os.environ.setdefault("COWORKER_NODE_DIR", str(node.install_dir()))


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private COWORKER_HOME, and no network or passphrase leaking in from the environment."""
    monkeypatch.setenv("COWORKER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("COWORKER_NETWORK", raising=False)
    monkeypatch.delenv("COWORKER_PASSPHRASE", raising=False)
    monkeypatch.delenv("COWORKER_AGENT", raising=False)
    monkeypatch.setenv("COWORKER_LOCAL_ONLY", "1")  # no XMTP client in a test may reach a hosted network
    monkeypatch.setenv("COWORKER_DEVNET_AUTOSTART", "0")  # nor start a devnet that outlives it
    return tmp_path / "home"


def require_node_sdk() -> None:
    """Skip (locally) or fail (in CI) when Node or the pinned Node SDK is not installed."""
    if node.node_available():
        return
    message = "Node or @xmtp/node-sdk is missing: run `coworker setup` (make setup does it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class DevnetThread:
    """An in-memory devnet on port 5556 served from its own thread and event loop.

    Agents under test run on the tests' event loops and reach it over loopback, as they would reach a devnet
    started with ``coworker devnet start``; the server object stays inspectable (``unimplemented_calls``).
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        self.server: DevnetServer | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="devnet", daemon=True)

    async def _main(self) -> None:
        try:
            async with running_devnet(data_dir=self.data_dir) as server:
                self.server, self._loop, self._stop = server, asyncio.get_running_loop(), asyncio.Event()
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # reported by start()
            self.error = exc
        finally:
            self._ready.set()

    def start(self) -> DevnetServer:
        self._thread.start()
        self._ready.wait(30)
        if self.error is not None or self.server is None:
            raise RuntimeError(f"the devnet did not start: {self.error!r}")
        return self.server

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


@pytest.fixture(scope="module")
def xmtp_node() -> Iterator[DevnetServer]:
    """A devnet on port 5556 for one test module (XMTP clients of env "local" dial it)."""
    require_node_sdk()
    node = DevnetThread()
    try:
        server = node.start()
    except RuntimeError as exc:
        if isinstance(node.error, PortInUseError):
            pytest.fail(f"{node.error}. Tests over XMTP need port 5556 (stop a running `coworker devnet`).")
        raise exc
    yield server
    node.stop()
    assert not server.unimplemented_calls, f"clients called RPCs the devnet lacks: {server.unimplemented_calls}"


# The transports the conformance tests run on; "xmtp" is the real XMTP SDK, through a devnet.
NETWORKS: dict[str, Callable[[], Network]] = {
    "memory": MemoryNetwork,
    "xmtp": lambda: XmtpNetwork("local"),
}


@pytest.fixture(params=sorted(NETWORKS))
def network(request: pytest.FixtureRequest) -> Network:
    if request.param == "xmtp":
        request.getfixturevalue("xmtp_node")
    return NETWORKS[request.param]()


class Counter:
    """Counts skill executions."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}

    def hit(self, name: str) -> None:
        self.runs[name] = self.runs.get(name, 0) + 1

    def __getitem__(self, name: str) -> int:
        return self.runs.get(name, 0)


@pytest.fixture
def counter() -> Counter:
    return Counter()


def add_standard_skills(agent: AsyncAgent, counter: Counter) -> None:
    """summarize (KNOWN), secret (INTERNAL), fail (raises), echo (async)."""

    @agent.skill("summarize", description="Summarize text", input_schema={"text": "str", "max_words": "int"},
                 output_schema={"summary": "str", "word_count": "int"})
    def summarize(text: str, max_words: int = 50) -> dict[str, Any]:
        counter.hit("summarize")
        return {"summary": " ".join(text.split()[:max_words]), "word_count": len(text.split())}

    @agent.skill(min_trust_tier=TrustTier.INTERNAL)
    def secret() -> str:
        counter.hit("secret")
        return "the secret"

    @agent.skill()
    async def echo(text: str) -> dict[str, str]:
        counter.hit("echo")
        return {"text": text}

    @agent.skill()
    def fail(where: str) -> str:
        counter.hit("fail")
        raise ValueError(f"cannot read /home/alice/private/{where}.txt")


@pytest.fixture
async def pair(network: Network, counter: Counter, tmp_path: Path) -> AsyncIterator[tuple[AsyncAgent, AsyncAgent]]:
    """Alice serves the standard skills and trusts Bob at KNOWN; both are started."""
    alice = AsyncAgent("alice", network=network, data_dir=tmp_path / "alice")
    bob = AsyncAgent("bob", network=network, data_dir=tmp_path / "bob")
    add_standard_skills(alice, counter)
    alice.set_trust(bob.wallet, TrustTier.KNOWN)
    await alice.start()
    await bob.start()
    yield alice, bob
    await bob.stop()
    await alice.stop()
    alice.close()
    bob.close()


class RawClient:
    """A bare network member that sends hand-made bytes and collects what comes back (a hostile peer)."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.wallet = identity.address
        self.inbox: asyncio.Queue[Incoming] = asyncio.Queue()
        self.transport: Transport | None = None

    async def send(self, recipient: str, data: bytes) -> None:
        assert self.transport is not None
        await self.transport.send(recipient, data)

    def deliver(self, incoming: Incoming) -> None:
        """The transport's callback: an agent may batch what it sends to us, so a frame is queued part by part."""
        parts = batch.split(incoming.data) if batch.is_frame(incoming.data) else [incoming.data]
        assert isinstance(parts, list), parts
        for part in parts:
            self.inbox.put_nowait(Incoming(incoming.sender, part))

    async def receive(self, timeout: float = 10) -> dict[str, Any]:
        import json

        incoming = await asyncio.wait_for(self.inbox.get(), timeout)
        data: dict[str, Any] = json.loads(incoming.data)
        return data


@pytest.fixture
async def make_raw(network: Network, tmp_path: Path) -> AsyncIterator[Callable[[], Awaitable[RawClient]]]:
    """Makes bare network members; each has a fresh wallet."""
    clients: list[RawClient] = []

    async def make() -> RawClient:
        client = RawClient(Identity.generate())
        client.transport = await network.open(client.identity, tmp_path / f"raw{len(clients)}", client.deliver)
        clients.append(client)
        return client

    yield make
    for client in clients:
        assert client.transport is not None
        await client.transport.close()


@pytest.fixture
async def raw(make_raw: Callable[[], Awaitable[RawClient]]) -> RawClient:
    return await make_raw()


@pytest.fixture
def blocking_agents() -> Iterator[list[Any]]:
    """Collects blocking Agents made by a test and closes them afterwards."""
    made: list[Any] = []
    yield made
    for agent in made:
        agent.close()
