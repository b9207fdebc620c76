"""Rate limits and payload caps by trust tier: a stranger's flood is dropped unread and counted, a trusted peer's
calls go through it, and what is tracked stays bounded. The clock is injected: time moves only when a test says."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, MemoryNetwork, RateLimit, RateLimits, TrustTier
from coworker.core import protocol as proto
from coworker.core.limits import OVER_BUDGET, STRANGERS, TOO_LARGE, RateLimiter
from coworker.runtime import dispatch
from coworker.store.identity import Identity
from coworker.transports.base import Incoming, Transport

START = 1_900_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class Stranger:
    """A bare network member that sends hand-made messages and counts the answers."""

    def __init__(self, network: MemoryNetwork) -> None:
        self.identity = Identity.generate()
        self.wallet = self.identity.address
        self.network = network
        self.answers: list[dict[str, Any]] = []
        self.transport: Transport | None = None

    async def open(self, data_dir: Path) -> Stranger:
        self.transport = await self.network.open(self.identity, data_dir / self.wallet, self._deliver)
        return self

    def _deliver(self, incoming: Incoming) -> None:
        self.answers.append(json.loads(incoming.data))

    async def ping(self, to: str, clock: Clock, message: str = "") -> None:
        env = proto.request("ping", {"message": message}, sender=self.wallet, recipient=to,
                            now_ms=int(clock() * 1000))
        assert self.transport is not None
        await self.transport.send(to, proto.encode(env))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def alice(tmp_path: Path, clock: Clock) -> AsyncIterator[AsyncAgent]:
    """An agent with the default rate limits and an echo skill, on its own memory network."""
    agent = AsyncAgent("alice", network=MemoryNetwork(), data_dir=tmp_path / "alice", clock=clock)

    @agent.skill()
    async def echo(text: str) -> str:
        return text

    await agent.start()
    yield agent
    await agent.stop()
    agent.close()


async def settled(*agents: AsyncAgent) -> None:
    """Every message delivered so far is handled, and what it answered delivered (no wall-clock wait)."""
    for _ in range(3):
        await asyncio.sleep(0)  # a yield: queued deliveries run and spawn handlers
        for agent in agents:
            assert agent._runtime is not None
            await agent._runtime._link.tasks.idle(30)
    await asyncio.sleep(0)


# ---- the pure policy ------------------------------------------------------------------------------------------

def test_a_bucket_allows_its_burst_then_its_rate_and_counts_the_rest() -> None:
    limiter = RateLimiter(RateLimits(untrusted=RateLimit(2.0, 10, 4096)))
    admitted = [limiter.admit("s", TrustTier.UNTRUSTED, 100, START) is None for _ in range(25)]
    assert admitted.count(True) == 10
    assert limiter.dropped[OVER_BUDGET] == 15
    assert limiter.admit("s", TrustTier.UNTRUSTED, 100, START + 0.4) is not None  # 0.8 token
    assert limiter.admit("s", TrustTier.UNTRUSTED, 100, START + 0.5) is None  # 1.0
    assert limiter.admit("s", TrustTier.UNTRUSTED, 100, START - 3600) is not None  # the clock went back: no refill
    assert limiter.admit("s", TrustTier.UNTRUSTED, 100, START - 3600 + 0.4) is not None  # nor froze the bucket
    assert limiter.admit("s", TrustTier.UNTRUSTED, 100, START - 3600 + 0.5) is None


def test_a_stranger_over_its_size_cap_is_dropped_but_a_known_peer_is_not() -> None:
    limiter = RateLimiter()
    drop = limiter.admit("s", TrustTier.UNTRUSTED, 50_000, START)
    assert drop is not None and drop.reason == TOO_LARGE
    assert limiter.admit("k", TrustTier.KNOWN, 50_000, START) is None
    assert limiter.stats() == {"dropped": {TOO_LARGE: 1, OVER_BUDGET: 0, STRANGERS: 0}, "tracked_peers": 1}


def test_fresh_strangers_share_one_budget_and_get_no_bucket_once_it_is_spent() -> None:
    limiter = RateLimiter(RateLimits(strangers=RateLimit(20.0, 50)))
    results = [limiter.admit(f"wallet-{i}", TrustTier.UNTRUSTED, 100, START) for i in range(1000)]
    assert sum(r is None for r in results) == 50
    assert limiter.dropped[STRANGERS] == 950
    assert limiter.tracked == 50
    assert limiter.admit("known", TrustTier.KNOWN, 100, START) is None  # trusted peers do not share it


def test_the_tracked_peers_stay_within_their_bound_the_least_recently_seen_forgotten_first() -> None:
    limiter = RateLimiter(RateLimits(strangers=RateLimit(None), max_peers=64))
    limiter.admit("known", TrustTier.KNOWN, 100, START)
    for i in range(10_000):
        limiter.admit(f"wallet-{i}", TrustTier.UNTRUSTED, 100, START + i)
        if i % 32 == 0:
            limiter.admit("known", TrustTier.KNOWN, 100, START + i)  # seen often: kept
        assert limiter.tracked <= 64
    assert "known" in limiter._peers and "wallet-0" not in limiter._peers


def test_replies_from_a_peer_we_wait_for_have_their_own_budget() -> None:
    limiter = RateLimiter(RateLimits(untrusted=RateLimit(1.0, 1, 4096), replies=RateLimit(100.0, 100)))
    assert limiter.admit("callee", TrustTier.UNTRUSTED, 100, START) is None
    assert limiter.admit("callee", TrustTier.UNTRUSTED, 100, START) is not None
    replies = [limiter.admit("callee", TrustTier.UNTRUSTED, 200_000, START, replies=True) for _ in range(100)]
    assert all(r is None for r in replies)  # larger than a stranger may send, and more of them
    assert limiter.admit("callee", TrustTier.UNTRUSTED, 100, START, replies=True) is not None


def test_an_unlimited_tier_keeps_no_bucket() -> None:
    limiter = RateLimiter(RateLimits.off())
    assert all(limiter.admit(f"w{i}", TrustTier.UNTRUSTED, 900_000, START) is None for i in range(1000))
    assert limiter.tracked == 0


# ---- end to end ---------------------------------------------------------------------------------------------

async def test_a_strangers_flood_gets_its_budget_answered_while_a_known_peers_calls_all_complete(
        alice: AsyncAgent, clock: Clock, tmp_path: Path) -> None:
    net = alice._network_spec
    assert isinstance(net, MemoryNetwork)
    stranger = await Stranger(net).open(tmp_path)
    bob = AsyncAgent("bob", network=net, data_dir=tmp_path / "bob", clock=clock)
    alice.set_trust(bob.wallet, TrustTier.KNOWN)
    results = []
    async with bob:
        for _ in range(10):
            for _ in range(50):  # 50 pings at one instant, then a call, then a second passes
                await stranger.ping(alice.wallet, clock)
            results.append(await bob.call(alice.wallet, "echo", {"text": "through the flood"}, timeout=30))
            clock.now += 1.0
        await settled(alice, bob)
    bob.close()
    assert results == ["through the flood"] * 10
    budget = 10 + 2 * 9  # the burst, then 2 a second for the 9 seconds that passed
    answered = len(stranger.answers)
    assert answered == budget
    assert all(a["type"] == "pong" for a in stranger.answers)
    dropped = alice.stats()["dropped"]
    assert dropped[OVER_BUDGET] == 500 - answered
    assert dropped[TOO_LARGE] == 0


async def test_a_strangers_50_kb_message_is_dropped_unread(alice: AsyncAgent, clock: Clock, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    net = alice._network_spec
    assert isinstance(net, MemoryNetwork)
    stranger = await Stranger(net).open(tmp_path)
    decoded: list[int] = []
    real_decode = proto.decode

    def counting_decode(data: bytes, **kwargs: Any) -> proto.Envelope:
        decoded.append(len(data))
        return real_decode(data, **kwargs)

    monkeypatch.setattr(dispatch.proto, "decode", counting_decode)
    env = proto.request("ping", {"message": "x" * 50_000}, sender=stranger.wallet, recipient=alice.wallet,
                        now_ms=int(clock() * 1000))
    assert stranger.transport is not None
    await stranger.transport.send(alice.wallet, proto.encode(env))
    await settled(alice)
    assert decoded == [] and stranger.answers == []
    assert alice.stats()["dropped"][TOO_LARGE] == 1
    assert alice._control is not None  # what `coworker status --json` shows of a running agent
    assert (await alice._control._status({}))["rate_limits"]["dropped"][TOO_LARGE] == 1
    await stranger.ping(alice.wallet, clock, "small")  # a small one is read and answered
    await settled(alice)
    assert [a["type"] for a in stranger.answers] == ["pong"] and len(decoded) == 1


async def test_many_fresh_strangers_do_not_grow_the_tracked_set_beyond_its_bound(tmp_path: Path,
                                                                                clock: Clock) -> None:
    net = MemoryNetwork()
    limits = RateLimits(strangers=RateLimit(None), max_peers=16)  # no shared budget: every stranger gets a bucket
    alice = AsyncAgent("alice", network=net, data_dir=tmp_path / "alice", clock=clock, rate_limits=limits)
    async with alice:
        strangers = [await Stranger(net).open(tmp_path) for _ in range(100)]
        for stranger in strangers:
            await stranger.ping(alice.wallet, clock)
            await settled(alice)
            assert alice.stats()["tracked_peers"] <= 16
        assert all(len(s.answers) == 1 for s in strangers)
    alice.close()
    stats = alice.stats()
    assert (stats["dropped"], stats["tracked_peers"]) == ({TOO_LARGE: 0, OVER_BUDGET: 0, STRANGERS: 0}, 16)


async def test_the_replies_to_our_calls_are_not_starved_by_the_callees_own_budget(tmp_path: Path,
                                                                                   clock: Clock) -> None:
    net = MemoryNetwork()
    tight = RateLimits(untrusted=RateLimit(1.0, 1, 4096))  # carol is a stranger to bob: 1 message, 4 KB
    bob = AsyncAgent("bob", network=net, data_dir=tmp_path / "bob", clock=clock, rate_limits=tight)
    carol = AsyncAgent("carol", network=net, data_dir=tmp_path / "carol", clock=clock)

    @carol.skill()
    async def big(n: int) -> str:
        return "y" * n

    carol.set_trust(bob.wallet, TrustTier.KNOWN)
    async with carol, bob:
        outputs = await asyncio.gather(*(bob.call(carol.wallet, "big", {"n": 10_000}, timeout=30)
                                         for _ in range(20)))
        assert outputs == ["y" * 10_000] * 20
        assert bob.stats()["dropped"] == {TOO_LARGE: 0, OVER_BUDGET: 0, STRANGERS: 0}
    bob.close()
    carol.close()


def test_a_peers_drops_are_worth_a_log_line_once_a_minute() -> None:
    limiter = RateLimiter(RateLimits(untrusted=RateLimit(1.0, 1, 4096)))
    limiter.admit("s", TrustTier.UNTRUSTED, 100, START)
    says = [d.say for d in (limiter.admit("s", TrustTier.UNTRUSTED, 100, START + i * 0.1) for i in range(1, 6))
            if d is not None]
    assert says == [True, False, False, False, False]
    later = [limiter.admit("s", TrustTier.UNTRUSTED, 100, START + 61) for _ in range(3)]
    assert [d.say for d in later if d is not None] == [True, False]


async def test_a_peer_we_wait_for_gets_no_more_requests_answered_than_its_tier_allows(tmp_path: Path,
                                                                                         clock: Clock) -> None:
    net = MemoryNetwork()
    tight = RateLimits(untrusted=RateLimit(1.0, 2, 4096))
    bob = AsyncAgent("bob", network=net, data_dir=tmp_path / "bob", clock=clock, rate_limits=tight)
    callee = await Stranger(net).open(tmp_path)  # never answers the call: bob's task stays live
    async with bob:
        task_id = await bob.request(callee.wallet, "echo", {"text": "x"}, timeout=3600)
        await settled(bob)
        assert bob._runtime is not None and bob._runtime.watch(task_id) is not None
        for _ in range(10):  # on the replies' budget before they are read, but requests: the tier's budget
            await callee.ping(bob.wallet, clock)
        await settled(bob)
        pongs = [a for a in callee.answers if a["type"] == "pong"]
        assert len(pongs) == 2
        assert bob.stats()["dropped"][OVER_BUDGET] == 8
    bob.close()
