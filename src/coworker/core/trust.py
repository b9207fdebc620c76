"""Trust tiers and the one pure decision that admits or refuses every incoming request.

Theory of operation: the runtime calls :func:`decide` exactly once for each authenticated, fresh, not-yet-seen
request, before any handler runs. The decision uses only the tier we hold for the sender and what the request
asks for; it does no I/O. Skill visibility and callability use the same rule (:func:`may_see`), so a skill the
peer may not call is also a skill it cannot see, and a call to it is answered exactly like a call to a skill
that does not exist.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TrustTier(enum.IntEnum):
    """How much we trust a peer. Higher tiers include everything lower ones may do."""

    UNTRUSTED = 0
    KNOWN = 1
    INTERNAL = 2
    PRIVILEGED = 3

    @classmethod
    def parse(cls, value: object) -> TrustTier:
        """Accept a tier, its number or its name (any case); raise ValueError otherwise."""
        if isinstance(value, TrustTier):
            return value
        try:
            if isinstance(value, int) and not isinstance(value, bool):
                return cls(value)
            if isinstance(value, str):
                text = value.strip()
                return cls(int(text)) if text.isdigit() else cls[text.upper()]
        except (ValueError, KeyError):
            pass
        names = ", ".join(t.name.lower() for t in cls)
        raise ValueError(f"invalid tier {value!r}: use {names} or 0-3")


# Request kinds that any peer, trusted or not, may send.
OPEN_KINDS = frozenset({"ping", "discover", "trust.request"})
# Request kinds that need at least KNOWN.
TRUSTED_KINDS = frozenset({"call.request", "call.cancel", "plan.propose"})


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of :func:`decide`: allowed, or refused with a wire code and a message for the peer."""

    allowed: bool
    code: str = ""
    message: str = ""


ALLOW = Decision(True)


def may_see(peer_tier: TrustTier, skill_tier: TrustTier) -> bool:
    """Whether a peer at ``peer_tier`` may see and call a skill that needs ``skill_tier``."""
    return peer_tier >= TrustTier.KNOWN and peer_tier >= skill_tier


def decide(peer_tier: TrustTier, kind: str, skill: str | None, needed: TrustTier | None) -> Decision:
    """Admit or refuse one request.

    Args:
        peer_tier: the tier we hold for the authenticated sender.
        kind: the request's message type (``"call.request"``, ``"discover"``, ...).
        skill: the skill a call names, else None.
        needed: the tier that skill needs; None when we have no skill of that name (or the request names none).
    """
    if kind in OPEN_KINDS:
        return ALLOW
    if kind not in TRUSTED_KINDS:
        return Decision(False, "UNSUPPORTED", f"unsupported request type {kind!r}")
    if peer_tier < TrustTier.KNOWN:
        return Decision(False, "ACCESS_DENIED", "trust tier too low: request trust first")
    if kind == "call.request" and (needed is None or not may_see(peer_tier, needed)):
        return Decision(False, "SKILL_NOT_FOUND", f"no skill named {skill!r} visible to you")
    return ALLOW


def tier_after_request(current: TrustTier, requested: TrustTier, auto_accept: bool,
                       max_auto_accept: TrustTier) -> tuple[str, TrustTier]:
    """What a trust request leads to: ``("granted", tier)`` or ``("pending", current)``.

    A request never lowers a tier: asking for less than we already hold is granted at the tier held.
    """
    if requested <= current:
        return "granted", current
    if auto_accept and requested <= max_auto_accept:
        return "granted", requested
    return "pending", current
