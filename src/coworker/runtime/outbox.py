"""The outbox: every message the runtime sends goes through it, to batch what waits for one peer and to keep to
the network's write limit.

Theory of operation. Over XMTP most of a call's CPU is the sidecars' sends, and every send is one of the client's
limited writes. So, per recipient (lower-case wallet), at most one send is in flight:

- Nothing in flight and the write budget not spent: the caller's own coroutine sends its message, as itself. The
  sequential path costs no task, no wait and no byte more than a plain send.
- Otherwise the message queues. One drain task per recipient sends what queued, in order, as batch frames
  (:func:`coworker.core.batch.pack`: as many envelopes as fit in one message; a lone one goes as itself), one
  frame at a time, until the queue is empty.
- The write budget (:class:`coworker.core.batch.WriteBudget`, one per outbox: the limit is per client) counts
  every frame. When it is spent, frames wait for it; meanwhile the queues keep growing, so what finally goes
  carries more messages per write instead of exceeding the limit.

Every caller of :meth:`Outbox.send` awaits until its own message has been handed to the transport, and gets the
exception the send of its frame raised. A caller cancelled while its message still waits takes it out of the
queue; one cancelled while its frame is in flight does not stop the frame. With ``batch=False`` every message is
its own send, concurrent with the others, as before batching (a baseline), still under the write budget.

The drain tasks belong to the runtime's task set: closed (after a grace period) when the agent stops, failing the
messages still queued.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from coworker._errors import TransportError
from coworker.core import batch as frames
from coworker.core.batch import WriteBudget
from coworker.runtime.taskset import TaskSet
from coworker.transports.base import Transport


@dataclass(slots=True)
class _Item:
    data: bytes
    done: asyncio.Future[None]


@dataclass(slots=True)
class _Queue:
    recipient: str
    items: collections.deque[_Item] = field(default_factory=collections.deque)
    busy: bool = False  # a send to this recipient is in flight, or a drain owns the queue


class Outbox:
    """One agent's sends through ``transport``: batched per recipient, under the write budget.

    Args:
        transport: where the frames go.
        batch: join what waits for one recipient into batch frames (False: one message per send, concurrently).
        budget: the write limit (None: none).
        tasks: owns the drain tasks (the runtime's, so that they are closed with it).
        clock: monotonic seconds, for the budget.
        sleep: waits for the budget (injected by tests, which move their clock themselves).

    Example::

        outbox = Outbox.for_transport(transport, tasks)
        await outbox.send(peer_wallet, encoded)    # returns once handed to the transport
    """

    def __init__(self, transport: Transport, *, batch: bool = True, budget: WriteBudget | None = None,
                 tasks: TaskSet | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.transport = transport
        self.batch = batch
        self.budget = budget
        self._tasks = tasks if tasks is not None else TaskSet()
        self._clock = clock
        self._sleep = sleep
        self._queues: dict[str, _Queue] = {}
        self.frames_sent = 0
        self.payloads_sent = 0
        self.frames_failed = 0
        self.budget_waits = 0  # times a send waited for the write budget
        self.budget_wait_s = 0.0

    @classmethod
    def for_transport(cls, transport: Transport, tasks: TaskSet) -> Outbox:
        """An outbox that follows the transport's :class:`~coworker.transports.base.SendPolicy`."""
        policy = transport.send_policy
        budget = None if policy.write_limit is None else WriteBudget(policy.write_limit, policy.write_window)
        return cls(transport, batch=policy.batch, budget=budget, tasks=tasks)

    def __repr__(self) -> str:
        return f"<Outbox frames={self.frames_sent} payloads={self.payloads_sent} queued={self.queued}>"

    @property
    def queued(self) -> int:
        """Messages waiting for a send."""
        return sum(len(q.items) for q in self._queues.values())

    async def send(self, recipient: str, data: bytes, *, alone: bool = False) -> None:
        """Hand ``data`` to the transport for ``recipient``, alone or in a frame with others for that recipient
        (``alone``: never in a frame, for a peer that reads none - a CoWorker 1.0 agent).

        Raises:
            whatever the transport's send of the frame raised (PeerUnreachable, TransportError).
        """
        if not self.batch or alone:
            await self._wait_for_budget()
            await self._write(recipient, data, 1)
            return
        key = recipient.lower()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(recipient)
        if not queue.busy and self._budget_free():  # then nothing is queued either: send it ourselves, as itself
            queue.busy = True
            try:
                await self._write(recipient, data, 1)
            finally:
                queue.busy = False
                self._after_send(key, queue)
            return
        item = _Item(data, asyncio.get_running_loop().create_future())
        queue.items.append(item)
        if not queue.busy:
            queue.busy = True
            self._tasks.spawn(self._drain(key, queue), "coworker-outbox")
        await item.done  # cancelled: the drain skips the item if it has not left yet

    def _after_send(self, key: str, queue: _Queue) -> None:
        if queue.items:
            queue.busy = True
            self._tasks.spawn(self._drain(key, queue), "coworker-outbox")
        elif self._queues.get(key) is queue:
            del self._queues[key]

    async def _drain(self, key: str, queue: _Queue) -> None:
        """Send what queued for one recipient, frame by frame, until nothing is left."""
        taken: list[_Item] = []
        try:
            while queue.items:
                await self._wait_for_budget()
                waiting = [item for item in queue.items if not item.done.done()]  # done: its caller stopped waiting
                if not waiting:
                    break
                data, count = frames.pack([item.data for item in waiting])
                taken = waiting[:count]
                queue.items = collections.deque(waiting[count:])
                try:
                    await self._write(queue.recipient, data, count)
                except Exception as exc:  # not handled here: handed to each caller whose message was in the frame
                    for item in taken:
                        if not item.done.done():
                            item.done.set_exception(exc)
                else:
                    for item in taken:
                        if not item.done.done():
                            item.done.set_result(None)
                taken = []
        finally:
            left = [*taken, *queue.items]
            queue.items.clear()
            for item in left:  # only when the drain was cancelled (the agent stopped)
                if not item.done.done():
                    item.done.set_exception(TransportError("agent stopped before the message was sent"))
            queue.busy = False
            if self._queues.get(key) is queue:
                del self._queues[key]

    def _budget_free(self) -> bool:
        return self.budget is None or self.budget.wait(self._clock()) == 0.0

    async def _wait_for_budget(self) -> None:
        budget = self.budget
        if budget is None:
            return
        begin = self._clock()
        waited = False
        while (delay := budget.wait(self._clock())) > 0.0:
            waited = True
            await self._sleep(delay)
        if waited:
            self.budget_waits += 1
            self.budget_wait_s += self._clock() - begin

    async def _write(self, recipient: str, data: bytes, count: int) -> None:
        if self.budget is not None:
            self.budget.spend(self._clock())  # a failed send may have reached the network: it counts
        try:
            await self.transport.send(recipient, data)
        except BaseException:
            self.frames_failed += 1
            raise
        self.frames_sent += 1
        self.payloads_sent += count

    def stats(self) -> dict[str, Any]:
        """Frames and messages sent, and the write budget: ``{"batch", "frames_sent", "payloads_sent",
        "payloads_per_frame", "frames_failed", "queued", "write_limit", "write_window_s", "writes_in_window",
        "budget_waits", "budget_wait_s"}`` (``write_limit`` and ``writes_in_window`` None without a limit)."""
        budget = self.budget
        return {
            "batch": self.batch,
            "frames_sent": self.frames_sent,
            "payloads_sent": self.payloads_sent,
            "payloads_per_frame": self.payloads_sent / self.frames_sent if self.frames_sent else 0.0,
            "frames_failed": self.frames_failed,
            "queued": self.queued,
            "write_limit": budget.limit if budget is not None else None,
            "write_window_s": budget.window_s if budget is not None else self.transport.send_policy.write_window,
            "writes_in_window": budget.used(self._clock()) if budget is not None else None,
            "budget_waits": self.budget_waits,
            "budget_wait_s": self.budget_wait_s,
        }
