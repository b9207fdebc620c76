"""The runtime: receives messages from a transport, admits or refuses them, runs handlers, correlates replies.

Theory of operation. Every incoming message takes one path (:meth:`Runtime._handle`), in this order:

1. decode (size, UTF-8 JSON, nesting, envelope schema) - failures are answered when the message names an id;
2. the body's ``from`` must be one of the addresses the *transport* authenticated, and ``to`` must be us;
3. freshness (creation time, expiry) - only fresh messages are remembered;
4. replay defence: a message id seen before is ignored;
5. replies about a task (``call.*``) update that task, and only if they come from the wallet it went to; other
   replies resolve the pending request with that correlation id; requests go through
   :func:`coworker._trust.decide`, the single trust choke point, and then to their handler.

Calls are durable tasks (see :mod:`coworker._tasks` for the states and the delivery rules). The caller side of
each live task is one driver coroutine (:meth:`Runtime._drive`) that sends the request, sends it again on the
retry schedule until the task ends, and expires it; the callee side is :meth:`Runtime._call`, which stores the
task before the skill runs and answers every later copy of the request from the store. Both sides pick up
their live tasks again when the agent starts.

Each message is handled in its own task, so a slow skill never holds up other messages. Tasks belong to the
runtime's task set and are cancelled and awaited (with a bound) by :meth:`Runtime.close`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _protocol as proto
from ._collab import check_proposal
from ._errors import (
    CallTimeout,
    ConfigurationError,
    CoworkerError,
    LocalProtocolError,
    PeerUnreachable,
    RemoteProtocolError,
    SkillFailed,
    SkillNotFound,
    TransportError,
)
from ._identity import Identity, checksum
from ._skills import CallContext, Skill
from ._store import Store, TaskRecord, TrustRequest
from ._tasks import (
    DEFAULT_CAP_FACTOR,
    LIVE,
    Progress,
    Receipt,
    RetryPolicy,
    TaskState,
    advance,
    expires_at,
    json_size,
    state_for_error,
)
from ._transport import Incoming, Network, Transport
from ._trust import TrustTier, decide, may_see, tier_after_request

log = logging.getLogger("coworker.runtime")

PEER_TOUCH_INTERVAL = 60.0  # seconds between two last-seen updates of one peer
SHUTDOWN_GRACE = 5.0  # seconds running handlers get on close before they are cancelled
MAX_CONCURRENT_SKILLS = 256
ACK_AFTER = 0.5  # seconds a skill runs before the callee tells the caller it is working on it
PROGRESS_GAP = 0.1  # seconds between two progress messages of one task; reports in between are coalesced
WATCH_BUFFER = 1000  # progress reports kept per task for a late watcher


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """How trust requests are answered."""

    auto_accept: bool = False
    max_auto_accept: TrustTier = TrustTier.KNOWN


@dataclass(slots=True)
class _Pending:
    peer: str  # lower-case wallet the request went to
    future: asyncio.Future[tuple[proto.Envelope, int]]


@dataclass(eq=False)
class _Watch:
    """What the caller side keeps in memory for one of its live tasks: the record its driver holds (every
    change goes through this object, so that the driver sees it), and who waits for what."""

    task: TaskRecord
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: list[Callable[[Progress], None]] = field(default_factory=list)
    backlog: collections.deque[Progress] = field(default_factory=lambda: collections.deque(maxlen=WATCH_BUFFER))
    queues: list[asyncio.Queue[Progress | None]] = field(default_factory=list)
    sent_ids: list[str] = field(default_factory=list)
    seq: int = 0  # the last progress message taken
    partials: int = 0  # partial results passed on so far
    answered: bool = False  # the peer has said anything about the task


class TaskSet:
    """The runtime's background tasks: every task is tracked, errors are logged, close cancels and awaits."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self, grace: float) -> None:
        """Let the tasks finish for ``grace`` seconds, then cancel them and wait for them (as long again)."""
        if self._tasks and grace > 0:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(grace, SHUTDOWN_GRACE))


class _Reporter:
    """The callee's side of a running skill's progress: coalesces reports into at most one ``call.progress``
    message per :data:`PROGRESS_GAP` and numbers them, so that the caller can drop repeats and stale ones."""

    def __init__(self, runtime: Runtime, task: TaskRecord) -> None:
        self._runtime, self._task = runtime, task
        self._loop = asyncio.get_running_loop()
        self._seq = 0
        self._index = 0  # partials sent so far
        self._progress: float | None = None
        self._message = ""
        self._partials: list[Any] = []
        self._dirty = False
        self._handle: asyncio.TimerHandle | None = None
        self._last = 0.0
        self.closed = False

    def report(self, progress: float | None, message: str) -> None:
        """From the skill (any thread)."""
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._add(progress, message, ())
        else:
            self._loop.call_soon_threadsafe(self._add, progress, message, ())

    def partial(self, value: Any) -> None:
        """From an async generator skill, on the loop."""
        self._add(self._progress, self._message, (value,))

    def _add(self, progress: float | None, message: str, partials: tuple[Any, ...]) -> None:
        if self.closed:
            return
        self._progress, self._message = progress, message
        self._partials.extend(partials)
        self._dirty = True
        if self._handle is None:
            wait = max(0.0, self._last + PROGRESS_GAP - self._loop.time())
            self._handle = self._loop.call_later(wait, self._flush)

    def _flush(self) -> None:
        self._handle = None
        if self.closed or not self._dirty:
            return
        self._seq += 1
        body = {"task": self._task.id, "seq": self._seq, "progress": self._progress, "message": self._message,
                "index": self._index, "partials": self._partials}
        self._index += len(self._partials)
        self._partials, self._dirty, self._last = [], False, self._loop.time()
        self._runtime.spawn_notify(self._task.peer, "call.progress", body, self._task.id)

    def close(self) -> None:
        """The skill ended: its final answer carries everything, so pending reports are dropped."""
        self.closed = True
        if self._handle is not None:
            self._handle.cancel()


class Runtime:
    """Drives protocol v2 for one agent over one transport."""

    def __init__(self, *, identity: Identity, name: str, store: Store, skills: Mapping[str, Skill],
                 policy: TrustPolicy, clock: Callable[[], float] = time.time,
                 retry: RetryPolicy | None = None) -> None:
        self.identity = identity
        self.wallet = identity.address
        self.name = name
        self.store = store
        self.skills = skills
        self.policy = policy
        self.clock = clock
        self.retry = retry or RetryPolicy()
        self._transport: Transport | None = None
        self._pending: dict[str, _Pending] = {}
        self._tasks = TaskSet()
        self._drivers = TaskSet()  # the caller side of our live tasks: cancelled at once on close, resumed on start
        self._touched: dict[str, float] = {}
        self._skill_slots = asyncio.Semaphore(MAX_CONCURRENT_SKILLS)
        self._early: list[Incoming] | None = None
        self._watches: dict[str, _Watch] = {}  # our live tasks, by task id
        self._sent: dict[str, str] = {}  # message id of a call.request copy -> its task id
        # served tasks whose skill runs, by (caller, task id): the coroutine and the record it holds
        self._running: dict[tuple[str, str], tuple[asyncio.Task[Any], TaskRecord]] = {}

    # ---- lifecycle ----------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._transport is not None

    @property
    def transport(self) -> Transport | None:
        return self._transport

    async def open(self, network: Network, data_dir: Path) -> None:
        early: list[Incoming] = []  # messages a transport delivers while it opens (XMTP syncs on start)
        self._early = early
        try:
            self._transport = await network.open(self.identity, data_dir, self._deliver)
        finally:
            self._early = None
        self._resume()
        for incoming in early:
            self._deliver(incoming)

    def _resume(self) -> None:
        """Pick up the tasks a previous run left live: drive our calls on, run again what we were serving."""
        for task in self.store.live_tasks("out"):
            self._start_driver(task)
        for task in self.store.live_tasks("in"):
            log.info("running task %s (%s for %s) again after a restart", task.id, task.skill, task.peer)
            self.store.update_task(task, attempts=task.attempts + 1, last_activity=self.clock())
            self._tasks.spawn(self._execute(task, None), f"coworker-resume-{task.id}")

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(TransportError("agent stopped"))
        await self._drivers.close(0)
        await self._tasks.close(SHUTDOWN_GRACE)
        self._watches.clear()
        self._sent.clear()
        if transport is not None:
            await transport.close()
        self.store.flush()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ---- sending ------------------------------------------------------------------------------------------

    async def _send(self, env: proto.Envelope) -> int:
        data = proto.encode(env)
        if len(data) > proto.MAX_ENVELOPE_BYTES:
            raise LocalProtocolError(f"message of {len(data)} bytes exceeds the network limit of "
                                     f"{proto.MAX_ENVELOPE_BYTES} bytes")
        await self._send_data(env.recipient, data)
        return len(data)

    async def _send_data(self, recipient: str, data: bytes) -> None:
        if self._transport is None:
            raise TransportError("agent is not started")
        await self._transport.send(recipient, data)

    async def request(self, peer: str, kind: str, body: dict[str, Any],
                      timeout: float) -> tuple[proto.Envelope, int, int]:
        """Send a request and wait for its reply: (reply, bytes sent, bytes received).

        An unanswered request is sent again, as a new message, on the retry schedule; the first reply to any
        copy counts. Only for requests that may be repeated (ping, discover, trust, plans): calls are tasks.

        Raises:
            CallTimeout: no reply within ``timeout`` seconds.
        """
        ttl_ms = min(max(proto.DEFAULT_TTL_MS, int(timeout * 1000) + 60_000), proto.MAX_TTL_MS)
        future: asyncio.Future[tuple[proto.Envelope, int]] = asyncio.get_running_loop().create_future()
        ids: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    env = proto.request(kind, body, sender=self.wallet, recipient=peer, now_ms=self._now_ms(),
                                        ttl_ms=ttl_ms)
                    self._pending[env.id] = _Pending(peer.lower(), future)
                    ids.append(env.id)
                    sent = await self._send(env)
                    done, _ = await asyncio.wait({future}, timeout=self.retry.delay(len(ids)))
                    if done:
                        reply, received = future.result()
                        return reply, sent, received
        except TimeoutError:
            raise CallTimeout(f"{peer} did not answer {kind} within {timeout:g} s") from None
        finally:
            for mid in ids:
                del self._pending[mid]

    async def notify(self, peer: str, kind: str, body: dict[str, Any], corr: str) -> None:
        """Send a one-way message that answers an earlier request ``corr`` (e.g. a later trust grant)."""
        now = self._now_ms()
        env = proto.Envelope(proto.new_id(), kind, corr, self.wallet, peer, now, now + proto.DEFAULT_TTL_MS, body)
        await self._send(env)

    def spawn_notify(self, peer: str, kind: str, body: dict[str, Any], corr: str) -> None:
        """:meth:`notify` in the background; a failure is logged (the peer can ask again)."""

        async def send() -> None:
            try:
                await self.notify(peer, kind, body, corr)
            except CoworkerError as exc:
                log.info("could not send %s to %s: %s", kind, peer, exc)

        self._tasks.spawn(send(), f"coworker-{kind}")

    # ---- receiving ----------------------------------------------------------------------------------------

    def _deliver(self, incoming: Incoming) -> None:
        if self._early is not None:
            self._early.append(incoming)
            return
        self._tasks.spawn(self._handle(incoming), "coworker-message")

    def _encoded(self, to: proto.Envelope, kind: str, body: dict[str, Any]) -> bytes | str:
        """The reply's bytes, or why it cannot be sent (a body JSON cannot carry, or one over the size limit)."""
        try:
            data = proto.encode(proto.reply(to, kind, body, now_ms=self._now_ms()))
        except ValueError as exc:
            log.warning("cannot encode %s reply: %s", kind, exc)
            return f"the result cannot be sent as JSON: {exc}"
        if len(data) > proto.MAX_ENVELOPE_BYTES:
            return f"the result of {len(data)} bytes is over the {proto.MAX_ENVELOPE_BYTES}-byte message limit"
        return data

    def _encode_reply(self, to: proto.Envelope, kind: str, body: dict[str, Any]) -> tuple[str, bytes]:
        """The reply's type and bytes; a reply that cannot be sent becomes a SKILL_FAILED error."""
        data = self._encoded(to, kind, body)
        if isinstance(data, bytes):
            return kind, data
        error_kind = "call.error" if to.type in ("call.request", "call.cancel") else "error"
        return error_kind, proto.encode(proto.reply(to, error_kind, proto.error_body(
            "SKILL_FAILED", data, task=body.get("task")), now_ms=self._now_ms()))

    async def _answer(self, to: proto.Envelope, kind: str, body: dict[str, Any]) -> int:
        _, data = self._encode_reply(to, kind, body)
        await self._send_data(to.sender, data)
        return len(data)

    async def _refuse(self, to: proto.Envelope, code: str, message: str, task: str | None = None,
                      path: str = "") -> int:
        kind = "call.error" if to.type in ("call.request", "call.cancel") else "error"
        return await self._answer(to, kind, proto.error_body(code, message, path, task=task))

    async def _handle(self, incoming: Incoming) -> None:
        try:
            await self._dispatch(incoming)
        except TransportError as exc:
            log.warning("could not answer %s: %s", sorted(incoming.sender.addresses), exc)

    async def _dispatch(self, incoming: Incoming) -> None:
        now_ms = self._now_ms()
        addresses = incoming.sender.addresses
        try:
            env = proto.decode(incoming.data)
        except RemoteProtocolError as exc:
            log.warning("refused a message from %s: %s", sorted(addresses), exc)
            await self._refuse_undecodable(incoming, str(exc))
            return
        if env.sender.lower() not in addresses:
            log.warning("refused %s %s: body claims %s but the transport authenticated %s",
                        env.type, env.id, env.sender, sorted(addresses))
            if env.is_request:
                forged = dataclasses.replace(env, sender=checksum(min(addresses)))
                await self._refuse(forged, "SENDER_MISMATCH", "the sender in the message is not the sender "
                                   "the network authenticated")
            return
        if env.recipient.lower() != self.wallet.lower():
            log.warning("refused %s %s from %s: addressed to %s", env.type, env.id, env.sender, env.recipient)
            if env.is_request:
                await self._refuse(env, "WRONG_RECIPIENT", "message is addressed to another wallet")
            return
        stale = proto.check_fresh(env, now_ms)
        if stale is not None:
            log.warning("refused %s %s from %s: %s", env.type, env.id, env.sender, stale)
            if env.is_request:
                await self._refuse(env, "EXPIRED", stale)
            return
        peer = checksum(env.sender)
        if env.is_reply:
            # Not remembered: a reply counts only while its request waits for it, and only once (_resolve), or
            # moves a task only forward (_task_reply), so a replayed reply changes nothing.
            self._touch(peer)
            if env.type in proto.TASK_REPLY_TYPES:
                self._task_reply(env, peer, len(incoming.data))
            else:
                self._resolve(env, peer, len(incoming.data))
            return
        if not self.store.remember(env.id, env.exp, now_ms):
            log.info("ignored %s %s from %s: already seen", env.type, env.id, env.sender)
            return
        self._touch(peer)
        await self._serve_request(env, peer, len(incoming.data))

    async def _refuse_undecodable(self, incoming: Incoming, reason: str) -> None:
        peeked = proto.peek_id(incoming.data)
        if peeked is None or len(incoming.sender.addresses) != 1 or peeked[1] not in proto.REQUEST_TYPES:
            return  # nothing to answer to: dropped (and logged above)
        mid, kind = peeked
        (address,) = incoming.sender.addresses
        now = self._now_ms()
        stub = proto.Envelope(mid, kind, mid, checksum(address), self.wallet, now, now, {})
        await self._refuse(stub, "PROTOCOL_ERROR", reason[:500])

    def _touch(self, peer: str) -> None:
        now = self.clock()
        key = peer.lower()
        if now - self._touched.get(key, 0.0) >= PEER_TOUCH_INTERVAL:
            self._touched[key] = now
            self.store.touch_peer(peer, now)

    def _resolve(self, env: proto.Envelope, peer: str, size: int) -> None:
        pending = self._pending.get(env.corr)
        if pending is None:
            if env.type in ("trust.grant", "trust.deny"):
                body = proto.parse_body(env)
                state = "granted" if env.type == "trust.grant" else "denied"
                self.store.set_standing(peer, state, TrustTier.parse(body.tier), self.clock())
                log.info("%s %s our trust request", peer, state)
            else:
                log.info("ignored %s %s from %s: no request is waiting for it", env.type, env.id, peer)
            return
        if pending.peer != peer.lower():
            log.warning("ignored %s from %s: the request went to %s", env.type, peer, pending.peer)
            return
        if pending.future.done():
            log.info("ignored %s %s from %s: its request was already answered", env.type, env.id, peer)
            return
        pending.future.set_result((env, size))

    # ---- requests -----------------------------------------------------------------------------------------

    async def _serve_request(self, env: proto.Envelope, peer: str, size: int) -> None:
        if env.type not in proto.REQUEST_TYPES:
            await self._refuse(env, "UNSUPPORTED", f"unsupported request type {env.type!r}")
            return
        try:
            body = proto.parse_body(env)
        except RemoteProtocolError as exc:
            await self._refuse(env, exc.code, str(exc))
            return
        tier = self.store.trust_tier(peer)
        skill_name = body.skill if env.type == "call.request" else None
        decision = decide(tier, env.type, skill_name, {n: s.min_trust_tier for n, s in self.skills.items()})
        if not decision.allowed:
            task_id = getattr(body, "task", None) or (env.id if env.type == "call.request" else None)
            if env.type == "call.request" and task_id is not None:
                self._reject_call(env, body, peer, decision.code, decision.message, size)
            await self._refuse(env, decision.code, decision.message, task=task_id)
            return
        if env.type == "ping":
            await self._answer(env, "pong", {"message": body.message})
        elif env.type == "discover":
            cards = [s.card() for s in self.skills.values() if may_see(tier, s.min_trust_tier)]
            await self._answer(env, "capabilities", {"name": self.name, "wallet": self.wallet, "skills": cards})
        elif env.type == "trust.request":
            await self._trust_request(env, body, peer, tier)
        elif env.type == "call.request":
            await self._call(env, body, peer, tier, size)
        elif env.type == "call.cancel":
            await self._cancel_served(env, body, peer)
        else:
            await self._plan(env, body, tier)

    async def _trust_request(self, env: proto.Envelope, body: proto.TrustRequestBody, peer: str,
                             tier: TrustTier) -> None:
        requested = TrustTier(body.tier)
        outcome, new_tier = tier_after_request(tier, requested, self.policy.auto_accept, self.policy.max_auto_accept)
        now = self.clock()
        if outcome == "granted":
            if new_tier != tier:
                self.store.set_trust(peer, new_tier, now)
                log.info("granted %s to %s automatically", new_tier.name, peer)
            self.store.pop_trust_request(peer)
            await self._answer(env, "trust.grant", {"tier": int(new_tier)})
            return
        request = TrustRequest(peer, requested, body.reason, env.id, now)
        self.store.add_trust_request(request)
        log.info("trust request from %s for %s: %r (pending approval)", peer, requested.name, body.reason)
        await self._answer(env, "trust.pending", {"tier": int(requested)})

    async def _plan(self, env: proto.Envelope, body: proto.PlanProposeBody, tier: TrustTier) -> None:
        reason = check_proposal(body, self.wallet, env.sender, tier, self.skills)
        if reason is None:
            log.info("accepted plan %s from %s: %r", body.collaboration, env.sender, body.goal)
            await self._answer(env, "plan.accept", {"collaboration": body.collaboration})
        else:
            log.info("rejected plan %s from %s: %s", body.collaboration, env.sender, reason)
            await self._answer(env, "plan.reject", {"collaboration": body.collaboration, "reason": reason})

    # ---- serving calls (the callee's side of a task) ------------------------------------------------------

    def _reject_call(self, env: proto.Envelope, body: proto.CallRequestBody, peer: str, code: str, message: str,
                     size: int, path: str = "") -> None:
        now = self.clock()
        self.store.add_task(TaskRecord(body.task or env.id, "in", peer, body.skill, TaskState.REJECTED, body.input,
                                       now, updated_at=now, last_activity=now, error_code=code,
                                       error_message=message, error_path=path or None, request_bytes=size))

    async def _call(self, env: proto.Envelope, body: proto.CallRequestBody, peer: str, tier: TrustTier,
                    size: int) -> None:
        task_id = body.task or env.id
        known = self.store.task("in", task_id, peer)
        if known is not None:  # a repeat (a retry or a poll): answered from the store, never run again
            await self._send_data(env.sender, self._task_answer(env, known))
            return
        skill = self.skills[body.skill]
        now = self.clock()
        task = TaskRecord(task_id, "in", peer, skill.name, TaskState.WORKING, body.input, now,
                          version=skill.version, updated_at=now, last_activity=now, attempts=1, request_bytes=size)
        try:
            prepared = self._prepare(task, tier)
        except CoworkerError as exc:
            code, path = getattr(exc, "code", "INVALID_INPUT"), getattr(exc, "path", "")
            self._reject_call(env, body, peer, code, str(exc), size, path)
            await self._refuse(env, code, str(exc), task=task_id, path=path)
            return
        if not self.store.add_task(task):  # lost a race with a copy handled meanwhile (cannot happen on one loop)
            return
        self.store.flush()  # the key is durable before the skill runs: a crash now cannot lead to a second run
        await self._execute(task, env, prepared)

    def _prepare(self, task: TaskRecord, tier: TrustTier) -> tuple[Skill, dict[str, Any], _Reporter]:
        """The skill, its bound arguments and the progress reporter for a served task.

        Raises:
            SkillNotFound: the skill is gone (after a restart).
            InvalidInput: the input breaks the skill's schema.
        """
        skill = self.skills.get(task.skill)
        if skill is None:
            raise SkillNotFound(f"no skill named {task.skill!r} visible to you")
        reporter = _Reporter(self, task)
        ctx = CallContext(caller=task.peer, trust_tier=tier, call_id=task.id, skill=skill.name,
                          attempt=task.attempts, _reporter=reporter.report)
        return skill, skill.bind(task.input, ctx), reporter

    async def _execute(self, task: TaskRecord, request: proto.Envelope | None,
                       prepared: tuple[Skill, dict[str, Any], _Reporter] | None = None) -> None:
        """Run a stored ``working`` task, store its outcome, then send it (as a reply to ``request``, or on its
        own after a restart)."""
        key = (task.peer.lower(), task.id)
        current = asyncio.current_task()
        assert current is not None
        self._running[key] = (current, task)
        loop = asyncio.get_running_loop()
        ack = None
        if request is not None:
            ack = loop.call_later(ACK_AFTER, lambda: self._tasks.spawn(self._ack(request, task), "coworker-ack"))
        wall, started = self.clock(), time.perf_counter()
        reporter: _Reporter | None = None
        output: Any = None
        error: CoworkerError | None = None
        try:
            skill, kwargs, reporter = prepared or self._prepare(task, self.store.trust_tier(task.peer))
            async with self._skill_slots:
                output = await skill.run(kwargs, on_partial=reporter.partial)
        except asyncio.CancelledError:
            if task.state == TaskState.CANCELED:
                return  # canceled by its caller, who has been told
            raise  # the agent stops: the task stays working and runs again on the next start
        except CoworkerError as exc:
            if isinstance(exc, SkillFailed) and exc.__cause__ is not None:
                log.warning("skill %s failed for %s", task.skill, task.peer, exc_info=exc.__cause__)
            error = exc
        finally:
            self._running.pop(key, None)
            if ack is not None:
                ack.cancel()
            if reporter is not None:
                reporter.close()
        duration = (time.perf_counter() - started) * 1000
        data = self._finish(task, request, output, error, wall, duration)
        await self._send_data(task.peer, data)  # stored first: the caller may look as soon as it has the answer

    def _finish(self, task: TaskRecord, request: proto.Envelope | None, output: Any, error: CoworkerError | None,
                wall: float, duration: float) -> bytes:
        """Store a served task's outcome with its signed receipt; the answer's bytes (encoded once)."""
        to = request or self._stub_request(task)
        duration_ms = round(duration, 3)
        data = b""
        if error is None:
            try:
                output_bytes = json_size(output)
            except (ValueError, TypeError) as exc:
                error = SkillFailed(f"the result cannot be sent as JSON: {exc}")
        if error is None:
            receipt = self._receipt(task, TaskState.COMPLETED, wall, duration_ms, output_bytes)
            body = {"task": task.id, "output": output, "duration_ms": duration_ms, "receipt": receipt}
            encoded = self._encoded(to, "call.result", body)
            if isinstance(encoded, str):
                error = SkillFailed(encoded)
            else:
                data = encoded
        if error is None:
            changes: dict[str, Any] = {"state": TaskState.COMPLETED, "output": output}
        else:
            receipt = self._receipt(task, TaskState.FAILED, wall, duration_ms, 0)
            code, path = getattr(error, "code", "SKILL_FAILED"), getattr(error, "path", "")
            body = {**proto.error_body(code, str(error), path, task=task.id), "receipt": receipt}
            data = self._encode_reply(to, "call.error", body)[1]
            changes = {"state": TaskState.FAILED, "error_code": code, "error_message": str(error),
                       "error_path": path or None}
        self.store.update_task(task, updated_at=self.clock(), duration_ms=duration, receipt=receipt,
                               response_bytes=len(data), **changes)
        self.store.flush()  # the outcome is durable before it leaves: a crash now cannot lead to a second run
        return data

    def _receipt(self, task: TaskRecord, state: TaskState, wall: float, duration_ms: float,
                 output_bytes: int) -> dict[str, Any]:
        """The usage receipt of a served task, signed with our wallet."""
        receipt = Receipt(task_id=task.id, caller=task.peer, provider=self.wallet, skill=task.skill,
                          version=task.version or "", status=str(state), started_at=round(wall, 3),
                          duration_ms=duration_ms, input_bytes=json_size(task.input), output_bytes=output_bytes)
        return dataclasses.replace(receipt, signature=self.identity.sign_text(receipt.canonical())).to_dict()

    def _stub_request(self, task: TaskRecord) -> proto.Envelope:
        """A stand-in for a request we no longer have (a task resumed after a restart): answers go to its task."""
        now = self._now_ms()
        return proto.Envelope(task.id, "call.request", task.id, task.peer, self.wallet, now, now, {})

    def _task_answer(self, to: proto.Envelope, task: TaskRecord) -> bytes:
        """The bytes that tell the caller where a served task stands: its result, its error, or its state."""
        if task.state == TaskState.COMPLETED:
            body = {"task": task.id, "output": task.output, "duration_ms": round(task.duration_ms, 3),
                    "receipt": task.receipt}
            return self._encode_reply(to, "call.result", body)[1]
        if TaskState(task.state).terminal:
            body = proto.error_body(task.error_code or "CALL_ERROR", task.error_message or "",
                                    task.error_path or "", task=task.id)
            if task.receipt is not None:
                body["receipt"] = task.receipt
            return self._encode_reply(to, "call.error", body)[1]
        return self._encode_reply(to, "call.ack", {"task": task.id, "state": task.state})[1]

    async def _ack(self, request: proto.Envelope, task: TaskRecord) -> None:
        if task.state in LIVE:
            try:
                await self._answer(request, "call.ack", {"task": task.id, "state": task.state})
            except CoworkerError as exc:
                log.info("could not acknowledge task %s: %s", task.id, exc)

    async def _cancel_served(self, env: proto.Envelope, body: proto.CallCancelBody, peer: str) -> None:
        running = self._running.get((peer.lower(), body.task))
        task = running[1] if running is not None else self.store.task("in", body.task, peer)
        now = self.clock()
        if task is None:
            # The cancellation overtook its request: remember it, so that the request never runs.
            task = TaskRecord(body.task, "in", peer, "", TaskState.CANCELED, {}, now, updated_at=now,
                              last_activity=now, error_code="CANCELED", error_message="canceled by the caller")
            self.store.add_task(task)
            self.store.flush()
        elif task.state in LIVE:
            self.store.update_task(task, state=TaskState.CANCELED, updated_at=now, error_code="CANCELED",
                                   error_message="canceled by the caller")
            self.store.flush()
            if running is not None:
                running[0].cancel()
            log.info("task %s (%s for %s) canceled by its caller", task.id, task.skill, peer)
        await self._send_data(env.sender, self._task_answer(env, task))

    # ---- making calls (the caller's side of a task) -------------------------------------------------------

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
        try:
            size = len(proto.encode(proto.request("call.request", body, sender=self.wallet, recipient=peer,
                                                  now_ms=self._now_ms())))
        except ValueError as exc:
            raise ConfigurationError(f"input cannot be sent as JSON: {exc}") from None
        if size > proto.MAX_ENVELOPE_BYTES:
            raise LocalProtocolError(f"message of {size} bytes exceeds the network limit of "
                                     f"{proto.MAX_ENVELOPE_BYTES} bytes")
        if cap is None and timeout is not None:
            cap = timeout * DEFAULT_CAP_FACTOR
        now = self.clock()
        task = TaskRecord(task_id, "out", peer, skill, TaskState.SUBMITTED, input, now, version=version,
                          updated_at=now, last_activity=now, timeout=timeout, cap=cap, request_bytes=size)
        if not self.store.add_task(task):
            raise ConfigurationError(f"a task with id {task_id} exists already")
        self.store.flush()  # durable before the request leaves: after a crash the task is picked up again
        watch = self._start_driver(task)
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

    def _start_driver(self, task: TaskRecord) -> _Watch:
        watch = self._watches[task.id] = _Watch(task)
        self._drivers.spawn(self._drive(task, watch), f"coworker-task-{task.id}")
        return watch

    async def _drive(self, task: TaskRecord, watch: _Watch) -> None:
        """Deliver one of our tasks: send the request, send it again until the task ends, expire it."""
        body = self._call_body(task.id, task.skill, task.input, task.version)
        loop = asyncio.get_running_loop()
        copies, next_send = 0, loop.time()
        try:
            while True:
                watch.changed.clear()  # before looking: a change from here on wakes the wait below
                if task.state not in LIVE:
                    break
                now = loop.time()
                ends = expires_at(task.created_at, task.last_activity, task.timeout, task.cap)
                if ends is not None and self.clock() >= ends:
                    self._expire(task, watch)
                    break
                if now >= next_send:
                    # A send waits while the transport recovers (a sidecar restarting), never past the task's
                    # expiry. Not bounded by the retry gap: a transport may go on with a send we stopped waiting
                    # for (XMTP's sidecar does), so a copy abandoned every gap would pile up behind the others.
                    bound = None if ends is None else max(ends - self.clock(), 0.05)
                    try:
                        async with asyncio.timeout(bound):
                            await self._send_copy(task, watch, body)
                    except (PeerUnreachable, LocalProtocolError) as exc:
                        code = "PEER_UNREACHABLE" if isinstance(exc, PeerUnreachable) else "PROTOCOL_ERROR"
                        self._end(task, watch, TaskState.REJECTED, error_code=code, error_message=str(exc))
                        break
                    except (TransportError, TimeoutError) as exc:
                        log.info("could not send task %s to %s (will try again): %s", task.id, task.peer,
                                 exc or "timed out")
                    copies += 1
                    next_send = loop.time() + self.retry.delay(copies)
                wait = next_send - loop.time()
                if ends is not None:
                    wait = min(wait, ends - self.clock())
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await watch.changed.wait()
        finally:
            self._forget(task.id, watch)

    async def _send_copy(self, task: TaskRecord, watch: _Watch, body: dict[str, Any]) -> None:
        env = proto.request("call.request", body, sender=self.wallet, recipient=task.peer, now_ms=self._now_ms())
        self._sent[env.id] = task.id
        watch.sent_ids.append(env.id)
        await self._send(env)

    def _forget(self, task_id: str, watch: _Watch) -> None:
        if self._watches.get(task_id) is watch:
            del self._watches[task_id]
        for mid in watch.sent_ids:
            self._sent.pop(mid, None)
        for queue in watch.queues:
            queue.put_nowait(None)
        watch.done.set()

    def _expire(self, task: TaskRecord, watch: _Watch) -> None:
        limit = task.timeout if task.timeout is not None else task.cap
        if task.cap is not None and self.clock() >= task.created_at + task.cap:
            message = f"the call to {task.skill} ran past its cap of {task.cap:g} s"
        elif not watch.answered:
            message = f"{task.peer} did not answer call.request within {limit:g} s"
        else:
            message = f"{task.peer} reported no progress on {task.skill} for {limit:g} s"
        self._end(task, watch, TaskState.EXPIRED, error_code="TIMEOUT", error_message=message)
        if watch.sent_ids:
            self._send_cancel(task)

    def _end(self, task: TaskRecord, watch: _Watch | None, state: TaskState, **changes: Any) -> None:
        """Move one of our tasks to ``state`` (with ``changes``) and wake its driver; a task that has ended
        already stays as it is (an answer may arrive while its driver was sending)."""
        if task.state not in LIVE:
            return
        self.store.update_task(task, state=state, updated_at=self.clock(), **changes)
        if watch is not None:
            watch.changed.set()

    def _send_cancel(self, task: TaskRecord) -> None:
        async def send() -> None:
            try:
                await self._send(proto.request("call.cancel", {"task": task.id}, sender=self.wallet,
                                               recipient=task.peer, now_ms=self._now_ms()))
            except CoworkerError as exc:
                log.info("could not send the cancellation of task %s: %s", task.id, exc)

        self._tasks.spawn(send(), "coworker-cancel")

    def cancel(self, task_id: str) -> bool:
        """Cancel one of our live tasks (and tell the peer); False when it had ended already.

        Raises:
            ConfigurationError: no task of ours has that id.
        """
        task = self._live_record(task_id)
        if task is None:
            if self.store.task("out", task_id) is None:
                raise ConfigurationError(f"no task {task_id} of ours")
            return False
        self._end(task, self._watches.get(task_id), TaskState.CANCELED, error_code="CANCELED",
                  error_message="canceled by the caller")
        if self.running:
            self._send_cancel(task)
        return True

    def _task_reply(self, env: proto.Envelope, peer: str, size: int) -> None:
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
        now = self.clock()
        if env.type == "call.ack":
            new = advance(TaskState(task.state), "need_input" if body.state == "input_required" else "accept")
            if new is not None and new != task.state:
                self._end(task, watch, new)
        elif env.type == "call.progress":
            self._progress(task, watch, body, now)
        elif env.type == "call.result":
            receipt, valid = self._check_receipt(task, body.receipt, "completed")
            self._end(task, watch, TaskState.COMPLETED, output=body.output, duration_ms=body.duration_ms,
                      response_bytes=size, receipt=receipt, receipt_valid=valid)
        else:
            receipt, valid = self._check_receipt(task, body.receipt, "failed")
            self._end(task, watch, state_for_error(body.code), error_code=body.code, error_message=body.message,
                      error_path=body.path or None, response_bytes=size, receipt=receipt, receipt_valid=valid)

    def _live_record(self, task_id: str) -> TaskRecord | None:
        """One of our live tasks: the driver's record while it runs, else the stored one."""
        watch = self._watches.get(task_id)
        task = watch.task if watch is not None else self.store.task("out", task_id)
        return task if task is not None and task.state in LIVE else None

    def _progress(self, task: TaskRecord, watch: _Watch | None, body: proto.CallProgressBody, now: float) -> None:
        changes: dict[str, Any] = {"last_activity": max(now, task.last_activity)}
        if task.state == TaskState.SUBMITTED:
            changes["state"] = TaskState.WORKING
        self.store.update_task(task, **changes)
        if watch is None or body.seq <= watch.seq:
            return  # a repeat, or overtaken by a later report
        watch.seq = body.seq
        fresh = body.partials[max(0, watch.partials - body.index):]
        watch.partials = max(watch.partials, body.index + len(body.partials))
        event = Progress(task.id, body.progress, body.message, list(fresh))
        watch.backlog.append(event)
        for queue in watch.queues:
            queue.put_nowait(event)
        for listener in list(watch.listeners):
            try:
                listener(event)
            except Exception:
                log.exception("progress callback for task %s failed", task.id)
        watch.changed.set()

    def _check_receipt(self, task: TaskRecord, data: dict[str, Any] | None,
                       status: str) -> tuple[dict[str, Any] | None, bool | None]:
        """The receipt as sent and whether it verifies: signed by the peer, about this task, caller and skill."""
        if data is None:
            return None, None
        try:
            receipt = Receipt.from_dict(data)
        except ValueError as exc:
            log.warning("task %s: the receipt from %s is malformed: %s", task.id, task.peer, exc)
            return data, False
        valid = (receipt.verify(task.peer) and receipt.task_id == task.id and receipt.skill == task.skill
                 and receipt.caller.lower() == self.wallet.lower() and receipt.status == status)
        if not valid:
            log.warning("task %s: the receipt from %s does not verify", task.id, task.peer)
        return data, valid
