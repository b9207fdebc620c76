"""The CoWorker 1.0 wire format, translated at the edge: agents of the earlier CoWorker (``agent-coworker`` 0.6.1,
wire format "1.0") speak it on the same XMTP networks. No I/O, no clock: time is passed in.

Theory of operation. A 1.0 message is one JSON object per XMTP text message::

    {"protocol": "coworker", "version": "1.0", "type": "task_request", "payload": {...},
     "timestamp": "2026-12-01T15:34:50.110869+00:00", "ttl": 3600, "sender_id": "beta",
     "correlation_id": "92b6072b", "sender_wallet": "0xae2f..."}

:func:`parse` reads one strictly (a malformed field is refused, never guessed), and :func:`to_envelope` turns it
into the protocol v2 :class:`~coworker.core.protocol.Envelope` the runtime handles, so that 1.0 messages take the
same path as ours: the same checks, the same trust choke point, the same tasks. The envelope carries a
:class:`Dialect`, which makes every answer to it go back in 1.0 (:func:`encode_answer`); requests to a peer that
speaks only 1.0 are written by :func:`encode_request`, and its answers come back through :func:`to_envelope` too.

What 1.0 lacks is made up here, never taken from the peer's word:

* identity: the sender is the one the transport authenticated; a ``sender_wallet`` that differs is refused by the
  runtime (to the real sender), never trusted;
* message ids: 1.0 has none, so a message's id is derived from the authenticated sender and its exact bytes: the
  same message delivered twice has the same id, and a call in it the same task id, so it runs once;
* the task id of an asynchronous 1.0 request is its ``task_id`` (a UUID, whose 32 hex digits are a v2 task id).

What 1.0 cannot say is left out: ``call.ack`` and ``call.progress`` have no 1.0 form and are not sent; ``trust.pending``
becomes a ``trust_deny`` whose reason says the request waits for the owner's approval; ``agent_card_query`` gets
no answer at all (1.0 agents show no skills after any answer to it, and fall back to a full discover after 5 s).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from coworker._errors import RemoteProtocolError
from coworker.core.protocol import MAX_CLOCK_SKEW_MS, MAX_TTL_MS, Dialect, Envelope, is_address

PROTOCOL: Final = "coworker"
VERSION: Final = "1.0"
TTL_S: Final = 3600  # what 1.0 agents put in theirs, and we in ours
MAX_FIELD: Final = 4000  # characters of a free-text field (reasons, messages) taken or sent

#: 1.0 request types and the v2 request each becomes (skill_card_query is a discover narrowed to one skill).
REQUESTS: Final = {"ping": "ping", "discover": "discover", "trust_request": "trust.request",
                   "task_request": "call.request", "plan_propose": "plan.propose", "skill_card_query": "discover"}
#: 1.0 answer types and the v2 reply each becomes.
ANSWERS: Final = {"pong": "pong", "capabilities": "capabilities", "trust_grant": "trust.grant",
                  "trust_deny": "trust.deny", "task_response": "call.result", "task_error": "call.error",
                  "plan_accept": "plan.accept", "plan_reject": "plan.reject", "error": "error",
                  "skill_card": "capabilities"}
#: 1.0 requests that are taken and not answered (see the module's docstring).
SILENT: Final = frozenset({"agent_card_query"})

_TYPE_RE: Final = re.compile(r"[a-z][a-z_]{0,63}")
_CORRELATION_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_HEX32_RE: Final = re.compile(r"[0-9a-f]{32}")
_UUID_RE: Final = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
PENDING_REASON: Final = ("pending: your request waits for the approval of this agent's owner (CoWorker 1.0 has "
                         "no 'pending' answer); ask again once they have approved it")


@dataclass(frozen=True, slots=True)
class Message:
    """One 1.0 message, as :func:`parse` read it."""

    type: str
    payload: dict[str, Any]
    correlation_id: str
    timestamp_ms: int
    ttl_s: int
    sender_wallet: str | None  # as claimed; checked against the authenticated sender by the runtime
    sender_id: str


def is_v1(obj: Any) -> bool:
    """Whether a parsed message is a CoWorker 1.0 one (the only mark 1.0 agents check themselves)."""
    return isinstance(obj, dict) and obj.get("protocol") == PROTOCOL and "coworker" not in obj


def parse(obj: dict[str, Any]) -> Message:
    """Read a 1.0 message strictly.

    Raises:
        RemoteProtocolError: a field is missing or malformed (a naive or unparseable timestamp, a ttl that is not
            a positive whole number of seconds, a payload that is not an object, a claimed wallet that is not an
            address, ...). Nothing else escapes.
    """
    version = obj.get("version")
    if not isinstance(version, str) or not version.startswith("1."):
        raise RemoteProtocolError(f"not a CoWorker 1.x message (version {str(version)[:20]!r})")
    kind = obj.get("type")
    if not isinstance(kind, str) or _TYPE_RE.fullmatch(kind) is None:
        raise RemoteProtocolError("1.0 message without a valid type")
    payload = obj.get("payload", {})
    if not isinstance(payload, dict):
        raise RemoteProtocolError(f"1.0 {kind}: the payload is not an object")
    correlation = obj.get("correlation_id")
    if not isinstance(correlation, str) or _CORRELATION_RE.fullmatch(correlation) is None:
        raise RemoteProtocolError(f"1.0 {kind}: missing or malformed correlation_id")
    ttl = obj.get("ttl")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL_MS // 1000:
        raise RemoteProtocolError(f"1.0 {kind}: ttl must be a whole number of seconds from 1 to "
                                  f"{MAX_TTL_MS // 1000}")
    wallet = obj.get("sender_wallet")
    if wallet is not None and not is_address(wallet):
        raise RemoteProtocolError(f"1.0 {kind}: sender_wallet is not a wallet address")
    sender_id = obj.get("sender_id", "")
    if not isinstance(sender_id, str):
        raise RemoteProtocolError(f"1.0 {kind}: sender_id is not a string")
    return Message(kind, payload, correlation, _timestamp_ms(obj.get("timestamp"), kind), ttl, wallet,
                   sender_id[:200])


def _timestamp_ms(value: Any, kind: str) -> int:
    if not isinstance(value, str) or len(value) > 64:
        raise RemoteProtocolError(f"1.0 {kind}: missing or malformed timestamp")
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise RemoteProtocolError(f"1.0 {kind}: the timestamp is not ISO-8601") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise RemoteProtocolError(f"1.0 {kind}: the timestamp has no time zone")
    try:
        return int(when.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        raise RemoteProtocolError(f"1.0 {kind}: the timestamp is out of range") from None


def check_fresh(msg: Message, now_ms: int) -> str | None:
    """Why the message is not fresh, or None when it is."""
    if msg.timestamp_ms > now_ms + MAX_CLOCK_SKEW_MS:
        return "creation time is in the future"
    if msg.timestamp_ms + msg.ttl_s * 1000 <= now_ms:
        return "message expired"
    return None


def message_id(sender: str, data: bytes) -> str:
    """The id a 1.0 message gets here: derived from its authenticated sender and its exact bytes."""
    return hashlib.sha256(b"coworker-1.0\0" + sender.lower().encode() + b"\0" + data).hexdigest()[:32]


def to_envelope(msg: Message, *, mid: str, sender: str, recipient: str) -> Envelope | None:
    """The v2 envelope a 1.0 message becomes, from the authenticated ``sender`` (checksummed) to ``recipient``,
    with id ``mid`` (:func:`message_id`); None for a type that has no v2 form (taken and not answered).

    Raises:
        RemoteProtocolError: the payload does not fit the type (code PROTOCOL_ERROR), or the type is unknown
            (code UNSUPPORTED).
    """
    if msg.type in SILENT:
        return None
    exp = msg.timestamp_ms + min(msg.ttl_s * 1000, MAX_TTL_MS)
    p = msg.payload
    if msg.type in REQUESTS:
        kind, dialect = REQUESTS[msg.type], Dialect(msg.correlation_id, msg.type)
        if msg.type == "task_request":
            body = _call_body(p, mid)
        elif msg.type == "trust_request":
            body = {"tier": _tier(p.get("requested_tier", 1)), "reason": _text(p.get("reason", ""))}
        elif msg.type == "plan_propose":
            body, dialect = _plan_body(p, mid), Dialect(msg.correlation_id, msg.type,
                                                                 goal=_text(p.get("goal", "")))
        elif msg.type == "skill_card_query":
            body, dialect = {}, Dialect(msg.correlation_id, msg.type, skill=_text(p.get("skill", ""), 200))
        elif msg.type == "ping":
            body = {"message": _text(p.get("message", ""))}
        else:
            body = {}
        return Envelope(mid, kind, mid, sender, recipient, msg.timestamp_ms, exp, body, dialect)
    if msg.type in ANSWERS:
        corr = msg.correlation_id if _HEX32_RE.fullmatch(msg.correlation_id) else mid
        return Envelope(mid, ANSWERS[msg.type], corr, sender, recipient, msg.timestamp_ms, exp,
                        _answer_body(msg, sender, corr), Dialect(msg.correlation_id, msg.type))
    raise RemoteProtocolError(f"unsupported 1.0 message type {msg.type!r}", code="UNSUPPORTED")


def _text(value: Any, limit: int = MAX_FIELD) -> str:
    if not isinstance(value, str):
        raise RemoteProtocolError(f"expected text, got {type(value).__name__}")
    return value[:limit]


def _tier(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 3:
        raise RemoteProtocolError("a trust tier is a whole number from 0 to 3")
    return value


def _call_body(p: dict[str, Any], mid: str) -> dict[str, Any]:
    skill, given = p.get("skill"), p.get("input", {})
    if not isinstance(skill, str) or not 0 < len(skill) <= 200:
        raise RemoteProtocolError("task_request without a skill name")
    if not isinstance(given, dict):
        raise RemoteProtocolError("task_request: input is not an object")
    task = mid
    if p.get("async") is True and isinstance(p.get("task_id"), str) and _UUID_RE.fullmatch(p["task_id"]):
        task = p["task_id"].replace("-", "").lower()  # their idempotency key, as a v2 task id
    body: dict[str, Any] = {"skill": skill, "input": given, "task": task}
    version = p.get("skill_version")
    if version is not None:
        body["version"] = _text(version, 50)
    return body


def _plan_body(p: dict[str, Any], mid: str) -> dict[str, Any]:
    steps = p.get("steps")
    if not isinstance(steps, list) or not 0 < len(steps) <= 50:
        raise RemoteProtocolError("plan_propose: steps must be a list of 1 to 50 steps")
    out = []
    for i, step in enumerate(steps, start=1):
        if not isinstance(step, dict):
            raise RemoteProtocolError(f"plan_propose: step {i} is not an object")
        wallet = step.get("agent_wallet")
        if not is_address(wallet):
            raise RemoteProtocolError(f"plan_propose: step {i} names no agent wallet")
        given = step.get("input", {})
        out.append({"id": f"step{i}", "skill": _text(step.get("skill"), 200), "agent": wallet,
                    "input": given if isinstance(given, dict) else {}})
    return {"collaboration": mid, "goal": _text(p.get("goal", "")), "steps": out}


def _answer_body(msg: Message, sender: str, corr: str) -> dict[str, Any]:
    p, kind = msg.payload, msg.type
    task = corr if _HEX32_RE.fullmatch(corr) else None
    if kind == "pong":
        return {"message": _text(p.get("message", ""))}
    if kind in ("capabilities", "skill_card"):
        raw = p.get("skills", []) if kind == "capabilities" else [p]
        if not isinstance(raw, list):
            raise RemoteProtocolError("capabilities: skills is not a list")
        name = p.get("name", "") if kind == "capabilities" else ""
        return {"name": _text(name, 200) if isinstance(name, str) else "", "wallet": sender,
                "skills": [card for card in (_card(s) for s in raw[:10_000]) if card is not None]}
    if kind == "trust_grant":
        return {"tier": _tier(p.get("granted_tier", 1)), "reason": _text(p.get("reason", ""))}
    if kind == "trust_deny":
        return {"tier": _tier(p.get("requested_tier", 0)), "reason": _text(p.get("reason", ""))}
    if kind == "task_response":
        body: dict[str, Any] = {"output": p.get("result"), "task": task}
        duration = p.get("duration_ms")
        if isinstance(duration, int | float) and not isinstance(duration, bool) and duration >= 0:
            body["duration_ms"] = float(duration)
        return body
    if kind in ("task_error", "error"):
        code = p.get("error_code") or p.get("code") or "REMOTE_ERROR"
        message = p.get("error") if kind == "task_error" else p.get("message")
        return {"code": _text(code, 64), "message": _text(message if message is not None else ""), "task": task}
    # plan_accept / plan_reject
    return {"collaboration": corr, "reason": _text(p.get("reason", ""))}


def _card(skill: Any) -> dict[str, Any] | None:
    """A 1.0 skill (a dict with at least a name, or a bare name) as a v2 skill card."""
    if isinstance(skill, str):
        return {"name": skill[:200]} if skill else None
    if not isinstance(skill, dict) or not isinstance(skill.get("name"), str) or not skill["name"]:
        return None
    card: dict[str, Any] = {"name": skill["name"][:200]}
    if isinstance(skill.get("description"), str):
        card["description"] = skill["description"][:MAX_FIELD]
    for key in ("input_schema", "output_schema"):
        if isinstance(skill.get(key), dict):
            card[key] = skill[key]
    tier = skill.get("min_trust_tier")
    if isinstance(tier, int) and not isinstance(tier, bool) and 0 <= tier <= 3:
        card["min_trust_tier"] = tier
    if isinstance(skill.get("version"), str):
        card["version"] = skill["version"][:50]
    return card


# ---- writing 1.0 -------------------------------------------------------------------------------------------

def _wire(kind: str, payload: dict[str, Any], correlation_id: str, *, name: str, wallet: str,
          now_ms: int) -> bytes:
    """A 1.0 message as 1.0 agents write theirs: json.dumps defaults, an aware UTC timestamp, an integer ttl,
    our wallet in lower case (their trust store is keyed by the exact string)."""
    when = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).isoformat()
    return json.dumps({"protocol": PROTOCOL, "version": VERSION, "type": kind, "payload": payload,
                       "timestamp": when, "ttl": TTL_S, "sender_id": name, "correlation_id": correlation_id,
                       "sender_wallet": wallet.lower()}).encode()


def encode_answer(dialect: Dialect, kind: str, body: dict[str, Any], *, name: str, wallet: str,
                  now_ms: int) -> bytes | None:
    """Our v2 reply ``kind``/``body`` to a message that came in 1.0, written in 1.0; None when it has no 1.0 form
    (``call.ack``, ``call.progress``: not sent)."""
    def wire(kind1: str, payload: dict[str, Any]) -> bytes:
        return _wire(kind1, payload, dialect.correlation_id, name=name, wallet=wallet, now_ms=now_ms)

    if kind == "pong":
        return wire("pong", {"message": body.get("message") or f"pong from {name}"})
    if kind == "capabilities":
        cards = [_skill_dict(card) for card in body.get("skills", [])]
        if dialect.kind == "skill_card_query":
            card = next((c for c in cards if c["name"] == dialect.skill), None)
            if card is None:
                return wire("error", {"code": "SKILL_NOT_FOUND",
                                      "message": f"no skill named {dialect.skill!r} visible to you"})
            return wire("skill_card", card)
        return wire("capabilities", {"name": body.get("name", name), "skills": cards})
    if kind == "trust.grant":
        return wire("trust_grant", {"granted": True, "granted_tier": body.get("tier", 1),
                                    "reason": body.get("reason") or "granted"})
    if kind == "trust.pending":
        return wire("trust_deny", {"granted": False, "requested_tier": body.get("tier", 1), "reason": PENDING_REASON})
    if kind == "trust.deny":
        return wire("trust_deny", {"granted": False, "requested_tier": body.get("tier", 0),
                                   "reason": body.get("reason") or "denied"})
    if kind == "call.result":
        payload = {"success": True, "result": body.get("output")}
        if "duration_ms" in body:
            payload["duration_ms"] = body["duration_ms"]
        return wire("task_response", payload)
    if kind == "call.error":
        code, message = str(body.get("code", "CALL_ERROR")), str(body.get("message", ""))[:MAX_FIELD]
        if code == "ACCESS_DENIED":  # refused at the trust gate, as 1.0 agents refuse (and read) it
            return wire("error", {"code": "TRUST_TIER_TOO_LOW", "message": message})
        return wire("task_error", {"success": False, "error": message, "error_code": code})
    if kind == "error":
        code = str(body.get("code", "ERROR"))
        return wire("error", {"code": "TRUST_TIER_TOO_LOW" if code == "ACCESS_DENIED" else code,
                              "message": str(body.get("message", ""))[:MAX_FIELD]})
    if kind == "plan.accept":
        return wire("plan_accept", {"goal": dialect.goal, "accepted": True})
    if kind == "plan.reject":
        return wire("plan_reject", {"goal": dialect.goal, "accepted": False,
                                    "reason": str(body.get("reason", ""))[:MAX_FIELD]})
    return None  # call.ack, call.progress: 1.0 has no form for them


def _skill_dict(card: dict[str, Any]) -> dict[str, Any]:
    """A v2 skill card as 1.0 agents list skills: their schemas are maps of field names to type names, and a
    1.0 agent fills a skill's input with one value per key of it (``collaborate``), so a JSON Schema goes as the
    map of its properties."""
    return {"name": card.get("name", ""), "description": card.get("description", ""),
            "input_schema": informal_schema(card.get("input_schema", {})),
            "output_schema": informal_schema(card.get("output_schema", {})),
            "min_trust_tier": card.get("min_trust_tier", 1), "max_context_privacy_tier": "L1_PUBLIC",
            "version": card.get("version", "1.0.0")}


_TYPE_NAMES: Final = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "array": "list",
                      "object": "dict", "null": "None"}


def informal_schema(schema: Any) -> dict[str, Any]:
    """A JSON Schema as 1.0's informal map (``{"text": "str", "max_words": "int"}``): its properties' names and
    types; a map that is not a JSON Schema is kept as it is."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(properties, dict):
        return schema
    informal: dict[str, Any] = {}
    for name, spec in properties.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        informal[str(name)] = _TYPE_NAMES.get(kind, "any") if isinstance(kind, str) else "any"
    return informal


def encode_request(env: Envelope, *, name: str, now_ms: int) -> bytes | None:
    """Our v2 request (or one-way message) to a peer that speaks only 1.0, written in 1.0 with our message id as
    its correlation id (1.0 agents echo it in their answer); None when it has no 1.0 form (``call.cancel``, a
    ``trust.grant`` sent later: a 1.0 agent waits for neither)."""
    body, wallet = env.body, env.sender

    def wire(kind: str, payload: dict[str, Any]) -> bytes:
        return _wire(kind, payload, env.corr if env.type in ("trust.grant",) else env.id, name=name,
                     wallet=wallet, now_ms=now_ms)

    if env.type == "ping":
        return wire("ping", {})
    if env.type == "discover":
        return wire("discover", {"name": name, "wallet": wallet.lower()})
    if env.type == "trust.request":
        return wire("trust_request", {"requested_tier": body.get("tier", 1), "reason": body.get("reason", "")})
    if env.type == "call.request":
        payload: dict[str, Any] = {"skill": body["skill"], "input": body.get("input", {})}
        if body.get("version") is not None:
            payload["skill_version"] = body["version"]
        return _wire("task_request", payload, str(body.get("task") or env.id), name=name, wallet=wallet,
                     now_ms=now_ms)
    if env.type == "plan.propose":
        steps = [{"skill": s["skill"], "agent": "", "agent_wallet": str(s["agent"]).lower(),
                  "input": s.get("input", {})} for s in body.get("steps", [])]
        return wire("plan_propose", {"goal": body.get("goal", ""), "steps": steps, "initiator": name,
                                     "initiator_wallet": wallet.lower()})
    return None

