"""What the store keeps, as values: trust requests and the trust audit trail, tasks, collaborations, peers; and
the :class:`Store` interface that :class:`~coworker.store.sqlite.SQLiteStore` implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from coworker.core.trust import TrustTier


@dataclass(frozen=True, slots=True)
class TrustRequest:
    """A pending request from a peer for a trust tier."""

    wallet: str
    tier: TrustTier
    reason: str
    request_id: str
    received_at: float


@dataclass(frozen=True, slots=True)
class TrustAuditEntry:
    """One line of the trust audit trail, kept in the same write as the change it records.

    ``event``: ``set`` (our tier for the peer was set: ``old_tier`` -> ``new_tier``; setting the tier held already
    is recorded too, old equal to new), ``requested`` (the peer asked us for ``new_tier``; ``old_tier`` is the
    tier we held), ``denied`` (the owner denied its pending request for ``new_tier``); and the peer's answer to
    our trust request: ``granted``, ``pending`` or ``refused`` (``new_tier``: the tier granted or asked for,
    ``old_tier``: the one its previous answer stood at, None before any). ``by``: ``owner`` (the API, CLI,
    control port, dashboard), ``policy`` (auto-accepted) or ``peer``."""

    seq: int
    at: float
    wallet: str  # checksummed address
    event: str
    old_tier: TrustTier | None
    new_tier: TrustTier | None
    by: str


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call, made (``out``) or served (``in``): a summary of its task. ``status`` is the task's state."""

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


@dataclass(slots=True)
class TaskRecord:
    """One task as one side sees it (``direction`` ``out``: we called; ``in``: we served)."""

    id: str
    direction: str
    peer: str  # checksummed address
    skill: str
    state: str
    input: Any
    created_at: float
    version: str | None = None
    output: Any = None
    error_code: str | None = None
    error_message: str | None = None
    error_path: str | None = None
    updated_at: float = 0.0
    last_activity: float = 0.0
    timeout: float | None = None
    cap: float | None = None
    attempts: int = 0
    duration_ms: float = 0.0
    request_bytes: int = 0
    response_bytes: int = 0
    receipt: dict[str, Any] | None = None
    receipt_valid: bool | None = None
    request_id: str | None = None  # served tasks: the message id of the request that brought it
    v1_correlation: str | None = None  # a task that came or went in CoWorker 1.0: the correlation id to echo


@dataclass(frozen=True, slots=True)
class CollaborationRecord:
    """A collaboration as its initiator keeps it; ``record`` holds the plan and the steps' outcomes."""

    id: str
    peer: str
    goal: str
    state: str
    record: dict[str, Any]
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """A group we were invited to or created: ``state`` is ``joined``, ``ignored`` (the invitation came from a peer
    held below KNOWN), ``left`` or ``removed``; ``inviter`` is who created it or added us."""

    id: str
    name: str
    description: str
    inviter: str
    state: str
    created_at: float
    updated_at: float


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

    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def flush(self) -> None: ...
    async def sync(self) -> None: ...
    def commit_soon(self) -> None: ...
    def trust_tier(self, wallet: str) -> TrustTier: ...
    def set_trust(self, wallet: str, tier: TrustTier, now: float, *, by: str = "owner") -> None: ...
    @property
    def trust_changes(self) -> int: ...
    @property
    def task_changes(self) -> int: ...
    @property
    def collab_changes(self) -> int: ...
    def add_trust_listener(self, listener: Callable[[], None]) -> None: ...
    def remove_trust_listener(self, listener: Callable[[], None]) -> None: ...
    def add_change_listener(self, listener: Callable[[], None]) -> None: ...
    def remove_change_listener(self, listener: Callable[[], None]) -> None: ...
    def trusted_peers(self) -> list[tuple[str, TrustTier]]: ...
    def add_trust_request(self, req: TrustRequest) -> TrustRequest: ...
    def trust_requests(self) -> list[TrustRequest]: ...
    def pop_trust_request(self, wallet: str, *, denied_at: float | None = None,
                          by: str = "owner") -> TrustRequest | None: ...
    def set_standing(self, wallet: str, state: str, tier: TrustTier, now: float) -> None: ...
    def trust_audit(self, limit: int = 100, wallet: str | None = None) -> list[TrustAuditEntry]: ...
    def standing(self, wallet: str) -> tuple[str, TrustTier] | None: ...
    def peer_protocol(self, wallet: str) -> str | None: ...
    def peers_by_protocol(self) -> dict[str, int]: ...
    def set_peer_protocol(self, address: str, protocol: str, now: float) -> None: ...
    def touch_peer(self, address: str, now: float, name: str | None = None,
                   card: dict[str, Any] | None = None) -> None: ...
    def peer(self, wallet: str) -> PeerRecord | None: ...
    def peers(self) -> list[PeerRecord]: ...
    def remember(self, message_id: str, expires_at_ms: int, now_ms: int) -> bool: ...
    def add_task(self, task: TaskRecord) -> bool: ...
    def add_refusal(self, task: TaskRecord) -> bool: ...
    def task(self, direction: str, task_id: str, peer: str | None = None) -> TaskRecord | None: ...
    def update_task(self, task: TaskRecord, **changes: Any) -> None: ...
    def tasks(self, direction: str | None = None, state: str | None = None, limit: int = 20) -> list[TaskRecord]: ...
    def task_page(self, *, direction: str | None = None, state: str | None = None, peer: str | None = None,
                  skill: str | None = None, limit: int = 50, before: float | None = None) -> list[TaskRecord]: ...
    def task_stats(self, limit: int = 1000, *, now: float, window: float = 60.0) -> dict[str, Any]: ...
    def task_ids_starting(self, prefix: str, limit: int = 5) -> tuple[int, list[str]]: ...
    def live_tasks(self, direction: str) -> list[TaskRecord]: ...
    def calls(self, limit: int = 50) -> list[CallRecord]: ...
    def call_counts(self) -> dict[str, int]: ...
    def save_collaboration(self, collab: CollaborationRecord) -> None: ...
    def collaboration(self, collab_id: str) -> CollaborationRecord | None: ...
    def collaborations(self, limit: int = 20) -> list[CollaborationRecord]: ...
    def hidden_skills(self) -> set[str]: ...
    def skill_visibility(self, name: str) -> bool | None: ...
    def set_skill_visibility(self, name: str, hidden: bool, now: float, *, only_if_unset: bool = False) -> bool: ...
    def pin_peer(self, address: str, now: float) -> bool: ...
    def unpin_peer(self, wallet: str) -> bool: ...
    def pinned_peers(self) -> list[str]: ...
    def save_group(self, group: GroupRecord) -> None: ...
    def set_group_state(self, group_id: str, state: str, now: float) -> bool: ...
    def group(self, group_id: str) -> GroupRecord | None: ...
    def groups(self) -> list[GroupRecord]: ...
    def get_setting(self, key: str) -> str | None: ...
    def set_setting(self, key: str, value: str) -> None: ...
