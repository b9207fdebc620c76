"""Transport conformance: safety and protocol behaviour that must hold on every network (see conftest.NETWORKS)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

import coworker
from coworker import AsyncAgent, TrustTier
from coworker.core.protocol import encode, new_id, request

from .conftest import Counter, RawClient


def envelope(raw: RawClient, to: str, kind: str, body: dict[str, Any], *, sender: str | None = None,
             ts: int | None = None, ttl_ms: int = 60_000, message_id: str | None = None) -> bytes:
    now = ts if ts is not None else int(time.time() * 1000)
    env = request(kind, body, sender=sender or raw.wallet, recipient=to, now_ms=now, ttl_ms=ttl_ms,
                  message_id=message_id)
    return encode(env)


async def ping_through(raw: RawClient, agent: AsyncAgent) -> dict[str, Any]:
    """Send a fresh ping and return its pong: proof the agent still serves, and that earlier messages were handled."""
    mid = new_id()
    await raw.send(agent.wallet, envelope(raw, agent.wallet, "ping", {"message": "still there?"}, message_id=mid))
    while True:
        reply = await raw.receive()
        if reply["corr"] == mid:
            assert reply["type"] == "pong"
            return reply


async def test_untrusted_peer_sees_no_skills_and_may_not_call(pair: tuple[AsyncAgent, AsyncAgent],
                                                              raw: RawClient) -> None:
    alice, _ = pair
    await raw.send(alice.wallet, envelope(raw, alice.wallet, "discover", {}))
    caps = await raw.receive()
    assert caps["type"] == "capabilities" and caps["body"]["skills"] == []
    await raw.send(alice.wallet, envelope(raw, alice.wallet, "call.request", {"skill": "echo", "input": {}}))
    refused = await raw.receive()
    assert (refused["type"], refused["body"]["code"]) == ("call.error", "ACCESS_DENIED")


async def test_known_peer_sees_exactly_the_skills_of_its_tier(pair: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = pair
    peer = await bob.connect(alice.wallet)
    assert sorted(peer.skills) == ["echo", "fail", "summarize"]
    alice.set_trust(bob.wallet, TrustTier.INTERNAL)
    assert "secret" in (await bob.connect(alice.wallet)).skills
    assert await bob.call(alice.wallet, "secret") == "the secret"


async def test_hidden_and_missing_skills_look_the_same(pair: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = pair
    with pytest.raises(coworker.SkillNotFound) as hidden:
        await bob.call(alice.wallet, "secret")
    with pytest.raises(coworker.SkillNotFound) as missing:
        await bob.call(alice.wallet, "nothing")
    assert str(hidden.value).replace("secret", "X") == str(missing.value).replace("nothing", "X")


async def test_body_claiming_another_wallet_is_refused_by_the_authenticated_sender(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient, counter: Counter) -> None:
    alice, bob = pair  # alice trusts bob; raw claims to be bob
    forged = envelope(raw, alice.wallet, "call.request", {"skill": "echo", "input": {"text": "x"}}, sender=bob.wallet)
    await raw.send(alice.wallet, forged)
    refused = await raw.receive()
    assert refused["type"] == "call.error" and refused["body"]["code"] == "SENDER_MISMATCH"
    assert refused["to"].lower() == raw.wallet.lower()  # answered to who really sent it, never to bob
    assert counter["echo"] == 0
    forged_trust = envelope(raw, alice.wallet, "trust.request", {"tier": 3, "reason": "I am bob"}, sender=bob.wallet)
    await raw.send(alice.wallet, forged_trust)
    assert (await raw.receive())["body"]["code"] == "SENDER_MISMATCH"
    assert alice.trust_requests() == []
    assert alice.trust_tier(bob.wallet) == TrustTier.KNOWN


async def test_replayed_message_id_is_ignored(pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient,
                                              counter: Counter) -> None:
    alice, _ = pair
    alice.set_trust(raw.wallet, TrustTier.KNOWN)
    call = envelope(raw, alice.wallet, "call.request", {"skill": "echo", "input": {"text": "once"}})
    for _ in range(3):
        await raw.send(alice.wallet, call)
    answers = [await raw.receive()]
    await ping_through(raw, alice)
    assert answers[0]["type"] == "call.result" and answers[0]["body"]["output"] == {"text": "once"}
    assert raw.inbox.empty()
    assert counter["echo"] == 1


async def test_expired_message_is_refused(pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient,
                                          counter: Counter) -> None:
    alice, _ = pair
    alice.set_trust(raw.wallet, TrustTier.KNOWN)
    old = int(time.time() * 1000) - 10 * 60_000
    await raw.send(alice.wallet, envelope(raw, alice.wallet, "call.request", {"skill": "echo", "input": {"text": "x"}},
                                          ts=old, ttl_ms=60_000))
    refused = await raw.receive()
    assert (refused["type"], refused["body"]["code"]) == ("call.error", "EXPIRED")
    assert counter["echo"] == 0
    future = int(time.time() * 1000) + 3600_000
    await raw.send(alice.wallet, envelope(raw, alice.wallet, "ping", {}, ts=future))
    assert (await raw.receive())["body"]["code"] == "EXPIRED"


async def test_message_addressed_to_another_agent_is_refused(pair: tuple[AsyncAgent, AsyncAgent],
                                                             raw: RawClient) -> None:
    alice, bob = pair
    await raw.send(alice.wallet, envelope(raw, bob.wallet, "ping", {}))
    assert (await raw.receive())["body"]["code"] == "WRONG_RECIPIENT"


@pytest.mark.parametrize("label, data, answered", [
    ("garbage", b"\x00\xffnot json at all", False),
    ("truncated", None, False),
    ("empty", b"", False),
    ("json array", b"[1,2,3]", False),
    ("v1 envelope", json.dumps({"protocol": "coworker", "version": "1.0", "type": "ping", "payload": {},
                                "sender_wallet": "0x" + "1" * 40}).encode(), False),
    ("deeply nested", b"[" * 200_000 + b"]" * 200_000, False),
    ("nested body", "nested", True),
    ("oversized", "oversized", True),
    ("bad body", "bad body", True),
    ("unknown type", "unknown type", True),
])
async def test_hostile_envelopes_are_answered_or_dropped_and_the_agent_keeps_serving(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient, counter: Counter, label: str,
        data: bytes | str | None, answered: bool) -> None:
    alice, _ = pair
    alice.set_trust(raw.wallet, TrustTier.KNOWN)
    to = alice.wallet
    if data is None:
        data = envelope(raw, to, "ping", {})[:57]
    elif data == "nested":
        deep: Any = "x"
        for _ in range(100):
            deep = {"d": deep}
        data = envelope(raw, to, "call.request", {"skill": "echo", "input": {"text": deep}})
    elif data == "oversized":
        data = envelope(raw, to, "call.request", {"skill": "echo", "input": {"text": "x" * 1_100_000}})
    elif data == "bad body":
        data = envelope(raw, to, "call.request", {"skill": 42})
    elif data == "unknown type":
        data = envelope(raw, to, "teleport", {})
    assert isinstance(data, bytes)
    try:
        await raw.send(to, data)
    except coworker.TransportError as exc:  # XMTP refuses a message over its 1 MB limit before it leaves
        assert label == "oversized" and "limit" in str(exc), exc
        answered = False
    if answered:
        reply = await raw.receive()
        assert reply["body"]["code"] in ("PROTOCOL_ERROR", "UNSUPPORTED"), reply
        assert "Traceback" not in reply["body"]["message"]
    await ping_through(raw, alice)
    assert raw.inbox.empty()
    assert counter["echo"] == 0


async def test_reply_from_a_third_party_is_ignored(pair: tuple[AsyncAgent, AsyncAgent],
                                                  make_raw: Callable[[], Awaitable[RawClient]]) -> None:
    _, bob = pair
    callee, impostor = await make_raw(), await make_raw()
    call = asyncio.create_task(bob.call(callee.wallet, "work", {"n": 1}, timeout=10))
    req = await callee.receive()
    assert req["type"] == "call.request"
    now = int(time.time() * 1000)
    fake = request("call.result", {"output": "fake"}, sender=impostor.wallet, recipient=bob.wallet, now_ms=now)
    await impostor.send(bob.wallet, encode(replace(fake, corr=req["id"])))
    await ping_through(impostor, bob)  # bob has handled the fake reply by now
    assert not call.done()
    real = request("call.result", {"output": "real"}, sender=callee.wallet, recipient=bob.wallet, now_ms=now)
    await callee.send(bob.wallet, encode(replace(real, corr=req["id"])))
    assert await call == "real"


async def test_skill_that_raises_fails_without_traceback_or_path(pair: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = pair
    with pytest.raises(coworker.SkillFailed) as failed:
        await bob.call(alice.wallet, "fail", {"where": "diary"})
    message = str(failed.value)
    assert "cannot read" in message
    assert "/home/alice" not in message and "diary" not in message
    assert "Traceback" not in message and ".py" not in message


async def test_invalid_input_is_rejected_before_the_skill_runs(pair: tuple[AsyncAgent, AsyncAgent],
                                                               counter: Counter) -> None:
    alice, bob = pair
    with pytest.raises(coworker.InvalidInput) as bad:
        await bob.call(alice.wallet, "summarize", {"text": "hello", "max_words": "many"})
    assert bad.value.path == "max_words"
    with pytest.raises(coworker.InvalidInput) as missing:
        await bob.call(alice.wallet, "summarize", {})
    assert missing.value.path == "text"
    with pytest.raises(coworker.InvalidInput) as extra:
        await bob.call(alice.wallet, "summarize", {"text": "x", "colour": "red"})
    assert extra.value.path == "colour"
    assert counter["summarize"] == 0
    assert (await bob.call(alice.wallet, "summarize", {"text": "a b c", "max_words": 2}))["summary"] == "a b"
    assert counter["summarize"] == 1


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_slow_skill_does_not_delay_other_calls(pair: tuple[AsyncAgent, AsyncAgent], kind: str) -> None:
    import threading

    alice, bob = pair
    async_gate, thread_gate = asyncio.Event(), threading.Event()
    if kind == "async":
        @alice.skill()
        async def slow() -> str:
            await async_gate.wait()
            return "slow done"
    else:
        @alice.skill()
        def slow() -> str:
            assert thread_gate.wait(timeout=30)
            return "slow done"

    slow_call = asyncio.create_task(bob.call(alice.wallet, "slow", timeout=30))
    fast = await asyncio.gather(*(bob.call(alice.wallet, "echo", {"text": str(i)}, timeout=10) for i in range(20)))
    assert [f["text"] for f in fast] == [str(i) for i in range(20)]
    assert not slow_call.done()
    async_gate.set()
    thread_gate.set()
    assert await slow_call == "slow done"


async def test_call_to_a_silent_peer_times_out(pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient) -> None:
    _, bob = pair
    with pytest.raises(coworker.CallTimeout):
        await bob.call(raw.wallet, "anything", timeout=0.05)
    assert (await raw.receive())["type"] == "call.request"
