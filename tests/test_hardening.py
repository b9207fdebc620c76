"""Attacks from hostile peers that must cost the agent a bounded amount of disk and memory, and never its service:
refused calls with big inputs, trust escalation by timing, malformed unsolicited answers, floods of progress, and a
WAL under constant writes. Everything runs on the in-memory network."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, InvalidInput, MemoryNetwork, Network, RateLimits, TrustTier
from coworker.core import protocol as proto
from coworker.runtime import caller as caller_module
from coworker.store import sqlite as sqlite_module
from coworker.store.sqlite import SQLiteStore

from .conftest import RawClient


@pytest.fixture
def network() -> Network:
    """These attacks are about what the agent keeps, not about a transport: the in-memory network only."""
    return MemoryNetwork()


def envelope(raw: RawClient, to: str, kind: str, body: dict[str, Any], *, corr: str | None = None) -> bytes:
    """A request (or, with ``corr``, an answer) from ``raw``."""
    now = int(time.time() * 1000)
    if corr is None:
        return proto.encode(proto.request(kind, body, sender=raw.wallet, recipient=to, now_ms=now))
    return proto.encode(proto.Envelope(proto.new_id(), kind, corr, raw.wallet, to, now, now + 60_000, body))


async def ping_through(raw: RawClient, agent: AsyncAgent) -> None:
    """A fresh ping answered: the agent still serves, and has handled what came before."""
    ping = envelope(raw, agent.wallet, "ping", {"message": "still there?"})
    mid = json.loads(ping)["id"]
    await raw.send(agent.wallet, ping)
    while True:
        reply = await raw.receive()
        if reply["corr"] == mid:
            assert reply["type"] == "pong"
            return


def db_path(agent: AsyncAgent) -> Path:
    path = agent.store.path
    assert isinstance(path, Path | str) and path != ":memory:"
    return Path(path)


# ---- 1. refused calls keep no input -------------------------------------------------------------------------

async def test_refused_calls_from_strangers_keep_no_input_and_a_bounded_number_of_rows(
        pair: tuple[AsyncAgent, AsyncAgent], make_raw: Callable[[], Awaitable[RawClient]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "REFUSALS_KEPT", 50)
    alice, _ = pair
    # The rate limits drop a stranger's 100 KB messages unread (tests/test_rate_limits.py); what is checked here is
    # the store's bound behind them, for an agent that lets them in.
    alice._limiter.limits = RateLimits.off()
    strangers = [await make_raw() for _ in range(4)]
    big = "x" * 100_000
    calls = 200
    for i in range(calls):
        raw = strangers[i % len(strangers)]
        await raw.send(alice.wallet, envelope(raw, alice.wallet, "call.request",
                                              {"skill": "echo", "input": {"text": big}, "task": proto.new_id()}))
    for raw in strangers:
        for _ in range(calls // len(strangers)):
            refused = await raw.receive()
            assert (refused["type"], refused["body"]["code"]) == ("call.error", "ACCESS_DENIED")
    alice.store.flush()
    with sqlite3.connect(db_path(alice)) as db:
        rows, input_bytes, error_bytes = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(input)), 0), COALESCE(SUM(length(error_message)), 0) "
            "FROM tasks WHERE direction = 'in' AND state = 'rejected'").fetchone()
    # before: 200 rows holding 20 MB of input
    assert input_bytes <= 10 * rows
    assert error_bytes <= 500 * rows
    assert rows <= 50 + sqlite_module.PRUNE_EVERY_REFUSALS


async def test_a_refused_call_keeps_no_input_and_its_error_cut_short(pair: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = pair
    with pytest.raises(InvalidInput) as refused:  # the schema's message quotes the 5,000 characters
        await bob.call(alice.wallet, "summarize", {"text": "z" * 100_000, "max_words": "y" * 5000}, timeout=5)
    assert refused.value.path == "max_words"
    (task,) = alice.list_tasks(direction="in", state="rejected")
    stored = alice.store.task("in", task["task_id"], bob.wallet)
    assert stored is not None and stored.input == {}
    assert stored.error_code == "INVALID_INPUT" and len(stored.error_message or "") <= 500


# ---- 2. approval grants what the owner saw ------------------------------------------------------------------

async def test_a_request_sent_again_for_a_higher_tier_does_not_raise_what_approval_grants(tmp_path: Path) -> None:
    net = MemoryNetwork()
    async with AsyncAgent("alice", network=net, data_dir=tmp_path / "alice") as alice, \
            AsyncAgent("bob", network=net, data_dir=tmp_path / "bob") as bob:
        assert await bob.request_trust(alice.wallet, TrustTier.KNOWN, "to collaborate") == "pending"
        (seen,) = alice.trust_requests()  # the owner reads: bob asks for KNOWN
        assert seen.tier == TrustTier.KNOWN
        assert await bob.request_trust(alice.wallet, TrustTier.PRIVILEGED, "to collaborate") == "pending"
        (still,) = alice.trust_requests()
        assert still == seen  # the waiting request stands as the owner saw it
        assert await alice.approve_trust(bob.wallet) == TrustTier.KNOWN  # before: PRIVILEGED
        assert alice.trust_tier(bob.wallet) == TrustTier.KNOWN
        # once the first is decided, a new request for more waits for its own approval
        assert await bob.request_trust(alice.wallet, TrustTier.INTERNAL, "more") == "pending"
        assert [r.tier for r in alice.trust_requests()] == [TrustTier.INTERNAL]
        assert await alice.approve_trust(bob.wallet) == TrustTier.INTERNAL
    alice.close()
    bob.close()


async def test_a_request_sent_again_for_a_lower_tier_replaces_the_waiting_one(tmp_path: Path) -> None:
    net = MemoryNetwork()
    async with AsyncAgent("alice", network=net, data_dir=tmp_path / "alice") as alice, \
            AsyncAgent("bob", network=net, data_dir=tmp_path / "bob") as bob:
        await bob.request_trust(alice.wallet, TrustTier.INTERNAL, "first")
        await bob.request_trust(alice.wallet, TrustTier.KNOWN, "less will do")
        (waiting,) = alice.trust_requests()
        assert (waiting.tier, waiting.reason) == (TrustTier.KNOWN, "less will do")
        assert await alice.approve_trust(bob.wallet) == TrustTier.KNOWN
    alice.close()
    bob.close()


# ---- 3. malformed unsolicited answers -----------------------------------------------------------------------

class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    handler = _Records()
    logger = logging.getLogger("coworker")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.parametrize("kind", ["trust.grant", "trust.deny"])
@pytest.mark.parametrize("body", [{"tier": 9}, {"tier": "admin"}, {"reason": ["not", "text"]}])
async def test_malformed_unsolicited_trust_answers_are_refused_and_logged_once(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient, logged: list[logging.LogRecord], kind: str,
        body: dict[str, Any]) -> None:
    alice, _ = pair
    for _ in range(3):
        await raw.send(alice.wallet, envelope(raw, alice.wallet, kind, body, corr=proto.new_id()))
    await ping_through(raw, alice)  # handled in order: the answers before the ping have been
    assert [r.getMessage() for r in logged if r.levelno >= logging.ERROR] == []  # before: 3 unhandled errors
    refusals = [r for r in logged if r.levelno == logging.WARNING and kind in r.getMessage()]
    assert len(refusals) == 3  # one line per message, no traceback
    assert all(r.exc_info is None for r in refusals)
    assert alice.store.standing(raw.wallet) is None


# ---- 4. a flood of progress pins no memory ------------------------------------------------------------------

async def test_a_flood_of_large_progress_reports_keeps_a_bounded_backlog_and_the_call_completes(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient, logged: list[logging.LogRecord]) -> None:
    _, bob = pair  # bob calls raw, a hostile callee
    task_id = await bob.request(raw.wallet, "flood", {}, timeout=60)
    request = await raw.receive()
    assert request["type"] == "call.request"

    def progress(seq: int, partial: str) -> bytes:
        body = {"task": task_id, "seq": seq, "index": seq - 1, "partials": [partial], "message": f"report {seq}"}
        return envelope(raw, bob.wallet, "call.progress", body, corr=request["id"])

    await raw.send(bob.wallet, progress(1, "small"))
    updates = bob.watch(task_id)  # a watcher that takes the first report, then nothing until the end
    first = await updates.__anext__()
    assert first.partials == ["small"]
    reports, size = 40, 900_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for seq in range(2, reports + 2):
            await raw.send(bob.wallet, progress(seq, chr(ord("a") + seq % 26) * size))
        await ping_through(raw, bob)
        kept_memory = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    watch = bob._runtime.watch(task_id) if bob._runtime is not None else None
    assert watch is not None
    kept = sum(len(json.dumps(event.partials)) for event in watch.backlog)
    bound = caller_module.WATCH_BUFFER_BYTES
    assert kept <= bound and kept_memory <= 2 * bound + 1_000_000  # before: 36 MB in the backlog and the queue
    assert watch.dropped > 0
    await raw.send(bob.wallet, envelope(raw, bob.wallet, "call.result", {"task": task_id, "output": {"ok": True}},
                                        corr=request["id"]))
    assert await bob.wait(task_id, timeout=10) == {"ok": True}
    rest = [update async for update in updates]
    assert 0 < len(rest) < reports and rest[-1].message == f"report {reports + 1}"  # the newest reports, in order
    assert [u.message for u in rest] == sorted((u.message for u in rest), key=lambda m: int(m.split()[1]))
    assert len([r for r in logged if "dropped" in r.getMessage()]) == 1


# ---- 5. the WAL stays bounded under constant writes ---------------------------------------------------------

@pytest.fixture
def small_wal(monkeypatch: pytest.MonkeyPatch) -> int:
    """A 1 MB WAL limit, checked every 50 commits: the same bounds with fewer writes."""
    monkeypatch.setattr(sqlite_module, "WAL_SIZE_LIMIT", 1_000_000)
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_EVERY", 50)
    return 1_000_000


def wal_size(store: SQLiteStore) -> int:
    wal = Path(f"{store.path}-wal")
    return wal.stat().st_size if wal.exists() else 0


async def test_the_wal_stays_bounded_under_constant_writes(tmp_path: Path, small_wal: int) -> None:
    store = SQLiteStore(tmp_path / "agent.db")
    peak = 0
    try:
        for i in range(6000):  # one commit each, as a busy agent makes them, with the worker checkpoints running
            store.remember(f"{i:032x}", 2**40, 0)
            store.flush()
            peak = max(peak, wal_size(store))
    finally:
        store.close()
    assert peak <= small_wal + 100_000  # the limit and one commit; before: 6,000 commits left a WAL of 61 MB


def test_a_reader_holding_the_wal_delays_its_checkpoint_only_while_it_reads(
        tmp_path: Path, small_wal: int, logged: list[logging.LogRecord]) -> None:
    store = SQLiteStore(tmp_path / "agent.db")
    reader = sqlite3.connect(tmp_path / "agent.db", isolation_level=None)
    try:
        for i in range(500):
            store.remember(f"a{i:031x}", 2**40, 0)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM seen").fetchone()  # a read transaction pins the WAL
        for i in range(3000):  # outside an event loop every write is a commit
            store.remember(f"b{i:031x}", 2**40, 0)
        held = wal_size(store)
        assert held > small_wal  # nothing can be copied past what the reader sees: the WAL grows meanwhile
        assert len([r for r in logged if "holds them" in r.getMessage()]) == 1
        reader.execute("COMMIT")
        for i in range(3000):
            store.remember(f"c{i:031x}", 2**40, 0)
        assert wal_size(store) <= small_wal  # caught up and cut back once the reader is done
    finally:
        reader.close()
        store.close()


# ---- 6. a message whose handling breaks loses that message only ---------------------------------------------

async def test_a_message_whose_handling_breaks_is_logged_and_the_agent_goes_on(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient, logged: list[logging.LogRecord],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Messages are checked as the transport delivers them (on its reading path, for XMTP): an error there must not
    # reach the transport, whatever breaks (here the store, for one message).
    alice, _ = pair
    runtime = alice._runtime
    assert runtime is not None
    real = runtime.store.remember
    broken = {"calls": 0}

    def remember(message_id: str, expires_at_ms: int, now_ms: int) -> bool:
        if broken["calls"] == 0:
            broken["calls"] += 1
            raise sqlite3.OperationalError("disk I/O error")
        return real(message_id, expires_at_ms, now_ms)

    monkeypatch.setattr(runtime.store, "remember", remember)
    await raw.send(alice.wallet, envelope(raw, alice.wallet, "ping", {"message": "lost"}))
    await ping_through(raw, alice)  # the next message is handled
    errors = [r for r in logged if r.levelno >= logging.ERROR]
    assert broken["calls"] == 1 and len(errors) == 1 and "handling a message" in errors[0].getMessage()
