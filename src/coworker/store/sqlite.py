"""The agent's state in SQLite: :class:`SQLiteStore` implements :class:`~coworker.store.records.Store`. All SQL
lives here and in :mod:`coworker.store.migrations`.

One piece: every statement on the agent's database, over one connection whose transactions, group commits and
checkpoints they share; split up, each part would have to reach into the others' connection state.

Theory of operation. One SQLite database per agent, in WAL mode, so that the CLI and the dashboard can read
(and set trust) while the agent serves. Schema changes are numbered migrations applied in order and recorded in
``PRAGMA user_version``.

Commits are grouped: inside a running event loop a write opens a transaction (if none is open) and schedules
one commit ``commit_delay`` seconds later (default 2 ms), so that the writes of every message handled in that
window share one commit (group commit: a commit costs ~40 us, a row ~5 us). Outside a loop every write commits at
once; ``flush()`` commits now and ``close()`` commits before closing. A crash can lose at most the last window of
bookkeeping. Code that must not lose a write (a task before its request leaves, the idempotency key before a
skill runs, an outcome before its answer leaves) awaits :meth:`SQLiteStore.sync`: the commit it waits for runs at
the next turn of the event loop and is shared by every coroutine that asked for one meanwhile (with 64 calls in
flight, one commit serves them all instead of three commits each). Other processes wait at most one window for
the write lock.

Checkpoints (folding the WAL back into the database) run in cycles, every :data:`CHECKPOINT_EVERY` commits. A
worker thread with its own connection copies the bulk (PASSIVE: it never blocks a writer; on the event loop it
would stall every call in flight). Under constant writes that alone never catches up - new commits arrive while
it copies, and SQLite starts the WAL file over only once every frame has been copied - so the file would grow
without end. At the first commit after the worker is done, our own connection therefore copies the tail it left
(what was committed meanwhile: cheap), nothing is written meanwhile, the next write starts the WAL over, and
``journal_size_limit`` cuts the file back to :data:`WAL_SIZE_LIMIT`. Should the file still pass that limit
(writes outpacing the worker), the commit that passes it waits for the worker and copies the rest at once: the
file never holds more than the limit and one commit. A reader in another process (the CLI, the dashboard) keeps
the frames it may still read from being copied: no checkpoint waits for it (on the event loop that would stall
everything); it is said once, the WAL grows while the reader reads, and the next cycle catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from coworker._errors import StoreError
from coworker._listeners import Listeners
from coworker.core.protocol import is_address
from coworker.core.trust import TrustTier
from coworker.core.wallets import checksum
from coworker.store.migrations import MIGRATIONS
from coworker.store.records import (
    CallRecord,
    CollaborationRecord,
    GroupRecord,
    PeerRecord,
    TaskRecord,
    TrustAuditEntry,
    TrustRequest,
)

log = logging.getLogger("coworker.store")

PRUNE_EVERY = 1000  # remember-seen inserts between two deletions of expired ids
CHECKPOINT_EVERY = 200  # commits between two WAL checkpoints
WAL_SIZE_LIMIT = 4_000_000  # bytes of WAL file kept (journal_size_limit), and the most it holds beyond one commit
REFUSALS_KEPT = 1000  # refused calls kept (the latest ones): strangers may send as many as they like
PRUNE_EVERY_REFUSALS = 100  # refused calls stored between two deletions of the oldest beyond REFUSALS_KEPT
TRUST_AUDIT_KEPT = 10_000  # trust audit rows kept (the newest ones)
PRUNE_EVERY_AUDITS = 100  # trust audit rows written between two deletions of the oldest beyond TRUST_AUDIT_KEPT
# What a peer's answer to our trust request is called in the audit trail ("denied" there is the owner's refusal)
_STANDING_EVENTS = {"granted": "granted", "pending": "pending", "denied": "refused"}


def _key(wallet: str) -> str:
    return wallet.lower()


def _address(wallet: str) -> str:
    """The checksummed form of a wallet address (what is not one is kept as given)."""
    return checksum(wallet) if is_address(wallet) else wallet


class SQLiteStore:
    """SQLite implementation of :class:`Store`. ``path`` may be ``":memory:"`` for tests."""

    def __init__(self, path: Path | str, *, commit_delay: float = 0.002) -> None:
        self.path = path
        self.commit_delay = commit_delay
        # Change counters of this connection (other processes' writes are not seen), for pages that refresh when
        # they move: trust (set_trust, set_standing), tasks (a task stored or changed), collaborations (saved)
        self.trust_changes = 0
        self.task_changes = 0
        self.collab_changes = 0
        self._trust_listeners = Listeners("a trust listener of the store")
        self._change_listeners = Listeners("a change listener of the store")
        self._grouped = False  # outside an event loop: writes go in one transaction (see _together)
        if path != ":memory:":
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            if not p.exists():
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA wal_autocheckpoint=0")  # our own cycle instead: see the docstring
            self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the database {path}: {exc}") from None
        self._commit_scheduled = False
        self._sync_due = False  # a commit for sync() waiters is scheduled
        self._sync_turns = 0  # commits made for sync() waiters so far
        self._sync_failure: tuple[int, StoreError] | None = None  # the latest such commit that failed, and why
        self._closed = False
        self._commits = 0
        self._checkpointer: threading.Thread | None = None
        self._inserts_since_prune = 0
        self._refusals_since_prune = 0
        self._audits_since_prune = 0
        self._cycle_started = 0  # commits when the last checkpoint cycle began
        self._tail_due = False  # the worker's checkpoint runs: copy what it left at the first commit after it
        self._wal_held = False  # the last checkpoint on our connection could not copy every frame

    # ---- plumbing -----------------------------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(f"database {self.path} is from a newer CoWorker (schema {version})")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in script.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            if self._grouped:
                return self._db.execute(sql, params)  # committed with the others (see _together)
            self.flush()
            cursor = self._db.execute(sql, params)  # committed at once (autocommit)
            self._committed()
            return cursor
        if not self._db.in_transaction:
            self._db.execute("BEGIN")
        if not self._commit_scheduled:
            self._commit_scheduled = True
            if self.commit_delay > 0:
                loop.call_later(self.commit_delay, self.flush)
            else:
                loop.call_soon(self.flush)
        return self._db.execute(sql, params)

    @contextlib.contextmanager
    def _together(self) -> Iterator[None]:
        """The writes made inside share one commit: a change and its audit row. Inside an event loop they do
        anyway (one transaction per commit window, nothing awaited between them); outside one they go in one
        transaction here, rolled back if one fails."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            yield
            return
        if self._grouped:
            yield
            return
        self.flush()
        self._db.execute("BEGIN")
        self._grouped = True
        try:
            yield
        except BaseException:
            self._grouped = False
            self._db.execute("ROLLBACK")
            raise
        self._grouped = False
        self._db.execute("COMMIT")
        self._committed()

    def flush(self) -> None:
        """Commit pending writes now. A commit scheduled before :meth:`close` finds nothing left to do."""
        self._commit_scheduled = False
        if not self._closed and self._db.in_transaction:
            self._db.execute("COMMIT")
            self._committed()

    async def sync(self) -> None:
        """Return once everything written so far is committed: by one commit at the next turn of the event loop,
        shared by everything that awaits this meanwhile (group commit).

        The commit is scheduled (once per turn) before the waiting coroutine yields, and the loop runs its
        callbacks in the order they were scheduled, so each waiter resumes right after the commit: one turn.

        Raises:
            StoreError: the commit failed (the writes are not durable).
        """
        if not self._db.in_transaction:
            return
        self.commit_soon()
        turn = self._sync_turns
        await asyncio.sleep(0)  # resumed after _commit_for_waiters, scheduled before this yield
        if self._sync_turns == turn:  # cannot happen: the loop runs callbacks in order
            raise StoreError("the commit this waited for did not run")
        if self._sync_failure is not None and self._sync_failure[0] == turn + 1:
            raise self._sync_failure[1]

    def commit_soon(self) -> None:
        """Schedule the commit :meth:`sync` waits for (once per turn of the loop), without waiting for it: a
        coroutine started after this call and awaiting :meth:`sync` at its start finds it done."""
        if self._db.in_transaction and not self._sync_due:
            self._sync_due = True
            asyncio.get_running_loop().call_soon(self._commit_for_waiters)

    def _commit_for_waiters(self) -> None:
        self._sync_due = False
        self._sync_turns += 1
        try:
            self.flush()
        except sqlite3.Error as exc:
            failure = StoreError(f"cannot commit to the database {self.path}: {exc}")
            self._sync_failure = (self._sync_turns, failure)
            log.error("%s", failure)

    def _committed(self) -> None:
        """After each commit: one step of the checkpoint cycle (see the module's docstring)."""
        self._commits += 1
        if self.path == ":memory:":
            return
        worker = self._checkpointer if self._checkpointer is not None and self._checkpointer.is_alive() else None
        cycle_due = self._commits - self._cycle_started >= CHECKPOINT_EVERY
        if self._wal_size() > WAL_SIZE_LIMIT and (cycle_due or not self._wal_held):
            if worker is not None:
                worker.join()  # writes outpace the worker: the writer waits for it (copying, no lock waits)
            self._cycle_started, self._tail_due = self._commits, False
            self._checkpoint_tail()
        elif worker is not None:
            return
        elif self._tail_due:
            self._tail_due = False
            self._checkpoint_tail()
        elif cycle_due:
            self._cycle_started, self._tail_due = self._commits, True
            self._checkpoint_in_background()

    def _wal_size(self) -> int:
        try:
            return os.path.getsize(f"{self.path}-wal")
        except OSError:
            return 0

    def _checkpoint_tail(self) -> None:
        """Copy on our connection what the worker's checkpoint left (what was committed while it ran), so that
        the next write starts the WAL over; said once when a reader keeps frames from being copied."""
        try:
            busy, frames, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            busy, frames, copied = 1, 0, 0
            log.warning("WAL checkpoint of %s failed: %s", self.path, exc)
        held = bool(busy) or copied < frames
        if held and not self._wal_held:
            log.warning("the WAL of %s is %d bytes and a checkpoint could copy only %d of its %d frames: another "
                        "connection holds them (a reader, or its checkpoint); it will be tried again", self.path,
                        self._wal_size(), copied, frames)
        self._wal_held = held

    def _checkpoint_in_background(self) -> None:
        """Fold the WAL back into the database on a worker thread with its own connection: a checkpoint takes
        milliseconds, which on the event loop would stall every call in flight. PASSIVE never blocks writers."""

        def checkpoint() -> None:
            try:
                db = sqlite3.connect(str(self.path), timeout=1)
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                finally:
                    db.close()
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint of %s failed: %s", self.path, exc)

        self._checkpointer = threading.Thread(target=checkpoint, name="coworker-checkpoint", daemon=True)
        self._checkpointer.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Commit and close."""
        if self._closed:
            return
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=10)
        with contextlib.suppress(sqlite3.Error):
            self.flush()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._closed = True
        self._db.close()

    # ---- trust --------------------------------------------------------------------------------------------

    def trust_tier(self, wallet: str) -> TrustTier:
        row = self._db.execute("SELECT tier FROM trust WHERE wallet = ?", (_key(wallet),)).fetchone()
        return TrustTier(row[0]) if row else TrustTier.UNTRUSTED

    def set_trust(self, wallet: str, tier: TrustTier, now: float, *, by: str = "owner") -> None:
        """Set our tier for ``wallet``, recorded in the audit trail (as ``set``, in the same commit) ``by``
        ``"owner"`` or ``"policy"`` (auto-accepted). Every call is recorded, the tier already held too: each is
        a decision someone made (the runtime sets a tier only when it changes)."""
        old = self.trust_tier(wallet)
        with self._together():
            self._write("INSERT INTO trust (wallet, tier, updated_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (wallet) DO UPDATE SET tier = excluded.tier, updated_at = excluded.updated_at",
                        (_key(wallet), int(tier), now))
            self._audit(now, wallet, "set", old, tier, by)
        self._trust_changed()

    def _audit(self, now: float, wallet: str, event: str, old: TrustTier | None, new: TrustTier | None,
               by: str) -> None:
        """One row of the trust audit trail; the oldest beyond :data:`TRUST_AUDIT_KEPT` are deleted every
        :data:`PRUNE_EVERY_AUDITS` rows (by the primary key: cheap)."""
        self._write('INSERT INTO trust_audit (at, wallet, address, event, old_tier, new_tier, "by") '
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", (now, _key(wallet), _address(wallet), event,
                                                     None if old is None else int(old),
                                                     None if new is None else int(new), by))
        self._audits_since_prune += 1
        if self._audits_since_prune >= PRUNE_EVERY_AUDITS:
            self._audits_since_prune = 0
            self._write("DELETE FROM trust_audit WHERE seq <= (SELECT MAX(seq) FROM trust_audit) - ?",
                        (TRUST_AUDIT_KEPT,))

    def trust_audit(self, limit: int = 100, wallet: str | None = None) -> list[TrustAuditEntry]:
        """The trust audit trail newest first, of every peer or of ``wallet`` (see :class:`TrustAuditEntry`)."""
        where, params = ("WHERE wallet = ? ", (_key(wallet),)) if wallet is not None else ("", ())
        rows = self._db.execute(f'SELECT seq, at, address, event, old_tier, new_tier, "by" FROM trust_audit {where}'
                                f"ORDER BY seq DESC LIMIT ?", (*params, limit)).fetchall()
        return [TrustAuditEntry(r[0], r[1], r[2], r[3], None if r[4] is None else TrustTier(r[4]),
                                None if r[5] is None else TrustTier(r[5]), r[6]) for r in rows]

    def add_trust_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the writer's thread) after each trust change made here: our tier for a peer
        (:meth:`set_trust`) or a peer's answer to our trust request (:meth:`set_standing`); an exception it raises is
        logged and goes no further."""
        self._trust_listeners.add(listener)

    def remove_trust_listener(self, listener: Callable[[], None]) -> None:
        self._trust_listeners.remove(listener)

    def _trust_changed(self) -> None:
        self.trust_changes += 1
        if self._trust_listeners:
            self._trust_listeners()
        if self._change_listeners:
            self._change_listeners()

    def add_change_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (on the writer's thread, after the write) each time :attr:`trust_changes`,
        :attr:`task_changes` or :attr:`collab_changes` moves. It runs on the call path: it must be cheap (set an
        event, wake a waiter); an exception it raises is logged and goes no further."""
        self._change_listeners.add(listener)

    def remove_change_listener(self, listener: Callable[[], None]) -> None:
        self._change_listeners.remove(listener)

    def trusted_peers(self) -> list[tuple[str, TrustTier]]:
        """Peers we hold above UNTRUSTED, highest tier first."""
        rows = self._db.execute(
            "SELECT COALESCE(p.address, t.wallet), t.tier FROM trust t LEFT JOIN peers p USING (wallet) "
            "WHERE t.tier > 0 ORDER BY t.tier DESC, t.wallet").fetchall()
        return [(r[0], TrustTier(r[1])) for r in rows]

    def add_trust_request(self, req: TrustRequest) -> TrustRequest:
        """Keep a peer's request for approval, one per peer; the request now waiting.

        A new request replaces a waiting one only when it asks for the same tier or a lower one: what the owner
        has seen listed is never raised by a request that arrives before the approval. A request kept is
        recorded in the audit trail (``requested``, by ``peer``) in the same commit."""
        with self._together():
            cur = self._write("INSERT INTO trust_requests (wallet, address, tier, reason, request_id, received_at) "
                              "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (wallet) DO UPDATE SET tier = excluded.tier, "
                              "reason = excluded.reason, request_id = excluded.request_id, "
                              "received_at = excluded.received_at WHERE excluded.tier <= trust_requests.tier",
                              (_key(req.wallet), req.wallet, int(req.tier), req.reason, req.request_id,
                               req.received_at))
            if cur.rowcount == 1:
                self._audit(req.received_at, req.wallet, "requested", self.trust_tier(req.wallet), req.tier, "peer")
        waiting = self._trust_request(req.wallet)
        assert waiting is not None
        return waiting

    def trust_requests(self) -> list[TrustRequest]:
        rows = self._db.execute("SELECT address, tier, reason, request_id, received_at FROM trust_requests "
                                "ORDER BY received_at").fetchall()
        return [TrustRequest(r[0], TrustTier(r[1]), r[2], r[3], r[4]) for r in rows]

    def _trust_request(self, wallet: str) -> TrustRequest | None:
        row = self._db.execute("SELECT address, tier, reason, request_id, received_at FROM trust_requests "
                               "WHERE wallet = ?", (_key(wallet),)).fetchone()
        return None if row is None else TrustRequest(row[0], TrustTier(row[1]), row[2], row[3], row[4])

    def pop_trust_request(self, wallet: str, *, denied_at: float | None = None,
                          by: str = "owner") -> TrustRequest | None:
        """Take ``wallet``'s pending request off the list (None when there is none). With ``denied_at`` it was
        denied (``by`` the owner) then: recorded in the audit trail (``denied``) in the same commit."""
        request = self._trust_request(wallet)
        if request is not None:
            with self._together():
                self._write("DELETE FROM trust_requests WHERE wallet = ?", (_key(wallet),))
                if denied_at is not None:
                    self._audit(denied_at, request.wallet, "denied", self.trust_tier(wallet), request.tier, by)
        return request

    def set_standing(self, wallet: str, state: str, tier: TrustTier, now: float) -> None:
        """Record a peer's answer to our trust request (``granted``, ``pending``, ``denied``); an answer that
        differs from its previous one goes in the audit trail (``granted``, ``pending``, ``refused``, by
        ``peer``) in the same commit: a peer repeating itself adds no rows."""
        before = self.standing(wallet)
        with self._together():
            self._write("INSERT INTO standing (wallet, state, tier, updated_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (wallet) DO UPDATE SET state = excluded.state, tier = excluded.tier, "
                        "updated_at = excluded.updated_at", (_key(wallet), state, int(tier), now))
            if before != (state, tier):
                self._audit(now, wallet, _STANDING_EVENTS.get(state, state), None if before is None else before[1],
                            tier, "peer")
        self._trust_changed()

    def standing(self, wallet: str) -> tuple[str, TrustTier] | None:
        row = self._db.execute("SELECT state, tier FROM standing WHERE wallet = ?", (_key(wallet),)).fetchone()
        return (row[0], TrustTier(row[1])) if row else None

    # ---- peers --------------------------------------------------------------------------------------------

    def peer_protocol(self, wallet: str) -> str | None:
        """The wire format the peer's latest message came in (``"2"``, ``"1.0"``), or None before any."""
        row = self._db.execute("SELECT protocol FROM peers WHERE wallet = ?", (_key(wallet),)).fetchone()
        return str(row[0]) if row and row[0] is not None else None

    def peers_by_protocol(self) -> dict[str, int]:
        """How many peers spoke each wire format (``"2"``, ``"1.0"``) in their latest messages."""
        rows = self._db.execute("SELECT protocol, COUNT(*) FROM peers WHERE protocol IS NOT NULL "
                                "GROUP BY protocol").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def set_peer_protocol(self, address: str, protocol: str, now: float) -> None:
        self._write("INSERT INTO peers (wallet, address, name, protocol, first_seen, last_seen) "
                    "VALUES (?, ?, '', ?, ?, ?) ON CONFLICT (wallet) DO UPDATE SET protocol = excluded.protocol",
                    (_key(address), address, protocol, now, now))

    def touch_peer(self, address: str, now: float, name: str | None = None,
                   card: dict[str, Any] | None = None) -> None:
        self._write(
            "INSERT INTO peers (wallet, address, name, card, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (wallet) DO UPDATE SET last_seen = excluded.last_seen, "
            "name = COALESCE(NULLIF(?, ''), peers.name), card = COALESCE(?, peers.card)",
            (_key(address), address, name or "", json.dumps(card) if card is not None else None, now, now,
             name or "", json.dumps(card) if card is not None else None))

    def peer(self, wallet: str) -> PeerRecord | None:
        row = self._db.execute("SELECT address, name, card, first_seen, last_seen FROM peers WHERE wallet = ?",
                               (_key(wallet),)).fetchone()
        return self._peer(row) if row else None

    def peers(self) -> list[PeerRecord]:
        rows = self._db.execute("SELECT address, name, card, first_seen, last_seen FROM peers "
                                "ORDER BY last_seen DESC").fetchall()
        return [self._peer(r) for r in rows]

    @staticmethod
    def _peer(row: tuple[Any, ...]) -> PeerRecord:
        return PeerRecord(row[0], row[1], json.loads(row[2]) if row[2] else None, row[3], row[4])

    # ---- replay defence -----------------------------------------------------------------------------------

    def remember(self, message_id: str, expires_at_ms: int, now_ms: int) -> bool:
        """Record a message id; False when it was already seen (a replay or a duplicate)."""
        cur = self._write("INSERT OR IGNORE INTO seen (id, expires_at) VALUES (?, ?)", (message_id, expires_at_ms))
        if cur.rowcount == 0:
            return False
        self._inserts_since_prune += 1
        if self._inserts_since_prune >= PRUNE_EVERY:
            self._inserts_since_prune = 0
            self._write("DELETE FROM seen WHERE expires_at < ?", (now_ms,))
        return True

    # ---- tasks --------------------------------------------------------------------------------------------

    def add_task(self, task: TaskRecord) -> bool:
        """Insert a task; False (and nothing written) when one with its key exists already."""
        cur = self._write(_INSERT_TASK, (
            _key(task.peer), task.id, task.direction, task.peer, task.skill, task.version, task.state,
            _json(task.input), _json_or_none(task.output), task.error_code, task.error_message, task.error_path,
            task.created_at, task.updated_at, task.last_activity, task.timeout, task.cap, task.attempts,
            task.duration_ms, task.request_bytes, task.response_bytes, _json_or_none(task.receipt),
            None if task.receipt_valid is None else int(task.receipt_valid), task.request_id, task.v1_correlation))
        if cur.rowcount != 1:
            return False
        self.task_changes += 1
        if self._change_listeners:
            self._change_listeners()
        return True

    def add_refusal(self, task: TaskRecord) -> bool:
        """Insert a call refused before it ran (as :meth:`add_task`); only the latest :data:`REFUSALS_KEPT` are
        kept, the oldest deleted first, every :data:`PRUNE_EVERY_REFUSALS` insertions."""
        added = self.add_task(task)
        self._refusals_since_prune += 1
        if self._refusals_since_prune >= PRUNE_EVERY_REFUSALS:
            self._refusals_since_prune = 0
            self._write("DELETE FROM tasks WHERE direction = 'in' AND state = 'rejected' AND rowid NOT IN "
                        "(SELECT rowid FROM tasks WHERE direction = 'in' AND state = 'rejected' "
                        "ORDER BY created_at DESC, rowid DESC LIMIT ?)", (REFUSALS_KEPT,))
        return added

    def task(self, direction: str, task_id: str, peer: str | None = None) -> TaskRecord | None:
        """A task by id: ours (``out``) by id alone, a served one (``in``) by its caller and id (or the first
        served one with that id when ``peer`` is None)."""
        # each direction's id index (partial) finds the few rows with that id
        if direction == "in" and peer is None:
            row = self._db.execute(f"SELECT {_TASK_SELECT} FROM tasks INDEXED BY tasks_in_id "
                                   f"WHERE direction = 'in' AND id = ? LIMIT 1", (task_id,)).fetchone()
        elif direction == "out":
            row = self._db.execute(f"SELECT {_TASK_SELECT} FROM tasks INDEXED BY tasks_out_id "
                                   f"WHERE direction = 'out' AND id = ?", (task_id,)).fetchone()
        else:
            row = self._db.execute(f"SELECT {_TASK_SELECT} FROM tasks WHERE direction = 'in' AND peer = ? "
                                   f"AND id = ?", (_key(peer or ""), task_id)).fetchone()
        return _task(row) if row else None

    def update_task(self, task: TaskRecord, **changes: Any) -> None:
        """Change fields of ``task``, in the database and on the object."""
        names = tuple(changes)
        sql = _UPDATES.get(names)
        if sql is None:
            unknown = set(changes) - set(_TASK_COLUMNS) - {"peer", "receipt_valid"}
            if unknown:
                raise ValueError(f"not task fields: {sorted(unknown)}")
            columns = [_TASK_COLUMN.get(name, name) for name in names]
            sql = _UPDATES[names] = (f"UPDATE tasks SET {', '.join(f'{c} = ?' for c in columns)} "
                                     f"WHERE direction = ? AND peer = ? AND id = ?")
        for name, value in changes.items():
            setattr(task, name, value)
        self._write(sql, (*(_task_value(_TASK_COLUMN.get(n, n), v) for n, v in changes.items()),
                          task.direction, _key(task.peer), task.id))
        self.task_changes += 1
        if self._change_listeners:
            self._change_listeners()

    def tasks(self, direction: str | None = None, state: str | None = None, limit: int = 20) -> list[TaskRecord]:
        """Tasks newest first, optionally of one direction and one state. Each query walks an index in order and
        stops after ``limit`` rows; a state of both directions is the newest of each direction's, merged."""
        if state is not None and direction is None:
            rows = [row for d in ("in", "out") for row in self._newest(
                "WHERE direction = ? AND state = ? ", (d, state), limit)]
            rows.sort(key=lambda row: (row[1], row[0]), reverse=True)  # (created_at, rowid), as each query
            return [_task(row[2:]) for row in rows[:limit]]
        params: tuple[Any, ...]
        if state is not None:  # (direction, state, created_at): the index's order
            clause, params = "WHERE direction = ? AND state = ? ", (direction, state)
        elif direction is not None:  # "+": the newest first by created_at, keeping the rows of that direction
            clause, params = "WHERE +direction = ? ", (direction,)
        else:
            clause, params = "", ()
        return [_task(row[2:]) for row in self._newest(clause, params, limit)]

    def task_page(self, *, direction: str | None = None, state: str | None = None, peer: str | None = None,
                  skill: str | None = None, limit: int = 50, before: float | None = None) -> list[TaskRecord]:
        """One page of tasks newest first (by ``created_at``), filtered by direction, state, peer (any case) and
        skill; ``before``: only tasks created before that time (the last ``created_at`` of the previous page).

        Without a filter, or by direction and state, each query walks an index in order (``tasks_created``,
        ``tasks_listing``) and stops after ``limit`` rows: milliseconds at 100,000 tasks. A peer or skill filter
        keeps the rows of the time-ordered walk that match (a rare one walks further)."""
        if state is not None and direction is None:
            rows = [row for d in ("in", "out") for row in self._page(d, state, peer, skill, limit, before)]
            rows.sort(key=lambda row: (row[1], row[0]), reverse=True)  # (created_at, rowid), as each query
            return [_task(row[2:]) for row in rows[:limit]]
        return [_task(row[2:]) for row in self._page(direction, state, peer, skill, limit, before)]

    def _page(self, direction: str | None, state: str | None, peer: str | None, skill: str | None, limit: int,
              before: float | None) -> list[tuple[Any, ...]]:
        terms: list[str] = []
        params: list[Any] = []
        if state is not None:  # (direction, state, created_at): the index's order
            terms += ["direction = ?", "state = ?"]
            params += [direction, state]
        elif direction is not None:  # "+": walk tasks_created, keeping the rows of that direction
            terms.append("+direction = ?")
            params.append(direction)
        for term, value in (("+peer = ?", None if peer is None else _key(peer)), ("+skill = ?", skill),
                            ("created_at < ?", before)):
            if value is not None:
                terms.append(term)
                params.append(value)
        clause = f"WHERE {' AND '.join(terms)} " if terms else ""
        return self._newest(clause, tuple(params), limit)

    def task_stats(self, limit: int = 1000, *, now: float, window: float = 60.0) -> dict[str, Any]:
        """Figures over the newest ``limit`` tasks: ``{"made": {...}, "served": {...}, "errors_by_code": {code:
        n}, "states": {state: n}}``; ``made`` (our calls) and ``served`` each ``{"per_s": tasks created in the
        last ``window`` seconds before ``now`` / window, "p50_ms", "p95_ms", "count"}``, ``count`` their tasks
        among the newest ``limit``, the percentiles (nearest rank; None without any) over ``duration_ms`` of the
        completed ones. ``duration_ms`` measures, for a call we made, the time from the task's creation (the
        request) to its result; for one we served, the skill's run time."""
        rows = self._db.execute("SELECT direction, state, created_at, duration_ms, error_code FROM tasks "
                                "ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
        since = now - window
        errors: dict[str, int] = {}
        states: dict[str, int] = {}
        sides: dict[str, tuple[list[float], list[int]]] = {"out": ([], [0, 0]), "in": ([], [0, 0])}
        for direction, state, created_at, duration_ms, error_code in rows:
            durations, counts = sides[direction]
            counts[0] += 1
            if created_at >= since:
                counts[1] += 1
            if state == "completed":
                durations.append(duration_ms)
            if error_code is not None:
                errors[error_code] = errors.get(error_code, 0) + 1
            states[state] = states.get(state, 0) + 1

        def side(direction: str) -> dict[str, Any]:
            durations, (count, recent) = sides[direction]
            durations.sort()
            return {"per_s": recent / window if window > 0 else 0.0, "p50_ms": _rank(durations, 0.50),
                    "p95_ms": _rank(durations, 0.95), "count": count}

        return {"made": side("out"), "served": side("in"), "errors_by_code": errors, "states": states}

    def _newest(self, clause: str, params: tuple[Any, ...], limit: int) -> list[tuple[Any, ...]]:
        """Rows (rowid, created_at, task columns...) newest first."""
        return self._db.execute(f"SELECT rowid, created_at, {_TASK_SELECT} FROM tasks {clause}"
                                f"ORDER BY created_at DESC, rowid DESC LIMIT ?", (*params, limit)).fetchall()

    def task_ids_starting(self, prefix: str, limit: int = 5) -> tuple[int, list[str]]:
        """How many task ids (ours and served) start with ``prefix``, and the first ``limit`` of them."""
        # a range of each direction's id index rather than substr() over every row: every id that starts with
        # the prefix sorts between it and the prefix followed by the highest character
        ids = ("SELECT id FROM tasks INDEXED BY tasks_out_id WHERE direction = 'out' AND id >= ?1 AND id < ?2 "
               "UNION SELECT id FROM tasks INDEXED BY tasks_in_id WHERE direction = 'in' AND id >= ?1 AND id < ?2")
        params = (prefix, prefix + "\U0010ffff")
        count = self._db.execute(f"SELECT COUNT(*) FROM ({ids})", params).fetchone()[0]
        rows = self._db.execute(f"{ids} ORDER BY id LIMIT ?3", (*params, limit)).fetchall()
        return int(count), [str(r[0]) for r in rows]

    def live_tasks(self, direction: str) -> list[TaskRecord]:
        """Tasks of one direction that have not ended, oldest first."""
        rows = self._db.execute(f"SELECT {_TASK_SELECT} FROM tasks WHERE direction = ? AND state IN "
                                f"('submitted', 'working', 'input_required') ORDER BY +created_at",
                                (direction,)).fetchall()
        return [_task(r) for r in rows]

    def calls(self, limit: int = 50) -> list[CallRecord]:
        rows = self._db.execute("SELECT id, direction, address, skill, state, error_code, created_at, duration_ms, "
                                "request_bytes, response_bytes FROM tasks ORDER BY created_at DESC, rowid DESC "
                                "LIMIT ?", (limit,)).fetchall()
        return [CallRecord(*r) for r in rows]

    def call_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT direction || ':' || state, COUNT(*) FROM tasks GROUP BY 1").fetchall()
        return {r[0]: r[1] for r in rows}

    # ---- collaborations -----------------------------------------------------------------------------------

    def save_collaboration(self, collab: CollaborationRecord) -> None:
        self._write("INSERT INTO collaborations (id, peer, goal, state, record, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state, "
                    "record = excluded.record, updated_at = excluded.updated_at",
                    (collab.id, collab.peer, collab.goal, collab.state, json.dumps(collab.record),
                     collab.created_at, collab.updated_at))
        self.collab_changes += 1
        if self._change_listeners:
            self._change_listeners()

    def collaboration(self, collab_id: str) -> CollaborationRecord | None:
        row = self._db.execute("SELECT id, peer, goal, state, record, created_at, updated_at FROM collaborations "
                               "WHERE id = ?", (collab_id,)).fetchone()
        return _collaboration(row) if row else None

    def collaborations(self, limit: int = 20) -> list[CollaborationRecord]:
        rows = self._db.execute("SELECT id, peer, goal, state, record, created_at, updated_at FROM collaborations "
                                "ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [_collaboration(r) for r in rows]

    # ---- skill visibility ---------------------------------------------------------------------------------

    def hidden_skills(self) -> set[str]:
        """The names of the skills the owner hid (a name with no record, or exposed, is not among them)."""
        return {str(r[0]) for r in self._db.execute("SELECT name FROM skill_visibility WHERE hidden = 1")}

    def skill_visibility(self, name: str) -> bool | None:
        """Whether ``name`` is recorded hidden (True), exposed (False), or not recorded (None)."""
        row = self._db.execute("SELECT hidden FROM skill_visibility WHERE name = ?", (name,)).fetchone()
        return None if row is None else bool(row[0])

    def set_skill_visibility(self, name: str, hidden: bool, now: float, *, only_if_unset: bool = False) -> bool:
        """Record ``name`` as hidden or exposed; with ``only_if_unset``, only when nothing is recorded for it yet.
        Returns whether it was recorded."""
        if only_if_unset:
            cur = self._write("INSERT OR IGNORE INTO skill_visibility (name, hidden, updated_at) VALUES (?, ?, ?)",
                              (name, int(hidden), now))
        else:
            cur = self._write("INSERT INTO skill_visibility (name, hidden, updated_at) VALUES (?, ?, ?) "
                              "ON CONFLICT (name) DO UPDATE SET hidden = excluded.hidden, "
                              "updated_at = excluded.updated_at", (name, int(hidden), now))
        return cur.rowcount == 1

    # ---- peers marked for MCP -----------------------------------------------------------------------------

    def pin_peer(self, address: str, now: float) -> bool:
        """Mark a peer for ``coworker mcp``; False when it was marked already."""
        return self._write("INSERT OR IGNORE INTO mcp_pins (wallet, address, pinned_at) VALUES (?, ?, ?)",
                           (_key(address), address, now)).rowcount == 1

    def unpin_peer(self, wallet: str) -> bool:
        """Unmark a peer; False when it was not marked."""
        return self._write("DELETE FROM mcp_pins WHERE wallet = ?", (_key(wallet),)).rowcount == 1

    def pinned_peers(self) -> list[str]:
        """The checksummed addresses of the peers marked for MCP, in the order they were marked."""
        return [str(r[0]) for r in self._db.execute("SELECT address FROM mcp_pins ORDER BY pinned_at, wallet")]

    # ---- groups -------------------------------------------------------------------------------------------

    def save_group(self, group: GroupRecord) -> None:
        """Record a group (its name, description and our state in it replace an earlier record's)."""
        self._write("INSERT INTO groups (id, name, description, inviter, state, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                    "description = excluded.description, state = excluded.state, updated_at = excluded.updated_at",
                    (group.id, group.name, group.description, group.inviter, group.state, group.created_at,
                     group.updated_at))

    def set_group_state(self, group_id: str, state: str, now: float) -> bool:
        """Change our state in a recorded group; False when it is not recorded."""
        return self._write("UPDATE groups SET state = ?, updated_at = ? WHERE id = ?",
                           (state, now, group_id)).rowcount == 1

    def group(self, group_id: str) -> GroupRecord | None:
        row = self._db.execute(f"SELECT {_GROUP_COLUMNS} FROM groups WHERE id = ?", (group_id,)).fetchone()
        return GroupRecord(*row) if row else None

    def groups(self) -> list[GroupRecord]:
        """Every recorded group, newest first."""
        rows = self._db.execute(f"SELECT {_GROUP_COLUMNS} FROM groups ORDER BY created_at DESC, id").fetchall()
        return [GroupRecord(*r) for r in rows]

    # ---- settings -----------------------------------------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_setting(self, key: str, value: str) -> None:
        self._write("INSERT INTO settings (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))


_GROUP_COLUMNS = "id, name, description, inviter, state, created_at, updated_at"

# Task columns in table order (``peer`` is written from the address); the field a column holds, where the
# names differ; and the columns that hold JSON.
_TASK_COLUMNS: tuple[str, ...] = (
    "id", "direction", "address", "skill", "version", "state", "input", "output", "error_code", "error_message",
    "error_path", "created_at", "updated_at", "last_activity", "timeout", "cap", "attempts", "duration_ms",
    "request_bytes", "response_bytes", "receipt", "receipt_valid", "request_id", "v1_correlation")
_TASK_FIELD = {"address": "peer"}
_TASK_COLUMN = {"peer": "address"}
_JSON_COLUMNS = frozenset({"input", "output", "receipt"})
_TASK_SELECT = ", ".join(_TASK_COLUMNS)
_INSERT_TASK = (f"INSERT OR IGNORE INTO tasks (peer, {', '.join(_TASK_COLUMNS)}) "
                f"VALUES (?, {', '.join('?' * len(_TASK_COLUMNS))})")
_UPDATES: dict[tuple[str, ...], str] = {}  # the UPDATE statement of each set of changed fields, made once


def _rank(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile of sorted ``values`` (None when empty)."""
    if not values:
        return None
    return float(values[min(len(values) - 1, max(0, math.ceil(fraction * len(values)) - 1))])


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _task_value(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS:
        return None if value is None and column != "input" else _json(value)
    if column == "receipt_valid":
        return None if value is None else int(bool(value))
    return value


def _task(row: tuple[Any, ...]) -> TaskRecord:
    values = dict(zip(_TASK_COLUMNS, row, strict=True))
    for column in _JSON_COLUMNS:
        if values[column] is not None:
            values[column] = json.loads(values[column])
    if values["receipt_valid"] is not None:
        values["receipt_valid"] = bool(values["receipt_valid"])
    values["peer"] = values.pop("address")
    return TaskRecord(**values)


def _collaboration(row: tuple[Any, ...]) -> CollaborationRecord:
    return CollaborationRecord(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], row[6])
