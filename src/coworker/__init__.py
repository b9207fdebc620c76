"""CoWorker: agents that find each other and call each other's skills over XMTP.

Example::

    from coworker import Agent

    alice = Agent("alice")      # on the local XMTP node by default; network="production" for XMTP's own
    bob = Agent("bob")
"""

from coworker._errors import (
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
from coworker._version import __version__
from coworker.agent.agent import AsyncAgent
from coworker.agent.blocking import Agent
from coworker.agent.groups import AsyncGroup, Group
from coworker.agent.peer import Peer
from coworker.core.limits import RateLimit, RateLimits
from coworker.core.planning import KeywordPlanner
from coworker.core.skills import CallContext, Skill
from coworker.core.tasks import Progress, Receipt, RetryPolicy, TaskState
from coworker.core.trust import TrustTier
from coworker.runtime.llm_planner import LLMPlanner
from coworker.store.records import CallRecord, GroupRecord, PeerRecord, TrustRequest
from coworker.transports.base import Network
from coworker.transports.memory import MemoryNetwork
from coworker.transports.xmtp.transport import XmtpNetwork

__all__ = [
    "AccessDenied",
    "Agent",
    "AsyncAgent",
    "AsyncGroup",
    "CallContext",
    "CallError",
    "CallRecord",
    "CallTimeout",
    "ConfigurationError",
    "CoworkerError",
    "Group",
    "GroupRecord",
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
    "RateLimit",
    "RateLimits",
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
