"""The database schema, as numbered migrations applied in order (``PRAGMA user_version`` records how many ran)."""

from __future__ import annotations

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
    # 2: calls become durable tasks (both directions); collaborations
    """
    CREATE TABLE tasks (
        id             TEXT NOT NULL,          -- the caller's task id, also the idempotency key
        direction      TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        peer           TEXT NOT NULL,          -- lower-case wallet of the other side
        address        TEXT NOT NULL,          -- its checksummed address
        skill          TEXT NOT NULL,
        version        TEXT,
        state          TEXT NOT NULL,
        input          TEXT NOT NULL,          -- JSON
        output         TEXT,                   -- JSON, once completed
        error_code     TEXT,
        error_message  TEXT,
        error_path     TEXT,
        created_at     REAL NOT NULL,
        updated_at     REAL NOT NULL,
        last_activity  REAL NOT NULL,          -- start or last progress: the timeout counts from here
        timeout        REAL,
        cap            REAL,
        attempts       INTEGER NOT NULL DEFAULT 0,
        duration_ms    REAL NOT NULL DEFAULT 0,
        request_bytes  INTEGER NOT NULL DEFAULT 0,
        response_bytes INTEGER NOT NULL DEFAULT 0,
        receipt        TEXT,                   -- JSON, signed by the provider
        receipt_valid  INTEGER,                -- caller side: did the receipt verify
        PRIMARY KEY (direction, peer, id)
    );
    CREATE UNIQUE INDEX tasks_out_id ON tasks (id) WHERE direction = 'out';
    CREATE INDEX tasks_created ON tasks (created_at);
    CREATE INDEX tasks_state ON tasks (direction, state);
    INSERT INTO tasks (id, direction, peer, address, skill, state, input, error_code, created_at, updated_at,
                       last_activity, attempts, duration_ms, request_bytes, response_bytes)
        SELECT id, direction, lower(peer), peer, skill,
               CASE status WHEN 'refused' THEN 'rejected' WHEN 'timeout' THEN 'expired' ELSE status END,
               '{}', error_code, started_at, started_at, started_at, 1, duration_ms, request_bytes,
               response_bytes
        FROM calls;
    DROP TABLE calls;
    CREATE TABLE collaborations (
        id          TEXT PRIMARY KEY,
        peer        TEXT NOT NULL,             -- checksummed address of the other agent
        goal        TEXT NOT NULL,
        state       TEXT NOT NULL,
        record      TEXT NOT NULL,             -- JSON: plan, steps and their outcomes
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE INDEX collaborations_created ON collaborations (created_at);
    """,
    # 3: indexes for the lookups that scanned: a served task by id (get_result) and task ids by prefix (both
    # directions' ids, in two partial indexes: each row is in one), and the newest tasks of one direction and
    # state without a sort; the (direction, state) index is a prefix of the new one. A served task keeps the id of
    # the message that brought it: that message delivered again is a duplicate, dropped (the task key
    # de-duplicates calls, so a call.request keeps no row of its own in the replay defence's table)
    """
    ALTER TABLE tasks ADD COLUMN request_id TEXT;
    CREATE INDEX tasks_in_id ON tasks (id) WHERE direction = 'in';
    CREATE INDEX tasks_listing ON tasks (direction, state, created_at);
    DROP INDEX tasks_state;
    """,
    # 4: CoWorker 1.0 peers: the wire format each peer speaks (as its latest message came), and for a task that
    # came or went in 1.0 the correlation id its answer must echo
    """
    ALTER TABLE peers ADD COLUMN protocol TEXT;
    ALTER TABLE tasks ADD COLUMN v1_correlation TEXT;
    """,
    # 5: the owner's choice, per skill name, to hide a skill from every peer or expose it; a name with no row is
    # exposed. A table rather than settings: one row per name, so "record it only if none is recorded yet" (a
    # skill folder found for the first time) is one INSERT OR IGNORE, and each choice keeps its own time
    """
    CREATE TABLE skill_visibility (
        name        TEXT PRIMARY KEY,
        hidden      INTEGER NOT NULL,
        updated_at  REAL NOT NULL
    );
    """,
    # 6: the peers the owner marks for MCP: ``coworker mcp`` offers their skills as tools. A table of its own
    # rather than a column of peers: a peer may be marked before we ever exchanged a message with it
    """
    CREATE TABLE mcp_pins (
        wallet      TEXT PRIMARY KEY,          -- lower-case address
        address     TEXT NOT NULL,             -- checksummed address
        pinned_at   REAL NOT NULL
    );
    """,
    # 7: the trust audit trail: every change of our tier for a peer (by the owner or the auto-accept policy), every
    # request a peer made of us and the owner's denials, and every answer a peer gave to our requests. Only the
    # newest rows are kept (see SQLiteStore.TRUST_AUDIT_KEPT); the wallet index serves one peer's history
    """
    CREATE TABLE trust_audit (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        at          REAL NOT NULL,
        wallet      TEXT NOT NULL,             -- lower-case address
        address     TEXT NOT NULL,             -- checksummed address
        event       TEXT NOT NULL,             -- set, requested, denied, granted, refused, pending
        old_tier    INTEGER,
        new_tier    INTEGER,
        by          TEXT NOT NULL              -- owner, policy or peer
    );
    CREATE INDEX trust_audit_wallet ON trust_audit (wallet, seq);
    """,
    # 8: the groups we were invited to or created, and where we stand in each: joined, ignored (an invitation from
    # a peer held below KNOWN: nothing in it is read), left, removed. Kept after leaving: a post in a group we left
    # or ignore is dropped with that reason
    """
    CREATE TABLE groups (
        id          TEXT PRIMARY KEY,          -- the network's conversation id
        name        TEXT NOT NULL,
        description TEXT NOT NULL,
        inviter     TEXT NOT NULL,             -- checksummed address of who created it or added us (us: ours)
        state       TEXT NOT NULL CHECK (state IN ('joined', 'ignored', 'left', 'removed')),
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    """,
)
