"""The golden vectors recorded from the published CoWorker 1.0 (agent-coworker 0.6.1, ``tests/v1_vectors/``),
through our codec and our agent: every message 0.6.1 sends is decoded and answered in the form 0.6.1 answers it
itself (same envelope, the payload fields 0.6.1 reads); every answer 0.6.1 gives is decoded into the v2 answer it
means; and what we write for 0.6.1 has the envelope and payload fields of what 0.6.1 writes. Where we answer
differently on purpose, the test says why."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, MemoryNetwork, Network, TrustTier
from coworker.core import protocol as proto
from coworker.core import v1
from coworker.core.wallets import checksum

from .conftest import Counter, RawClient

VECTORS = Path(__file__).parent / "v1_vectors"
SENT = json.loads((VECTORS / "sent.json").read_text())["vectors"]
ANSWERED = json.loads((VECTORS / "answered.json").read_text())["vectors"]
ENVELOPE_KEYS = {"protocol", "version", "type", "payload", "timestamp", "ttl", "sender_id", "correlation_id",
                 "sender_wallet"}
# What 0.6.1 puts in an answer that we leave out on purpose: a traceback with local paths (the weakness the wire
# doc names), the versions of a version mismatch (we answer it as a refusal with a message).
NOT_SENT_BY_US = {"traceback", "available_version", "requested_version"}


@pytest.fixture
def network() -> Network:
    return MemoryNetwork()


def recorded(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    return data


def as_from(raw: RawClient, agent: AsyncAgent, text: str) -> bytes:
    """A recorded 0.6.1 message as if ``raw`` sent it to ``agent`` now: its wallets (the sender's, and in a plan
    the two recorded agents') replaced, its timestamp fresh; everything else as recorded."""
    message = recorded(text)
    sender, peer = message["sender_wallet"], None
    for vector in ANSWERED:
        if vector["answers"]:
            peer = recorded(vector["answers"][0]["text"])["sender_wallet"]
            break
    replaced = json.dumps(message).replace(sender, raw.wallet.lower())
    if peer is not None:
        replaced = replaced.replace(peer, agent.wallet.lower())
    message = json.loads(replaced)
    message["timestamp"] = dt.datetime.now(dt.UTC).isoformat()
    return json.dumps(message).encode()


@pytest.mark.parametrize("vector", SENT, ids=[v["name"] for v in SENT])
def test_every_message_0_6_1_sends_decodes_into_the_v2_request_it_means(vector: dict[str, Any]) -> None:
    message = v1.parse(recorded(vector["text"]))
    sender = checksum(message.sender_wallet or "0x" + "0" * 40)
    env = v1.to_envelope(message, mid="a" * 32, sender=sender, recipient="0x" + "b" * 40)
    if vector["type"] in v1.SILENT:
        assert env is None  # agent_card_query: taken, never answered (see coworker.core.v1)
        return
    assert env is not None and env.type == v1.REQUESTS[vector["type"]] and env.dialect is not None
    assert env.dialect.correlation_id == message.correlation_id
    body = proto.parse_body(env)  # the v2 body model takes it
    if vector["type"] == "task_request":
        assert (body.skill, body.input) == (message.payload["skill"], message.payload["input"])
        if message.payload.get("async"):
            assert body.task == message.payload["task_id"].replace("-", "")


@pytest.mark.parametrize("vector", [v for v in ANSWERED if v["answers"]], ids=[v["name"] for v in ANSWERED
                                                                              if v["answers"]])
def test_every_answer_0_6_1_gives_decodes_into_the_v2_answer_it_means(vector: dict[str, Any]) -> None:
    text = vector["answers"][0]["text"]
    message = v1.parse(recorded(text))
    if message.type == "agent_card_response":  # we never ask for it: an unknown type, refused
        with pytest.raises(v1.RemoteProtocolError):
            v1.to_envelope(message, mid="a" * 32, sender=checksum(message.sender_wallet or ""),
                           recipient="0x" + "b" * 40)
        return
    env = v1.to_envelope(message, mid="a" * 32, sender=checksum(message.sender_wallet or ""),
                         recipient="0x" + "b" * 40)
    assert env is not None and env.type == v1.ANSWERS[message.type]
    body = proto.parse_body(env)
    if message.type == "capabilities":
        assert [s.name for s in body.skills] == [s["name"] for s in message.payload["skills"]]
    elif message.type == "task_response":
        assert body.output == message.payload["result"]
    elif message.type in ("task_error", "error"):
        assert body.code == (message.payload.get("error_code") or message.payload.get("code") or "REMOTE_ERROR")
        assert body.message == (message.payload.get("error") or message.payload.get("message"))
    elif message.type == "trust_grant":
        assert body.tier == message.payload["granted_tier"]


# What our agent answers to each recorded request, as the asker's tier (0 or 1) goes, against what 0.6.1 answered.
# Where they differ it is on purpose: a trust request waits for the owner (1.0 has no "pending": a trust_deny that
# says so), an agent_card_query gets no answer (any answer makes 0.6.1 show no skills), a skill card query is
# answered for the skills the asker may see (0.6.1 refuses it below tier 1). A version pin is not checked (by v2
# either): the versioned request runs, as it did at 0.6.1, whose skill had that version.
EXPECTED = {
    ("discover", 0): "capabilities", ("discover", 1): "capabilities", ("discover_after_grant", 0): "capabilities",
    ("discover_after_grant", 1): "capabilities", ("agent_card_query", 0): "", ("agent_card_query", 1): "",
    ("trust_request", 0): "trust_deny", ("trust_request", 1): "trust_grant",
    ("task_request", 0): "error", ("task_request", 1): "task_response",
    ("task_request_versioned", 0): "error", ("task_request_versioned", 1): "task_response",
    ("task_request_async", 0): "error",
    ("task_request_async", 1): "task_response", ("ping", 0): "pong", ("ping", 1): "pong",
    ("skill_card_query", 0): "error", ("skill_card_query", 1): "skill_card",
    ("plan_propose", 0): "error", ("plan_propose", 1): "plan_accept",
}


@pytest.mark.parametrize("tier", [0, 1])
@pytest.mark.parametrize("vector", SENT, ids=[v["name"] for v in SENT])
async def test_our_agent_answers_every_message_0_6_1_sends_in_the_form_0_6_1_reads(
        pair: tuple[AsyncAgent, AsyncAgent], raw: RawClient, counter: Counter, vector: dict[str, Any],
        tier: int) -> None:
    alice, _ = pair

    if tier:
        alice.set_trust(raw.wallet, TrustTier.KNOWN)
    request = recorded(vector["text"])
    if request["type"] == "task_request" and request["payload"]["skill"] not in alice.skills:
        request["payload"]["skill"] = "echo"  # the recorded agent's skill, as one of ours
        request["payload"]["input"] = {"text": "hi"}
    if request["type"] == "plan_propose":
        for step in request["payload"]["steps"]:
            if step["skill"] not in alice.skills:
                step["skill"] = "echo"
    await raw.send(alice.wallet, as_from(raw, alice, json.dumps(request)))
    answers = []
    if request["type"] not in v1.SILENT:
        answers.append(await raw.receive())
    ping = recorded(next(v["text"] for v in SENT if v["type"] == "ping"))
    ping["correlation_id"] = "after"
    await raw.send(alice.wallet, as_from(raw, alice, json.dumps(ping)))
    while (last := await raw.receive())["correlation_id"] != "after":
        answers.append(last)  # anything more than one answer fails below
    if request["type"] in v1.SILENT:
        assert answers == []
        return
    (answer,) = answers
    assert set(answer) == ENVELOPE_KEYS and answer["correlation_id"] == request["correlation_id"]
    assert answer["sender_wallet"] == alice.wallet.lower() and isinstance(answer["ttl"], int)
    assert dt.datetime.fromisoformat(answer["timestamp"]).utcoffset() is not None
    expected = EXPECTED[(vector["name"], tier)]
    assert answer["type"] == expected
    theirs = [recorded(a["text"]) for v in ANSWERED if v["request_type"] == request["type"]
              for a in v["answers"] if a["type"] == expected]
    if theirs and expected != "error":  # our payload carries every field 0.6.1's did
        assert set(theirs[0]["payload"]) - NOT_SENT_BY_US <= set(answer["payload"]), answer
    if expected == "error" and vector["type"] != "skill_card_query":
        assert answer["payload"]["code"] == "TRUST_TIER_TOO_LOW"  # as 0.6.1 refuses below the tier, and reads it


def test_what_we_write_for_0_6_1_has_the_envelope_and_fields_it_writes_itself() -> None:
    ours, theirs = "0x" + "a" * 40, "0x" + "b" * 40

    def request(kind: str, body: dict[str, Any]) -> dict[str, Any]:
        env = proto.request(kind, body, sender=checksum(ours), recipient=checksum(theirs), now_ms=1_764_600_000_000)
        data = v1.encode_request(env, name="alice", now_ms=1_764_600_000_000)
        assert data is not None
        return recorded(data.decode())

    written = {
        "discover": request("discover", {}),
        "trust_request": request("trust.request", {"tier": 1, "reason": "alice wants to collaborate"}),
        "task_request": request("call.request", {"skill": "echo", "input": {"text": "hi"}, "task": "c" * 32}),
        "ping": request("ping", {}),
        "plan_propose": request("plan.propose", {"collaboration": "d" * 32, "goal": "g", "steps": [
            {"id": "s1", "skill": "echo", "agent": theirs, "input": {"text": "x"}}]}),
    }
    for kind, message in written.items():
        their = recorded(next(v["text"] for v in SENT if v["type"] == kind))
        assert set(message) == set(their) == ENVELOPE_KEYS, kind
        assert set(their["payload"]) - {"message"} <= set(message["payload"]), kind  # ping's message: optional
        assert message["sender_wallet"] == ours and isinstance(message["ttl"], int)
        if kind == "plan_propose":
            assert set(their["payload"]["steps"][0]) <= set(message["payload"]["steps"][0])
    assert written["task_request"]["correlation_id"] == "c" * 32  # the task id: 0.6.1 echoes it
