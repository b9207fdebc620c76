"""CoWorker: agents that find each other and call each other's skills over XMTP.

Example::

    from coworker import Agent

    alice = Agent("alice")      # on the local XMTP node by default; network="production" for XMTP's own
    bob = Agent("bob")
"""

from ._agent import Agent, AsyncAgent, Peer
from ._collab import KeywordPlanner
from ._errors import (
    AccessDenied,
    CallError,
    CallTimeout,
    ConfigurationError,
    CoworkerError,
    IdentityError,
    InvalidInput,
    LocalProtocolError,
    PeerUnreachable,
    PlanRejected,
    ProtocolError,
    RemoteProtocolError,
    SkillFailed,
    SkillNotFound,
    StoreError,
    TaskCanceled,
    TransportError,
)
from ._llm_planner import LLMPlanner
from ._memory import MemoryNetwork
from ._skills import CallContext, Skill
from ._store import CallRecord, PeerRecord, TrustRequest
from ._tasks import Progress, Receipt, RetryPolicy, TaskState
from ._transport import Network
from ._trust import TrustTier
from ._xmtp import XmtpNetwork

__version__ = "0.2.0.dev0"

__all__ = [
    "AccessDenied",
    "Agent",
    "AsyncAgent",
    "CallContext",
    "CallError",
    "CallRecord",
    "CallTimeout",
    "ConfigurationError",
    "CoworkerError",
    "IdentityError",
    "InvalidInput",
    "KeywordPlanner",
    "LLMPlanner",
    "LocalProtocolError",
    "MemoryNetwork",
    "Network",
    "Peer",
    "PeerRecord",
    "PeerUnreachable",
    "PlanRejected",
    "Progress",
    "ProtocolError",
    "Receipt",
    "RemoteProtocolError",
    "RetryPolicy",
    "Skill",
    "SkillFailed",
    "SkillNotFound",
    "StoreError",
    "TaskCanceled",
    "TaskState",
    "TransportError",
    "TrustRequest",
    "TrustTier",
    "XmtpNetwork",
    "__version__",
]
