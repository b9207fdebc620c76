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

Re-sends go through the peer's :class:`Line`, so that a peer that is away draws no storm. A copy is sent again
only if the peer has said something since that copy left (it is there: the copy, or its answer, was lost, or the
task runs long and this is a poll); if it has not, the peer is presumed away: its drivers stop sending and one
probe (a ``ping``) goes to it at a time, on the retry schedule with jitter, until it answers anything. Then the
drivers go on after one retry gap (the peer answers first the copies it kept), their re-sends paced by the line's
window (:data:`RESEND_WINDOW` re-sent copies waiting for an answer at once: the pace at which the peer answers),
oldest waiting first. Both networks CoWorker runs on keep messages for a peer that is away (XMTP, the memory
network), so the first copies reach it when it returns: re-sends only make up for what was lost. Every retry gap
carries jitter, so that tasks sent together do not come due together.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import Callable
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
    state_for_error,
)
from coworker.runtime.lines import RESEND_WINDOW, Line, jittered
from coworker.runtime.link import Link
from coworker.runtime.progress import WATCH_BUFFER, WATCH_BUFFER_BYTES, Feed, Reports
from coworker.runtime.receipts import ReceiptChecks
from coworker.runtime.taskset import TaskSet
from coworker.store.records import TaskRecord

log = logging.getLogger("coworker.runtime")

PROBES_KEPT = 1024  # ids of the latest probes whose pongs are taken quietly
@dataclass(eq=False)
class _Watch:
    """What the caller side keeps in memory for one of its live tasks: the record its driver holds (every
    change goes through this object, so that the driver sees it), and who waits for what."""

    task: TaskRecord
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: list[Callable[[Progress], None]] = field(default_factory=list)
    backlog: Reports = field(default_factory=Reports)
    feeds: list[Feed] = field(default_factory=list)
    sent_ids: list[str] = field(default_factory=list)
    seq: int = 0  # the last progress message taken
    partials: int = 0  # partial results passed on so far
    answered: bool = False  # the peer has said anything about the task
    dropped: int = 0  # progress reports dropped from the backlog and the watchers' queues (over their bounds)
    first: tuple[proto.Envelope, bytes] | None = None  # the first copy, encoded by submit() (to check its size)

    def subscribe(self) -> Feed:
        """A queue of the task's progress for one watcher, from the reports kept so far; :meth:`unsubscribe` it."""
        feed = Feed(self.backlog, self.done.is_set())
        self.feeds.append(feed)
        return feed

    def unsubscribe(self, feed: Feed) -> None:
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
        self._lines: dict[str, Line] = {}  # lower-case wallet -> the peer as our drivers see it
        # message ids of our latest probes: their pongs are expected, also late ones (a peer that was away answers
        # every probe it kept when it returns)
        self._probes: collections.deque[str] = collections.deque(maxlen=PROBES_KEPT)
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
        self._lines.clear()
        self._probes.clear()

    def awaits(self, wallet: str) -> bool:
        """Whether one of our live tasks went to ``wallet`` (lower-case)."""
        line = self._lines.get(wallet)
        return line is not None and line.tasks > 0

    def heard(self, wallet: str) -> None:
        """``wallet`` (as authenticated) said something to us: it is there; drivers waiting for it go on."""
        line = self._lines.get(wallet.lower())
        if line is None:
            return
        line.heard = asyncio.get_running_loop().time()
        if line.away:
            line.away = False
            # Both networks keep messages for a peer that is away: it has our first copies, and answers them now.
            # Re-sends wait a retry gap, so that only what it does not answer by then is sent again.
            line.settle_until = line.heard + jittered(self._retry.first)
            line.back.set()
            log.info("%s answers again: %d task(s) go on", wallet, len(line.parked))
            for watch in line.parked:
                watch.changed.set()

    def took_probe_reply(self, corr: str) -> bool:
        """Whether a reply answers one of our probes (it was expected; :meth:`heard` has counted it)."""
        return corr in self._probes

    def away(self) -> dict[str, int]:
        """Peers presumed away, with our live tasks there."""
        return {wallet: line.tasks for wallet, line in self._lines.items() if line.away}

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
        # returns (it awaits the same commit): after a crash the task is picked up again. The commit is scheduled
        # before the driver starts, so that the driver finds it done.
        self._link.store.commit_soon()
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
        line = self._lines.get(task.peer.lower())
        if line is None:
            line = self._lines[task.peer.lower()] = Line()
        line.tasks += 1
        self._drivers.spawn(self._drive(task, watch, line), f"coworker-task-{task.id}")
        return watch

    async def _drive(self, task: TaskRecord, watch: _Watch, line: Line) -> None:
        """Deliver one of our tasks: send the request, send it again until the task ends, expire it.

        One copy at a time: the next copy goes only once the previous one's send has returned, and no sooner than
        that send took (:meth:`RetryPolicy.delay`, with jitter). A copy is sent again only through the peer's
        line (see the module's docstring): not while the peer is presumed away, and within its re-send budget.
        A copy's send is waited for while the transport recovers (a sidecar restarting), never past the task's
        expiry, where it is cancelled. When the task ends while a copy is being sent, the driver ends at once, so
        that whoever waits for the task has its answer, and leaves that send to finish: it may be in the
        transport's hands already (XMTP's sidecar sends what it has been given whether or not anyone waits), so
        cutting it short would gain nothing. Close cancels it with the driver."""
        body = self._call_body(task.id, task.skill, task.input, task.version)
        loop = asyncio.get_running_loop()
        copies, next_send, sent_at = 0, loop.time(), 0.0
        sending: asyncio.Task[CoworkerError | None] | None = None
        started = 0.0
        try:
            await self._link.store.sync()  # the task is durable before its request leaves
            while True:
                watch.changed.clear()  # before looking: a change from here on wakes the wait below
                if sending is not None and sending.done():
                    error = TransportError("cancelled") if sending.cancelled() else sending.result()
                    sent_at = loop.time()
                    took, sending = sent_at - started, None
                    if isinstance(error, PeerUnreachable | LocalProtocolError):
                        code = "PEER_UNREACHABLE" if isinstance(error, PeerUnreachable) else "PROTOCOL_ERROR"
                        self._end(task, watch, TaskState.REJECTED, error_code=code, error_message=str(error))
                    elif error is not None:
                        log.info("could not send task %s to %s (will try again): %s", task.id, task.peer, error)
                    copies += 1
                    next_send = sent_at + jittered(self._retry.delay(copies, took))
                if task.state not in LIVE:
                    break  # a copy still being sent goes on by itself (see above)
                now = loop.time()
                ends = expires_at(task.created_at, task.last_activity, task.timeout, task.cap)
                if ends is not None and self._link.clock() >= ends:
                    if sending is not None:
                        sending.cancel()
                    self._expire(task, watch)
                    break
                held = False
                if sending is None and now >= next_send:
                    hold = 0.0 if copies == 0 else self._hold(task, watch, line, sent_at, now)
                    held = hold == math.inf
                    if hold > 0.0 and not held:
                        next_send = now + hold  # the peer just came back: its backlog first
                    elif not held:
                        started = now
                        sending = self._drivers.spawn(self._send_copy(task, watch, body), f"coworker-copy-{task.id}")
                        sending.add_done_callback(lambda _: watch.changed.set())
                wait = None if sending is not None or held else next_send - loop.time()
                if ends is not None:
                    wait = ends - self._link.clock() if wait is None else min(wait, ends - self._link.clock())
                if wait is None or wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await watch.changed.wait()
        finally:
            line.parked.discard(watch)
            line.release(watch)
            self._forget(task.id, watch)

    def _hold(self, task: TaskRecord, watch: _Watch, line: Line, sent_at: float, now: float) -> float:
        """Seconds a due re-send of ``task`` must wait: ``inf`` until the peer comes back or a place in its window
        frees (the driver is woken), a while after the peer came back (it answers what it has first), or 0: send
        it now (its place taken)."""
        line.release(watch)  # its previous re-send, if any, had its time
        if self._link.speaks_v1(task.peer):
            return math.inf  # a CoWorker 1.0 agent runs a request again for every copy: one copy only
        if line.away or line.heard < sent_at:  # not a word from the peer since our last copy: presumed away
            if not line.away:
                self._presume_away(task.peer, line)
            line.parked.add(watch)
            return math.inf
        line.parked.discard(watch)
        if now < line.settle_until:
            return line.settle_until - now
        if len(line.outstanding) >= RESEND_WINDOW:
            if watch not in line.queue:
                line.queue.append(watch)
            return math.inf
        line.outstanding.add(watch)
        return 0.0

    def _presume_away(self, peer: str, line: Line) -> None:
        line.away = True
        line.back.clear()
        log.info("%s has not answered since our last request: presumed away; probing it instead of sending "
                 "again each of our %d task(s) there", peer, line.tasks)
        if line.prober is None or line.prober.done():
            line.prober = self._drivers.spawn(self._probe(peer, line), f"coworker-probe-{peer}")

    async def _probe(self, peer: str, line: Line) -> None:
        """Send the peer one ``ping`` at a time, on the retry schedule with jitter, until it says anything (its
        pong, or any other message) or none of our tasks there is live any more."""
        sent = 0
        while line.away and line.tasks > 0:
            env = proto.request("ping", {}, sender=self._link.wallet, recipient=peer, now_ms=self._link.now_ms())
            self._probes.append(env.id)
            try:
                await self._link.send(env)
            except CoworkerError as exc:
                log.info("could not probe %s: %s", peer, exc)
            sent += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(jittered(self._retry.delay(sent))):
                    await line.back.wait()

    async def _send_copy(self, task: TaskRecord, watch: _Watch, body: dict[str, Any]) -> CoworkerError | None:
        """Send one copy of a task's request; why it could not be sent (returned, not raised: the driver may
        have ended and left it to finish on its own)."""
        if watch.first is not None:
            (env, data), watch.first = watch.first, None
        else:
            env = proto.request("call.request", body, sender=self._link.wallet, recipient=task.peer,
                                now_ms=self._link.now_ms())
            data = b""
        if self._link.speaks_v1(task.peer):  # in CoWorker 1.0, with the task id as its correlation id
            data = self._link.encode_request(env)
            if task.v1_correlation is None:
                self._link.store.update_task(task, v1_correlation=task.id)
        elif not data:
            data = proto.encode(env)
        self._sent[env.id] = task.id
        watch.sent_ids.append(env.id)
        try:
            await self._link.post(task.peer, data, "call.request", task=task.id)
        except CoworkerError as exc:
            return exc
        return None

    def _forget(self, task_id: str, watch: _Watch) -> None:
        if self._watches.get(task_id) is watch:
            del self._watches[task_id]
            key = watch.task.peer.lower()
            line = self._lines.get(key)
            if line is not None:
                line.tasks -= 1
                if line.tasks <= 0:
                    del self._lines[key]
                    line.back.set()  # ends its prober
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
            if state not in LIVE:
                watch.done.set()  # whoever waits for the end goes on now, as the driver winds down
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

    def on_reply(self, env: proto.Envelope, peer: str, size: int) -> str | None:
        """Take an answer about one of our tasks; why it was dropped, or None when it was taken."""
        try:
            body = proto.parse_body(env)
        except RemoteProtocolError as exc:
            log.warning("ignored %s from %s: %s", env.type, peer, exc)
            return f"{exc.code}: {exc}"
        task_id = getattr(body, "task", None) or self._sent.get(env.corr)
        task = self._live_record(task_id) if task_id else None
        if task is None:
            log.info("ignored %s %s from %s: no live task of ours", env.type, env.id, peer)
            return "a reply nobody waits for (no live task of ours)"
        if task.peer.lower() != peer.lower():
            log.warning("ignored %s about task %s from %s: the task went to %s", env.type, task.id, peer, task.peer)
            return "a reply from another peer than the task went to"
        watch = self._watches.get(task.id)
        if watch is not None:
            watch.answered = True
            line = self._lines.get(peer.lower())
            if line is not None:
                line.release(watch)
        now = self._link.clock()
        if env.type == "call.ack":
            new = advance(TaskState(task.state), "need_input" if body.state == "input_required" else "accept")
            if new is not None and new != task.state:
                self._end(task, watch, new)
        elif env.type == "call.progress":
            self._progress(task, watch, body, now, size)
        elif env.type == "call.result":
            # our duration is the call's, from the request (the task's creation) to its result; the skill's run
            # time, as the peer reports it, is in the receipt
            if self._end(task, watch, TaskState.COMPLETED, output=body.output,
                         duration_ms=max(0.0, (now - task.created_at) * 1000), response_bytes=size,
                         receipt=body.receipt):
                self._take_receipt(task)
        elif self._end(task, watch, state_for_error(body.code), error_code=body.code, error_message=body.message,
                       error_path=body.path or None, duration_ms=max(0.0, (now - task.created_at) * 1000),
                       response_bytes=size, receipt=body.receipt):
            self._take_receipt(task)
        return None

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
