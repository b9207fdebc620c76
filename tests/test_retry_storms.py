"""No retry storms (issue 12): what a caller sends a peer that is away, and how its tasks drain when it returns.

The caller's re-sends go through one line per peer (coworker.runtime.caller): while the peer says nothing, its
tasks' drivers send no more copies and one probe (a ``ping``) at a time goes to it; once it answers, re-sends go
through a window of ``RESEND_WINDOW``. These tests count what went on the wire, per sender, recipient and message
type (a batch frame part by part), through :class:`CountingNetwork`; they wait on events (a count reached, a task
ended), never on the clock.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, CallContext, MemoryNetwork, Network, RateLimit, RateLimits, RetryPolicy, TrustTier
from coworker.core import batch
from coworker.runtime.caller import RESEND_WINDOW
from coworker.store.identity import Identity
from coworker.transports.base import Deliver, Transport

RETRY = RetryPolicy(first=0.02, factor=2.0, maximum=0.1)  # short gaps: several of them pass in well under a second
TASKS = 200
PROBES = 8  # probes to wait for while the peer is away: by then every gap is the maximum, three times over
SLACK = 8  # copies a drain may send beyond the first copies and one full re-send window
LIMITS = RateLimits(known=RateLimit(1e6, 1e6), replies=RateLimit(1e6, 1e6))  # the limiter must not drop anything
BOUND = 30.0  # seconds any wait here may take before the test fails


Key = tuple[str, str, str]  # (sender, recipient, message type), wallets lower-case


class CountingNetwork(Network):
    """``inner``, counting every message each member hands its transport, by sender, recipient and type (a batch
    frame counts as its parts), and able to drop chosen messages before they reach ``inner``."""

    def __init__(self, inner: MemoryNetwork) -> None:
        self.inner = inner
        self.name = inner.name
        self.messages: collections.Counter[Key] = collections.Counter()
        self.frames = 0
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[collections.Counter[Key]]]] = []
        self._drops: collections.Counter[Key] = collections.Counter()  # messages still to drop, by key
        self.dropped: collections.Counter[Key] = collections.Counter()
        self.on_send: Callable[[Key], None] | None = None

    def sent(self, sender: AsyncAgent, recipient: AsyncAgent, kind: str) -> int:
        return self.messages[(sender.wallet.lower(), recipient.wallet.lower(), kind)]

    def kinds(self, sender: AsyncAgent, recipient: AsyncAgent) -> set[str]:
        key = (sender.wallet.lower(), recipient.wallet.lower())
        return {kind for (s, r, kind), n in self.messages.items() if (s, r) == key and n}

    def drop_next(self, sender: AsyncAgent, recipient: AsyncAgent, kind: str, count: int = 1) -> None:
        """Lose the next ``count`` messages of ``kind`` from ``sender`` to ``recipient`` (a frame loses the part)."""
        self._drops[(sender.wallet.lower(), recipient.wallet.lower(), kind)] += count

    async def when(self, condition: Callable[[], bool]) -> collections.Counter[Key]:
        """Wait (bounded) until ``condition`` holds after a send; the counts at that moment."""
        if condition():
            return collections.Counter(self.messages)
        future: asyncio.Future[collections.Counter[Key]] = asyncio.get_running_loop().create_future()
        self._waiters.append((condition, future))
        return await asyncio.wait_for(future, BOUND)

    async def open(self, identity: Identity, data_dir: Path, deliver: Deliver) -> Transport:
        inner = await self.inner.open(identity, data_dir, deliver)
        return _CountingTransport(self, identity.address.lower(), inner)

    def _count(self, sender: str, recipient: str, data: bytes) -> bytes | None:
        """Count a message; what is left of it to send (None: all of it dropped)."""
        self.frames += 1
        parts = batch.split(data) if batch.is_frame(data) else [data]
        assert isinstance(parts, list), parts
        kept = []
        for part in parts:
            key = (sender, recipient.lower(), json.loads(part)["type"])
            self.messages[key] += 1
            if self.on_send is not None:
                self.on_send(key)
            if self._drops[key] > 0:
                self._drops[key] -= 1
                self.dropped[key] += 1
            else:
                kept.append(part)
        for waiter in list(self._waiters):
            condition, future = waiter
            if not future.done() and condition():
                future.set_result(collections.Counter(self.messages))
                self._waiters.remove(waiter)
        if not kept:
            return None
        return kept[0] if len(kept) == 1 else batch.join(kept)


class _CountingTransport(Transport):
    def __init__(self, network: CountingNetwork, wallet: str, inner: Transport) -> None:
        self.network, self.wallet, self.inner = network, wallet, inner
        self.send_policy = inner.send_policy

    async def send(self, recipient: str, data: bytes) -> None:
        kept = self.network._count(self.wallet, recipient, data)
        if kept is not None:
            await self.inner.send(recipient, kept)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class Pair:
    """alice serves ``echo`` (counting its runs by task; it waits for ``gate`` after a progress report while
    the gate is closed), bob calls her; alice holds bob at KNOWN and neither rate-limits the other."""

    net: CountingNetwork
    alice: AsyncAgent
    bob: AsyncAgent
    runs: collections.Counter[str] = field(default_factory=collections.Counter)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def away(self) -> dict[str, int]:
        """Peers bob's caller presumes away (the runtime's; bob must be running)."""
        runtime = self.bob._runtime
        assert runtime is not None
        away: dict[str, int] = runtime._caller.away()
        return away

    async def wait_all(self, task_ids: list[str]) -> list[Any]:
        return await asyncio.wait_for(asyncio.gather(*(self.bob.wait(t) for t in task_ids)), BOUND)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    net = CountingNetwork(MemoryNetwork())
    yield await _pair(net, tmp_path)


async def _pair(net: CountingNetwork, tmp_path: Path) -> Pair:
    alice = AsyncAgent("alice", network=net, data_dir=tmp_path / "alice", retry=RETRY, rate_limits=LIMITS)
    bob = AsyncAgent("bob", network=net, data_dir=tmp_path / "bob", retry=RETRY, rate_limits=LIMITS)
    alice.set_trust(bob.wallet, TrustTier.KNOWN)
    pair = Pair(net, alice, bob)
    pair.gate.set()

    @alice.skill()
    async def echo(text: str, ctx: CallContext) -> str:
        pair.runs[ctx.call_id] += 1
        if not pair.gate.is_set():
            ctx.progress(0.5, "started")
            await pair.gate.wait()
        return text

    return pair


async def _submit_while_away(pair: Pair) -> tuple[list[str], collections.Counter[Key]]:
    """alice joins once and stops; bob (started) submits TASKS tasks to her and the test waits until bob has sent
    her every first copy and PROBES more pings, or more copies of the requests than there are tasks. Returns the
    task ids and the counts at that moment."""
    alice, bob, net = pair.alice, pair.bob, pair.net
    await alice.start()
    await alice.stop()  # the network keeps her mailbox
    await bob.start()
    task_ids = [await bob.request(alice.wallet, "echo", {"text": str(i)}) for i in range(TASKS)]
    probes = net.sent(bob, alice, "ping") + PROBES  # counted from here: the gaps pass once every task is stored

    def storm_or_probes() -> bool:
        copies = net.sent(bob, alice, "call.request")
        return copies > TASKS or (copies == TASKS and net.sent(bob, alice, "ping") >= probes)

    counts = await net.when(storm_or_probes)
    return task_ids, counts


async def _close(pair: Pair) -> None:
    for agent in (pair.bob, pair.alice):
        await agent.stop()
        agent.close()


async def test_a_peer_that_is_away_gets_one_probe_at_a_time_and_no_copy_beyond_the_first(pair: Pair) -> None:
    alice, bob = pair.alice, pair.bob
    probes_held: list[int] = []  # bob's probers of alice, each time bob sends alice a ping

    def on_send(key: Key) -> None:
        if key == (bob.wallet.lower(), alice.wallet.lower(), "ping"):
            runtime = bob._runtime
            assert runtime is not None
            probes_held.append(sum(1 for task in runtime._caller._drivers._tasks
                                   if task.get_name().startswith("coworker-probe-") and not task.done()))

    pair.net.on_send = on_send
    try:
        _, counts = await _submit_while_away(pair)
        to_alice = {kind: n for (s, r, kind), n in counts.items() if (s, r) == (bob.wallet.lower(),
                                                                              alice.wallet.lower())}
        # Over PROBES retry gaps (the last few at the maximum, when each task would have re-sent its copy) bob
        # sent the first copies and the probes, nothing else: 200 tasks, one probe per gap.
        assert to_alice == {"call.request": TASKS, "ping": len(probes_held)} and len(probes_held) >= PROBES
        assert probes_held == [1] * len(probes_held)  # one prober, sending one probe after the other
    finally:
        await _close(pair)


async def test_a_returning_peer_runs_every_task_once_and_gets_few_copies_beyond_the_first(pair: Pair) -> None:
    alice, bob, net = pair.alice, pair.bob, pair.net
    try:
        task_ids, counts = await _submit_while_away(pair)
        assert counts[(bob.wallet.lower(), alice.wallet.lower(), "call.request")] == TASKS
        await alice.start()
        assert await pair.wait_all(task_ids) == [str(i) for i in range(TASKS)]
        assert len(pair.runs) == TASKS and set(pair.runs.values()) == {1}
        assert {t["state"] for t in bob.list_tasks(limit=2 * TASKS)} == {"completed"}
        # the first copies reach alice from her mailbox; re-sends go through the window (at most RESEND_WINDOW
        # awaiting an answer), so a drain re-sends at most about one window's worth
        assert TASKS <= net.sent(bob, alice, "call.request") <= TASKS + RESEND_WINDOW + SLACK
        assert net.kinds(bob, alice) <= {"call.request", "ping"}
    finally:
        await _close(pair)


async def test_away_names_the_peer_while_it_is_away_and_not_once_it_answers(pair: Pair) -> None:
    alice, bob = pair.alice, pair.bob
    pair.gate.clear()  # alice's skills report progress, then wait: the tasks stay live after she is back
    heard_back = asyncio.Event()
    try:
        task_ids, _ = await _submit_while_away(pair)
        assert pair.away() == {alice.wallet.lower(): TASKS}
        # bob hears alice again through the first progress report of any task
        bob_runtime = bob._runtime
        assert bob_runtime is not None
        watch = bob_runtime.watch(task_ids[0])
        assert watch is not None
        watch.listeners.append(lambda progress: heard_back.set())
        await alice.start()
        await asyncio.wait_for(heard_back.wait(), BOUND)
        assert pair.away() == {}
        assert bob.get_result(task_ids[0])["state"] in ("submitted", "working")  # the tasks are still live
        pair.gate.set()
        await pair.wait_all(task_ids)
        assert pair.away() == {}
    finally:
        await _close(pair)


async def test_a_lost_request_to_a_quiet_peer_is_found_again_through_a_probe(pair: Pair) -> None:
    alice, bob, net = pair.alice, pair.bob, pair.net
    try:
        await alice.start()
        await bob.start()
        net.drop_next(bob, alice, "call.request")  # alice is there, but never hears of the task: she says nothing
        task_id = await bob.request(alice.wallet, "echo", {"text": "lost once"})
        assert await asyncio.wait_for(bob.wait(task_id), BOUND) == "lost once"
        assert net.dropped == {(bob.wallet.lower(), alice.wallet.lower(), "call.request"): 1}
        # bob heard nothing since its copy: it probed alice, heard her pong, and only then sent the copy again
        assert net.sent(bob, alice, "ping") >= 1 and net.sent(alice, bob, "pong") >= 1
        assert net.sent(bob, alice, "call.request") == 2
        assert pair.runs == {task_id: 1}
    finally:
        await _close(pair)


async def test_a_lost_answer_from_a_quiet_peer_is_asked_for_again_after_a_probe_and_the_skill_runs_once(
        pair: Pair) -> None:
    alice, bob, net = pair.alice, pair.bob, pair.net
    try:
        await alice.start()
        await bob.start()
        net.drop_next(alice, bob, "call.result")
        task_id = await bob.request(alice.wallet, "echo", {"text": "answered twice"})
        assert await asyncio.wait_for(bob.wait(task_id), BOUND) == "answered twice"
        assert net.dropped == {(alice.wallet.lower(), bob.wallet.lower(), "call.result"): 1}
        assert net.sent(bob, alice, "ping") >= 1
        assert net.sent(bob, alice, "call.request") == 2  # the copy after the pong: answered from alice's store
        assert pair.runs == {task_id: 1}
    finally:
        await _close(pair)


async def test_calls_to_a_present_peer_over_a_lossy_network_all_complete_and_each_skill_runs_once(
        tmp_path: Path) -> None:
    net = CountingNetwork(MemoryNetwork(drop=0.25, duplicate=0.1, reorder=True, seed=12))
    pair = await _pair(net, tmp_path)
    alice, bob = pair.alice, pair.bob
    try:
        await alice.start()
        await bob.start()
        task_ids = [await bob.request(alice.wallet, "echo", {"text": str(i)}) for i in range(TASKS)]
        assert await pair.wait_all(task_ids) == [str(i) for i in range(TASKS)]
        assert len(pair.runs) == TASKS and set(pair.runs.values()) == {1}
        assert net.inner.stats["dropped"] > TASKS // 5  # the faults did happen
        assert net.sent(bob, alice, "call.request") > TASKS  # lost copies were sent again
        assert pair.away() == {}
    finally:
        await _close(pair)

async def test_a_peer_that_returns_over_a_lossy_network_gets_every_lost_request_again_and_runs_each_once(
        tmp_path: Path) -> None:
    net = CountingNetwork(MemoryNetwork(drop=0.25, seed=7))  # first copies, probes and answers are lost too
    pair = await _pair(net, tmp_path)
    alice, bob = pair.alice, pair.bob
    try:
        task_ids, counts = await _submit_while_away(pair)
        assert counts[(bob.wallet.lower(), alice.wallet.lower(), "call.request")] == TASKS
        assert counts[(bob.wallet.lower(), alice.wallet.lower(), "ping")] >= PROBES
        await alice.start()
        assert await pair.wait_all(task_ids) == [str(i) for i in range(TASKS)]
        assert len(pair.runs) == TASKS and set(pair.runs.values()) == {1}
        assert net.inner.stats["dropped"] > TASKS // 5  # the faults did happen
        assert net.sent(bob, alice, "call.request") > TASKS  # the lost first copies were sent again
        assert pair.away() == {}
    finally:
        await _close(pair)
