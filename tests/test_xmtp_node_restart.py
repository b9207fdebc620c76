"""The local node goes down and comes back (on its SQLite file) under two running agents: their streams recover."""

from __future__ import annotations

from pathlib import Path

import pytest

import coworker
from coworker import AsyncAgent, TrustTier, XmtpNetwork

from .conftest import DevnetThread, require_node_sdk

pytestmark = pytest.mark.integration


async def test_agents_call_again_after_the_node_restarts(tmp_path: Path) -> None:
    require_node_sdk()
    node = DevnetThread(tmp_path / "devnet")
    node.start()
    alice = AsyncAgent("alice", network=XmtpNetwork("local"), data_dir=tmp_path / "alice")
    bob = AsyncAgent("bob", network=XmtpNetwork("local"), data_dir=tmp_path / "bob")

    @alice.skill()
    def echo(text: str) -> dict[str, str]:
        return {"text": text}

    alice.set_trust(bob.wallet, TrustTier.KNOWN)
    try:
        await alice.start()
        await bob.start()
        assert await bob.call(alice.wallet, "echo", {"text": "before"}) == {"text": "before"}
        node.stop()  # both sidecars' streams break
        node = DevnetThread(tmp_path / "devnet")
        node.start()
        # Alice's stream is re-established with backoff, and the sync after the stream error finds anything it missed.
        assert await bob.call(alice.wallet, "echo", {"text": "after"}, timeout=60) == {"text": "after"}
        with pytest.raises(coworker.AccessDenied):  # and bob answers alice: both streams are back
            await alice.call(bob.wallet, "echo", {"text": "back?"}, timeout=60)
    finally:
        await bob.stop()
        await alice.stop()
        alice.close()
        bob.close()
        node.stop()
