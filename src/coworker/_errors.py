"""The CoWorker exception tree. Every error the library raises derives from one root::

    CoworkerError
    ├── ConfigurationError        bad arguments, agent names, network names, settings
    ├── IdentityError             the agent's key cannot be created, read or decrypted
    ├── StoreError                the agent's database cannot be opened or is locked by another process
    ├── TransportError            the network cannot carry a message
    │   └── PeerUnreachable       no such peer on this network
    ├── ProtocolError             a message broke protocol v2
    │   ├── LocalProtocolError    we sent something the peer refused (expired, wrong recipient, malformed)
    │   └── RemoteProtocolError   the peer sent something we refused (malformed, forged sender, expired)
    ├── CallTimeout               no answer within the call's timeout
    └── CallError                 the peer answered a request with an error
        ├── AccessDenied          our trust tier at the peer does not allow this kind of request
        ├── SkillNotFound         no such skill, or one above our trust tier (the two look the same)
        ├── InvalidInput          the input failed the skill's schema (``.path`` names the field)
        ├── SkillFailed           the skill raised; carries its message only, never a traceback
        ├── TaskCanceled          the task was canceled (by us, or by the peer's owner)
        └── PlanRejected          the peer refused a collaboration's plan

Errors that cross the wire carry a code, never a traceback: ``WIRE_CODES`` maps each code to the class that
the caller raises, with the peer's message.
"""

from __future__ import annotations


class CoworkerError(Exception):
    """Root of every error raised by CoWorker."""


class ConfigurationError(CoworkerError, ValueError):
    """An argument, name or setting is not usable."""


class IdentityError(CoworkerError):
    """The agent's wallet key cannot be created, read or decrypted."""


class StoreError(CoworkerError):
    """The agent's database cannot be used."""


class TransportError(CoworkerError):
    """The network could not carry a message."""


class PeerUnreachable(TransportError):
    """The peer's wallet has no inbox on this network."""


class ProtocolError(CoworkerError):
    """A message broke protocol v2."""

    code = "PROTOCOL_ERROR"


class LocalProtocolError(ProtocolError):
    """The peer refused a message of ours as breaking the protocol."""


class RemoteProtocolError(ProtocolError):
    """The peer sent a message that breaks the protocol."""

    def __init__(self, message: str, *, code: str = "PROTOCOL_ERROR") -> None:
        super().__init__(message)
        self.code = code


class CallTimeout(CoworkerError, TimeoutError):
    """The peer did not answer within the timeout."""


class CallError(CoworkerError):
    """The peer answered a request with an error; ``str(err)`` is the peer's message."""

    code = "CALL_ERROR"


class AccessDenied(CallError):
    """Our trust tier at the peer does not allow this request."""

    code = "ACCESS_DENIED"


class SkillNotFound(CallError):
    """The peer has no such skill that we may see."""

    code = "SKILL_NOT_FOUND"


class InvalidInput(CallError):
    """The input does not match the skill's input schema.

    Attributes:
        path: the offending field as a dotted path (``"items.0.name"``); empty for the input as a whole.
    """

    code = "INVALID_INPUT"

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class SkillFailed(CallError):
    """The skill raised an error or returned output that breaks its schema."""

    code = "SKILL_FAILED"


class TaskCanceled(CallError):
    """The task was canceled before it ended."""

    code = "CANCELED"


class PlanRejected(CallError):
    """The peer refused the plan of a collaboration; the message says why."""

    code = "PLAN_REJECTED"


# Wire code -> exception class raised on the caller's side. Codes not listed here become CallError.
WIRE_CODES: dict[str, type[CoworkerError]] = {
    "ACCESS_DENIED": AccessDenied,
    "SKILL_NOT_FOUND": SkillNotFound,
    "INVALID_INPUT": InvalidInput,
    "SKILL_FAILED": SkillFailed,
    "PROTOCOL_ERROR": LocalProtocolError,
    "EXPIRED": LocalProtocolError,
    "SENDER_MISMATCH": LocalProtocolError,
    "WRONG_RECIPIENT": LocalProtocolError,
    "UNSUPPORTED": LocalProtocolError,
    "CANCELED": TaskCanceled,
    "PLAN_REJECTED": PlanRejected,
    # local codes of tasks that ended on our side
    "TIMEOUT": CallTimeout,
    "PEER_UNREACHABLE": PeerUnreachable,
}


def error_from_wire(code: str, message: str, path: str = "") -> CoworkerError:
    """Build the local exception for an error a peer sent us."""
    cls = WIRE_CODES.get(code, CallError)
    if cls is InvalidInput:
        return InvalidInput(message, path=path)
    err = cls(message)
    if isinstance(err, CallError) and type(err) is CallError:
        err.code = code
    return err
