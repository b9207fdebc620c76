"""CoWorker 1.0 agents, as a hand-made peer that writes and reads the 1.0 wire format (the facts in
``../shared/docs/coworker-v1-wire.md``), against our agent on the in-memory network: what they send is answered in
1.0, through our trust choke point and our tasks, without their weaknesses; and our agent speaks 1.0 to a peer that
answers only in 1.0. Interop with the published 0.6.1 itself: ``tests/test_v1_interop.py``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, MemoryNetwork, Network, RemoteProtocolError, TrustTier
from coworker.core import protocol as proto
from coworker.core import v1
from coworker.runtime.callee import INTERNAL_FAILURE

from .conftest import Counter, RawClient


@pytest.fixture
def network() -> Network:
    return MemoryNetwork()


def v1_message(raw: RawClient, kind: str, payload: dict[str, Any], *, correlation_id: str = "92b6072b",
               wallet: str | None = None, timestamp: str | None = None, ttl: Any = 3600) -> bytes:
    """A message as a 1.0 agent writes it (json.dumps defaults, its wallet in lower case)."""
    when = timestamp or dt.datetime.now(dt.UTC).isoformat()
    return json.dumps({"protocol": "coworker", "version": "1.0", "type": kind, "payload": payload,
                       "timestamp": when, "ttl": ttl, "sender_id": "beta", "correlation_id": correlation_id,
                       "sender_wallet": (wallet or raw.wallet).lower()}).encode()


async def answer(raw: RawClient) -> dict[str, Any]:
    reply = await raw.receive()
    assert reply["protocol"] == "coworker" and reply["version"] == "1.0"
    dt.datetime.fromisoformat(reply["timestamp"]).utcoffset()  # aware: 1.0 agents break on a naive one
    assert isinstance(reply["ttl"], int)
    return reply


async def pinged(raw: RawClient, agent: AsyncAgent) -> None:
    """A 1.0 ping answered: everything sent before it has been handled."""
    await raw.send(agent.wallet, v1_message(raw, "ping", {}, correlation_id="last"))
    while (reply := await answer(raw))["correlation_id"] != "last":
        pass
    assert reply["type"] == "pong"


async def test_a_stranger_discovers_no_skills_and_its_trust_request_waits_for_the_owner(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient) -> None:
    alice, _ = pair
    await raw.send(alice.wallet, v1_message(raw, "discover", {"name": "beta", "wallet": raw.wallet.lower()}))
    caps = await answer(raw)
    assert (caps["type"], caps["correlation_id"], caps["payload"]["skills"]) == ("capabilities", "92b6072b", [])
    assert caps["sender_wallet"] == alice.wallet.lower()  # 1.0 keys trust by the exact lower-case string

    await raw.send(alice.wallet, v1_message(raw, "trust_request", {"requested_tier": 1, "reason": "beta wants"},
                                            correlation_id="t1"))
    deny = await answer(raw)
    assert deny["type"] == "trust_deny" and deny["payload"]["granted"] is False
    assert deny["payload"]["reason"].startswith("pending")  # 1.0 has no "pending": the reason says it
    assert [r.wallet.lower() for r in alice.trust_requests()] == [raw.wallet.lower()]
    assert alice.trust_tier(raw.wallet) == TrustTier.UNTRUSTED

    await alice.approve_trust(raw.wallet)
    await raw.send(alice.wallet, v1_message(raw, "trust_request", {"requested_tier": 1, "reason": "again"},
                                            correlation_id="t2"))
    grant = await answer(raw)
    assert (grant["type"], grant["correlation_id"]) == ("trust_grant", "t2")
    assert grant["payload"]["granted"] is True and grant["payload"]["granted_tier"] == 1
    await raw.send(alice.wallet, v1_message(raw, "discover", {}, correlation_id="d2"))
    names = [s["name"] for s in (await answer(raw))["payload"]["skills"]]
    assert "summarize" in names and "secret" not in names  # INTERNAL: not for a KNOWN peer


async def test_a_trusted_1_0_agent_calls_a_skill_once_per_request_message(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient, counter: Counter) -> None:
    alice, _ = pair
    alice.set_trust(raw.wallet, TrustTier.KNOWN)
    call = v1_message(raw, "task_request", {"skill": "echo", "input": {"text": "hi"}}, correlation_id="c1")
    await raw.send(alice.wallet, call)
    result = await answer(raw)
    assert (result["type"], result["correlation_id"]) == ("task_response", "c1")
    assert result["payload"]["success"] is True and result["payload"]["result"] == {"text": "hi"}
    await raw.send(alice.wallet, call)  # the same message delivered again (XMTP re-reads after a restart)
    await pinged(raw, alice)
    assert counter["echo"] == 1 and raw.inbox.empty()  # not run, not answered again
    # 1.0 agents never de-duplicate: a new request message is a new run, as they expect
    await raw.send(alice.wallet, v1_message(raw, "task_request", {"skill": "echo", "input": {"text": "hi"}},
                                            correlation_id="c2"))
    assert (await answer(raw))["correlation_id"] == "c2" and counter["echo"] == 2
    served = [t for t in alice.list_tasks(direction="in") if t["skill"] == "echo"]
    assert len(served) == 2 and {t["protocol"] for t in served} == {"1.0"}
    assert all(t["receipt"] is not None for t in served)  # ours, signed, kept on our side


async def test_an_async_1_0_request_uses_its_task_id_as_the_idempotency_key(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient, counter: Counter) -> None:
    alice, _ = pair
    alice.set_trust(raw.wallet, TrustTier.KNOWN)
    task_id = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
    for n, correlation in enumerate((task_id, task_id + "x")):
        await raw.send(alice.wallet, v1_message(raw, "task_request", {
            "skill": "echo", "input": {"text": "once"}, "async": True, "task_id": task_id},
            correlation_id=correlation))
        reply = await answer(raw)
        assert (reply["type"], reply["correlation_id"]) == ("task_response", correlation), n
    assert counter["echo"] == 1  # the second copy (another message) is answered from the store
    assert alice.get_result(task_id.replace("-", ""))["state"] == "completed"


async def test_refusals_to_1_0_agents_carry_codes_and_no_traceback_or_path(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient, counter: Counter) -> None:
    alice, _ = pair
    await raw.send(alice.wallet, v1_message(raw, "task_request", {"skill": "echo", "input": {"text": "x"}}))
    refused = await answer(raw)
    assert refused["type"] == "error" and refused["payload"]["code"] == "TRUST_TIER_TOO_LOW"  # as 1.0 refuses
    alice.set_trust(raw.wallet, TrustTier.KNOWN)
    await raw.send(alice.wallet, v1_message(raw, "task_request", {"skill": "fail", "input": {"where": "a"}},
                                            correlation_id="f"))
    failed = await answer(raw)
    assert failed["type"] == "task_error" and failed["payload"]["success"] is False
    assert "/home/alice" not in json.dumps(failed) and "Traceback" not in json.dumps(failed)
    await raw.send(alice.wallet, v1_message(raw, "task_request", {"skill": "secret", "input": {}},
                                            correlation_id="s"))
    hidden = await answer(raw)
    assert hidden["type"] == "task_error" and hidden["payload"]["error_code"] == "SKILL_NOT_FOUND"
    assert counter["secret"] == 0 and INTERNAL_FAILURE not in json.dumps(hidden)


async def test_a_1_0_message_claiming_a_trusted_wallet_is_refused_to_its_real_sender_and_changes_nothing(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient, counter: Counter) -> None:
    alice, bob = pair  # alice trusts bob; raw claims to be bob
    forged = v1_message(raw, "task_request", {"skill": "echo", "input": {"text": "x"}}, wallet=bob.wallet)
    await raw.send(alice.wallet, forged)
    refused = await answer(raw)
    assert refused["type"] == "error" and refused["payload"]["code"] == "SENDER_MISMATCH"
    await raw.send(alice.wallet, v1_message(raw, "trust_request", {"requested_tier": 3, "reason": "I am bob"},
                                            wallet=bob.wallet, correlation_id="t"))
    assert (await answer(raw))["payload"]["code"] == "SENDER_MISMATCH"
    assert counter["echo"] == 0 and alice.trust_requests() == []
    assert alice.trust_tier(bob.wallet) == TrustTier.KNOWN and alice.trust_tier(raw.wallet) == TrustTier.UNTRUSTED


@pytest.mark.parametrize(("field", "value"), [("timestamp", "2026-12-01T15:34:50"), ("timestamp", "yesterday"),
                                              ("ttl", "3600"), ("ttl", True), ("payload", [1])])
async def test_malformed_1_0_fields_are_refused_and_the_agent_goes_on(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient, field: str, value: Any) -> None:
    alice, _ = pair
    message = json.loads(v1_message(raw, "discover", {}, correlation_id="bad"))
    message[field] = value
    await raw.send(alice.wallet, json.dumps(message).encode())
    refused = await answer(raw)
    assert (refused["type"], refused["correlation_id"]) == ("error", "bad")
    assert refused["payload"]["code"] == "PROTOCOL_ERROR"
    await pinged(raw, alice)


async def test_an_agent_card_query_gets_no_answer(pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient) -> None:
    alice, _ = pair  # 1.0 agents show no skills after any answer to it; they discover again after 5 s
    await raw.send(alice.wallet, v1_message(raw, "agent_card_query", {"name": "alice", "cached_hash": "x"}))
    await pinged(raw, alice)
    assert raw.inbox.empty()


async def test_a_skill_card_query_gets_the_card_or_skill_not_found(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient) -> None:
    alice, _ = pair
    alice.set_trust(raw.wallet, TrustTier.KNOWN)
    await raw.send(alice.wallet, v1_message(raw, "skill_card_query", {"skill": "summarize"}))
    card = await answer(raw)
    assert card["type"] == "skill_card" and card["payload"]["name"] == "summarize"
    await raw.send(alice.wallet, v1_message(raw, "skill_card_query", {"skill": "secret"}))
    assert (await answer(raw))["payload"]["code"] == "SKILL_NOT_FOUND"


async def test_a_1_0_plan_is_accepted_when_its_steps_for_us_are_visible_and_rejected_otherwise(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient) -> None:
    alice, _ = pair
    alice.set_trust(raw.wallet, TrustTier.KNOWN)

    def plan(skill: str) -> dict[str, Any]:
        return {"goal": "summarize the news", "initiator": "beta", "initiator_wallet": raw.wallet.lower(),
                "steps": [{"skill": "fetch", "agent": "beta", "agent_wallet": raw.wallet.lower(), "input": {}},
                          {"skill": skill, "agent": "alice", "agent_wallet": alice.wallet.lower(),
                           "input": {"text": "{{step1.output}}"}}]}

    await raw.send(alice.wallet, v1_message(raw, "plan_propose", plan("summarize"), correlation_id="p1"))
    accepted = await answer(raw)
    assert accepted["type"] == "plan_accept" and accepted["payload"] == {"goal": "summarize the news",
                                                                         "accepted": True}
    await raw.send(alice.wallet, v1_message(raw, "plan_propose", plan("secret"), correlation_id="p2"))
    rejected = await answer(raw)
    assert rejected["type"] == "plan_reject" and rejected["payload"]["accepted"] is False


class OldAgent:
    """A peer that speaks only 1.0: drops our v2 messages (as 1.0 agents do), answers discover and serves one
    skill, and records every request it gets."""

    def __init__(self, raw: RawClient, name: str = "beta") -> None:
        self.raw, self.name = raw, name
        self.requests: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            incoming = await self.raw.inbox.get()
            try:
                message = json.loads(incoming.data)
            except ValueError:
                continue
            if message.get("protocol") != "coworker":
                continue  # a v2 message: a 1.0 agent drops it
            self.requests.append(message)
            (sender,) = incoming.sender.addresses
            kind, corr = message["type"], message["correlation_id"]
            if kind == "discover":
                await self._answer(sender, "capabilities", corr, {"name": self.name, "skills": [
                    {"name": "shout", "description": "upper-case", "input_schema": {"text": "str"},
                     "output_schema": {}, "min_trust_tier": 1, "max_context_privacy_tier": "L1_PUBLIC"}]})
            elif kind == "trust_request":
                await self._answer(sender, "trust_grant", corr, {"granted": True, "granted_tier": 1, "reason": "ok"})
            elif kind == "task_request":
                text = message["payload"]["input"]["text"]
                await self._answer(sender, "task_response", corr, {"success": True, "result": text.upper()})
            elif kind == "plan_propose":
                await self._answer(sender, "plan_accept", corr, {"goal": message["payload"]["goal"],
                                                                 "accepted": True})

    async def _answer(self, to: str, kind: str, corr: str, payload: dict[str, Any]) -> None:
        await self.raw.send(to, json.dumps({
            "protocol": "coworker", "version": "1.0", "type": kind, "payload": payload,
            "timestamp": dt.datetime.now(dt.UTC).isoformat(), "ttl": 3600, "sender_id": self.name,
            "correlation_id": corr, "sender_wallet": self.raw.wallet.lower()}).encode())

    def close(self) -> None:
        self.task.cancel()


async def test_our_agent_finds_a_1_0_peer_on_first_contact_and_calls_it_in_1_0_once(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient, counter: Counter) -> None:
    _, bob = pair
    old = OldAgent(raw)
    try:
        peer = await bob.connect(raw.wallet, timeout=10)
        assert (peer.name, peer.skills, peer.protocol) == ("beta", ["shout"], "1.0")
        assert peer.skill("shout")["input_schema"] == {"text": "str"}
        assert await bob.request_trust(raw.wallet) == "granted"
        assert await bob.call(raw.wallet, "shout", {"text": "hi"}, timeout=10) == "HI"
        calls = [m for m in old.requests if m["type"] == "task_request"]
        assert len(calls) == 1 and calls[0]["sender_wallet"] == bob.wallet.lower()
        task = bob.list_tasks(direction="out")[0]
        assert (task["state"], task["protocol"], task["receipt"], task["receipt_valid"]) == ("completed", "1.0",
                                                                                          None, None)
    finally:
        old.close()


async def test_with_v1_off_1_0_messages_are_not_answered(network: Network, tmp_path: Path, raw: RawClient) -> None:
    alice = AsyncAgent("alice", network=network, data_dir=tmp_path / "alice", v1=False)
    async with alice:
        await raw.send(alice.wallet, v1_message(raw, "ping", {}))
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        await raw.send(alice.wallet, proto.encode(proto.request("ping", {}, sender=raw.wallet, recipient=alice.wallet,
                                                                now_ms=now)))
        assert (await raw.receive())["type"] == "pong"  # the v2 ping's: the 1.0 one, handled first, got nothing
        assert raw.inbox.empty()
    alice.close()


def test_the_codec_refuses_what_1_0_agents_would_choke_on() -> None:
    good = {"protocol": "coworker", "version": "1.0", "type": "ping", "payload": {}, "ttl": 60,
            "timestamp": "2026-12-01T15:34:50.110869+00:00", "correlation_id": "a1", "sender_id": "x"}
    expected = dt.datetime(2026, 12, 1, 15, 34, 50, 110869, tzinfo=dt.UTC).timestamp()
    assert v1.parse(good).timestamp_ms == int(expected * 1000)
    for field, value in (("timestamp", "2026-12-01T15:34:50"), ("ttl", 0), ("ttl", 10**9), ("type", "Ping!"),
                         ("correlation_id", ""), ("sender_wallet", "0x12"), ("version", "2.0")):
        with pytest.raises(RemoteProtocolError):
            v1.parse({**good, field: value})


async def test_our_collaboration_with_a_1_0_peer_runs_its_steps_there_in_1_0(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient, counter: Counter) -> None:
    _, bob = pair
    old = OldAgent(raw)
    try:
        await bob.connect(raw.wallet, timeout=10)
        plan = {"steps": [{"id": "loud", "skill": "shout", "agent": raw.wallet, "input": {"text": "mls"}}]}
        result = await bob.collaborate(raw.wallet, "Shout about MLS", plan=plan, timeout=10)
        assert result["state"] == "completed" and result["steps"][0]["output"] == "MLS"
        proposal = next(m for m in old.requests if m["type"] == "plan_propose")
        assert proposal["payload"]["steps"][0]["agent_wallet"] == raw.wallet.lower()
        assert proposal["payload"]["initiator_wallet"] == bob.wallet.lower()
    finally:
        old.close()


async def test_skills_are_listed_to_1_0_agents_with_the_informal_schemas_they_fill_in(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient) -> None:
    # A 1.0 agent's collaborate() sends one value per key of a skill's input_schema: a JSON Schema's keys
    # ("type", "properties", ...) would make every such call invalid.
    alice, _ = pair
    alice.set_trust(raw.wallet, TrustTier.KNOWN)
    await raw.send(alice.wallet, v1_message(raw, "discover", {}))
    skills = {s["name"]: s for s in (await answer(raw))["payload"]["skills"]}
    assert skills["echo"]["input_schema"] == {"text": "str"}
    assert skills["fail"]["input_schema"] == {"where": "str"}
    assert v1.informal_schema({"type": "object", "properties": {"n": {"type": "integer"}, "x": {}}}) == {
        "n": "int", "x": "any"}
    assert v1.informal_schema({"text": "str"}) == {"text": "str"}  # already informal: as it is


async def test_a_trust_request_as_first_contact_reaches_a_1_0_peer_and_a_v2_peer_answers_it_once(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient, network: Network, tmp_path: Path) -> None:
    alice, bob = pair
    old = OldAgent(raw)
    try:
        assert await bob.request_trust(raw.wallet) == "granted"  # sent in both formats: the 1.0 one answered
        assert [m["type"] for m in old.requests] == ["trust_request"]
    finally:
        old.close()
    carol = AsyncAgent("carol", network=network, data_dir=tmp_path / "carol")
    async with carol:
        assert await carol.request_trust(alice.wallet) == "pending"  # the v2 one; the 1.0 copy is not answered
        assert [r.wallet for r in alice.trust_requests()] == [carol.wallet]
    carol.close()


async def test_a_request_to_a_1_0_peer_is_never_sent_again_however_long_it_takes(
        network: Network, tmp_path: Path, raw: RawClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # 1.0 agents run a request again for every copy: ours waits for the answer to its one copy.
    from coworker import RetryPolicy
    from coworker.runtime.caller import Caller

    bob = AsyncAgent("bob", network=network, data_dir=tmp_path / "bob", retry=RetryPolicy(0.01, 1.0, 0.01))
    held = asyncio.Event()
    real_hold = Caller._hold

    def hold(self: Caller, *args: Any) -> float:
        wait: float = real_hold(self, *args)
        if wait == float("inf"):
            held.set()  # a copy came due again, and was held
        return wait

    monkeypatch.setattr(Caller, "_hold", hold)
    old = OldAgent(raw)
    async with bob:
        await bob.connect(raw.wallet, timeout=10)
        old.task.cancel()  # from now on the 1.0 peer reads but does not answer
        await asyncio.gather(old.task, return_exceptions=True)
        task_id = await bob.request(raw.wallet, "shout", {"text": "slow"}, timeout=30)
        await held.wait()  # the retry gap passed, and the copy it would have sent is held: the driver waits
        calls = []
        while not raw.inbox.empty():
            message = json.loads((raw.inbox.get_nowait()).data)
            calls += [message] if message.get("type") == "task_request" else []
        assert [m["correlation_id"] for m in calls] == [task_id]  # one copy, the task id as its correlation id
        assert bob.get_result(task_id)["state"] == "submitted"
        assert bob.stats()["away"] == {}  # held because it speaks 1.0, not probed as a peer that is away
    bob.close()
