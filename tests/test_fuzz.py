"""20,000 broken envelopes of every type, from a trusted peer and from a stranger: nothing crashes, every served
task ends, memory stays bounded, and the agent still answers. ``scripts/fuzz_long.py`` runs the same for longer."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, MemoryNetwork, RateLimits, RetryPolicy, TrustTier
from coworker.store.identity import Identity
from coworker.transports.base import Incoming, Transport

from .fuzzing import mutate, valid_messages

CASES = 20_000
BATCH = 500
SEED = 20261201


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class _Errors(logging.Handler):
    """Every ERROR the agent logs: a handler that failed (TaskSet logs it with its traceback) or a callback."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


class Peer:
    """A bare member of the network whose answers are thrown away as they come (but counted)."""

    def __init__(self, network: MemoryNetwork) -> None:
        self.identity = Identity.generate()
        self.wallet = self.identity.address
        self.network = network
        self.received: list[bytes] = []
        self.answers = 0
        self.transport: Transport | None = None

    async def open(self, tmp_path: Path) -> None:
        self.transport = await self.network.open(self.identity, tmp_path / self.wallet, self._deliver)

    def _deliver(self, incoming: Incoming) -> None:
        self.answers += 1
        if len(self.received) < 100:
            self.received.append(incoming.data)


async def run_fuzz(tmp_path: Path, cases: int, seed: int, *, stop_at_error: bool = True) -> dict[str, Any]:
    """Attack one agent with ``cases`` broken envelopes; what happened."""
    net = MemoryNetwork()
    # No rate limits: the fuzz is about what the decoder and the handlers do with every case, not about how
    # many of them the limits would let through (tests/test_rate_limits.py is about that).
    alice = AsyncAgent("alice", network=net, data_dir=tmp_path / "alice", retry=RetryPolicy(first=60, maximum=60),
                       rate_limits=RateLimits.off())

    @alice.skill()
    def echo(text: str) -> str:
        return text

    known, stranger = Peer(net), Peer(net)
    await known.open(tmp_path)
    await stranger.open(tmp_path)
    alice.set_trust(known.wallet, TrustTier.KNOWN)
    errors = _Errors()
    logger = logging.getLogger("coworker")
    level = logger.level
    logger.addHandler(errors)
    logger.setLevel(logging.ERROR)  # the refusals are logged as warnings: 20,000 of them would only cost time
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    try:
        await alice.start()
        # Tasks of alice's that the known peer holds: the fuzzed replies name them and their requests.
        task_ids = [await alice.request(known.wallet, "echo", {"text": "x"}, timeout=3600) for _ in range(5)]
        runtime = alice._runtime
        assert runtime is not None
        await asyncio.sleep(0)
        await runtime._link.tasks.idle(30)
        request_ids = [m["id"] for m in (_json(d) for d in known.received) if m and m.get("type") == "call.request"]
        rng = random.Random(seed)
        rss_before = rss_mb()
        now = int(alice._clock() * 1000)
        per_sender = {
            known: valid_messages(alice.wallet, known.wallet, now, task_ids=task_ids, request_ids=request_ids),
            stranger: valid_messages(alice.wallet, stranger.wallet, now, task_ids=task_ids, request_ids=request_ids),
        }
        sent = 0
        while sent < cases:
            for _ in range(min(BATCH, cases - sent)):
                peer = known if rng.random() < 0.7 else stranger
                assert peer.transport is not None
                await peer.transport.send(alice.wallet, mutate(rng, rng.choice(per_sender[peer])))
                sent += 1
            await asyncio.sleep(0)  # a yield, not a wait: the deliveries the sends queued run and spawn handlers
            await runtime._link.tasks.idle(60)
            if stop_at_error and (loop_errors or errors.records):
                break
        rss_after = rss_mb()
        live_in = alice.store.live_tasks("in")
        bob = AsyncAgent("bob", network=net, data_dir=tmp_path / "bob")
        alice.set_trust(bob.wallet, TrustTier.KNOWN)
        async with bob:
            answer = await bob.call(alice.wallet, "echo", {"text": "still there?"}, timeout=10)
        bob.close()
        return {"cases": sent, "errors": errors.records, "loop_errors": loop_errors, "live_in": live_in,
                "rss_before": rss_before, "rss_after": rss_after, "alice": alice, "answer": answer,
                "answers": known.answers + stranger.answers, "served": len(alice.list_tasks(limit=1_000_000,
                                                                                            direction="in"))}
    finally:
        logger.removeHandler(errors)
        logger.setLevel(level)
        loop.set_exception_handler(None)


def _json(data: bytes) -> dict[str, Any] | None:
    import json

    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@pytest.mark.timeout(300)
async def test_twenty_thousand_broken_envelopes_crash_nothing_leave_no_task_live_and_keep_memory_bounded(
        tmp_path: Path) -> None:
    outcome = await run_fuzz(tmp_path, CASES, SEED)
    alice: AsyncAgent = outcome["alice"]
    try:
        assert outcome["cases"] == CASES
        assert outcome["errors"] == []
        assert outcome["loop_errors"] == []
        assert outcome["live_in"] == []
        assert outcome["rss_after"] - outcome["rss_before"] < 200, outcome
        assert outcome["answer"] == "still there?"
    finally:
        await alice.stop()
        alice.close()
