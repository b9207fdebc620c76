"""Per-client rate limiting for the devnet (pure: the caller passes the time in)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """A token bucket per client: ``rate`` requests per second, bursts up to ``burst``.

    Args:
        rate: sustained requests per second allowed to one client.
        burst: how many requests a client may make at once; defaults to ``max(rate, 1)``.
        max_clients: buckets kept at most; the least recently used are forgotten beyond that.
    """

    rate: float
    burst: float | None = None
    max_clients: int = 10_000
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def allow(self, client: str, now: float) -> bool:
        """Take one token from ``client``'s bucket at time ``now`` (seconds); False if it is empty."""
        capacity = self.burst if self.burst is not None else max(self.rate, 1.0)
        bucket = self._buckets.pop(client, None)
        if bucket is None:
            bucket = _Bucket(tokens=capacity, updated=now)
            if len(self._buckets) >= self.max_clients:
                del self._buckets[next(iter(self._buckets))]
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[client] = bucket  # re-inserted: dict order is recency order
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True
