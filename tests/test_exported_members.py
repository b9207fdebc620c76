"""The public surface is deliberate: this list changes only on purpose."""

from __future__ import annotations

import coworker

PUBLIC = {
    "AccessDenied", "Agent", "AsyncAgent", "AsyncGroup", "CallContext", "CallError", "CallRecord", "CallTimeout",
    "ConfigurationError", "CoworkerError", "Group", "GroupRecord", "IdentityError", "InvalidInput", "KeywordPlanner",
    "LLMPlanner",
    "LocalProtocolError", "MemoryNetwork", "Network", "Peer", "PeerRecord", "PeerUnreachable", "PlanRejected",
    "Progress", "ProtocolError", "RateLimit", "RateLimits", "Receipt",
    "RemoteProtocolError", "RetryPolicy", "Skill", "SkillFailed", "SkillNotFound", "StoreError", "TaskCanceled",
    "TaskState", "TransportError", "TrustRequest", "TrustTier", "XmtpNetwork",
    "__version__",
}


def test_all_lists_exactly_the_public_names() -> None:
    assert set(coworker.__all__) == PUBLIC
    for name in coworker.__all__:
        assert getattr(coworker, name) is not None


def test_every_error_derives_from_the_one_root() -> None:
    errors = [getattr(coworker, n) for n in PUBLIC if isinstance(getattr(coworker, n), type)
              and issubclass(getattr(coworker, n), BaseException)]
    assert len(errors) >= 14
    assert all(issubclass(e, coworker.CoworkerError) for e in errors)
