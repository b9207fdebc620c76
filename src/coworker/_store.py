"""The agent's state: the ``Store`` interface and its SQLite implementation. All SQL lives here.

Theory of operation. One SQLite database per agent, in WAL mode, so that the CLI and the dashboard can read
(and set trust) while the agent serves. Schema changes are numbered migrations applied in order and recorded in
``PRAGMA user_version``.

Commits are grouped: inside a running event loop a write opens a transaction (if none is open) and schedules
one commit ``commit_delay`` seconds later (default 2 ms), so that the writes of every message handled in that
window share one commit (group commit: a commit costs ~40 us, a row ~5 us). Outside a loop every write commits at
once; ``flush()`` commits now and ``close()`` commits before closing. A crash can lose at most the last window of
bookkeeping; code that must not lose a write (e.g. an idempotency key before a skill runs) calls ``flush()``.
Other processes wait at most one window for the write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ._errors import StoreError
from ._trust import TrustTier

log = logging.getLogger("coworker.store")

MIGRATIONS: tuple[str, ...] = (
    # 1: first schema
    """
    CREATE TABLE peers (
        wallet      TEXT PRIMARY KEY,          -- lower-case address
        address     TEXT NOT NULL,             -- checksummed address
        name        TEXT NOT NULL DEFAULT '',
        card        TEXT,                      -- JSON: the skills the peer showed us
        first_seen  REAL NOT NULL,
        last_seen   REAL NOT NULL
    );
    CREATE TABLE trust (
        wallet      TEXT PRIMARY KEY,
        tier        INTEGER NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE trust_requests (
        wallet      TEXT PRIMARY KEY,
        address     TEXT NOT NULL,
        tier        INTEGER NOT NULL,
        reason      TEXT NOT NULL,
        request_id  TEXT NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE TABLE standing (                    -- what peers answered to our trust requests
        wallet      TEXT PRIMARY KEY,
        state       TEXT NOT NULL,
        tier        INTEGER NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE calls (
        id             TEXT PRIMARY KEY,
        direction      TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        peer           TEXT NOT NULL,
        skill          TEXT NOT NULL,
        status         TEXT NOT NULL,
        error_code     TEXT,
        started_at     REAL NOT NULL,
        duration_ms    REAL NOT NULL,
        request_bytes  INTEGER NOT NULL,
        response_bytes INTEGER NOT NULL
    );
    CREATE INDEX calls_started ON calls (started_at);
    CREATE TABLE seen (
        id          TEXT PRIMARY KEY,
        expires_at  INTEGER NOT NULL           -- ms since epoch
    ) WITHOUT ROWID;
    CREATE INDEX seen_expiry ON seen (expires_at);
    CREATE TABLE settings (
        key         TEXT PRIMARY KEY,
        value       TEXT NOT NULL
    );
    """,
)

PRUNE_EVERY = 1000  # remember-seen inserts between two deletions of expired ids
CHECKPOINT_EVERY = 200  # commits between two WAL checkpoints


@dataclass(frozen=True, slots=True)
class TrustRequest:
    """A pending request from a peer for a trust tier."""

    wallet: str
    tier: TrustTier
    reason: str
    request_id: str
    received_at: float


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call, made (``out``) or served (``in``)."""

    id: str
    direction: str
    peer: str
    skill: str
    status: str
    error_code: str | None
    started_at: float
    duration_ms: float
    request_bytes: int
    response_bytes: int


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """What we know of a peer."""

    wallet: str
    name: str
    card: dict[str, Any] | None
    first_seen: float
    last_seen: float


class Store(Protocol):
    """What the runtime needs to remember. ``SQLiteStore`` is the implementation."""

    def close(self) -> None: ...
    def flush(self) -> None: ...
    def trust_tier(self, wallet: str) -> TrustTier: ...
    def set_trust(self, wallet: str, tier: TrustTier, now: float) -> None: ...
    def trusted_peers(self) -> list[tuple[str, TrustTier]]: ...
    def add_trust_request(self, req: TrustRequest) -> None: ...
    def trust_requests(self) -> list[TrustRequest]: ...
    def pop_trust_request(self, wallet: str) -> TrustRequest | None: ...
    def set_standing(self, wallet: str, state: str, tier: TrustTier, now: float) -> None: ...
    def standing(self, wallet: str) -> tuple[str, TrustTier] | None: ...
    def touch_peer(self, address: str, now: float, name: str | None = None,
                   card: dict[str, Any] | None = None) -> None: ...
    def peer(self, wallet: str) -> PeerRecord | None: ...
    def peers(self) -> list[PeerRecord]: ...
    def remember(self, message_id: str, expires_at_ms: int, now_ms: int) -> bool: ...
    def record_call(self, call: CallRecord) -> None: ...
    def calls(self, limit: int = 50) -> list[CallRecord]: ...
    def call_counts(self) -> dict[str, int]: ...
    def get_setting(self, key: str) -> str | None: ...
    def set_setting(self, key: str, value: str) -> None: ...


def _key(wallet: str) -> str:
    return wallet.lower()


class SQLiteStore:
    """SQLite implementation of :class:`Store`. ``path`` may be ``":memory:"`` for tests."""

    def __init__(self, path: Path | str, *, commit_delay: float = 0.002) -> None:
        self.path = path
        self.commit_delay = commit_delay
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
            self._db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run in a worker thread, see flush()
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the database {path}: {exc}") from None
        self._commit_scheduled = False
        self._closed = False
        self._commits = 0
        self._checkpointer: threading.Thread | None = None
        self._inserts_since_prune = 0

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
            self.flush()
            return self._db.execute(sql, params)
        if not self._db.in_transaction:
            self._db.execute("BEGIN")
        if not self._commit_scheduled:
            self._commit_scheduled = True
            if self.commit_delay > 0:
                loop.call_later(self.commit_delay, self.flush)
            else:
                loop.call_soon(self.flush)
        return self._db.execute(sql, params)

    def flush(self) -> None:
        """Commit pending writes now. A commit scheduled before :meth:`close` finds nothing left to do."""
        self._commit_scheduled = False
        if not self._closed and self._db.in_transaction:
            self._db.execute("COMMIT")
            self._commits += 1
            if self._commits % CHECKPOINT_EVERY == 0:
                self._checkpoint_in_background()

    def _checkpoint_in_background(self) -> None:
        """Fold the WAL back into the database on a worker thread with its own connection: a checkpoint takes
        milliseconds, which on the event loop would stall every call in flight. PASSIVE never blocks writers."""
        if self.path == ":memory:" or (self._checkpointer is not None and self._checkpointer.is_alive()):
            return

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

    def set_trust(self, wallet: str, tier: TrustTier, now: float) -> None:
        self._write("INSERT INTO trust (wallet, tier, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (wallet) DO UPDATE SET tier = excluded.tier, updated_at = excluded.updated_at",
                    (_key(wallet), int(tier), now))

    def trusted_peers(self) -> list[tuple[str, TrustTier]]:
        """Peers we hold above UNTRUSTED, highest tier first."""
        rows = self._db.execute(
            "SELECT COALESCE(p.address, t.wallet), t.tier FROM trust t LEFT JOIN peers p USING (wallet) "
            "WHERE t.tier > 0 ORDER BY t.tier DESC, t.wallet").fetchall()
        return [(r[0], TrustTier(r[1])) for r in rows]

    def add_trust_request(self, req: TrustRequest) -> None:
        self._write("INSERT INTO trust_requests (wallet, address, tier, reason, request_id, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (wallet) DO UPDATE SET tier = excluded.tier, "
                    "reason = excluded.reason, request_id = excluded.request_id, "
                    "received_at = excluded.received_at",
                    (_key(req.wallet), req.wallet, int(req.tier), req.reason, req.request_id, req.received_at))

    def trust_requests(self) -> list[TrustRequest]:
        rows = self._db.execute("SELECT address, tier, reason, request_id, received_at FROM trust_requests "
                                "ORDER BY received_at").fetchall()
        return [TrustRequest(r[0], TrustTier(r[1]), r[2], r[3], r[4]) for r in rows]

    def pop_trust_request(self, wallet: str) -> TrustRequest | None:
        row = self._db.execute("SELECT address, tier, reason, request_id, received_at FROM trust_requests "
                               "WHERE wallet = ?", (_key(wallet),)).fetchone()
        if row is None:
            return None
        self._write("DELETE FROM trust_requests WHERE wallet = ?", (_key(wallet),))
        return TrustRequest(row[0], TrustTier(row[1]), row[2], row[3], row[4])

    def set_standing(self, wallet: str, state: str, tier: TrustTier, now: float) -> None:
        self._write("INSERT INTO standing (wallet, state, tier, updated_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (wallet) DO UPDATE SET state = excluded.state, tier = excluded.tier, "
                    "updated_at = excluded.updated_at", (_key(wallet), state, int(tier), now))

    def standing(self, wallet: str) -> tuple[str, TrustTier] | None:
        row = self._db.execute("SELECT state, tier FROM standing WHERE wallet = ?", (_key(wallet),)).fetchone()
        return (row[0], TrustTier(row[1])) if row else None

    # ---- peers --------------------------------------------------------------------------------------------

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

    # ---- calls --------------------------------------------------------------------------------------------

    def record_call(self, call: CallRecord) -> None:
        self._write("INSERT OR REPLACE INTO calls (id, direction, peer, skill, status, error_code, started_at, "
                    "duration_ms, request_bytes, response_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (call.id, call.direction, call.peer, call.skill, call.status, call.error_code, call.started_at,
                     call.duration_ms, call.request_bytes, call.response_bytes))

    def calls(self, limit: int = 50) -> list[CallRecord]:
        rows = self._db.execute("SELECT id, direction, peer, skill, status, error_code, started_at, duration_ms, "
                                "request_bytes, response_bytes FROM calls ORDER BY started_at DESC LIMIT ?",
                                (limit,)).fetchall()
        return [CallRecord(*r) for r in rows]

    def call_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT direction || ':' || status, COUNT(*) FROM calls GROUP BY 1").fetchall()
        return {r[0]: r[1] for r in rows}

    # ---- settings -----------------------------------------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_setting(self, key: str, value: str) -> None:
        self._write("INSERT INTO settings (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))
