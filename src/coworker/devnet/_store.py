"""The devnet's storage: every SQL statement of the node lives in this module.

One piece: keeping all of the node's SQL (schema, migrations, queries) in one module is the point of it.

One SQLite database (WAL, file mode 0600) or, for tests, an in-memory one. The schema is created
by numbered migrations tracked with ``PRAGMA user_version``. Ids are SQLite rowids: global,
increasing, never reused (``AUTOINCREMENT``), so they serve as the clients' cursors and survive a
restart. All methods are synchronous and fast; the server calls them on its event loop thread, which
is the only thread that touches the connection.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DB_FILENAME = "devnet.sqlite3"

_MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema.
    """
    CREATE TABLE identity_updates (
        sequence_id INTEGER PRIMARY KEY AUTOINCREMENT,
        inbox_id TEXT NOT NULL,
        server_ns INTEGER NOT NULL,
        raw BLOB NOT NULL
    );
    CREATE INDEX identity_updates_inbox ON identity_updates (inbox_id, sequence_id);
    CREATE TABLE identifiers (
        kind INTEGER NOT NULL,
        identifier TEXT NOT NULL,
        inbox_id TEXT NOT NULL,
        PRIMARY KEY (kind, identifier)
    );
    CREATE TABLE key_packages (
        installation_key BLOB PRIMARY KEY,
        key_package BLOB NOT NULL,
        updated_ns INTEGER NOT NULL
    );
    CREATE TABLE group_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        group_id BLOB NOT NULL,
        created_ns INTEGER NOT NULL,
        data BLOB NOT NULL,
        data_hash BLOB NOT NULL,
        sender_hmac BLOB NOT NULL,
        should_push INTEGER NOT NULL,
        is_commit INTEGER NOT NULL
    );
    CREATE INDEX group_messages_group ON group_messages (group_id, id);
    CREATE UNIQUE INDEX group_messages_dedup ON group_messages (group_id, data_hash);
    CREATE TABLE welcomes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        installation_key BLOB NOT NULL,
        created_ns INTEGER NOT NULL,
        is_pointer INTEGER NOT NULL,
        data BLOB NOT NULL,
        hpke_public_key BLOB NOT NULL,
        wrapper_algorithm INTEGER NOT NULL,
        welcome_metadata BLOB NOT NULL
    );
    CREATE INDEX welcomes_installation ON welcomes (installation_key, id);
    CREATE TABLE commit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        group_id BLOB NOT NULL,
        entry BLOB NOT NULL,
        signature BLOB NOT NULL
    );
    CREATE INDEX commit_log_group ON commit_log (group_id, id);
    CREATE TABLE node_info (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
)


# The columns _group_message() and _welcome() read, in their order.
_GROUP_COLUMNS = "id, created_ns, group_id, data, sender_hmac, should_push, is_commit"
_WELCOME_COLUMNS = (
    "id, created_ns, installation_key, is_pointer, data, hpke_public_key, wrapper_algorithm, welcome_metadata"
)


@dataclass(frozen=True, slots=True)
class StoredIdentityUpdate:
    """An identity update as published, with its global sequence id."""

    sequence_id: int
    server_ns: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class NewGroupMessage:
    """A group message to store; the store assigns its id and time."""

    group_id: bytes
    data: bytes
    sender_hmac: bytes
    should_push: bool
    is_commit: bool


@dataclass(frozen=True, slots=True)
class StoredGroupMessage:
    """A stored group message; ``id`` is the clients' cursor."""

    id: int
    created_ns: int
    group_id: bytes
    data: bytes
    sender_hmac: bytes
    should_push: bool
    is_commit: bool


@dataclass(frozen=True, slots=True)
class NewWelcome:
    """A welcome (v1) or welcome pointer to store for one installation."""

    installation_key: bytes
    is_pointer: bool
    data: bytes
    hpke_public_key: bytes
    wrapper_algorithm: int
    welcome_metadata: bytes


@dataclass(frozen=True, slots=True)
class StoredWelcome:
    """A stored welcome; ``id`` is the clients' cursor."""

    id: int
    created_ns: int
    installation_key: bytes
    is_pointer: bool
    data: bytes
    hpke_public_key: bytes
    wrapper_algorithm: int
    welcome_metadata: bytes


@dataclass(frozen=True, slots=True)
class NewCommitLogEntry:
    """A commit log entry to store for a group."""

    group_id: bytes
    entry: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class StoredCommitLogEntry:
    """A stored commit log entry; ``sequence_id`` is its cursor."""

    sequence_id: int
    group_id: bytes
    entry: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class StoreCounts:
    """What the devnet holds, for ``coworker devnet status``."""

    inboxes: int
    installations: int
    conversations: int
    messages: int
    welcomes: int


class Store:
    """The devnet's SQLite database.

    Args:
        path: the database file, created with mode 0600 if missing; ``None`` for an in-memory
            database (tests: nothing survives ``close``).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is None:
            self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        else:
            if not path.exists():
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            os.chmod(path, 0o600)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()
        if path is not None:
            # SQLite creates the WAL and shared-memory files with the process umask.
            for suffix in ("-wal", "-shm"):
                sidecar = path.with_name(path.name + suffix)
                if sidecar.exists():
                    os.chmod(sidecar, 0o600)

    @staticmethod
    def read_counts(path: Path) -> StoreCounts | None:
        """Counts of a database file, opened read-only (for ``status``); None if there is none."""
        if not path.exists():
            return None
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return _counts(db)
        except sqlite3.OperationalError:
            return None  # not migrated yet
        finally:
            db.close()

    @classmethod
    def in_dir(cls, data_dir: Path) -> Store:
        """Open (or create) the database file inside ``data_dir``."""
        return cls(data_dir / DB_FILENAME)

    def close(self) -> None:
        """Close the connection; the file (if any) keeps everything."""
        self._db.close()

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            self._db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")

    # --- identity -------------------------------------------------------------------------------

    def add_identity_update(
        self,
        inbox_id: str,
        raw: bytes,
        now_ns: int,
        associate: Iterable[tuple[int, str]] = (),
        dissociate: Iterable[tuple[int, str]] = (),
    ) -> int:
        """Store an identity update and apply its identifier changes; return its sequence id.

        ``associate`` and ``dissociate`` are ``(kind, identifier)`` pairs that now map, or no
        longer map, to ``inbox_id``.
        """
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO identity_updates (inbox_id, server_ns, raw) VALUES (?, ?, ?)",
                (inbox_id, now_ns, raw),
            )
            for kind, identifier in associate:
                self._db.execute(
                    "INSERT OR REPLACE INTO identifiers (kind, identifier, inbox_id) VALUES (?, ?, ?)",
                    (kind, identifier, inbox_id),
                )
            for kind, identifier in dissociate:
                self._db.execute(
                    "DELETE FROM identifiers WHERE kind = ? AND identifier = ? AND inbox_id = ?",
                    (kind, identifier, inbox_id),
                )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def identity_updates(self, inbox_id: str, after_sequence_id: int) -> list[StoredIdentityUpdate]:
        """The updates of one inbox with a sequence id greater than ``after_sequence_id``."""
        rows = self._db.execute(
            "SELECT sequence_id, server_ns, raw FROM identity_updates"
            " WHERE inbox_id = ? AND sequence_id > ? ORDER BY sequence_id",
            (inbox_id, after_sequence_id),
        ).fetchall()
        return [StoredIdentityUpdate(int(r[0]), int(r[1]), bytes(r[2])) for r in rows]

    def inbox_id(self, kind: int, identifier: str) -> str | None:
        """The inbox an identifier belongs to, if any."""
        row = self._db.execute(
            "SELECT inbox_id FROM identifiers WHERE kind = ? AND identifier = ?", (kind, identifier)
        ).fetchone()
        return None if row is None else str(row[0])

    # --- key packages ---------------------------------------------------------------------------

    def put_key_package(self, installation_key: bytes, key_package: bytes, now_ns: int) -> None:
        """Store an installation's key package, replacing its previous one."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO key_packages (installation_key, key_package, updated_ns) VALUES (?, ?, ?)",
                (installation_key, key_package, now_ns),
            )

    def key_packages(self, installation_keys: Sequence[bytes]) -> list[bytes | None]:
        """The latest key package of each installation, in order; ``None`` where unknown."""
        result: list[bytes | None] = []
        for key in installation_keys:
            row = self._db.execute("SELECT key_package FROM key_packages WHERE installation_key = ?", (key,)).fetchone()
            result.append(None if row is None else bytes(row[0]))
        return result

    # --- group messages -------------------------------------------------------------------------

    def add_group_messages(self, messages: Sequence[NewGroupMessage], now_ns: int) -> list[StoredGroupMessage]:
        """Store a batch of group messages atomically; return them with their ids.

        A message identical to one already stored in its group (a client's retry) is not stored
        again and not returned, so it is not delivered twice.
        """
        stored: list[StoredGroupMessage] = []
        with self._transaction():
            for m in messages:
                digest = hashlib.sha256(m.data).digest()
                duplicate = self._db.execute(
                    "SELECT 1 FROM group_messages WHERE group_id = ? AND data_hash = ?",
                    (m.group_id, digest),
                ).fetchone()
                if duplicate is not None:
                    continue
                cursor = self._db.execute(
                    "INSERT INTO group_messages"
                    " (group_id, created_ns, data, data_hash, sender_hmac, should_push, is_commit)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (m.group_id, now_ns, m.data, digest, m.sender_hmac, int(m.should_push), int(m.is_commit)),
                )
                assert cursor.lastrowid is not None
                stored.append(
                    StoredGroupMessage(
                        cursor.lastrowid, now_ns, m.group_id, m.data, m.sender_hmac, m.should_push, m.is_commit
                    )
                )
        return stored

    def group_messages(
        self, group_id: bytes, cursor: int, descending: bool, limit: int, max_bytes: int
    ) -> list[StoredGroupMessage]:
        """One page of a group's messages after (ascending) or before (descending) ``cursor``.

        A cursor of 0 means the start (ascending) or the end (descending). The page holds at most
        ``limit`` messages and stops early once ``max_bytes`` of payload are reached (always at
        least one message), so a page stays far below the clients' 25 MiB decoding limit.
        """
        if descending:
            sql = (
                f"SELECT {_GROUP_COLUMNS} FROM group_messages"
                " WHERE group_id = ? AND (? = 0 OR id < ?) ORDER BY id DESC LIMIT ?"
            )
        else:
            sql = f"SELECT {_GROUP_COLUMNS} FROM group_messages WHERE group_id = ? AND id > ? ORDER BY id LIMIT ?"
        page: list[StoredGroupMessage] = []
        total = 0
        for row in self._db.execute(sql, _page_params(group_id, cursor, descending, limit)):
            message = _group_message(row)
            total += len(message.data)
            if page and total > max_bytes:
                break
            page.append(message)
        return page

    def group_messages_after(self, group_ids: Sequence[bytes], cursor: int) -> list[StoredGroupMessage]:
        """All messages of these groups with an id greater than ``cursor``, by id (stream catch-up)."""
        if not group_ids:
            return []
        marks = ",".join("?" * len(group_ids))
        rows = self._db.execute(
            f"SELECT {_GROUP_COLUMNS} FROM group_messages WHERE group_id IN ({marks}) AND id > ? ORDER BY id",
            (*group_ids, cursor),
        ).fetchall()
        return [_group_message(r) for r in rows]

    def newest_group_message(self, group_id: bytes) -> StoredGroupMessage | None:
        """The newest message of a group, if it has any."""
        row = self._db.execute(
            f"SELECT {_GROUP_COLUMNS} FROM group_messages WHERE group_id = ? ORDER BY id DESC LIMIT 1",
            (group_id,),
        ).fetchone()
        return None if row is None else _group_message(row)

    # --- welcomes -------------------------------------------------------------------------------

    def add_welcomes(self, welcomes: Sequence[NewWelcome], now_ns: int) -> list[StoredWelcome]:
        """Store a batch of welcomes atomically; return them with their ids."""
        stored: list[StoredWelcome] = []
        with self._transaction():
            for w in welcomes:
                cursor = self._db.execute(
                    "INSERT INTO welcomes (installation_key, created_ns, is_pointer, data, hpke_public_key,"
                    " wrapper_algorithm, welcome_metadata) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        w.installation_key,
                        now_ns,
                        int(w.is_pointer),
                        w.data,
                        w.hpke_public_key,
                        w.wrapper_algorithm,
                        w.welcome_metadata,
                    ),
                )
                assert cursor.lastrowid is not None
                stored.append(
                    StoredWelcome(
                        cursor.lastrowid,
                        now_ns,
                        w.installation_key,
                        w.is_pointer,
                        w.data,
                        w.hpke_public_key,
                        w.wrapper_algorithm,
                        w.welcome_metadata,
                    )
                )
        return stored

    def welcomes(self, installation_key: bytes, cursor: int, descending: bool, limit: int) -> list[StoredWelcome]:
        """One page of an installation's welcomes (same cursor rules as :meth:`group_messages`)."""
        if descending:
            sql = (
                f"SELECT {_WELCOME_COLUMNS} FROM welcomes WHERE installation_key = ? AND (? = 0 OR id < ?)"
                " ORDER BY id DESC LIMIT ?"
            )
        else:
            sql = f"SELECT {_WELCOME_COLUMNS} FROM welcomes WHERE installation_key = ? AND id > ? ORDER BY id LIMIT ?"
        rows = self._db.execute(sql, _page_params(installation_key, cursor, descending, limit)).fetchall()
        return [_welcome(r) for r in rows]

    def welcomes_after(self, installation_keys: Sequence[bytes], cursor: int) -> list[StoredWelcome]:
        """All welcomes of these installations with an id greater than ``cursor``, by id."""
        if not installation_keys:
            return []
        marks = ",".join("?" * len(installation_keys))
        rows = self._db.execute(
            f"SELECT {_WELCOME_COLUMNS} FROM welcomes WHERE installation_key IN ({marks}) AND id > ? ORDER BY id",
            (*installation_keys, cursor),
        ).fetchall()
        return [_welcome(r) for r in rows]

    # --- commit log -----------------------------------------------------------------------------

    def add_commit_log_entries(self, entries: Sequence[NewCommitLogEntry]) -> None:
        """Append entries to their groups' commit logs."""
        with self._transaction():
            self._db.executemany(
                "INSERT INTO commit_log (group_id, entry, signature) VALUES (?, ?, ?)",
                [(e.group_id, e.entry, e.signature) for e in entries],
            )

    def commit_log(self, group_id: bytes, cursor: int, descending: bool, limit: int) -> list[StoredCommitLogEntry]:
        """One page of a group's commit log (same cursor rules as :meth:`group_messages`)."""
        if descending:
            sql = (
                "SELECT id, group_id, entry, signature FROM commit_log"
                " WHERE group_id = ? AND (? = 0 OR id < ?) ORDER BY id DESC LIMIT ?"
            )
        else:
            sql = (
                "SELECT id, group_id, entry, signature FROM commit_log"
                " WHERE group_id = ? AND id > ? ORDER BY id LIMIT ?"
            )
        rows = self._db.execute(sql, _page_params(group_id, cursor, descending, limit)).fetchall()
        return [StoredCommitLogEntry(int(r[0]), bytes(r[1]), bytes(r[2]), bytes(r[3])) for r in rows]

    # --- status ---------------------------------------------------------------------------------

    def counts(self) -> StoreCounts:
        """How many inboxes, installations, conversations, messages and welcomes are stored."""
        return _counts(self._db)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


def _counts(db: sqlite3.Connection) -> StoreCounts:
    def one(sql: str) -> int:
        return int(db.execute(sql).fetchone()[0])

    return StoreCounts(
        inboxes=one("SELECT COUNT(DISTINCT inbox_id) FROM identity_updates"),
        installations=one("SELECT COUNT(*) FROM key_packages"),
        conversations=one("SELECT COUNT(DISTINCT group_id) FROM group_messages"),
        messages=one("SELECT COUNT(*) FROM group_messages"),
        welcomes=one("SELECT COUNT(*) FROM welcomes"),
    )


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _group_message(row: Any) -> StoredGroupMessage:
    return StoredGroupMessage(
        id=int(row[0]),
        created_ns=int(row[1]),
        group_id=bytes(row[2]),
        data=bytes(row[3]),
        sender_hmac=bytes(row[4]),
        should_push=bool(row[5]),
        is_commit=bool(row[6]),
    )


def _welcome(row: Any) -> StoredWelcome:
    return StoredWelcome(
        id=int(row[0]),
        created_ns=int(row[1]),
        installation_key=bytes(row[2]),
        is_pointer=bool(row[3]),
        data=bytes(row[4]),
        hpke_public_key=bytes(row[5]),
        wrapper_algorithm=int(row[6]),
        welcome_metadata=bytes(row[7]),
    )


def _page_params(key: bytes, cursor: int, descending: bool, limit: int) -> tuple[object, ...]:
    return (key, cursor, cursor, limit) if descending else (key, cursor, limit)
