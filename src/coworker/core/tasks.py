"""Tasks: the states of a call, the events that move them, retry timing and usage receipts. No I/O, no clock.

Theory of operation. Every call is a task with a 128-bit id that the *caller* chooses; the id doubles as the
idempotency key. Both sides keep their own view of the task in their store:

* the caller writes the task (``submitted``) before the first ``call.request`` leaves, then re-sends that
  request - each time as a new message with a new message id but the same task id - on the schedule of a
  :class:`RetryPolicy` until the task is terminal. A re-sent request is also how the caller polls: the callee
  answers every copy with the task's current state (``call.ack``) or its stored final answer.
* the callee writes the task (``working``) and commits it *before* the skill runs. A request whose
  (caller, task id) is already stored never runs the skill again: it is answered from the store. A task left
  ``working`` by a crash is run again when the agent restarts (the skill sees ``ctx.attempt == 2``).

Only a skill's progress keeps a running call alive: a call's timeout counts from the later of its start and
its last progress report, and never beyond an absolute cap (:func:`expires_at`). An acknowledgement proves the
peer received the request, not that the skill is alive, so it does not extend anything.

The states and the events that move them are the table below; anything not in it is not a transition (a stale
or repeated message), which the runtime ignores. Terminal states never change again.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from typing import Any, Final

from coworker.core.protocol import is_address
from coworker.core.wallets import same_wallet, signed_by


class TaskState(enum.StrEnum):
    """Where a task is. ``completed``, ``failed``, ``canceled``, ``rejected`` and ``expired`` are final."""

    SUBMITTED = "submitted"  # written by the caller, not yet acknowledged by the callee
    WORKING = "working"  # the callee runs the skill
    INPUT_REQUIRED = "input_required"  # the skill waits for more input from the caller
    COMPLETED = "completed"
    FAILED = "failed"  # the skill raised or broke its output schema
    CANCELED = "canceled"
    REJECTED = "rejected"  # refused before running: trust, unknown skill, invalid input, plan refused
    EXPIRED = "expired"  # no answer or no progress within the timeout, or past the absolute cap

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


LIVE: Final = (TaskState.SUBMITTED, TaskState.WORKING, TaskState.INPUT_REQUIRED)
TERMINAL: Final = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED, TaskState.REJECTED,
                             TaskState.EXPIRED})

S = TaskState
_ENDINGS = {"complete": S.COMPLETED, "fail": S.FAILED, "cancel": S.CANCELED, "reject": S.REJECTED,
            "expire": S.EXPIRED}

#: (state, event) -> next state. Events: accept, need_input, resume, and the endings above.
TRANSITIONS: Final[dict[tuple[TaskState, str], TaskState]] = {
    (S.SUBMITTED, "accept"): S.WORKING,
    (S.SUBMITTED, "need_input"): S.INPUT_REQUIRED,
    (S.WORKING, "need_input"): S.INPUT_REQUIRED,
    (S.INPUT_REQUIRED, "resume"): S.WORKING,
    (S.INPUT_REQUIRED, "accept"): S.WORKING,
    # A final answer may overtake (or replace a lost) acknowledgement, so every live state can end.
    **{(state, event): end for state in (S.SUBMITTED, S.WORKING, S.INPUT_REQUIRED) for event, end in _ENDINGS.items()},
}


def advance(state: TaskState, event: str) -> TaskState | None:
    """The state after ``event``, or None when the event does not move a task in ``state``."""
    return TRANSITIONS.get((state, event))


# The final state of a task that ended with an error of this wire code.
_STATE_OF_ERROR: Final = {
    "SKILL_FAILED": S.FAILED,
    "CANCELED": S.CANCELED,
    "EXPIRED": S.EXPIRED,
    "TIMEOUT": S.EXPIRED,
}


def state_for_error(code: str) -> TaskState:
    """The final state of a task answered with error ``code``: refusals before running are ``rejected``."""
    return _STATE_OF_ERROR.get(code, S.REJECTED)


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress report from a running skill, as its caller receives it.

    Attributes:
        task_id: the task it belongs to.
        progress: how far the skill says it is (often 0..1), or None.
        message: what the skill said, possibly empty.
        partials: partial results that arrived with this report (from an async generator skill), in order.
    """

    task_id: str
    progress: float | None = None
    message: str = ""
    partials: list[Any] = field(default_factory=list)


# ---- timing ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When an unanswered request is sent again: ``first`` seconds after the first copy, then each gap
    ``factor`` times the previous one, never more than ``maximum``; and never sooner than the previous copy took
    to send (see :meth:`delay`).

    The defaults suit XMTP (messages take tens of milliseconds; a copy is rarely lost); tests on a lossy
    in-memory network use much shorter gaps.
    """

    first: float = 2.0
    factor: float = 2.0
    maximum: float = 30.0

    def __post_init__(self) -> None:
        if not (self.first > 0 and self.factor >= 1 and self.maximum >= self.first):
            raise ValueError(f"invalid retry policy {self}: need first > 0, factor >= 1, maximum >= first")

    def delay(self, sent: int, send_took: float = 0.0) -> float:
        """Seconds to wait after the ``sent``-th copy (1-based) was sent before sending the next; at least
        ``send_took``, the seconds that copy's send took. The answer comes back through a send on the peer's
        side, as slow as ours when the network is loaded (an XMTP sidecar with a queue): a copy sent sooner
        would only wait behind the ones under way and draw one more answer."""
        return max(send_took, min(self.maximum, self.first * self.factor ** max(0, sent - 1)))


DEFAULT_CAP_FACTOR: Final = 10  # progress may keep a call alive for this many times its timeout


def expires_at(started: float, last_activity: float, timeout: float | None, cap: float | None) -> float | None:
    """When a task expires: ``timeout`` after its last sign of life (start or progress), at most ``cap`` after
    its start. None: never."""
    ends = []
    if timeout is not None:
        ends.append(max(started, last_activity) + timeout)
    if cap is not None:
        ends.append(started + cap)
    return min(ends) if ends else None


# ---- receipts ----------------------------------------------------------------------------------------------

RECEIPT_VERSION: Final = 1


def json_size(value: Any) -> int:
    """The size of ``value`` as compact UTF-8 JSON (how receipts measure input and output)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())


@dataclass(frozen=True, slots=True)
class Receipt:
    """One executed call, as the provider (the callee) attests it with an EIP-191 signature of its wallet.

    ``canonical()`` is the exact text that is signed: the fields other than ``signature`` as compact JSON with
    sorted keys. Verify with :meth:`verify`; a receipt that was changed in any field no longer verifies, and
    :meth:`from_dict` refuses one with a field more or less than those signed. The signature must be strict and
    canonical (``0x`` and 130 hex digits, low s: see :mod:`coworker.core.wallets`), so a valid receipt has one
    spelling of its signature only, up to the case of its hex digits.
    """

    task_id: str
    caller: str
    provider: str
    skill: str
    version: str
    status: str  # completed or failed
    started_at: float  # seconds since the epoch, the provider's clock
    duration_ms: float
    input_bytes: int
    output_bytes: int
    signature: str = ""
    v: int = RECEIPT_VERSION

    def canonical(self) -> str:
        fields = {name: getattr(self, name) for name in _RECEIPT_FIELDS if name != "signature"}
        return json.dumps(fields, separators=(",", ":"), sort_keys=True, ensure_ascii=False)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _RECEIPT_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Receipt:
        """Build from a dict (as sent or stored): exactly the receipt's fields, each of its type.

        Raises:
            ValueError: a field is missing, one is there that the signature does not cover, a field is of the
                wrong type, or a number is not finite.
        """
        if not isinstance(data, dict):
            raise ValueError(f"not a receipt: a {type(data).__name__}, not an object")
        missing = [name for name in _RECEIPT_FIELDS if name not in data]
        if missing:
            raise ValueError(f"not a receipt: missing {', '.join(missing)}")
        # A field the signature does not cover could say anything ("paid": true) and still verify: refused.
        extra = sorted(str(name) for name in data if name not in _RECEIPT_TYPES)
        if extra:
            raise ValueError(f"not a receipt: unsigned field {', '.join(extra)[:200]}")
        for name, kinds in _RECEIPT_TYPES.items():
            value = data[name]
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise ValueError(f"not a receipt: {name} is {type(value).__name__}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"not a receipt: {name} is {value}")
        return cls(**{name: data[name] for name in _RECEIPT_FIELDS})

    def verify(self, provider: str | None = None) -> bool:
        """Whether the signature is the provider's, strict and canonical, over exactly these fields (and the
        provider is ``provider``, when given)."""
        if provider is not None and not same_wallet(provider, self.provider):
            return False
        return is_address(self.provider) and signed_by(self.canonical(), self.signature, self.provider)


def receipt_problem(data: Any, *, task_id: str, skill: str, caller: str, provider: str,
                    status: str) -> str | None:
    """Why ``data`` (a receipt as the provider sent it) is not a valid receipt of that task, or None when it is:
    well formed, signed by ``provider``, and about this task, skill, caller and outcome."""
    try:
        receipt = Receipt.from_dict(data)
    except ValueError as exc:
        return f"malformed: {exc}"
    if not receipt.verify(provider):
        return "the signature is not the provider's"
    if receipt.task_id != task_id or receipt.skill != skill or not same_wallet(receipt.caller, caller):
        return "it is about another task, skill or caller"
    if receipt.status != status:
        return f"it says {receipt.status!r}, the answer said {status!r}"
    return None


_RECEIPT_TYPES: Final[dict[str, type | tuple[type, ...]]] = {
    "task_id": str, "caller": str, "provider": str, "skill": str, "version": str, "status": str,
    "started_at": (int, float), "duration_ms": (int, float), "input_bytes": int, "output_bytes": int,
    "signature": str, "v": int,
}
_RECEIPT_FIELDS: Final = tuple(_RECEIPT_TYPES)
