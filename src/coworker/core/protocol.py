"""Protocol v2: the wire messages, their encoding and their checks. No I/O, no clock: time is passed in.

Theory of operation. Every message is one JSON object (UTF-8, no insignificant whitespace, fixed key order)::

    {"coworker":2,"id":<32 hex>,"type":<type>,"corr":<32 hex>,"from":<0x address>,"to":<0x address>,
     "ts":<ms since epoch>,"exp":<ms since epoch>,"body":{...}}

``id`` is a fresh random 128-bit value for every message; a request's ``corr`` is its own id and a reply's
``corr`` is the id of the request it answers. ``from`` must be one of the addresses the transport
authenticated for the sender and ``to`` must be the receiver: the runtime refuses anything else, so a message
can neither claim another wallet nor be replayed to a different agent. ``exp`` bounds how long an id must be
remembered for replay defence.

Decoding is strict and total: any bytes either become an :class:`Envelope` or raise
:class:`~coworker.RemoteProtocolError` with a code; nothing else escapes. Every number in an envelope is finite:
one out of a 64-bit float's range (``1e400``) is refused with the rest of the message.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coworker._errors import RemoteProtocolError

VERSION: Final = 2
MAX_ENVELOPE_BYTES: Final = 1_000_000  # the XMTP network's limit for one message
MAX_DEPTH: Final = 64  # nesting of JSON arrays and objects in one message
MAX_CLOCK_SKEW_MS: Final = 5 * 60_000  # a message may claim a creation time this far in the future
MAX_TTL_MS: Final = 24 * 3600_000  # exp - ts may not exceed this
DEFAULT_TTL_MS: Final = 5 * 60_000

# Requests expect a reply; replies name the request they answer in corr. Replies about a task (call.*) also
# name the task in their body, so that they count even when the request they answer was an earlier copy or
# was sent before a restart. call.progress is unsolicited: its corr is the task id.
REQUEST_TYPES: Final = frozenset({"ping", "discover", "trust.request", "call.request", "call.cancel",
                                  "plan.propose"})
REPLY_TYPES: Final = frozenset(
    {"pong", "capabilities", "trust.grant", "trust.pending", "trust.deny", "call.ack", "call.progress",
     "call.result", "call.error", "plan.accept", "plan.reject", "error"}
)
TASK_REPLY_TYPES: Final = frozenset({"call.ack", "call.progress", "call.result", "call.error"})
# Other types are answered UNSUPPORTED.

_HEX32 = r"^[0-9a-f]{32}$"
_ADDRESS = r"^0x[0-9a-fA-F]{40}$"
_ADDRESS_RE = re.compile(_ADDRESS)

MessageId = Annotated[str, Field(pattern=_HEX32)]
Address = Annotated[str, Field(pattern=_ADDRESS)]
Millis = Annotated[int, Field(ge=0, lt=2**53)]


@dataclass(frozen=True, slots=True)
class Dialect:
    """How to answer a message that came in the CoWorker 1.0 wire format (:mod:`coworker.core.v1`): the
    correlation id to echo, the 1.0 type answered, and what its answer must carry (``skill`` for a
    ``skill_card_query``, ``goal`` for a ``plan_propose``)."""

    correlation_id: str
    kind: str
    skill: str | None = None
    goal: str = ""


@dataclass(frozen=True, slots=True)
class Envelope:
    """One protocol message. Built by :func:`request`, :func:`reply` and :func:`decode`; one that came in the
    1.0 wire format (:func:`coworker.core.v1.to_envelope`) carries its :class:`Dialect`, and is answered in it."""

    id: str
    type: str
    corr: str
    sender: str
    recipient: str
    ts: int
    exp: int
    body: dict[str, Any]
    dialect: Dialect | None = None

    @property
    def is_request(self) -> bool:
        return self.type in REQUEST_TYPES

    @property
    def is_reply(self) -> bool:
        return self.type in REPLY_TYPES


class _EnvelopeSchema(BaseModel):
    """What :func:`decode` checks; the result becomes an :class:`Envelope`."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    coworker: Literal[2]
    id: MessageId
    type: Annotated[str, Field(pattern=r"^[a-z][a-z.]{0,31}$")]
    corr: MessageId
    sender: Address = Field(alias="from")
    recipient: Address = Field(alias="to")
    ts: Millis
    exp: Millis
    body: dict[str, Any]


def new_id() -> str:
    """A fresh random 128-bit message id as 32 lower-case hex digits."""
    return secrets.token_hex(16)


def is_address(value: object) -> bool:
    """Whether ``value`` is a 0x-prefixed 20-byte hex address (any case)."""
    return isinstance(value, str) and _ADDRESS_RE.fullmatch(value) is not None  # match() and "$" accept a final newline


def request(kind: str, body: dict[str, Any], *, sender: str, recipient: str, now_ms: int,
            ttl_ms: int = DEFAULT_TTL_MS, message_id: str | None = None) -> Envelope:
    """Build a request; its correlation id is its own id."""
    mid = message_id or new_id()
    return Envelope(mid, kind, mid, sender, recipient, now_ms, now_ms + ttl_ms, body)


def reply(to: Envelope, kind: str, body: dict[str, Any], *, now_ms: int, ttl_ms: int = DEFAULT_TTL_MS) -> Envelope:
    """Build the reply to ``to``, from its recipient back to its sender."""
    return Envelope(new_id(), kind, to.id, to.recipient, to.sender, now_ms, now_ms + ttl_ms, body)


def error_body(code: str, message: str, path: str = "", task: str | None = None) -> dict[str, Any]:
    """The body of an ``error`` or ``call.error`` reply."""
    body: dict[str, Any] = {"code": code, "message": message}
    if path:
        body["path"] = path
    if task is not None:
        body["task"] = task
    return body


def encode(env: Envelope) -> bytes:
    """Serialise to the canonical bytes (fixed key order, compact, UTF-8).

    Raises:
        ValueError: the body holds something JSON cannot carry (NaN, a non-string key, an object).
    """
    obj = {"coworker": VERSION, "id": env.id, "type": env.type, "corr": env.corr, "from": env.sender,
           "to": env.recipient, "ts": env.ts, "exp": env.exp, "body": env.body}
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except TypeError as exc:
        raise ValueError(f"not JSON-serialisable: {exc}") from exc


def parse_json(data: bytes) -> Any:
    """Parse untrusted JSON. Not ``json.loads``: eth-account's dependency py_ecc raises the interpreter's
    recursion limit to 100,000 at import, deep enough for a nested message to overflow the C stack in the
    recursive stdlib parser. pydantic-core's parser stops at a fixed depth (200) with a ValueError."""
    return pydantic_core.from_json(data, allow_inf_nan=False)


def unacceptable(value: Any) -> str | None:
    """Why a parsed message cannot be taken: nested deeper than :data:`MAX_DEPTH`, or holding a number that is
    not finite; None when it can.

    JSON has no infinity, but a literal beyond the range of a 64-bit float (``1e400``, ``-1e400``) parses as one
    (the NaN and Infinity literals the parser refuses itself). Nothing downstream can carry it - not a receipt,
    not an answer, not the store's JSON - so it is refused here, wherever it is in the message. One walk for
    both checks: about 2 us on a typical message."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_DEPTH:
                return f"message nested deeper than {MAX_DEPTH} levels"
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            if depth > MAX_DEPTH:
                return f"message nested deeper than {MAX_DEPTH} levels"
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, float) and not math.isfinite(item):
            return "message holds a number out of the range of a 64-bit float (such as 1e400): numbers must be finite"
    return None


def decode(data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    """Parse and validate one message.

    Raises:
        RemoteProtocolError: oversized, not UTF-8 JSON, too deeply nested, holding a number that is not finite
            (``1e400``), or not a v2 envelope.
    """
    if len(data) > max_bytes:
        raise RemoteProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        obj = parse_json(data)
    except ValueError as exc:
        raise RemoteProtocolError(f"message is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("message is not a JSON object")
    if obj.get("coworker") != VERSION:
        raise RemoteProtocolError(f"not a CoWorker v{VERSION} message")
    refusal = unacceptable(obj)
    if refusal is not None:  # a number no float holds is bad input, whoever chose it; nesting breaks the protocol
        raise RemoteProtocolError(refusal, code="INVALID_INPUT" if "finite" in refusal else "PROTOCOL_ERROR")
    try:
        v = _EnvelopeSchema.model_validate(obj, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise RemoteProtocolError(f"invalid envelope: {where}: {first['msg']}") from None
    return Envelope(v.id, v.type, v.corr, v.sender, v.recipient, v.ts, v.exp, v.body)


def peek_id(data: bytes) -> tuple[str, str] | None:
    """Best effort (id, type) of a message that failed :func:`decode`, so that it can be answered; else None."""
    try:
        obj = parse_json(data)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    mid, kind = obj.get("id"), obj.get("type")
    if isinstance(mid, str) and re.match(_HEX32, mid) and isinstance(kind, str):
        return mid, kind
    return None


def peek_task(data: bytes) -> str | None:
    """Best effort task id (``body.task``) of a message that failed :func:`decode`, so that a refusal can name it."""
    try:
        obj = parse_json(data)
    except ValueError:
        return None
    body = obj.get("body") if isinstance(obj, dict) else None
    task = body.get("task") if isinstance(body, dict) else None
    return task if isinstance(task, str) and re.fullmatch(_HEX32, task) else None


def check_fresh(env: Envelope, now_ms: int) -> str | None:
    """Why the message is not fresh (a message for the peer), or None when it is."""
    if env.exp < env.ts:
        return "expiry precedes creation time"
    if env.exp - env.ts > MAX_TTL_MS:
        return f"time to live over the limit of {MAX_TTL_MS // 1000} s"
    if env.ts > now_ms + MAX_CLOCK_SKEW_MS:
        return "creation time is in the future"
    if env.exp <= now_ms:
        return "message expired"
    return None


# ---- bodies ------------------------------------------------------------------------------------------------

class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class TrustRequestBody(_Body):
    tier: Annotated[int, Field(ge=0, le=3)]
    reason: Annotated[str, Field(max_length=2000)] = ""


class TrustAnswerBody(_Body):
    tier: Annotated[int, Field(ge=0, le=3)] = 0
    reason: Annotated[str, Field(max_length=2000)] = ""


TaskId = Annotated[str, Field(pattern=_HEX32)]


class CallRequestBody(_Body):
    skill: Annotated[str, Field(min_length=1, max_length=200)]
    input: dict[str, Any]
    version: Annotated[str, Field(max_length=50)] | None = None
    task: TaskId | None = None  # the idempotency key; a request without one is its own task (key = message id)


class CallCancelBody(_Body):
    task: TaskId


class CallAckBody(_Body):
    task: TaskId
    state: Literal["working", "input_required"]


class CallProgressBody(_Body):
    task: TaskId
    seq: Annotated[int, Field(ge=1, lt=2**53)]  # numbers the progress messages of one task
    progress: float | None = None
    message: Annotated[str, Field(max_length=2000)] = ""
    index: Annotated[int, Field(ge=0, lt=2**53)] = 0  # position of partials[0] among all the task's partials
    partials: list[Any] = Field(default_factory=list)


class CallResultBody(_Body):
    output: Any = None
    duration_ms: Annotated[float, Field(ge=0)] = 0.0
    task: TaskId | None = None
    receipt: dict[str, Any] | None = None


class ErrorBody(_Body):
    code: Annotated[str, Field(max_length=64)]
    message: Annotated[str, Field(max_length=4000)] = ""
    path: Annotated[str, Field(max_length=1000)] = ""
    task: TaskId | None = None
    receipt: dict[str, Any] | None = None


StepId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class PlanStepBody(_Body):
    id: StepId
    skill: Annotated[str, Field(min_length=1, max_length=200)]
    agent: Address
    input: dict[str, Any] = Field(default_factory=dict)


class PlanProposeBody(_Body):
    collaboration: TaskId
    goal: Annotated[str, Field(max_length=4000)]
    steps: list[PlanStepBody] = Field(min_length=1, max_length=50)
    # A member's part of a plan with several members: the ids of other agents' steps whose outputs its steps use
    # (the initiator resolves them before it sends each task). Absent from two-party plans.
    other_steps: list[StepId] = Field(default_factory=list, max_length=50)


class PlanAnswerBody(_Body):
    collaboration: TaskId
    reason: Annotated[str, Field(max_length=2000)] = ""


class SkillCardBody(_Body):
    name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=dict)
    output_schema: dict[str, Any] = Field(default_factory=dict)
    min_trust_tier: Annotated[int, Field(ge=0, le=3)] = 1
    version: str = "1.0.0"


class CapabilitiesBody(_Body):
    name: Annotated[str, Field(max_length=200)]
    wallet: Address
    skills: list[SkillCardBody] = Field(default_factory=list, max_length=10_000)


class PingBody(_Body):
    message: Annotated[str, Field(max_length=2000)] = ""


_BODIES: dict[str, type[_Body]] = {
    "ping": PingBody,
    "pong": PingBody,
    "discover": _Body,
    "capabilities": CapabilitiesBody,
    "trust.request": TrustRequestBody,
    "trust.grant": TrustAnswerBody,
    "trust.pending": TrustAnswerBody,
    "trust.deny": TrustAnswerBody,
    "call.request": CallRequestBody,
    "call.cancel": CallCancelBody,
    "call.ack": CallAckBody,
    "call.progress": CallProgressBody,
    "call.result": CallResultBody,
    "plan.propose": PlanProposeBody,
    "plan.accept": PlanAnswerBody,
    "plan.reject": PlanAnswerBody,
    "call.error": ErrorBody,
    "error": ErrorBody,
}


def parse_body(env: Envelope) -> Any:
    """Validate the body against its type's model.

    Raises:
        RemoteProtocolError: unknown type (code UNSUPPORTED) or an invalid body (code PROTOCOL_ERROR).
    """
    model = _BODIES.get(env.type)
    if model is None:
        raise RemoteProtocolError(f"unsupported message type {env.type!r}", code="UNSUPPORTED")
    try:
        return model.model_validate(env.body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise RemoteProtocolError(f"invalid {env.type} body: {where}: {first['msg']}") from None
