"""The core's acceptance scenario, written as a user of the blocking API would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import coworker
from coworker import Agent, MemoryNetwork, TrustTier


def test_first_contact_trust_discovery_call_and_restart(tmp_path: Path, blocking_agents: list[Any]) -> None:
    net = MemoryNetwork()
    a = Agent("a", network=net, data_dir=tmp_path / "a")
    b = Agent("b", network=net, data_dir=tmp_path / "b")
    blocking_agents += [b]
    runs: list[str] = []

    @a.skill("summarize", description="Summarize text", input_schema={"text": "str", "max_words": "int"},
             output_schema={"summary": "str", "word_count": "int"})
    def summarize(text: str, max_words: int = 50) -> dict[str, Any]:
        runs.append(text)
        return {"summary": text[:100], "word_count": len(text.split())}

    @a.skill("secret", min_trust_tier=TrustTier.INTERNAL)
    def secret() -> str:
        return "hidden"

    a.start()
    first = b.connect(a.wallet)
    assert first["skills"] == []
    assert first["name"] == "a"
    assert first["wallet"] == a.wallet

    assert b.request_trust(a.wallet, TrustTier.KNOWN, reason="want to collaborate") == "pending"
    pending = a.trust_requests()
    assert [(r.wallet, r.tier, r.reason) for r in pending] == [(b.wallet, TrustTier.KNOWN, "want to collaborate")]

    assert a.approve_trust(b.wallet) == TrustTier.KNOWN
    assert a.trust_requests() == []
    peer = b.connect(a.wallet)
    assert peer["skills"] == ["summarize"]
    assert peer.skill("summarize")["input_schema"]["required"] == ["text"]

    result = b.call(a.wallet, "summarize", {"text": "Hello from Beijing!"})
    assert result == {"summary": "Hello from Beijing!", "word_count": 3}
    assert runs == ["Hello from Beijing!"]
    with pytest.raises(coworker.SkillNotFound):
        b.call(a.wallet, "secret", {})

    wallet = a.wallet
    a.close()
    restarted = Agent("a", network=net, data_dir=tmp_path / "a")
    blocking_agents.append(restarted)
    assert restarted.wallet == wallet
    assert restarted.trust_tier(b.wallet.lower()) == TrustTier.KNOWN
    served = [c for c in restarted.calls() if c.direction == "in"]
    assert [(c.skill, c.status, c.peer) for c in served] == [("secret", "rejected", b.wallet),
                                                             ("summarize", "completed", b.wallet)]
    restarted.add_skill(summarize, name="summarize")
    restarted.start()
    assert b.call(wallet, "summarize", {"text": "after restart"}, timeout=10)["word_count"] == 2
