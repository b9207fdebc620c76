"""The progress reports of one of our live tasks, as kept for its watchers: a bounded backlog (for a watcher that
comes late) and one bounded queue per watcher."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator

from coworker.core.tasks import Progress

# What one task's progress may hold in memory, in its backlog (for a late watcher) and again in each watcher's
# queue: a peer may send as many reports as it likes, of up to a message's size each.
WATCH_BUFFER = 1000  # progress reports
WATCH_BUFFER_BYTES = 4_000_000  # their size as received


class Reports:
    """Progress reports, oldest first, bounded by :data:`WATCH_BUFFER` and :data:`WATCH_BUFFER_BYTES` (each
    counted at the size of the message that brought it): past either bound the oldest go, and are counted."""

    def __init__(self) -> None:
        self._items: collections.deque[tuple[Progress, int]] = collections.deque()
        self.bytes = 0
        self.dropped = 0

    def __iter__(self) -> Iterator[Progress]:
        return (event for event, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, event: Progress, size: int) -> int:
        """Keep ``event``; how many older reports went to make room (the newest one always stays)."""
        self._items.append((event, size))
        self.bytes += size
        dropped = 0
        while len(self._items) > 1 and (len(self._items) > WATCH_BUFFER or self.bytes > WATCH_BUFFER_BYTES):
            self.bytes -= self._items.popleft()[1]
            dropped += 1
        self.dropped += dropped
        return dropped

    def take(self) -> Progress:
        event, size = self._items.popleft()
        self.bytes -= size
        return event

    def copy(self) -> Reports:
        other = Reports()
        other._items.extend(self._items)
        other.bytes = self.bytes
        return other


class Feed:
    """One watcher's queue: the reports it has not taken yet (bounded as a backlog is), then the end."""

    def __init__(self, backlog: Reports, ended: bool) -> None:
        self.reports = backlog.copy()
        self.ended = ended
        self._ready = asyncio.Event()

    def put(self, event: Progress, size: int) -> int:
        dropped = self.reports.add(event, size)
        self._ready.set()
        return dropped

    def end(self) -> None:
        self.ended = True
        self._ready.set()

    async def get(self) -> Progress | None:
        """The next report, or None once the task has ended and every report kept has been taken."""
        while not self.reports:
            if self.ended:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self.reports.take()
