"""Each peer as the caller's drivers see it (:class:`Line`): when it last said anything, whether it is presumed
away, and its window of re-sends. The caller's module docstring (:mod:`coworker.runtime.caller`) tells how the
drivers use it."""

from __future__ import annotations

import asyncio
import collections
import math
import random
from typing import Protocol

from coworker.core.tasks import LIVE
from coworker.store.records import TaskRecord


class Waiter(Protocol):
    """A driver as a line sees it: its task, and the event that wakes it."""

    task: TaskRecord
    changed: asyncio.Event


RESEND_WINDOW = 64  # re-sent copies to one peer that may wait for an answer at once (each answer frees one)
JITTER = 0.25  # every retry gap is drawn between (1 - JITTER) and (1 + JITTER) times its length


def jittered(seconds: float) -> float:
    return seconds * random.uniform(1 - JITTER, 1 + JITTER)


class Line:
    """One peer as our drivers see it: when it last said anything, whether it is presumed away (and the probe
    that looks for it), and its window of re-sends: at most :data:`RESEND_WINDOW` re-sent copies wait for an
    answer at once, so that re-sends go at the pace the peer answers them, oldest waiting first."""

    def __init__(self) -> None:
        self.tasks = 0  # our live tasks there
        self.heard = -math.inf  # loop time the peer last said anything to us
        self.away = False
        self.back = asyncio.Event()  # wakes the prober
        self.prober: asyncio.Task[None] | None = None
        self.parked: set[Waiter] = set()  # drivers waiting for the peer to come back
        self.queue: collections.deque[Waiter] = collections.deque()  # drivers waiting for a place in the window
        self.outstanding: set[Waiter] = set()  # drivers whose re-sent copy waits for an answer
        self.settle_until = 0.0  # loop time before which no copy is sent again (the peer just came back)

    def release(self, watch: Waiter) -> None:
        """``watch``'s re-sent copy was answered (or its task ended, or its gap passed): the next in line goes."""
        if watch in self.outstanding:
            self.outstanding.discard(watch)
            while self.queue:
                nxt = self.queue.popleft()
                if nxt.task.state in LIVE:
                    nxt.changed.set()
                    break
