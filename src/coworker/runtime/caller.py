"""The caller's side of a task: store it, deliver it until it ends, take the peer's answers, expire it.

Theory of operation. :meth:`Caller.submit` stores the task and commits it before anything is sent, then starts
one *driver* coroutine for it (:meth:`Caller._drive`). The driver sends the request, sends it again (a new message,
the same task id) on the retry schedule until the task ends, and expires it when neither an answer nor progress
came in time. Answers (``call.result``, ``call.error``, ``call.ack``, ``call.progress``) come through
:meth:`Caller.on_reply`, only from the wallet the task went to, and only move a live task forward. A result's
receipt is stored with the task and checked off the call path (:class:`ReceiptChecks`: in batches, after the
calls have returned); :func:`settle_receipt` checks one still unchecked at once, so whoever reads
``receipt_valid`` never sees it unchecked. Everything that changes a live task goes through the record its driver
holds (in its :class:`_Watch`) and wakes the driver. Drivers are cancelled at once when the agent
stops and started again, from the store, by :meth:`Caller.resume` on the next start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from coworker._errors import (
    ConfigurationError,
    CoworkerError,
    LocalProtocolError,
    PeerUnreachable,
    RemoteProtocolError,
    TransportError,
)
from coworker.core import protocol as proto
from coworker.core.tasks import (
    DEFAULT_CAP_FACTOR,
    LIVE,
    Progress,
    RetryPolicy,
    TaskState,
    advance,
    expires_at,
    receipt_problem,
    state_for_error,
)
from coworker.runtime.link import Link
from coworker.runtime.taskset import TaskSet
from coworker.store.records import Store, TaskRecord

log = logging.getLogger("coworker.runtime")

# What one task's progress may hold in memory, in its backlog (for a late watcher) and again in each watcher's
# queue: a peer may send as many reports as it likes, of up to a message's size each.
WATCH_BUFFER = 1000  # progress reports
WATCH_BUFFER_BYTES = 4_000_000  # their size as received
CHECK_GATHER = 0.02  # seconds receipts gather before they are checked together, off the call path


class _Reports:
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

    def copy(self) -> _Reports:
        other = _Reports()
        other._items.extend(self._items)
        other.bytes = self.bytes
        return other


class _Feed:
    """One watcher's queue: the reports it has not taken yet (bounded as a backlog is), then the end."""

    def __init__(self, backlog: _Reports, ended: bool) -> None:
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


@dataclass(eq=False)
class _Watch:
    """What the caller side keeps in memory for one of its live tasks: the record its driver holds (every
    change goes through this object, so that the driver sees it), and who waits for what."""

    task: TaskRecord
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: list[Callable[[Progress], None]] = field(default_factory=list)
    backlog: _Reports = field(default_factory=_Reports)
    feeds: list[_Feed] = field(default_factory=list)
    sent_ids: list[str] = field(default_factory=list)
    seq: int = 0  # the last progress message taken
    partials: int = 0  # partial results passed on so far
    answered: bool = False  # the peer has said anything about the task
    dropped: int = 0  # progress reports dropped from the backlog and the watchers' queues (over their bounds)
    first: tuple[proto.Envelope, bytes] | None = None  # the first copy, encoded by submit() (to check its size)

    def subscribe(self) -> _Feed:
        """A queue of the task's progress for one watcher, from the reports kept so far; :meth:`unsubscribe` it."""
        feed = _Feed(self.backlog, self.done.is_set())
        self.feeds.append(feed)
        return feed

    def unsubscribe(self, feed: _Feed) -> None:
        with contextlib.suppress(ValueError):
            self.feeds.remove(feed)


class Caller:
    """Delivers the tasks we send to peers."""

    def __init__(self, link: Link, retry: RetryPolicy) -> None:
        self._link = link
        self._retry = retry
        self._drivers = TaskSet()  # one per live task: cancelled at once on close, resumed on start
        self._watches: dict[str, _Watch] = {}  # our live tasks, by task id
        self._sent: dict[str, str] = {}  # message id of a call.request copy -> its task id
        self._peers: collections.Counter[str] = collections.Counter()  # lower-case wallet -> our live tasks there
        self._checks = ReceiptChecks(link)

    def resume(self) -> None:
        """Drive on the tasks we had sent when the agent last stopped or crashed."""
        for task in self._link.store.live_tasks("out"):
            self._start_driver(task)

    async def close(self) -> None:
        """Stop every driver at once (the tasks stay live in the store)."""
        await self._drivers.close(0)
        self._watches.clear()
        self._sent.clear()
        self._peers.clear()

    def awaits(self, wallet: str) -> bool:
        """Whether one of our live tasks went to ``wallet`` (lower-case)."""
        return wallet in self._peers

    def submit(self, peer: str, skill: str, input: dict[str, Any], *, version: str | None = None,
               timeout: float | None = None, cap: float | None = None, task_id: str | None = None,
               on_progress: Callable[[Progress], None] | None = None) -> str:
        """Store a new task for ``peer`` and start delivering it; its id.

        Raises:
            ConfigurationError: the input cannot be sent as JSON, or ``task_id`` is taken.
            LocalProtocolError: the request would be over the network's message size limit.
        """
        task_id = task_id or proto.new_id()
        body = self._call_body(task_id, skill, input, version)
        first = proto.request("call.request", body, sender=self._link.wallet, recipient=peer,
                              now_ms=self._link.now_ms())
        try:
            data = proto.encode(first)
        except ValueError as exc:
            raise ConfigurationError(f"input cannot be sent as JSON: {exc}") from None
        size = len(data)
        if size > proto.MAX_ENVELOPE_BYTES:
            raise LocalProtocolError(f"message of {size} bytes exceeds the network limit of "
                                     f"{proto.MAX_ENVELOPE_BYTES} bytes")
        if cap is None and timeout is not None:
            cap = timeout * DEFAULT_CAP_FACTOR
        now = self._link.clock()
        task = TaskRecord(task_id, "out", peer, skill, TaskState.SUBMITTED, input, now, version=version,
                          updated_at=now, last_activity=now, timeout=timeout, cap=cap, request_bytes=size)
        if not self._link.store.add_task(task):
            raise ConfigurationError(f"a task with id {task_id} exists already")
        # durable before the request leaves (the driver awaits the commit first) and before the agent's request()
        # returns (it awaits the same commit): after a crash the task is picked up again
        watch = self._start_driver(task, (first, data))
        if on_progress is not None:
            watch.listeners.append(on_progress)
        return task_id

    @staticmethod
    def _call_body(task_id: str, skill: str, input: dict[str, Any], version: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"skill": skill, "input": input, "task": task_id}
        if version is not None:
            body["version"] = version
        return body

    def watch(self, task_id: str) -> _Watch | None:
        """The in-memory state of one of our live tasks (None once it ended or when it is not ours)."""
        return self._watches.get(task_id)

    def _start_driver(self, task: TaskRecord, first: tuple[proto.Envelope, bytes] | None = None) -> _Watch:
        watch = self._watches[task.id] = _Watch(task, first=first)
        self._peers[task.peer.lower()] += 1
        self._drivers.spawn(self._drive(task, watch), f"coworker-task-{task.id}")
        return watch

    async def _drive(self, task: TaskRecord, watch: _Watch) -> None:
        """Deliver one of our tasks: send the request, send it again until the task ends, expire it.

        One copy at a time: the next copy goes only once the previous one's send has returned, and no sooner than
        that send took (:meth:`RetryPolicy.delay`). A copy's send is waited for while the transport recovers (a
        sidecar restarting), never past the task's expiry, where it is cancelled. When the task ends while a copy
        is being sent, the driver ends at once, so that whoever waits for the task has its answer, and leaves that
        send to finish: it may be in the transport's hands already (XMTP's sidecar sends what it has been given
        whether or not anyone waits), so cutting it short would gain nothing. Close cancels it with the driver."""
        body = self._call_body(task.id, task.skill, task.input, task.version)
        loop = asyncio.get_running_loop()
        copies, next_send = 0, loop.time()
        sending: asyncio.Task[CoworkerError | None] | None = None
        started = 0.0
        try:
            await self._link.store.sync()  # the task is durable before its request leaves
            while True:
                watch.changed.clear()  # before looking: a change from here on wakes the wait below
                if sending is not None and sending.done():
                    error = TransportError("cancelled") if sending.cancelled() else sending.result()
                    took, sending = loop.time() - started, None
                    if isinstance(error, PeerUnreachable | LocalProtocolError):
                        code = "PEER_UNREACHABLE" if isinstance(error, PeerUnreachable) else "PROTOCOL_ERROR"
                        self._end(task, watch, TaskState.REJECTED, error_code=code, error_message=str(error))
                    elif error is not None:
                        log.info("could not send task %s to %s (will try again): %s", task.id, task.peer, error)
                    copies += 1
                    next_send = loop.time() + self._retry.delay(copies, took)
                if task.state not in LIVE:
                    break  # a copy still being sent goes on by itself (see above)
                now = loop.time()
                ends = expires_at(task.created_at, task.last_activity, task.timeout, task.cap)
                if ends is not None and self._link.clock() >= ends:
                    if sending is not None:
                        sending.cancel()
                    self._expire(task, watch)
                    break
                if sending is None and now >= next_send:
                    started = now
                    sending = self._drivers.spawn(self._send_copy(task, watch, body), f"coworker-copy-{task.id}")
                    sending.add_done_callback(lambda _: watch.changed.set())
                wait = None if sending is not None else next_send - loop.time()
                if ends is not None:
                    wait = ends - self._link.clock() if wait is None else min(wait, ends - self._link.clock())
                if wait is None or wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await watch.changed.wait()
        finally:
            self._forget(task.id, watch)

    async def _send_copy(self, task: TaskRecord, watch: _Watch, body: dict[str, Any]) -> CoworkerError | None:
        """Send one copy of a task's request; why it could not be sent (returned, not raised: the driver may
        have ended and left it to finish on its own)."""
        if watch.first is not None:
            (env, data), watch.first = watch.first, None
        else:
            env = proto.request("call.request", body, sender=self._link.wallet, recipient=task.peer,
                                now_ms=self._link.now_ms())
            data = proto.encode(env)
        self._sent[env.id] = task.id
        watch.sent_ids.append(env.id)
        try:
            await self._link.send_data(task.peer, data)
        except CoworkerError as exc:
            return exc
        return None

    def _forget(self, task_id: str, watch: _Watch) -> None:
        if self._watches.get(task_id) is watch:
            del self._watches[task_id]
            key = watch.task.peer.lower()
            self._peers[key] -= 1
            if self._peers[key] <= 0:
                del self._peers[key]
        for mid in watch.sent_ids:
            self._sent.pop(mid, None)
        for feed in watch.feeds:
            feed.end()
        watch.done.set()

    def _expire(self, task: TaskRecord, watch: _Watch) -> None:
        limit = task.timeout if task.timeout is not None else task.cap
        if task.cap is not None and self._link.clock() >= task.created_at + task.cap:
            message = f"the call to {task.skill} ran past its cap of {task.cap:g} s"
        elif not watch.answered:
            message = f"{task.peer} did not answer call.request within {limit:g} s"
        else:
            message = f"{task.peer} reported no progress on {task.skill} for {limit:g} s"
        self._end(task, watch, TaskState.EXPIRED, error_code="TIMEOUT", error_message=message)
        if watch.sent_ids:
            self._send_cancel(task)

    def _end(self, task: TaskRecord, watch: _Watch | None, state: TaskState, **changes: Any) -> bool:
        """Move one of our tasks to ``state`` (with ``changes``) and wake its driver; False when it had ended
        already and stays as it is (an answer may arrive while its driver was sending)."""
        if task.state not in LIVE:
            return False
        self._link.store.update_task(task, state=state, updated_at=self._link.clock(), **changes)
        if watch is not None:
            watch.changed.set()
        return True

    def _send_cancel(self, task: TaskRecord) -> None:
        async def send() -> None:
            try:
                await self._link.send(proto.request("call.cancel", {"task": task.id}, sender=self._link.wallet,
                                                    recipient=task.peer, now_ms=self._link.now_ms()))
            except CoworkerError as exc:
                log.info("could not send the cancellation of task %s: %s", task.id, exc)

        self._link.tasks.spawn(send(), "coworker-cancel")

    def cancel(self, task_id: str) -> bool:
        """Cancel one of our live tasks (and tell the peer); False when it had ended already.

        Raises:
            ConfigurationError: no task of ours has that id.
        """
        task = self._live_record(task_id)
        if task is None:
            if self._link.store.task("out", task_id) is None:
                raise ConfigurationError(f"no task {task_id} of ours")
            return False
        self._end(task, self._watches.get(task_id), TaskState.CANCELED, error_code="CANCELED",
                  error_message="canceled by the caller")
        if self._link.transport is not None:
            self._send_cancel(task)
        return True

    def on_reply(self, env: proto.Envelope, peer: str, size: int) -> None:
        try:
            body = proto.parse_body(env)
        except RemoteProtocolError as exc:
            log.warning("ignored %s from %s: %s", env.type, peer, exc)
            return
        task_id = getattr(body, "task", None) or self._sent.get(env.corr)
        task = self._live_record(task_id) if task_id else None
        if task is None:
            log.info("ignored %s %s from %s: no live task of ours", env.type, env.id, peer)
            return
        if task.peer.lower() != peer.lower():
            log.warning("ignored %s about task %s from %s: the task went to %s", env.type, task.id, peer, task.peer)
            return
        watch = self._watches.get(task.id)
        if watch is not None:
            watch.answered = True
        now = self._link.clock()
        if env.type == "call.ack":
            new = advance(TaskState(task.state), "need_input" if body.state == "input_required" else "accept")
            if new is not None and new != task.state:
                self._end(task, watch, new)
        elif env.type == "call.progress":
            self._progress(task, watch, body, now, size)
        elif env.type == "call.result":
            if self._end(task, watch, TaskState.COMPLETED, output=body.output, duration_ms=body.duration_ms,
                         response_bytes=size, receipt=body.receipt):
                self._take_receipt(task)
        elif self._end(task, watch, state_for_error(body.code), error_code=body.code, error_message=body.message,
                       error_path=body.path or None, response_bytes=size, receipt=body.receipt):
            self._take_receipt(task)

    def _live_record(self, task_id: str) -> TaskRecord | None:
        """One of our live tasks: the driver's record while it runs, else the stored one."""
        watch = self._watches.get(task_id)
        task = watch.task if watch is not None else self._link.store.task("out", task_id)
        return task if task is not None and task.state in LIVE else None

    def _progress(self, task: TaskRecord, watch: _Watch | None, body: proto.CallProgressBody, now: float,
                  size: int) -> None:
        changes: dict[str, Any] = {"last_activity": max(now, task.last_activity)}
        if task.state == TaskState.SUBMITTED:
            changes["state"] = TaskState.WORKING
        self._link.store.update_task(task, **changes)
        if watch is None or body.seq <= watch.seq:
            return  # a repeat, or overtaken by a later report
        watch.seq = body.seq
        fresh = body.partials[max(0, watch.partials - body.index):]
        watch.partials = max(watch.partials, body.index + len(body.partials))
        event = Progress(task.id, body.progress, body.message, list(fresh))
        dropped = watch.backlog.add(event, size) + sum(feed.put(event, size) for feed in watch.feeds)
        if dropped:
            if not watch.dropped:
                log.warning("task %s: %s sends more progress than is kept (%d reports, %d bytes): the oldest "
                            "reports are dropped", task.id, task.peer, WATCH_BUFFER, WATCH_BUFFER_BYTES)
            watch.dropped += dropped
        for listener in list(watch.listeners):
            try:
                listener(event)
            except Exception:
                log.exception("progress callback for task %s failed", task.id)
        watch.changed.set()

    def _take_receipt(self, task: TaskRecord) -> None:
        """A task ended with the receipt stored as sent: check it off the call path."""
        if task.receipt is not None:
            self._checks.add(task)


def settle_receipt(store: Store, task: TaskRecord, wallet: str) -> None:
    """Check now the receipt of one of our ended tasks that is still unchecked (and store the verdict), so that
    ``receipt_valid`` is never reported before the receipt was checked."""
    if (store.closed or task.direction != "out" or task.receipt is None or task.receipt_valid is not None
            or task.state in LIVE):
        return
    problem = receipt_problem(task.receipt, task_id=task.id, skill=task.skill, caller=wallet, provider=task.peer,
                              status="completed" if task.state == TaskState.COMPLETED else "failed")
    if problem is not None:
        log.warning("task %s: the receipt from %s does not verify: %s", task.id, task.peer, problem)
    store.update_task(task, receipt_valid=problem is None)


class ReceiptChecks:
    """Checks the receipts of our tasks off the call path: the receipts that came in within
    :data:`CHECK_GATHER` seconds are checked together, on the loop, after the calls they belong to have returned
    (measured: a worker thread costs more in hand-overs and contention for the interpreter than it saves)."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._batch: list[TaskRecord] = []

    def add(self, task: TaskRecord) -> None:
        self._batch.append(task)
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_later(CHECK_GATHER, self._check)

    def _check(self) -> None:
        batch, self._batch = self._batch, []
        for task in batch:
            settle_receipt(self._link.store, task, self._link.wallet)
