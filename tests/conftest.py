"""Shared fixtures: every test gets its own COWORKER_HOME; the standard pair is two agents on one network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, MemoryNetwork, Network, TrustTier
from coworker._identity import Identity
from coworker._transport import Incoming, Transport


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private COWORKER_HOME, and no network or passphrase leaking in from the environment."""
    monkeypatch.setenv("COWORKER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("COWORKER_NETWORK", raising=False)
    monkeypatch.delenv("COWORKER_PASSPHRASE", raising=False)
    monkeypatch.delenv("COWORKER_AGENT", raising=False)
    return tmp_path / "home"


# The transports the conformance tests run on. The XMTP transport adds itself here.
NETWORKS: dict[str, Callable[[], Network]] = {"memory": MemoryNetwork}


@pytest.fixture(params=sorted(NETWORKS))
def network(request: pytest.FixtureRequest) -> Network:
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
        client.transport = await network.open(client.identity, tmp_path / f"raw{len(clients)}",
                                              client.inbox.put_nowait)
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
