"""What a dashboard reads from an agent: the message journal (every message in and out, with its verdict), the
store's change counters, a page of tasks and the figures over the latest ones."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

import coworker
from coworker import AsyncAgent, CallContext, MemoryNetwork, Network, TrustTier
from coworker.core.protocol import encode, new_id, request
from coworker.runtime.journal import Journal, JournalEntry
from coworker.store.records import TaskRecord
from coworker.store.sqlite import SQLiteStore

from .conftest import RawClient

SECRET = "tangerine-0451"  # in an input: it must appear in no journal entry


@pytest.fixture
def network() -> Network:
    """The journal is the runtime's, whatever the transport: these tests run on the memory network."""
    return MemoryNetwork()


def envelope(raw: RawClient, to: str, kind: str, body: dict[str, Any], *, message_id: str | None = None) -> bytes:
    return encode(request(kind, body, sender=raw.wallet, recipient=to, now_ms=int(time.time() * 1000),
                          message_id=message_id))


async def pong(raw: RawClient, agent: AsyncAgent) -> None:
    """A fresh ping answered: everything raw sent before it was handled."""
    mid = new_id()
    await raw.send(agent.wallet, envelope(raw, agent.wallet, "ping", {}, message_id=mid))
    while (await raw.receive())["corr"] != mid:
        pass


def seen(entries: list[JournalEntry]) -> list[tuple[str, str, str]]:
    """Oldest first: (direction, kind, verdict)."""
    return [(e.direction, e.kind, e.verdict) for e in reversed(entries)]


async def test_one_call_is_journaled_on_both_sides_without_its_input_or_output(
        pair: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = pair
    assert await bob.call(alice.wallet, "echo", {"text": SECRET}) == {"text": SECRET}
    task_id = bob.list_tasks()[0]["task_id"]
    made = bob.messages(task_id=task_id)
    assert ("out", "call.request", "sent") in seen(made) and ("in", "call.result", "handled") in seen(made)
    assert {e.peer for e in made} == {alice.wallet} and {e.task_id for e in made} == {task_id}
    request_out = next(e for e in made if e.kind == "call.request")
    assert request_out.message_id is not None and request_out.size > 0 and request_out.protocol == "2"
    served = alice.messages(task_id=task_id)
    assert seen(served)[0] == ("in", "call.request", "handled") and seen(served)[-1] == ("out", "call.result", "sent")
    assert next(e for e in served if e.kind == "call.request").message_id == request_out.message_id
    assert {e.peer for e in served} == {bob.wallet}
    assert alice.messages(peer=bob.wallet.lower()) == alice.messages(peer=bob.wallet)
    assert SECRET not in repr(bob.messages()) + repr(alice.messages())
    seq = alice.journal.seq if alice.journal is not None else 0
    assert [e.seq for e in alice.messages()] == list(range(seq, 0, -1))  # numbered from 1, newest first
    assert alice.messages(after=seq) == [] and len(alice.messages(after=seq - 2)) == 2


async def test_a_call_to_a_hidden_skill_or_from_an_untrusted_peer_shows_refused_with_its_code(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient) -> None:
    alice, bob = pair
    with pytest.raises(coworker.SkillNotFound):
        await bob.call(alice.wallet, "secret")  # INTERNAL: bob is KNOWN
    refused = next(e for e in alice.messages() if e.kind == "call.request")
    assert refused.verdict == "refused" and refused.reason.startswith("SKILL_NOT_FOUND: ")
    answer = alice.messages(task_id=refused.task_id)[0]
    assert (answer.direction, answer.kind, answer.verdict) == ("out", "call.error", "sent")
    assert answer.reason == "SKILL_NOT_FOUND" and answer.detail == {"code": "SKILL_NOT_FOUND"}
    assert bob.messages(task_id=refused.task_id)[0].detail == {"code": "SKILL_NOT_FOUND"}
    await raw.send(alice.wallet, envelope(raw, alice.wallet, "call.request", {"skill": "echo", "input": {}}))
    assert (await raw.receive())["body"]["code"] == "ACCESS_DENIED"
    (stranger,) = [e for e in alice.messages(peer=raw.wallet) if e.direction == "in"]
    assert stranger.verdict == "refused" and stranger.reason.startswith("ACCESS_DENIED: ")


async def test_invalid_input_refused_after_the_checks_gives_the_request_its_final_verdict(
        pair: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = pair
    with pytest.raises(coworker.InvalidInput):
        await bob.call(alice.wallet, "summarize", {"text": 5})
    request_in = next(e for e in alice.messages() if e.kind == "call.request")
    assert request_in.verdict == "refused" and request_in.reason.startswith("INVALID_INPUT")


async def test_forged_undecodable_and_duplicate_messages_show_why_they_were_refused_or_dropped(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient) -> None:
    alice, bob = pair
    forged = encode(request("ping", {}, sender=bob.wallet, recipient=alice.wallet, now_ms=int(time.time() * 1000)))
    await raw.send(alice.wallet, forged)
    assert (await raw.receive())["body"]["code"] == "SENDER_MISMATCH"
    await raw.send(alice.wallet, b"\xff not json")
    mid = new_id()
    ping = envelope(raw, alice.wallet, "ping", {}, message_id=mid)
    await raw.send(alice.wallet, ping)
    await raw.send(alice.wallet, ping)
    await pong(raw, alice)
    entries = [e for e in reversed(alice.messages(peer=raw.wallet)) if e.direction == "in"]
    assert [(e.kind, e.verdict) for e in entries][:4] == [("ping", "refused"), ("undecodable", "dropped"),
                                                          ("ping", "handled"), ("ping", "dropped")]
    assert entries[0].reason.startswith("SENDER_MISMATCH: ") and entries[0].peer == raw.wallet
    assert entries[1].reason.startswith("PROTOCOL_ERROR") and entries[1].message_id is None
    assert (entries[3].message_id, entries[3].reason) == (mid, "duplicate")


async def test_a_reply_nobody_waits_for_is_dropped(pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient) -> None:
    alice, _ = pair
    reply = {"coworker": 2, "id": new_id(), "type": "pong", "corr": new_id(), "from": raw.wallet,
             "to": alice.wallet, "ts": int(time.time() * 1000), "exp": int(time.time() * 1000) + 60_000, "body": {}}
    await raw.send(alice.wallet, json.dumps(reply).encode())
    await pong(raw, alice)
    (dropped,) = [e for e in alice.messages(peer=raw.wallet) if e.kind == "pong" and e.direction == "in"]
    assert dropped.verdict == "dropped" and "nobody waits" in dropped.reason


async def test_progress_is_journaled_truncated(pair: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = pair
    seen = asyncio.Event()

    @alice.skill()
    async def long_report(ctx: CallContext) -> str:
        ctx.progress(0.5, "m" * 1999)
        await asyncio.wait_for(seen.wait(), 10)  # ends once the caller has the report
        return "done"

    task_id = await bob.request(alice.wallet, "long_report")
    async with contextlib.aclosing(bob.watch(task_id)) as events:
        async for event in events:
            assert event.message == "m" * 1999
            seen.set()
            break
    assert await bob.wait(task_id, 10) == "done"
    for agent, direction in ((bob, "in"), (alice, "out")):
        (progress,) = [e for e in agent.messages() if e.kind == "call.progress" and e.direction == direction
                       and "message" in e.detail]
        assert progress.detail["progress"] == 0.5 and progress.detail["message"] == "m" * 300
        assert len(json.dumps(progress.detail)) < 2048


def test_the_journal_keeps_the_latest_entries_and_tells_listeners() -> None:
    journal = Journal(size=5, clock=lambda: 7.0)
    heard: list[int] = []
    journal.add_listener(lambda: heard.append(journal.seq))
    journal.add_listener(lambda: 1 / 0)  # a broken listener changes nothing for the others
    for n in range(12):
        journal.note("in", "0xA" if n % 2 else "0xB", "ping", n, "handled", message_id=str(n))
    assert journal.seq == 12 and heard == list(range(1, 13))
    assert [e.seq for e in journal.entries()] == [12, 11, 10, 9, 8]
    assert [e.seq for e in journal.entries(peer="0xa")] == [12, 10, 8]
    assert [e.seq for e in journal.entries(after=10)] == [12, 11]
    assert [e.seq for e in journal.entries(limit=2)] == [12, 11]
    assert journal.entries()[0].at == 7.0
    journal.note("in", "0xA", "discover", 1, "handled", message_id="m")
    journal.note("out", "0xA", "error", 1, "sent")
    journal.refused("m", "ACCESS_DENIED", "trust tier too low")
    assert (journal.entries()[1].verdict, journal.entries()[1].reason) == ("refused",
                                                                          "ACCESS_DENIED: trust tier too low")


async def test_messages_of_the_last_run_stay_readable_after_stop(tmp_path: Path) -> None:
    net = MemoryNetwork()
    a = AsyncAgent("a", network=net, data_dir=tmp_path / "a")
    b = AsyncAgent("b", network=net, data_dir=tmp_path / "b")
    assert a.journal is None and a.messages() == []
    async with a, b:
        await b.ping(a.wallet)  # the first message to a peer goes in v2 and in CoWorker 1.0: a answers the v2 one
    assert seen(a.messages()) == [("in", "ping", "handled"), ("in", "1.0:ping", "dropped"), ("out", "pong", "sent")]
    assert [e.protocol for e in reversed(a.messages())] == ["2", "1.0", "2"]
    assert a.messages()[1].reason == "the 1.0 copy of a request that came in v2 too"
    a.close()
    b.close()


# ---- the store: change counters, a page of tasks, figures -------------------------------------------------

PEERS = ["0x" + f"{n:02x}" * 20 for n in (1, 2)]


def task(n: int, *, direction: str = "out", state: str = "completed", peer: int = 0, skill: str = "echo",
         duration_ms: float = 0.0, error_code: str | None = None) -> TaskRecord:
    return TaskRecord(f"{n:032x}", direction, PEERS[peer], skill, state, {}, float(n), duration_ms=duration_ms,
                      error_code=error_code)


def test_change_counters_move_on_task_and_collaboration_writes_and_call_the_listeners() -> None:
    store = SQLiteStore(":memory:")
    calls: list[tuple[int, int, int]] = []
    store.add_change_listener(lambda: calls.append((store.task_changes, store.trust_changes, store.collab_changes)))
    store.add_change_listener(lambda: 1 / 0)  # logged; the write stands
    record = task(1)
    assert store.add_task(record) and not store.add_task(record)  # a repeat writes nothing: no change
    store.update_task(record, state="failed")
    store.add_refusal(task(2, direction="in", state="rejected"))
    store.set_trust(PEERS[0], TrustTier.KNOWN, 1.0)
    store.save_collaboration(coworker.store.records.CollaborationRecord("c", PEERS[0], "g", "running", {}, 1.0, 1.0))
    assert calls == [(1, 0, 0), (2, 0, 0), (3, 0, 0), (3, 1, 0), (3, 1, 1)]
    listener = calls.clear
    store.add_change_listener(listener)
    store.remove_change_listener(listener)
    store.update_task(record, state="completed")
    assert calls[-1] == (4, 1, 1)


def test_a_page_of_tasks_is_filtered_and_paged_newest_first() -> None:
    store = SQLiteStore(":memory:")
    for n in range(1, 41):
        store.add_task(task(n, direction="in" if n % 2 else "out", state="failed" if n % 5 == 0 else "completed",
                            peer=n % 3 == 0, skill="echo" if n % 4 else "sum"))
    assert [t.created_at for t in store.task_page(limit=3)] == [40.0, 39.0, 38.0]
    assert [t.created_at for t in store.task_page(limit=3, before=38.0)] == [37.0, 36.0, 35.0]
    assert [t.created_at for t in store.task_page(direction="in", limit=3)] == [39.0, 37.0, 35.0]
    assert [t.created_at for t in store.task_page(state="failed")] == [40.0, 35.0, 30.0, 25.0, 20.0, 15.0, 10.0, 5.0]
    assert [t.created_at for t in store.task_page(direction="out", state="failed", before=30.0)] == [20.0, 10.0]
    assert [t.created_at for t in store.task_page(peer=PEERS[1].upper().replace("0X", "0x"), limit=4)] == [
        39.0, 36.0, 33.0, 30.0]
    assert [t.created_at for t in store.task_page(skill="sum", direction="out", before=30.0)] == [28.0, 24.0, 20.0,
                                                                                               16.0, 12.0, 8.0, 4.0]
    assert store.task_page(skill="sum", peer=PEERS[0], state="failed") == [store.task("out", f"{n:032x}")
                                                                           for n in (40, 20)]


def test_task_figures_over_the_latest_tasks() -> None:
    store = SQLiteStore(":memory:")
    for n, duration in enumerate([10.0, 20.0, 30.0, 40.0, 100.0], start=1):
        store.add_task(task(n, duration_ms=duration))  # made, completed
    store.add_task(task(6, direction="in", duration_ms=5.0))
    store.add_task(task(7, direction="in", state="failed", duration_ms=999.0, error_code="SKILL_FAILED"))
    store.add_task(task(8, direction="in", state="rejected", error_code="ACCESS_DENIED"))
    store.add_task(task(9, state="working"))
    stats = store.task_stats(now=10.0, window=5.0)
    assert stats["made"] == {"per_s": 2 / 5, "p50_ms": 30.0, "p95_ms": 100.0, "count": 6}  # since 5.0: 5 and 9
    assert stats["served"] == {"per_s": 3 / 5, "p50_ms": 5.0, "p95_ms": 5.0, "count": 3}
    assert stats["errors_by_code"] == {"SKILL_FAILED": 1, "ACCESS_DENIED": 1}
    assert stats["states"] == {"completed": 6, "failed": 1, "rejected": 1, "working": 1}
    newest = store.task_stats(limit=2, now=10.0)
    assert newest["made"]["count"] == 1 and newest["made"]["p50_ms"] is None and newest["served"]["count"] == 1
    empty = SQLiteStore(":memory:").task_stats(now=0.0)
    assert empty["made"] == {"per_s": 0.0, "p50_ms": None, "p95_ms": None, "count": 0}


async def test_a_made_call_measures_request_to_result_and_a_served_one_the_skill(
        pair: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = pair

    @alice.skill()
    async def nap() -> str:
        await asyncio.sleep(0.05)  # the skill's own work
        return "done"

    await bob.call(alice.wallet, "nap")
    made, served = bob.store.tasks("out")[0], alice.store.tasks("in")[0]
    assert 50 <= served.duration_ms <= made.duration_ms
    assert bob.store.task_stats(now=time.time())["made"]["p50_ms"] == made.duration_ms


def test_a_broken_trust_listener_is_logged_and_the_change_stands(caplog: pytest.LogCaptureFixture) -> None:
    store = SQLiteStore(":memory:")
    heard: list[int] = []
    store.add_trust_listener(lambda: 1 / 0)
    store.add_trust_listener(lambda: heard.append(store.trust_changes))
    store.set_trust(PEERS[0], TrustTier.KNOWN, 1.0)  # does not raise
    assert store.trust_tier(PEERS[0]) == TrustTier.KNOWN and heard == [1]
    assert "a trust listener of the store failed" in caplog.text
