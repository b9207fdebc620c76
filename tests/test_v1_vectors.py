"""The CoWorker 1.0 golden vectors are complete and well formed (issue 13).

``tests/v1_vectors`` holds what the published ``agent-coworker`` 0.6.1 sent, answered and returned, recorded from
it by ``scripts/record_v1_vectors.py`` (see ``tests/v1_vectors/README.md``). These checks need no codec: every
message type of the tables in docs/coworker-v1-wire.md is there in each direction it applies, every text is a 1.0
envelope as 0.6.1 writes it, and answers echo their request's correlation id. Codec round trips build on the same
files, comparing everything but the fields a vector lists in ``varies``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).parent / "v1_vectors"
FILES = ("sent.json", "answered.json", "outcomes.json")


def _vectors(filename: str) -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads((VECTORS / filename).read_text())["vectors"]
    return vectors


SENT = _vectors("sent.json")
ANSWERED = _vectors("answered.json")
OUTCOMES = _vectors("outcomes.json")

# The wire doc's tables. What 0.6.1 sends as the asker ("they send"); the same are the requests a 1.0 agent
# receives, each asked by a peer that is trusted enough and by one that is not:
REQUESTS = {"discover", "trust_request", "task_request", "plan_propose", "ping", "agent_card_query", "skill_card_query"}
THEY_SEND = REQUESTS
# What 0.6.1 answers ("what they answer"):
THEY_ANSWER = {"capabilities", "trust_grant", "trust_deny", "task_response", "task_error", "error", "pong",
               "plan_accept", "skill_card"}
# The answers a 1.0 agent gives, fed to 0.6.1's waiting code paths:
THEY_ARE_ANSWERED = {"capabilities", "trust_grant", "trust_deny", "task_response", "task_error", "error", "pong",
                     "plan_accept", "plan_reject"}

WALLET = re.compile(r"0x[0-9a-f]{40}")


def _texts() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every recorded wire text, with the vector it belongs to: (id, {"text": ..., "varies": [...]})."""
    for vector in SENT:
        yield vector["name"], vector
    for vector in ANSWERED:
        yield f"{vector['name']}/request", vector["request"]
        for i, answer in enumerate([*vector["answers"], *vector.get("asker_then_sends", [])]):
            yield f"{vector['name']}/{i}", answer
    for vector in OUTCOMES:
        for i, entry in enumerate(vector["exchange"]):
            yield f"{vector['name']}/{i}", entry


TEXTS = dict(_texts())


def _get(message: Any, path: str) -> Any:
    for part in path.split("."):
        message = message[int(part)] if isinstance(message, list) else message[part]
    return message


def without_varying(message: dict[str, Any], varies: list[str]) -> dict[str, Any]:
    """A copy of ``message`` without the fields that differ from run to run: what must compare equal."""
    stable: dict[str, Any] = json.loads(json.dumps(message))
    for path in varies:
        *parents, last = path.split(".")
        holder = _get(stable, ".".join(parents)) if parents else stable
        if isinstance(holder, list):
            del holder[int(last)]
        else:
            del holder[last]
    return stable


def test_the_vectors_were_recorded_from_agent_coworker_0_6_1() -> None:
    for filename in FILES:
        assert json.loads((VECTORS / filename).read_text())["recorded_from"].startswith("agent-coworker 0.6.1,")


def test_vector_names_are_unique_in_each_file() -> None:
    for vectors in (SENT, ANSWERED, OUTCOMES):
        names = [v["name"] for v in vectors]
        assert len(names) == len(set(names))


def test_every_request_type_of_the_wire_doc_is_recorded_as_0_6_1_sends_it() -> None:
    assert {v["type"] for v in SENT} >= THEY_SEND
    payloads = [json.loads(v["text"])["payload"] for v in SENT if v["type"] == "task_request"]
    assert any(p.get("async") is True and isinstance(p.get("task_id"), str) for p in payloads)
    assert any("skill_version" in p for p in payloads)
    assert any("async" not in p and "skill_version" not in p for p in payloads)


def test_every_request_a_1_0_agent_receives_is_answered_by_0_6_1_to_a_trusted_and_an_untrusted_asker() -> None:
    asked = {(v["request_type"], v["asker_tier"] > 0) for v in ANSWERED}
    for request_type in REQUESTS:
        assert (request_type, False) in asked, request_type
        assert (request_type, True) in asked, request_type
    unknown = {v["asker_tier"] for v in ANSWERED if v["request_type"] not in REQUESTS | THEY_ANSWER}
    assert {0, 1, 3} <= unknown  # an unknown type: refused below tier 3, ignored at 3


def test_0_6_1_answers_every_answer_type_of_the_wire_doc() -> None:
    assert {a["type"] for v in ANSWERED for a in v["answers"]} >= THEY_ANSWER
    async_requests = [v for v in ANSWERED if json.loads(v["request"]["text"])["payload"].get("async")]
    assert {v["answers"][0]["type"] for v in async_requests} == {"task_response", "error"}


def test_0_6_1_refusals_carry_the_codes_of_the_wire_doc() -> None:
    payloads = [(a["type"], json.loads(a["text"])["payload"]) for v in ANSWERED for a in v["answers"]]
    assert ("error", "TRUST_TIER_TOO_LOW") in {(t, p.get("code")) for t, p in payloads}
    assert ("error", "SKILL_NOT_FOUND") in {(t, p.get("code")) for t, p in payloads}
    assert ("task_error", "VERSION_MISMATCH") in {(t, p.get("error_code")) for t, p in payloads}
    assert any(t == "task_error" and p.get("error", "").startswith("Unknown skill: ") for t, p in payloads)


def test_every_answer_a_1_0_agent_gives_is_fed_to_0_6_1_with_what_its_api_returned() -> None:
    received = {e["type"] for v in OUTCOMES for e in v["exchange"] if e["direction"] == "received"}
    assert received >= THEY_ARE_ANSWERED
    for vector in OUTCOMES:
        assert "returns" in vector and isinstance(vector["waited_s"], int | float), vector["name"]


@pytest.mark.parametrize("recorded", TEXTS.values(), ids=TEXTS.keys())
def test_every_recorded_text_is_a_1_0_envelope_as_0_6_1_writes_it(recorded: dict[str, Any]) -> None:
    text = recorded["text"]
    message = json.loads(text)
    assert isinstance(message, dict)
    assert text == json.dumps(message)  # json.dumps defaults: ", " and ": ", ASCII-escaped, key order kept
    assert message["protocol"] == "coworker"
    assert message["version"] == "1.0"
    assert isinstance(message["type"], str) and message["type"]
    assert isinstance(message["payload"], dict)
    assert datetime.fromisoformat(message["timestamp"]).utcoffset() is not None
    assert type(message["ttl"]) is int
    if "sender_wallet" in message:
        assert WALLET.fullmatch(message["sender_wallet"])
    assert isinstance(message.get("correlation_id"), str) and message["correlation_id"]


@pytest.mark.parametrize("recorded", TEXTS.values(), ids=TEXTS.keys())
def test_every_varying_field_is_named_by_a_path_that_exists(recorded: dict[str, Any]) -> None:
    message = json.loads(recorded["text"])
    assert {"timestamp", "correlation_id"} <= set(recorded["varies"])
    stable = without_varying(message, recorded["varies"])
    assert "timestamp" not in stable and stable["type"] == message["type"]


@pytest.mark.parametrize("vector", ANSWERED, ids=[v["name"] for v in ANSWERED])
def test_every_answer_of_0_6_1_echoes_the_correlation_id_of_its_request(vector: dict[str, Any]) -> None:
    request = json.loads(vector["request"]["text"])
    assert request["type"] == vector["request_type"]
    for answer in vector["answers"]:
        message = json.loads(answer["text"])
        assert message["type"] == answer["type"]
        assert message["correlation_id"] == request["correlation_id"]
        assert message["sender_wallet"] != request["sender_wallet"]
    for reply in vector.get("asker_then_sends", []):  # the asker's answer to the answer, same id again
        message = json.loads(reply["text"])
        assert message["correlation_id"] == request["correlation_id"]
        assert message["sender_wallet"] == request["sender_wallet"]


@pytest.mark.parametrize("vector", OUTCOMES, ids=[v["name"] for v in OUTCOMES])
def test_in_every_exchange_each_received_text_answers_one_sent_before_it(vector: dict[str, Any]) -> None:
    sent: set[str] = set()
    for entry in vector["exchange"]:
        message = json.loads(entry["text"])
        if entry["direction"] == "sent":
            sent.add(message["correlation_id"])
        else:
            assert message["correlation_id"] in sent, entry["text"]
