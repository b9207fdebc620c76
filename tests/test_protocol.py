"""Protocol v2 wire format: golden vectors pin the encoding; hostile bytes raise a specific protocol error."""

from __future__ import annotations

from dataclasses import replace

import pytest

from coworker import RemoteProtocolError
from coworker.core.protocol import (
    MAX_CLOCK_SKEW_MS,
    MAX_ENVELOPE_BYTES,
    MAX_TTL_MS,
    check_fresh,
    decode,
    encode,
    parse_body,
    peek_id,
    reply,
)

ALICE = "0x1111111111111111111111111111111111111111"
BOB = "0x2222222222222222222222222222222222222222"
ID1 = "000102030405060708090a0b0c0d0e0f"
ID2 = "f0e0d0c0b0a090807060504030201000"

GOLDEN = [
    (b'{"coworker":2,"id":"000102030405060708090a0b0c0d0e0f","type":"ping","corr":"000102030405060708090a0b0c0d0e0f",'
     b'"from":"0x1111111111111111111111111111111111111111","to":"0x2222222222222222222222222222222222222222",'
     b'"ts":1700000000000,"exp":1700000300000,"body":{}}',
     {"type": "ping", "id": ID1, "corr": ID1, "sender": ALICE, "recipient": BOB, "ts": 1700000000000,
      "exp": 1700000300000, "body": {}}),
    (b'{"coworker":2,"id":"000102030405060708090a0b0c0d0e0f","type":"call.request",'
     b'"corr":"000102030405060708090a0b0c0d0e0f","from":"0x1111111111111111111111111111111111111111",'
     b'"to":"0x2222222222222222222222222222222222222222","ts":1700000000000,"exp":1700000030000,'
     b'"body":{"skill":"summarize","input":{"text":"Hello from Beijing! \xe4\xbd\xa0\xe5\xa5\xbd","max_words":5}}}',
     {"type": "call.request", "id": ID1, "corr": ID1, "sender": ALICE, "recipient": BOB,
      "body": {"skill": "summarize", "input": {"text": "Hello from Beijing! 你好", "max_words": 5}}}),
    (b'{"coworker":2,"id":"f0e0d0c0b0a090807060504030201000","type":"call.error",'
     b'"corr":"000102030405060708090a0b0c0d0e0f","from":"0x2222222222222222222222222222222222222222",'
     b'"to":"0x1111111111111111111111111111111111111111","ts":1700000000005,"exp":1700000300005,'
     b'"body":{"code":"INVALID_INPUT","message":"max_words: Input should be a valid integer","path":"max_words"}}',
     {"type": "call.error", "id": ID2, "corr": ID1, "sender": BOB, "recipient": ALICE,
      "body": {"code": "INVALID_INPUT", "message": "max_words: Input should be a valid integer",
               "path": "max_words"}}),
    (b'{"coworker":2,"id":"000102030405060708090a0b0c0d0e0f","type":"trust.request",'
     b'"corr":"000102030405060708090a0b0c0d0e0f","from":"0x1111111111111111111111111111111111111111",'
     b'"to":"0x2222222222222222222222222222222222222222","ts":1700000000000,"exp":1700000300000,'
     b'"body":{"tier":1,"reason":"want to collaborate"}}',
     {"type": "trust.request", "body": {"tier": 1, "reason": "want to collaborate"}}),
]


@pytest.mark.parametrize("data, fields", GOLDEN, ids=["ping", "call.request", "call.error", "trust.request"])
def test_golden_vectors_parse_to_their_fields_and_serialise_back_to_the_same_bytes(data: bytes,
                                                                                   fields: dict[str, object]) -> None:
    env = decode(data)
    for name, value in fields.items():
        assert getattr(env, name) == value
    parse_body(env)
    assert encode(env) == data


def test_a_reply_answers_its_request_from_the_recipient() -> None:
    request = decode(GOLDEN[1][0])
    answer = reply(request, "call.result", {"output": 1}, now_ms=1700000000001)
    assert (answer.corr, answer.sender, answer.recipient) == (request.id, BOB, ALICE)
    assert answer.id != request.id and len(answer.id) == 32
    assert decode(encode(answer)) == answer


@pytest.mark.parametrize("cut", [0, 1, 10, 100, len(GOLDEN[0][0]) - 1])
def test_truncated_messages_raise_a_protocol_error(cut: int) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(GOLDEN[0][0][:cut])


@pytest.mark.parametrize("data, reason", [
    (b"\xff\xfe\x00", "not UTF-8 JSON"),
    (b"null", "not a JSON object"),
    (b'{"protocol":"coworker","version":"1.0"}', "not a CoWorker v2"),
    (b"[" * 100_000, "not UTF-8 JSON"),
    (GOLDEN[0][0].replace(b'"ts":1700000000000', b'"ts":"1700000000000"'), "ts"),
    (GOLDEN[0][0].replace(b'"id":"0001', b'"id":"XX01'), "id"),
    (GOLDEN[0][0].replace(b'"body":{}', b'"body":{},"extra":1'), "extra"),
    (GOLDEN[0][0].replace(b'"from":"0x1111111111111111111111111111111111111111"', b'"from":"alice"'), "from"),
])
def test_malformed_envelopes_raise_a_protocol_error_that_says_why(data: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        decode(data)


def test_nesting_beyond_the_limit_is_refused() -> None:
    deep = b'{"a":' * 70 + b"1" + b"}" * 70
    data = GOLDEN[0][0].replace(b'"body":{}', b'"body":' + deep)
    with pytest.raises(RemoteProtocolError, match="nested deeper"):
        decode(data)


def test_oversized_message_is_refused_before_parsing() -> None:
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        decode(b" " * (MAX_ENVELOPE_BYTES + 1))


def test_unknown_type_and_bad_body_raise_with_their_codes() -> None:
    unknown = decode(GOLDEN[0][0].replace(b'"type":"ping"', b'"type":"teleport"'))
    with pytest.raises(RemoteProtocolError) as err:
        parse_body(unknown)
    assert err.value.code == "UNSUPPORTED"
    bad = decode(GOLDEN[3][0].replace(b'"tier":1', b'"tier":9'))
    with pytest.raises(RemoteProtocolError, match="tier") as err:
        parse_body(bad)
    assert err.value.code == "PROTOCOL_ERROR"


def test_peek_recovers_the_id_of_an_invalid_message_only_when_it_is_there() -> None:
    bad = GOLDEN[0][0].replace(b'"ts":1700000000000', b'"ts":-1')
    assert peek_id(bad) == (ID1, "ping")
    assert peek_id(b"garbage") is None
    assert peek_id(b'{"id":"short","type":"ping"}') is None


def test_freshness_is_judged_against_the_given_time() -> None:
    env = decode(GOLDEN[0][0])  # ts 1700000000000, exp + 5 min
    assert check_fresh(env, env.ts) is None
    assert check_fresh(env, env.exp) == "message expired"
    assert check_fresh(env, env.ts - MAX_CLOCK_SKEW_MS - 1) == "creation time is in the future"
    long_lived = replace(env, exp=env.ts + MAX_TTL_MS + 1)
    assert "time to live" in (check_fresh(long_lived, env.ts) or "")
    backwards = replace(env, exp=env.ts - 1)
    assert check_fresh(backwards, env.ts - 2) == "expiry precedes creation time"


def test_encoding_refuses_values_json_cannot_carry() -> None:
    env = replace(decode(GOLDEN[0][0]), body={"x": float("nan")})
    with pytest.raises(ValueError):
        encode(env)
    with pytest.raises(ValueError):
        encode(replace(env, body={"x": object()}))
