"""Batch frames and the write budget: what goes out, when several messages go to one peer. No I/O, no clock.

Theory of operation. Over XMTP every message published costs the sender a send (most of a call's CPU) and one of
the network's writes (about 3,000 per client every 5 minutes). When several envelopes wait for the same peer they
go together as one *frame*: a magic first line, then the encoded envelopes, one per line::

    coworker-batch 1\\n{"coworker":2,...}\\n{"coworker":2,...}

An encoded envelope is compact JSON and never holds a raw newline (JSON escapes it inside strings), and it starts
with ``{``, so a frame can never be taken for an envelope nor an envelope for a frame. A frame is at most
:data:`~coworker.core.protocol.MAX_ENVELOPE_BYTES` long (the network's limit for one message) and holds at most
:data:`MAX_PARTS` envelopes: :func:`pack` takes the envelopes that fit and leaves the rest for the next frame; one
envelope alone is sent as itself, unchanged.

Splitting is strict and total: :func:`split` returns the parts, or why the frame is refused (never raises), and
each part then goes through :func:`~coworker.core.protocol.decode` with all its checks, as if it had come alone.

:class:`WriteBudget` is the sender's side of a network's write limit: a sliding window of the times of the last
sends; time is passed in.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from coworker.core.protocol import MAX_ENVELOPE_BYTES

MAGIC: Final = b"coworker-batch 1\n"
_PREFIX: Final = b"coworker-batch "  # any version: a frame of another version is refused, not decoded as JSON
MAX_PARTS: Final = 512  # envelopes in one frame
_NEWLINE: Final = b"\n"


def is_frame(data: bytes) -> bool:
    """Whether ``data`` is a batch frame (of any version) rather than one envelope."""
    return data.startswith(_PREFIX)


def joinable(part: bytes) -> bool:
    """Whether an encoded envelope may go inside a frame: not empty, no raw newline, not a frame itself."""
    return bool(part) and _NEWLINE not in part and not is_frame(part)


def join(parts: Sequence[bytes]) -> bytes:
    """The frame holding ``parts`` (two or more).

    Raises:
        ValueError: fewer than 2 or more than :data:`MAX_PARTS` parts, a part that is not :func:`joinable`, or a
            frame over :data:`~coworker.core.protocol.MAX_ENVELOPE_BYTES`.
    """
    if not 2 <= len(parts) <= MAX_PARTS:
        raise ValueError(f"a frame holds 2 to {MAX_PARTS} envelopes, got {len(parts)}")
    if not all(joinable(part) for part in parts):
        raise ValueError("an envelope in a frame is not empty, holds no newline and is not a frame")
    frame = MAGIC + _NEWLINE.join(parts)
    if len(frame) > MAX_ENVELOPE_BYTES:
        raise ValueError(f"a frame of {len(frame)} bytes is over the {MAX_ENVELOPE_BYTES}-byte message limit")
    return frame


def pack(parts: Sequence[bytes], max_bytes: int = MAX_ENVELOPE_BYTES) -> tuple[bytes, int]:
    """What to send next for ``parts`` (in order, at least one): ``(message, how many parts it carries)``.

    The first part always goes: alone and unchanged when it is the only one, when the next does not fit in
    ``max_bytes`` with it, or when either is not :func:`joinable`; otherwise as a frame of the longest run of
    joinable parts that fits (at most :data:`MAX_PARTS`).
    """
    if not parts:
        raise ValueError("nothing to pack")
    size = len(MAGIC) + len(parts[0])
    count = 1
    if joinable(parts[0]):
        for part in parts[1:MAX_PARTS]:
            size += 1 + len(part)
            if size > max_bytes or not joinable(part):
                break
            count += 1
    if count == 1:
        return parts[0], 1
    return MAGIC + _NEWLINE.join(parts[:count]), count


def split(data: bytes) -> list[bytes] | str:
    """The envelopes in the frame ``data`` (each still to :func:`~coworker.core.protocol.decode`), or why the
    frame is refused: over the size limit, another version, no envelope, more than :data:`MAX_PARTS`, or an
    empty one."""
    if len(data) > MAX_ENVELOPE_BYTES:
        return f"batch frame of {len(data)} bytes exceeds the limit of {MAX_ENVELOPE_BYTES}"
    if not data.startswith(MAGIC):
        return "not a version 1 batch frame"
    body = data[len(MAGIC):]
    if not body:
        return "batch frame holds no message"
    if body.count(_NEWLINE) >= MAX_PARTS:  # counted before splitting: a hostile frame costs no list of parts
        return f"batch frame holds more than {MAX_PARTS} messages"
    parts = body.split(_NEWLINE)
    if not all(parts):
        return "batch frame holds an empty message"
    return parts


@dataclass
class WriteBudget:
    """At most ``limit`` writes in any ``window_s`` seconds (a sliding window over the times of the writes).

    Example::

        budget = WriteBudget(3000, 300.0)        # XMTP's production limit for one client
        if budget.wait(now) == 0.0:
            budget.spend(now)                    # ... and write
    """

    limit: int
    window_s: float
    _stamps: collections.deque[float] = field(default_factory=collections.deque, repr=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.limit, int) and self.limit > 0):
            raise ValueError(f"a write limit is a positive number of writes, got {self.limit!r}")
        if not self.window_s > 0:
            raise ValueError(f"a write window is a positive number of seconds, got {self.window_s!r}")

    def _forget(self, now: float) -> None:
        stamps = self._stamps
        while stamps and stamps[0] <= now - self.window_s:
            stamps.popleft()

    def used(self, now: float) -> int:
        """Writes in the window that ends at ``now``."""
        self._forget(now)
        return len(self._stamps)

    def wait(self, now: float) -> float:
        """Seconds until a write is allowed (0.0: now)."""
        self._forget(now)
        if len(self._stamps) < self.limit:
            return 0.0
        return max(self._stamps[0] + self.window_s - now, 0.0)

    def spend(self, now: float) -> None:
        """Count a write made at ``now`` (a clock that goes back counts it at the latest time seen)."""
        self._stamps.append(max(now, self._stamps[-1]) if self._stamps else now)
