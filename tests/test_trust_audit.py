"""The trust audit trail: every change of trust, who made it, in order, kept in the database."""

from __future__ import annotations

from pathlib import Path

import pytest

from coworker import AsyncAgent, MemoryNetwork, TrustTier
from coworker.core.wallets import checksum
from coworker.store import sqlite
from coworker.store.records import TrustAuditEntry, TrustRequest
from coworker.store.sqlite import SQLiteStore

A = checksum("0xabcdef0123456789abcdef0123456789abcdef01")


def events(entries: list[TrustAuditEntry]) -> list[tuple[str, str, TrustTier | None, TrustTier | None, str]]:
    """Oldest first: (wallet, event, old, new, by)."""
    return [(e.wallet, e.event, e.old_tier, e.new_tier, e.by) for e in reversed(entries)]


async def test_owner_decisions_policy_grants_and_peer_requests_and_answers_are_audited_in_order(
        tmp_path: Path) -> None:
    net = MemoryNetwork()
    async with AsyncAgent("a", network=net, data_dir=tmp_path / "a", auto_accept_trust=True) as a, \
            AsyncAgent("b", network=net, data_dir=tmp_path / "b") as b, \
            AsyncAgent("c", network=net, data_dir=tmp_path / "c") as c:
        assert await b.request_trust(a.wallet, TrustTier.KNOWN) == "granted"  # auto-accepted
        assert await b.request_trust(a.wallet, TrustTier.INTERNAL) == "pending"
        assert await c.request_trust(a.wallet, TrustTier.INTERNAL) == "pending"
        await a.deny_trust(c.wallet)
        assert await a.approve_trust(b.wallet) == TrustTier.INTERNAL
        a.set_trust(c.wallet, TrustTier.KNOWN)
        await b.ping(a.wallet)  # the grant travelled before this round trip
        assert events(a.trust_audit()) == [
            (b.wallet, "set", TrustTier.UNTRUSTED, TrustTier.KNOWN, "policy"),
            (b.wallet, "requested", TrustTier.KNOWN, TrustTier.INTERNAL, "peer"),
            (c.wallet, "requested", TrustTier.UNTRUSTED, TrustTier.INTERNAL, "peer"),
            (c.wallet, "denied", TrustTier.UNTRUSTED, TrustTier.INTERNAL, "owner"),
            (b.wallet, "set", TrustTier.KNOWN, TrustTier.INTERNAL, "owner"),
            (c.wallet, "set", TrustTier.UNTRUSTED, TrustTier.KNOWN, "owner"),
        ]
        assert events(a.trust_audit(wallet=c.wallet.lower())) == [
            (c.wallet, "requested", TrustTier.UNTRUSTED, TrustTier.INTERNAL, "peer"),
            (c.wallet, "denied", TrustTier.UNTRUSTED, TrustTier.INTERNAL, "owner"),
            (c.wallet, "set", TrustTier.UNTRUSTED, TrustTier.KNOWN, "owner"),
        ]
        assert [e.event for e in a.trust_audit(limit=2)] == ["set", "set"]
        # the requester's side: the answers it got, each once
        assert events(b.trust_audit()) == [
            (a.wallet, "granted", None, TrustTier.KNOWN, "peer"),
            (a.wallet, "pending", TrustTier.KNOWN, TrustTier.INTERNAL, "peer"),
            (a.wallet, "granted", TrustTier.INTERNAL, TrustTier.INTERNAL, "peer"),
        ]
        assert events(c.trust_audit()) == [(a.wallet, "pending", None, TrustTier.INTERNAL, "peer"),
                                           (a.wallet, "refused", TrustTier.INTERNAL, TrustTier.UNTRUSTED, "peer")]
        seqs = [e.seq for e in a.trust_audit()]
        assert seqs == sorted(seqs, reverse=True)


def test_the_audit_trail_survives_reopening_the_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    store.set_trust(A.lower(), TrustTier.KNOWN, 1.0)  # any case: kept checksummed
    store.add_trust_request(TrustRequest(A, TrustTier.INTERNAL, "more", "1" * 32, 2.0))
    store.pop_trust_request(A, denied_at=3.0)
    store.set_standing(A, "denied", TrustTier.UNTRUSTED, 4.0)
    store.close()
    reopened = SQLiteStore(tmp_path / "s.db")
    assert [(e.at, e.wallet, e.event, e.by) for e in reopened.trust_audit()] == [
        (4.0, A, "refused", "peer"), (3.0, A, "denied", "owner"), (2.0, A, "requested", "peer"),
        (1.0, A, "set", "owner")]
    reopened.close()


def test_a_request_that_leaves_the_waiting_one_as_it_is_and_a_repeated_answer_add_no_rows() -> None:
    store = SQLiteStore(":memory:")
    store.add_trust_request(TrustRequest(A, TrustTier.KNOWN, "", "1" * 32, 1.0))
    store.add_trust_request(TrustRequest(A, TrustTier.PRIVILEGED, "", "2" * 32, 2.0))  # higher: not kept
    store.set_standing(A, "pending", TrustTier.KNOWN, 3.0)
    store.set_standing(A, "pending", TrustTier.KNOWN, 4.0)
    store.pop_trust_request(A)  # taken off the list without a denial (set_trust's path): no row either
    assert [(e.event, e.at) for e in store.trust_audit()] == [("pending", 3.0), ("requested", 1.0)]


def test_only_the_newest_audit_rows_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite, "TRUST_AUDIT_KEPT", 5)
    monkeypatch.setattr(sqlite, "PRUNE_EVERY_AUDITS", 3)
    store = SQLiteStore(":memory:")
    for i in range(12):
        store.set_trust(A, TrustTier(i % 3), float(i))
    kept = store.trust_audit(limit=100)
    assert 5 <= len(kept) < 5 + 3 and kept[0].at == 11.0
    assert [e.at for e in kept] == [float(i) for i in range(11, 11 - len(kept), -1)]


def test_a_change_and_its_audit_row_are_one_commit_outside_an_event_loop(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    commits = store._commits
    store.set_trust(A, TrustTier.KNOWN, 1.0)
    assert store._commits == commits + 1
    store.close()
