"""Rate limits and payload caps by trust tier: the pure decision that drops a flood before it is read.

Theory of operation. The runtime asks :meth:`RateLimiter.admit` about every incoming message before decoding
it, with the sender the transport authenticated, the tier held for it, the message's size and the time. The
answer is None (read it) or why it is dropped; a dropped message is not answered (an answer is what a flood
costs most: over XMTP every answer is a message sent) and is counted by reason.

- Each tier has a :class:`RateLimit`: a token bucket per peer (``rate`` messages/s, ``burst`` at once) and the
  largest message it may send (``max_bytes``). A stranger may only ping, discover and ask for trust: a few KB.
- All strangers together also draw from one shared bucket (``RateLimits.strangers``), checked first, so that a
  flood from many fresh wallets costs no more than one stranger at that rate, and creates tracked peers no faster.
- Messages from a peer we wait for (a live task or a pending request of ours) draw from that peer's ``replies``
  bucket instead, with its size cap, so that the answers to our own calls are not starved by the peer's tier
  budget. Once decoded, a *request* that came in that way is charged to the tier's budget as well
  (``replies=False``): the allowance is for replies only.
- Memory is O(1) per peer and bounded: at most ``max_peers`` buckets, the least recently seen forgotten first (a
  forgotten peer starts again with a full bucket). An unlimited rate (None) keeps no bucket at all.

No I/O and no clock: time is passed in (seconds; a clock that goes back refills nothing).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from coworker.core.trust import TrustTier

# Why a message was dropped: the keys of RateLimiter.dropped.
TOO_LARGE = "too_large"  # over its tier's max_bytes
OVER_BUDGET = "over_budget"  # its peer's bucket was empty
STRANGERS = "strangers"  # the bucket all strangers share was empty
REASONS = (TOO_LARGE, OVER_BUDGET, STRANGERS)
SAY_EVERY = 60.0  # seconds: a peer's drops are worth a log line at most this often (Drop.say)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """What one peer may send: ``rate`` messages per second (None: no limit), up to ``burst`` at once, each at
    most ``max_bytes`` long (None: only the protocol's own limit of 1 MB, which decoding enforces, answered)."""

    rate: float | None
    burst: float = 1.0
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"a rate is a positive number of messages per second (or None), got {self.rate!r}")
        if self.rate is not None and not self.burst >= 1:
            raise ValueError(f"a burst is at least one message, got {self.burst!r}")
        if self.max_bytes is not None and not (isinstance(self.max_bytes, int) and self.max_bytes > 0):
            raise ValueError(f"max_bytes is a positive number of bytes (or None), got {self.max_bytes!r}")


UNLIMITED = RateLimit(None)


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The budgets an agent gives its peers, by tier (see the module's docstring).

    The defaults: a stranger 2 messages/s (10 at once) of at most 4 KB, and all strangers together 20/s (50 at
    once); a KNOWN peer 50/s (200 at once); INTERNAL 500/s (2,000 at once); PRIVILEGED no limit; replies from a
    peer we wait for 1,000/s (2,000 at once); at most 4,096 peers tracked. ``RateLimits.off()`` limits nothing.
    """

    untrusted: RateLimit = RateLimit(2.0, 10, 4096)
    known: RateLimit = RateLimit(50.0, 200)
    internal: RateLimit = RateLimit(500.0, 2000)
    privileged: RateLimit = UNLIMITED
    strangers: RateLimit = RateLimit(20.0, 50)
    replies: RateLimit = RateLimit(1000.0, 2000)
    max_peers: int = 4096

    def __post_init__(self) -> None:
        if not (isinstance(self.max_peers, int) and self.max_peers > 0):
            raise ValueError(f"max_peers is a positive number, got {self.max_peers!r}")

    @classmethod
    def off(cls) -> RateLimits:
        """No rate limit and no payload cap below the protocol's own (1 MB)."""
        return cls(UNLIMITED, UNLIMITED, UNLIMITED, UNLIMITED, UNLIMITED, UNLIMITED)

    def for_tier(self, tier: TrustTier) -> RateLimit:
        return (self.untrusted, self.known, self.internal, self.privileged)[min(max(int(tier), 0), 3)]


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held; starts full."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, limit: RateLimit, now: float) -> TokenBucket:
        assert limit.rate is not None
        return cls(limit.rate, limit.burst, limit.burst, now)

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now  # a clock that went back refills nothing, and does not freeze the bucket either

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class _Peer:
    tier: TrustTier
    bucket: TokenBucket | None = None  # its tier's (None when that tier is not limited)
    replies: TokenBucket | None = None
    said: float | None = None  # when a drop of its messages was last worth a log line


@dataclass(slots=True)
class Drop:
    """Why a message is dropped, and whether to say so (at most once every :data:`SAY_EVERY` s for a peer, and
    as often for all the peers that have no bucket together): a flood is not to flood the log too."""

    reason: str
    say: bool


@dataclass
class RateLimiter:
    """Per-peer token buckets by tier, a shared one for strangers, payload caps: see the module's docstring.

    Example::

        limiter = RateLimiter(RateLimits())
        drop = limiter.admit("inbox-1", TrustTier.UNTRUSTED, size=120, now=clock())
        if drop is not None: ...  # not read, not answered; limiter.dropped counts it
    """

    limits: RateLimits = field(default_factory=RateLimits)
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    _peers: collections.OrderedDict[str, _Peer] = field(default_factory=collections.OrderedDict)
    _strangers: TokenBucket | None = None
    _untracked_said: float | None = None  # when a drop not tied to a tracked peer was last worth a log line

    @property
    def tracked(self) -> int:
        """How many peers have a bucket now (at most ``limits.max_peers``)."""
        return len(self._peers)

    def admit(self, peer: str, tier: TrustTier, size: int, now: float, *, replies: bool = False) -> Drop | None:
        """None when a message of ``size`` bytes from ``peer`` (held at ``tier``) may be read at ``now``; else
        why not (counted in :attr:`dropped`). ``replies``: we wait for this peer (its replies' budget applies).
        """
        limit = self.limits.replies if replies else self.limits.for_tier(tier)
        if limit.max_bytes is not None and size > limit.max_bytes:
            return self._drop(self._peers.get(peer), TOO_LARGE, now)
        stranger = tier <= TrustTier.UNTRUSTED and not replies
        shared = self.limits.strangers
        if stranger and shared.rate is not None:
            if self._strangers is None:
                self._strangers = TokenBucket.full(shared, now)
            self._strangers.refill(now)
            if self._strangers.tokens < 1.0:  # checked first: a fresh wallet gets no bucket then
                return self._drop(None, STRANGERS, now)
        if limit.rate is None:
            return None
        entry = self._entry(peer, tier, now)
        if replies:
            if entry.replies is None:
                entry.replies = TokenBucket.full(limit, now)
            bucket = entry.replies
        else:
            if entry.bucket is None:
                entry.bucket = TokenBucket.full(limit, now)
            bucket = entry.bucket
        if not bucket.take(now):
            return self._drop(entry, OVER_BUDGET, now)
        if stranger and self._strangers is not None:
            self._strangers.take(now)
        return None

    def _entry(self, peer: str, tier: TrustTier, now: float) -> _Peer:
        entry = self._peers.get(peer)
        if entry is None:
            entry = self._peers[peer] = _Peer(tier)
            while len(self._peers) > self.limits.max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
            if entry.tier != tier:  # the owner changed its tier: the new tier's budget, from full
                entry.tier, entry.bucket = tier, None
        return entry

    def _drop(self, entry: _Peer | None, reason: str, now: float) -> Drop:
        self.dropped[reason] += 1
        said = self._untracked_said if entry is None else entry.said
        say = said is None or not 0 <= now - said < SAY_EVERY
        if say:
            if entry is None:
                self._untracked_said = now
            else:
                entry.said = now
        return Drop(reason, say)

    def stats(self) -> dict[str, object]:
        """``{"dropped": {reason: count}, "tracked_peers": n}``."""
        return {"dropped": dict(self.dropped), "tracked_peers": len(self._peers)}
