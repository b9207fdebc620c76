"""The trust decision is a pure function; these pin its table."""

from __future__ import annotations

import pytest

from coworker import TrustTier
from coworker.core.trust import decide, may_see, tier_after_request

SKILLS = {"summarize": TrustTier.KNOWN, "secret": TrustTier.INTERNAL, "root": TrustTier.PRIVILEGED}
U, K, I, P = TrustTier  # noqa: E741 - the tiers' initials read best in the tables below


@pytest.mark.parametrize("kind", ["ping", "discover", "trust.request"])
@pytest.mark.parametrize("tier", list(TrustTier))
def test_anyone_may_ping_discover_and_request_trust(kind: str, tier: TrustTier) -> None:
    assert decide(tier, kind, None, None).allowed


@pytest.mark.parametrize("tier, skill, code", [
    (U, "summarize", "ACCESS_DENIED"),
    (K, "summarize", ""),
    (K, "secret", "SKILL_NOT_FOUND"),
    (K, "missing", "SKILL_NOT_FOUND"),
    (I, "secret", ""),
    (I, "root", "SKILL_NOT_FOUND"),
    (P, "root", ""),
])
def test_calls_need_known_and_the_skills_tier(tier: TrustTier, skill: str, code: str) -> None:
    decision = decide(tier, "call.request", skill, SKILLS.get(skill))
    assert decision.allowed == (code == "")
    assert decision.code == code


def test_unknown_request_kinds_are_unsupported() -> None:
    assert decide(P, "teleport", None, None).code == "UNSUPPORTED"


def test_untrusted_peers_see_no_skill_even_an_untrusted_one() -> None:
    assert not may_see(U, U)
    assert may_see(K, U) and may_see(K, K) and not may_see(K, I)


@pytest.mark.parametrize("current, requested, auto, max_auto, outcome", [
    (U, K, False, K, ("pending", U)),
    (U, K, True, K, ("granted", K)),
    (U, I, True, K, ("pending", U)),
    (U, I, True, I, ("granted", I)),
    (I, K, False, K, ("granted", I)),  # never lowers
    (K, K, False, K, ("granted", K)),
])
def test_trust_requests_are_granted_pending_and_never_lower_a_tier(
        current: TrustTier, requested: TrustTier, auto: bool, max_auto: TrustTier,
        outcome: tuple[str, TrustTier]) -> None:
    assert tier_after_request(current, requested, auto, max_auto) == outcome


@pytest.mark.parametrize("text, tier", [("known", K), ("KNOWN", K), (" internal ", I), ("3", P), (0, U), (P, P)])
def test_tiers_parse_from_names_and_numbers(text: object, tier: TrustTier) -> None:
    assert TrustTier.parse(text) == tier


@pytest.mark.parametrize("bad", ["admin", 7, -1, True, None, 1.5])
def test_bad_tiers_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        TrustTier.parse(bad)
