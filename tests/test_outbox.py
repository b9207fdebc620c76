"""Batch frames and the outbox: several messages to one peer go as one, in order, under the write budget.

The frames are pure functions (golden bytes, every refusal). The outbox runs on fake transports whose sends wait on
events the test controls, and on a clock and a sleep the test moves, so nothing here waits for time to pass. Then
agents: two on the in-memory network, a stranger's frame split and charged part by part, and sixteen concurrent
calls over XMTP (through the local devnet) that put fewer than 1.2 messages on the wire per call.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, MemoryNetwork, TrustTier
from coworker._errors import RemoteProtocolError, TransportError
from coworker.core import batch
from coworker.core import protocol as proto
from coworker.core.batch import MAGIC, MAX_PARTS, WriteBudget
from coworker.devnet import DevnetServer
from coworker.runtime.outbox import Outbox
from coworker.runtime.taskset import TaskSet
from coworker.store.identity import Identity
from coworker.transports.base import Incoming, SendPolicy, Transport
from coworker.transports.xmtp.transport import WRITE_LIMIT, WRITE_WINDOW, XmtpNetwork

PEER = "0x" + "ab" * 20
OTHER = "0x" + "cd" * 20
START = 1_900_000_000.0


def envelope(n: int) -> bytes:
    env = proto.request("ping", {"message": f"m{n}"}, sender="0x" + "11" * 20, recipient=PEER,
                        now_ms=int(START * 1000), message_id=f"{n:032x}")
    return proto.encode(env)


async def settle() -> None:
    """Let every ready task run to its next wait (no time passes)."""
    for _ in range(10):
        await asyncio.sleep(0)


class HeldTransport(Transport):
    """Records each send; a send returns only when the test opens the gate (or raises ``fail``)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def send(self, recipient: str, data: bytes) -> None:
        self.sent.append((recipient, data))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail

    async def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """A sleep the test ends: records the delays asked for and returns when :meth:`wake` is called."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self._wake = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.asked.append(delay)
        await self._wake.wait()
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()


# ---- frames -----------------------------------------------------------------------------------------------


def test_a_frame_is_the_magic_line_then_one_envelope_per_line_and_splits_back_to_them() -> None:
    assert batch.join([b'{"a":1}', b'{"b":"x\\ny"}']) == b'coworker-batch 1\n{"a":1}\n{"b":"x\\ny"}'
    parts = [envelope(n) for n in range(3)]
    frame = batch.join(parts)
    assert frame.startswith(MAGIC) and batch.is_frame(frame) and not batch.is_frame(parts[0])
    assert batch.split(frame) == parts
    assert [proto.decode(p).body["message"] for p in batch.split(frame)] == ["m0", "m1", "m2"]


def test_an_envelope_with_a_newline_in_its_text_still_joins_because_json_escapes_it() -> None:
    env = proto.request("ping", {"message": "two\nlines\u2028"}, sender=PEER, recipient=OTHER, now_ms=1)
    data = proto.encode(env)
    assert batch.joinable(data)
    (back, *_) = batch.split(batch.join([data, envelope(1)]))  # type: ignore[misc]
    assert proto.decode(back).body["message"] == "two\nlines\u2028"


def test_pack_sends_a_lone_envelope_as_itself_and_leaves_what_does_not_fit_for_the_next_frame() -> None:
    one = envelope(0)
    assert batch.pack([one]) == (one, 1)
    parts = [envelope(n) for n in range(4)]
    frame, count = batch.pack(parts, max_bytes=len(MAGIC) + 3 * len(one) + 2)
    assert count == 3 and frame == batch.join(parts[:3]) and len(frame) == len(MAGIC) + 3 * len(one) + 2
    assert batch.pack(parts, max_bytes=len(MAGIC) + 2 * len(one))[1] == 1  # two do not fit: the first alone
    assert batch.pack([b"a\nb", one]) == (b"a\nb", 1)  # cannot be joined: goes alone
    assert batch.pack([one, b"", one])[1] == 1
    many = [envelope(n) for n in range(MAX_PARTS + 10)]
    frame, count = batch.pack(many)
    assert count == MAX_PARTS and batch.split(frame) == many[:MAX_PARTS]
    with pytest.raises(ValueError):
        batch.pack([])


@pytest.mark.parametrize("parts", [[envelope(0)], [envelope(0), b""], [envelope(0), b"a\nb"],
                                   [envelope(0), MAGIC + b"{}"], [envelope(0)] * (MAX_PARTS + 1),
                                   [envelope(0), b"x" * proto.MAX_ENVELOPE_BYTES]])
def test_join_refuses_what_a_frame_cannot_carry(parts: list[bytes]) -> None:
    with pytest.raises(ValueError):
        batch.join(parts)


@pytest.mark.parametrize(("data", "reason"), [
    (MAGIC + b"x" * proto.MAX_ENVELOPE_BYTES, "exceeds the limit"),
    (b"coworker-batch 2\n{}\n{}", "not a version 1 batch frame"),
    (b"coworker-batch 1{}", "not a version 1 batch frame"),
    (MAGIC, "holds no message"),
    (MAGIC + b"\n".join([b"{}"] * (MAX_PARTS + 1)), f"more than {MAX_PARTS}"),
    (MAGIC + b"{}\n", "an empty message"),
    (MAGIC + b"{}\n\n{}", "an empty message"),
    (MAGIC + b"\n{}", "an empty message"),
])
def test_every_malformed_frame_is_refused_with_its_reason_never_an_exception(data: bytes, reason: str) -> None:
    assert batch.is_frame(data)
    refusal = batch.split(data)
    assert isinstance(refusal, str) and reason in refusal


def test_each_part_of_a_frame_still_goes_through_every_check_of_decode() -> None:
    parts = batch.split(MAGIC + envelope(0) + b"\nnot json\n[1]")
    assert isinstance(parts, list) and len(parts) == 3
    assert proto.decode(parts[0]).type == "ping"
    for bad in parts[1:]:
        with pytest.raises(RemoteProtocolError):
            proto.decode(bad)
    assert len(batch.split(MAGIC + b"\n".join([b"{}"] * MAX_PARTS))) == MAX_PARTS  # the cap itself is fine


def test_the_write_budget_allows_limit_writes_in_any_window() -> None:
    budget = WriteBudget(3, 10.0)
    for t in (0.0, 1.0, 2.0):
        assert budget.wait(t) == 0.0
        budget.spend(t)
    assert budget.used(2.0) == 3 and budget.wait(2.0) == 8.0 and budget.wait(9.5) == 0.5
    assert budget.wait(10.0) == 0.0 and budget.used(10.0) == 2
    with pytest.raises(ValueError):
        WriteBudget(0, 1.0)
    with pytest.raises(ValueError):
        WriteBudget(1, 0.0)


# ---- the outbox --------------------------------------------------------------------------------------------


async def test_a_lone_message_goes_as_itself_at_once() -> None:
    transport = HeldTransport()
    transport.gate.set()
    outbox = Outbox(transport)
    await outbox.send(PEER, envelope(0))
    assert transport.sent == [(PEER, envelope(0))]
    assert outbox.stats()["frames_sent"] == 1 and outbox.stats()["payloads_sent"] == 1


async def test_messages_that_wait_for_a_send_in_flight_go_together_as_one_frame_in_order() -> None:
    transport = HeldTransport()
    outbox = Outbox(transport)
    first = asyncio.create_task(outbox.send(PEER, envelope(0)))
    await settle()
    assert transport.sent == [(PEER, envelope(0))]  # in flight
    rest = [asyncio.create_task(outbox.send(PEER.upper().replace("0X", "0x"), envelope(n))) for n in (1, 2, 3)]
    other = asyncio.create_task(outbox.send(OTHER, envelope(9)))  # another peer is not held up
    await settle()
    assert len(transport.sent) == 2 and transport.sent[1] == (OTHER, envelope(9))
    assert outbox.queued == 3 and not any(t.done() for t in rest)
    transport.gate.set()
    await asyncio.wait_for(asyncio.gather(first, other, *rest), 10)
    assert transport.sent[2] == (PEER, batch.join([envelope(1), envelope(2), envelope(3)]))
    stats = outbox.stats()
    assert (stats["frames_sent"], stats["payloads_sent"], stats["payloads_per_frame"]) == (3, 5, 5 / 3)
    assert outbox.queued == 0 and not outbox._queues


async def test_a_failing_frame_send_fails_every_message_in_it_and_the_next_send_works() -> None:
    transport = HeldTransport()
    outbox = Outbox(transport)
    first = asyncio.create_task(outbox.send(PEER, envelope(0)))
    await settle()
    rest = [asyncio.create_task(outbox.send(PEER, envelope(n))) for n in (1, 2)]
    await settle()
    transport.fail = TransportError("the network refused it")
    transport.gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True), 10)
    assert all(isinstance(r, TransportError) for r in results)
    assert len(transport.sent) == 2 and outbox.stats()["frames_failed"] == 2
    transport.fail = None
    await outbox.send(PEER, envelope(3))
    assert transport.sent[-1] == (PEER, envelope(3)) and outbox.stats()["frames_sent"] == 1


async def test_a_caller_that_stops_waiting_takes_its_message_out_of_the_queue() -> None:
    transport = HeldTransport()
    outbox = Outbox(transport)
    first = asyncio.create_task(outbox.send(PEER, envelope(0)))
    await settle()
    gone, kept = (asyncio.create_task(outbox.send(PEER, envelope(n))) for n in (1, 2))
    await settle()
    gone.cancel()
    await settle()
    transport.gate.set()
    await asyncio.wait_for(asyncio.gather(first, kept), 10)
    assert [data for _, data in transport.sent] == [envelope(0), envelope(2)]


async def test_with_batching_off_every_message_is_its_own_send_at_once() -> None:
    transport = HeldTransport()
    outbox = Outbox(transport, batch=False)
    sends = [asyncio.create_task(outbox.send(PEER, envelope(n))) for n in range(3)]
    await settle()
    assert [data for _, data in transport.sent] == [envelope(n) for n in range(3)]  # all in flight together
    transport.gate.set()
    await asyncio.wait_for(asyncio.gather(*sends), 10)
    assert outbox.stats()["payloads_per_frame"] == 1.0


async def test_a_spent_write_budget_holds_the_fourth_frame_and_what_queues_meanwhile_goes_with_it() -> None:
    transport = HeldTransport()
    transport.gate.set()
    clock, sleeps = Clock(), Sleeps()
    outbox = Outbox(transport, budget=WriteBudget(3, 10.0), clock=clock, sleep=sleeps)
    for n in range(3):
        clock.now = float(n)
        await outbox.send(PEER, envelope(n))
    waiting = [asyncio.create_task(outbox.send(PEER, envelope(n))) for n in (3, 4)]
    waiting.append(asyncio.create_task(outbox.send(OTHER, envelope(5))))
    await settle()
    assert len(transport.sent) == 3 and outbox.queued == 3
    assert sleeps.asked == [8.0, 8.0]  # one drain per peer, each waiting for the oldest write to leave the window
    assert outbox.stats()["writes_in_window"] == 3 and outbox.stats()["write_limit"] == 3
    waiting.append(asyncio.create_task(outbox.send(PEER, envelope(6))))
    await settle()
    clock.now = 10.0  # the write at 0.0 leaves the window: one more may go
    sleeps.wake()
    await settle()
    assert transport.sent[3] == (PEER, batch.join([envelope(3), envelope(4), envelope(6)]))
    assert len(transport.sent) == 4 and sleeps.asked == [8.0, 8.0, 1.0]  # the other peer waits on
    clock.now = 11.0
    sleeps.wake()
    await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert transport.sent[4] == (OTHER, envelope(5))
    stats = outbox.stats()
    assert (stats["frames_sent"], stats["payloads_sent"], stats["writes_in_window"]) == (5, 7, 3)
    assert stats["budget_waits"] == 2 and stats["budget_wait_s"] == 10.0 - 2.0 + 11.0 - 2.0


async def test_a_network_gives_its_transports_its_send_policy() -> None:
    assert XmtpNetwork("local").send_policy == SendPolicy(True, WRITE_LIMIT, WRITE_WINDOW) == SendPolicy(
        True, 3000, 300.0)
    assert XmtpNetwork("local", write_limit=None, batch=False).send_policy == SendPolicy(False, None)
    assert MemoryNetwork().send_policy == SendPolicy(True, None)
    net = MemoryNetwork(write_limit=5, write_window=1.0)
    transport = await net.open(Identity.generate(), Path("."), lambda _: None)
    assert transport.send_policy.write_limit == 5
    outbox = Outbox.for_transport(transport, TaskSet())
    assert outbox.budget == WriteBudget(5, 1.0)
    await transport.close()


# ---- agents --------------------------------------------------------------------------------------------------


async def test_two_agents_on_the_memory_network_still_pass_calls_and_count_what_they_sent(tmp_path: Path) -> None:
    net = MemoryNetwork()
    alice = AsyncAgent("alice", network=net, data_dir=tmp_path / "alice")
    bob = AsyncAgent("bob", network=net, data_dir=tmp_path / "bob")

    @alice.skill()
    async def echo(text: str) -> dict[str, str]:
        return {"text": text}

    alice.set_trust(bob.wallet, TrustTier.KNOWN)
    assert bob.stats()["outbox"] is None
    async with alice, bob:
        results = await asyncio.gather(*(bob.call(alice.wallet, "echo", {"text": str(n)}) for n in range(8)))
        assert results == [{"text": str(n)} for n in range(8)]
        status = await alice._control._status({})  # type: ignore[union-attr]
        assert status["outbox"]["payloads_sent"] >= 8 and "outbox" not in status["rate_limits"]
    sent = bob.stats()["outbox"]
    assert sent["payloads_sent"] >= 8 and sent["write_limit"] is None and sent["batch"] is True
    assert set(bob.stats()) == {"dropped", "tracked_peers", "outbox", "away"}
    alice.close()
    bob.close()


async def test_a_strangers_frame_is_split_and_each_part_is_charged_as_one_message(tmp_path: Path) -> None:
    net = MemoryNetwork()
    clock = Clock()
    clock.now = START  # the rate limiter's clock: it never moves, so no bucket refills
    alice = AsyncAgent("alice", network=net, data_dir=tmp_path / "alice", clock=clock)
    stranger = Identity.generate()
    answers: list[dict[str, Any]] = []
    transport = await net.open(stranger, tmp_path / "stranger",
                               lambda incoming: answers.extend(_messages(incoming)))
    async with alice:
        pings = [proto.encode(proto.request("ping", {"message": str(n)}, sender=stranger.address,
                                            recipient=alice.wallet, now_ms=int(START * 1000))) for n in range(15)]
        await transport.send(alice.wallet, batch.join(pings))
        await transport.send(alice.wallet, MAGIC + b"{}\n")  # refused whole: charged once, never answered
        assert alice._runtime is not None
        await settle()  # the network hands the frames over on the next turns of the loop
        await alice._runtime._link.tasks.idle(10)
        await settle()
        assert sorted(a["body"]["message"] for a in answers) == sorted(str(n) for n in range(10))  # the burst: 10
        assert alice.stats()["dropped"]["over_budget"] == 6  # 5 pings and the bad frame
    await transport.close()
    alice.close()


def _messages(incoming: Incoming) -> list[dict[str, Any]]:
    parts = batch.split(incoming.data) if batch.is_frame(incoming.data) else [incoming.data]
    assert isinstance(parts, list)
    return [json.loads(p) for p in parts]


@pytest.mark.integration
async def test_sixteen_concurrent_calls_over_xmtp_put_fewer_than_1_2_messages_per_call_on_the_wire(
        xmtp_node: DevnetServer, tmp_path: Path) -> None:
    network = XmtpNetwork("local")
    alice = AsyncAgent("alice", network=network, data_dir=tmp_path / "alice", passphrase="")
    bob = AsyncAgent("bob", network=network, data_dir=tmp_path / "bob", passphrase="")

    @alice.skill()
    async def echo(text: str) -> dict[str, str]:
        return {"text": text}

    alice.set_trust(bob.wallet, TrustTier.KNOWN)
    async with alice, bob:
        assert await bob.call(alice.wallet, "echo", {"text": "first"}) == {"text": "first"}  # makes the DM
        assert alice._runtime is not None
        await alice._runtime._link.tasks.idle(10)

        def frames() -> int:
            return sum(a.stats()["outbox"]["frames_sent"] for a in (alice, bob))

        before = frames()
        results = await asyncio.gather(*(bob.call(alice.wallet, "echo", {"text": str(n)}) for n in range(16)))
        assert results == [{"text": str(n)} for n in range(16)]
        await alice._runtime._link.tasks.idle(10)
        per_call = (frames() - before) / 16
        assert per_call < 1.2, (per_call, alice.stats()["outbox"], bob.stats()["outbox"])
        assert bob.stats()["outbox"]["payloads_per_frame"] > 1.0
        assert bob.stats()["outbox"]["write_limit"] == 3000


def test_coworker_status_prints_the_write_budget_the_running_agent_used() -> None:
    from coworker.cli.agents import _writes_line

    outbox = {"frames_sent": 123, "payloads_sent": 412, "write_window_s": 300.0, "write_limit": 3000,
              "writes_in_window": 123, "budget_wait_s": 0.0}
    assert _writes_line(outbox, "local") == ("writes:    XMTP writes: 123 of 3000 in the last 300 s "
                                             "(412 messages in 123 sends)")
    unlimited = {**outbox, "write_limit": None, "writes_in_window": None}
    assert _writes_line(unlimited, "memory") == "writes:    412 messages in 123 sends, no write limit on memory"
    assert _writes_line(None, "local") is None and _writes_line({"frames_sent": "x"}, "local") is None
