"""A peer as ``connect`` shows it, and a task as ``get_result`` shows it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from coworker.core.trust import TrustTier
from coworker.store.records import TaskRecord


@dataclass(frozen=True)
class Peer:
    """A peer's card, as returned by ``connect``. Works as a mapping too: ``peer["skills"]``.

    Attributes:
        name: the name the peer gives itself.
        wallet: its checksummed wallet address.
        skills: the names of the skills it lets us see.
        skill_cards: full descriptions of those skills (description, JSON schemas, tier, version).
        trust_tier: the tier *we* hold for this peer.
        rtt_ms: the round trip of the discovery, in milliseconds.
        protocol: the wire format it answered in: ``"2"``, or ``"1.0"`` for an agent of the earlier CoWorker
            (spoken to in 1.0 from then on).
    """

    name: str
    wallet: str
    skills: list[str]
    skill_cards: list[dict[str, Any]] = field(repr=False)
    trust_tier: TrustTier
    rtt_ms: float = 0.0
    protocol: str = "2"

    _KEYS = ("name", "wallet", "skills", "skill_cards", "trust_tier", "rtt_ms", "protocol")

    def __getitem__(self, key: str) -> Any:
        if key not in self._KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> tuple[str, ...]:
        return self._KEYS

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def skill(self, name: str) -> dict[str, Any]:
        """The full card of one of the peer's skills."""
        for card in self.skill_cards:
            if card["name"] == name:
                return card
        raise KeyError(name)


def task_dict(task: TaskRecord) -> dict[str, Any]:
    """A task as ``get_result`` and ``list_tasks`` show it."""
    error = None
    if task.error_code is not None:
        error = {"code": task.error_code, "message": task.error_message or "", "path": task.error_path or ""}
    return {"task_id": task.id, "state": str(task.state), "result": task.output, "error": error,
            "direction": task.direction, "peer": task.peer, "skill": task.skill, "created_at": task.created_at,
            "updated_at": task.updated_at, "duration_ms": task.duration_ms, "attempts": task.attempts,
            "receipt": task.receipt, "receipt_valid": task.receipt_valid,
            # CoWorker 1.0 agents sign no receipts: a task with one has receipt None, and says so here
            "protocol": "1.0" if task.v1_correlation is not None else "2"}


def peer_json(peer: Peer) -> dict[str, Any]:
    """A peer's card as JSON (the tier by name)."""
    return {**dict(peer), "trust_tier": peer.trust_tier.name.lower()}
