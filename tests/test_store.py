"""Store contract: what the runtime relies on, checked on the SQLite implementation (file and in-memory)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from coworker import StoreError, TrustTier
from coworker.store.records import CallRecord, Store, TaskRecord, TrustRequest
from coworker.store.sqlite import MIGRATIONS, SQLiteStore

A = "0xAbCdEf0123456789aBcDeF0123456789AbCdEf01"


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = SQLiteStore(tmp_path / "s.db" if request.param == "file" else ":memory:")
    yield s
    s.close()


def test_trust_defaults_to_untrusted_and_is_keyed_case_insensitively(store: Store) -> None:
    assert store.trust_tier(A) == TrustTier.UNTRUSTED
    store.set_trust(A.lower(), TrustTier.INTERNAL, 1.0)
    assert store.trust_tier(A.upper().replace("0X", "0x")) == TrustTier.INTERNAL
    store.set_trust(A, TrustTier.KNOWN, 2.0)
    assert store.trusted_peers() == [(A.lower(), TrustTier.KNOWN)]
    store.set_trust(A, TrustTier.UNTRUSTED, 3.0)
    assert store.trusted_peers() == []


async def test_closing_inside_a_loop_commits_and_a_scheduled_commit_finds_nothing_to_do(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", commit_delay=0)
    store.set_trust(A, TrustTier.KNOWN, 1.0)  # schedules a commit for the next loop turn
    store.close()
    await asyncio.sleep(0)  # the scheduled commit runs against the closed store: no error
    reopened = SQLiteStore(tmp_path / "s.db")
    assert reopened.trust_tier(A) == TrustTier.KNOWN
    reopened.close()


def test_trust_requests_are_kept_once_per_wallet_and_popped(store: Store) -> None:
    first = TrustRequest(A, TrustTier.INTERNAL, "first", "1" * 32, 1.0)
    assert store.add_trust_request(first) == first
    assert store.add_trust_request(TrustRequest(A, TrustTier.PRIVILEGED, "more", "2" * 32, 2.0)) == first
    lower = TrustRequest(A, TrustTier.KNOWN, "less", "3" * 32, 3.0)
    assert store.add_trust_request(lower) == lower  # a higher tier never replaces a waiting request, a lower one does
    (only,) = store.trust_requests()
    assert (only.tier, only.reason) == (TrustTier.KNOWN, "less")
    assert store.pop_trust_request(A.lower()) == only
    assert store.pop_trust_request(A) is None
    assert store.trust_requests() == []


def test_message_ids_are_remembered_once(store: Store) -> None:
    assert store.remember("a" * 32, 10_000, 0)
    assert not store.remember("a" * 32, 10_000, 0)
    assert store.remember("b" * 32, 10_000, 0)


def test_tasks_round_trip_and_summarise_as_calls(store: Store) -> None:
    task = TaskRecord("c" * 32, "in", A, "echo", "working", {"text": "hi"}, 5.0, version="1.0.0",
                      last_activity=5.0, attempts=1, request_bytes=100)
    assert store.add_task(task)
    assert not store.add_task(task)  # the key (direction, peer, id) is taken
    store.update_task(task, state="completed", output={"echo": "hi"}, duration_ms=1.5, response_bytes=200,
                      receipt={"signature": "0x00"})
    assert task.state == "completed"
    stored = store.task("in", "c" * 32, A.upper().replace("0X", "0x"))
    assert stored == task
    assert store.task("in", "c" * 32) == task  # the owner's view: any caller
    assert store.task("out", "c" * 32) is None
    assert store.tasks(state="completed") == [task] and store.tasks(direction="out") == []
    assert store.live_tasks("in") == []
    assert store.calls() == [CallRecord("c" * 32, "in", A, "echo", "completed", None, 5.0, 1.5, 100, 200)]
    assert store.call_counts() == {"in:completed": 1}
    with pytest.raises(ValueError, match="not task fields"):
        store.update_task(task, colour="red")


def test_task_ids_are_found_by_their_first_digits_in_both_directions(store: Store) -> None:
    for task_id, direction, peer in (("ab1" + "0" * 29, "out", A), ("ab2" + "0" * 29, "in", A),
                                     ("ab2" + "0" * 29, "in", "0x" + "11" * 20), ("cd" + "0" * 30, "out", A)):
        assert store.add_task(TaskRecord(task_id, direction, peer, "echo", "working", {}, 5.0))
    assert store.task_ids_starting("ab") == (2, ["ab1" + "0" * 29, "ab2" + "0" * 29])  # an id served twice counts once
    assert store.task_ids_starting("ab", limit=1) == (2, ["ab1" + "0" * 29])
    assert store.task_ids_starting("cd" + "0" * 30) == (1, ["cd" + "0" * 30])
    assert store.task_ids_starting("ef") == (0, [])


def test_peers_standing_and_settings_round_trip(store: Store) -> None:
    store.touch_peer(A, 1.0)
    store.touch_peer(A, 2.0, name="alice", card={"skills": []})
    store.touch_peer(A, 3.0)
    peer = store.peer(A.lower())
    assert peer is not None and (peer.name, peer.card, peer.first_seen, peer.last_seen) == (
        "alice", {"skills": []}, 1.0, 3.0)
    store.set_standing(A, "granted", TrustTier.KNOWN, 1.0)
    assert store.standing(A) == ("granted", TrustTier.KNOWN)
    store.set_setting("k", "v")
    assert store.get_setting("k") == "v" and store.get_setting("none") is None


async def test_writes_inside_a_loop_share_one_commit_on_the_next_turn(tmp_path: Path) -> None:
    writer, reader = SQLiteStore(tmp_path / "s.db", commit_delay=0), SQLiteStore(tmp_path / "s.db")
    writer.set_trust(A, TrustTier.KNOWN, 1.0)
    writer.set_setting("x", "1")
    assert reader.trust_tier(A) == TrustTier.UNTRUSTED  # not committed yet
    await asyncio.sleep(0)  # one loop turn: the scheduled commit runs
    assert reader.trust_tier(A) == TrustTier.KNOWN and reader.get_setting("x") == "1"
    writer.close()
    reader.close()


async def test_writes_within_the_commit_window_are_committed_together(tmp_path: Path) -> None:
    writer, reader = SQLiteStore(tmp_path / "s.db", commit_delay=60), SQLiteStore(tmp_path / "s.db")
    writer.set_trust(A, TrustTier.KNOWN, 1.0)
    await asyncio.sleep(0)
    assert reader.trust_tier(A) == TrustTier.UNTRUSTED  # still inside the window
    writer.flush()
    assert reader.trust_tier(A) == TrustTier.KNOWN
    writer.close()
    reader.close()


def test_state_survives_reopening_and_migrations_are_recorded(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "s.db")
    first.set_trust(A, TrustTier.PRIVILEGED, 1.0)
    first.close()
    again = SQLiteStore(tmp_path / "s.db")
    assert again.trust_tier(A) == TrustTier.PRIVILEGED
    again.close()
    import sqlite3

    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer CoWorker"):
        SQLiteStore(tmp_path / "s.db")


def test_a_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        SQLiteStore(path)


def test_calls_of_schema_1_become_tasks(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO calls VALUES (?, 'in', ?, 'echo', 'refused', 'ACCESS_DENIED', 5.0, 0.0, 90, 80)",
               ("d" * 32, A))
    db.commit()
    db.close()
    store = SQLiteStore(path)
    (task,) = store.tasks()
    assert (task.id, task.peer, task.skill, task.state, task.error_code) == ("d" * 32, A, "echo", "rejected",
                                                                            "ACCESS_DENIED")
    assert store.task("in", "d" * 32, A) == task
    store.close()


def test_peers_marked_for_mcp_are_kept_once_in_order_and_survive_reopening(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "s.db")
    b = "0x" + "b" * 40
    assert first.pin_peer(A, 1.0) and first.pin_peer(b, 2.0)
    assert not first.pin_peer(A.lower(), 3.0)  # marked already, whatever the case
    first.close()
    again = SQLiteStore(tmp_path / "s.db")
    assert again.pinned_peers() == [A, b]
    assert again.unpin_peer(A.upper().replace("0X", "0x")) and not again.unpin_peer(A)
    assert again.pinned_peers() == [b]
    again.close()
