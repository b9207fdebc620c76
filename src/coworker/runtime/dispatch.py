"""The runtime: receives messages from a transport, admits or refuses them, runs handlers, correlates replies.

Theory of operation. Every incoming message takes one path (:meth:`Runtime._dispatch`), in this order:

1. decode (size, UTF-8 JSON, nesting, envelope schema) - failures are answered when the message names an id;
2. the body's ``from`` must be one of the addresses the *transport* authenticated, and ``to`` must be us;
3. freshness (creation time, expiry) - only fresh messages are remembered;
4. replay defence: a message id seen before is ignored (a ``call.request`` is de-duplicated by its task key
   instead: a repeat is answered from the store);
5. replies about a task (``call.*``) update that task, and only if they come from the wallet it went to; other
   replies resolve the pending request with that correlation id; requests go through
   :func:`coworker.core.trust.decide`, the single trust choke point, and then to their handler.

Before any of that, in :meth:`Runtime._deliver`, the rate limiter (:mod:`coworker.core.limits`) looks at the
sender the transport authenticated, the tier held for it and the message's size, and drops what is over the
budget or the size cap of that tier, unread and unanswered (counted in :meth:`Runtime.stats`). A peer we wait for
(a live task or a pending request of ours) is judged by its replies' budget instead; a request that came in on
that budget is charged to the tier's budget once decoded.

Calls are durable tasks (see :mod:`coworker.core.tasks` for the states and the delivery rules): the caller's
side is :mod:`coworker.runtime.caller` (a driver per live task), the callee's side :mod:`coworker.runtime.callee`
(store before run, answer repeats from the store); both pick up their live tasks again when the agent starts.
Both send through one :class:`~coworker.runtime.link.Link`.

The checks, and replies, are handled at once, as the message is delivered; what has to wait (an answer to send,
a request to serve) runs in a task of its own, so a slow skill never holds up other messages. Tasks belong to the
runtime's task set and are cancelled and awaited (with a bound) by :meth:`Runtime.close`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coworker._errors import CallTimeout, RemoteProtocolError, TransportError
from coworker.core import batch, v1
from coworker.core import protocol as proto
from coworker.core.limits import RateLimiter
from coworker.core.plans import check_proposal
from coworker.core.skills import Skill
from coworker.core.tasks import Progress, RetryPolicy
from coworker.core.trust import TrustTier, decide, may_see, tier_after_request
from coworker.core.wallets import checksum
from coworker.runtime import taskset
from coworker.runtime.callee import Callee
from coworker.runtime.caller import Caller, _Watch
from coworker.runtime.groups import Groups
from coworker.runtime.journal import Journal, JournalEntry, about
from coworker.runtime.link import Link
from coworker.runtime.v1_inbound import FIRST_CONTACT, V1Inbound
from coworker.store.identity import Identity
from coworker.store.records import Store, TrustRequest
from coworker.transports.base import Incoming, Invitation, Network, Transport

log = logging.getLogger("coworker.runtime")

PEER_TOUCH_INTERVAL = 60.0  # seconds between two last-seen updates of one peer


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """How trust requests are answered."""

    auto_accept: bool = False
    max_auto_accept: TrustTier = TrustTier.KNOWN


@dataclass(slots=True)
class _Pending:
    peer: str  # lower-case wallet the request went to
    future: asyncio.Future[tuple[proto.Envelope, int]]


class Runtime:
    """Drives protocol v2 for one agent over one transport."""

    def __init__(self, *, identity: Identity, name: str, store: Store, skills: Mapping[str, Skill],
                 policy: TrustPolicy, clock: Callable[[], float] = time.time,
                 retry: RetryPolicy | None = None, limiter: RateLimiter | None = None, v1: bool = True,
                 registered: Mapping[str, Skill] | None = None) -> None:
        """``skills``: what peers may know of (hidden skills left out: every request is judged on it alone);
        ``registered``: hidden ones too, which tasks taken before a skill was hidden run (after a restart too)."""
        self.identity = identity
        self.wallet = identity.address
        self.name = name
        self.store = store
        self.skills = skills
        self.policy = policy
        self.clock = clock
        self.retry = retry or RetryPolicy()
        self._link = Link(identity, store, clock, name=name, v1=v1)
        self._callee = Callee(self._link, skills if registered is None else registered)
        self._caller = Caller(self._link, self.retry)
        self._v1 = V1Inbound(self._link, self._caller)
        self.limiter = limiter or RateLimiter()
        self._pending: dict[str, _Pending] = {}
        self._awaiting: collections.Counter[str] = collections.Counter()  # peer -> our requests waiting for it
        self._touched: dict[str, float] = {}
        self._early: list[Incoming | Invitation] | None = None
        self.groups = Groups(self._link, self._serve_request, self._awaiting)  # invitations, posts, group asks

    # ---- lifecycle ----------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._link.transport is not None

    @property
    def transport(self) -> Transport | None:
        return self._link.transport

    async def open(self, network: Network, data_dir: Path) -> None:
        early: list[Incoming | Invitation] = []  # messages a transport delivers while it opens (XMTP syncs on start)
        self._early = early
        try:
            self._link.transport = await network.open(self.identity, data_dir, self._deliver)
        finally:
            self._early = None
        self._caller.resume()
        self._callee.resume()
        for incoming in early:
            self._deliver(incoming)

    async def close(self) -> None:
        transport, self._link.transport = self._link.transport, None
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(TransportError("agent stopped"))
        await self._caller.close()
        await self._link.tasks.close(taskset.SHUTDOWN_GRACE)
        if transport is not None:
            await transport.close()
        self.store.flush()

    # ---- sending ------------------------------------------------------------------------------------------

    async def request(self, peer: str, kind: str, body: dict[str, Any],
                      timeout: float) -> tuple[proto.Envelope, int, int]:
        """Send a request and wait for its reply: (reply, bytes sent, bytes received).

        An unanswered request is sent again, as a new message, on the retry schedule; the first reply to any
        copy counts. Only for requests that may be repeated (ping, discover, trust, plans): calls are tasks.

        Raises:
            CallTimeout: no reply within ``timeout`` seconds.
        """
        ttl_ms = min(max(proto.DEFAULT_TTL_MS, int(timeout * 1000) + 60_000), proto.MAX_TTL_MS)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[proto.Envelope, int]] = loop.create_future()
        ids: list[str] = []
        self._awaiting[peer.lower()] += 1
        try:
            async with asyncio.timeout(timeout):
                while True:
                    env = proto.request(kind, body, sender=self.wallet, recipient=peer, now_ms=self._link.now_ms(),
                                        ttl_ms=ttl_ms)
                    self._pending[env.id] = _Pending(peer.lower(), future)
                    ids.append(env.id)
                    started = loop.time()
                    sent = await self._link.send(env)
                    once = self._link.speaks_v1(peer)  # a 1.0 agent would act on every copy: one is sent
                    if len(ids) == 1 and kind in FIRST_CONTACT and self._link.v1 and self._link.protocol(peer) is None:
                        first = v1.encode_request(env, name=self.name, now_ms=self._link.now_ms()) or b""
                        await self._link.post(peer, first, kind, alone=True)  # 1.0 agents read no batch frames
                    gap = None if once else self.retry.delay(len(ids), loop.time() - started)
                    done, _ = await asyncio.wait({future}, timeout=gap)
                    if done:
                        reply, received = future.result()
                        return reply, sent, received
        except TimeoutError:
            raise CallTimeout(f"{peer} did not answer {kind} within {timeout:g} s") from None
        finally:
            for mid in ids:
                del self._pending[mid]
            self._awaiting[peer.lower()] -= 1
            if self._awaiting[peer.lower()] <= 0:
                del self._awaiting[peer.lower()]

    async def notify(self, peer: str, kind: str, body: dict[str, Any], corr: str) -> None:
        """Send a one-way message that answers an earlier request ``corr`` (e.g. a later trust grant)."""
        await self._link.notify(peer, kind, body, corr)

    # ---- making calls (the caller's side of a task: :mod:`coworker.runtime.caller`) ---------------------------

    def submit(self, peer: str, skill: str, input: dict[str, Any], *, version: str | None = None,
               timeout: float | None = None, cap: float | None = None, task_id: str | None = None,
               on_progress: Callable[[Progress], None] | None = None) -> str:
        """Store a new task for ``peer`` and start delivering it; its id (see :meth:`Caller.submit`)."""
        return self._caller.submit(peer, skill, input, version=version, timeout=timeout, cap=cap,
                                   task_id=task_id, on_progress=on_progress)

    def watch(self, task_id: str) -> _Watch | None:
        """The in-memory state of one of our live tasks (None once it ended or when it is not ours)."""
        return self._caller.watch(task_id)

    def cancel(self, task_id: str) -> bool:
        """Cancel one of our live tasks (and tell the peer); False when it had ended already."""
        return self._caller.cancel(task_id)

    # ---- receiving ----------------------------------------------------------------------------------------

    def _deliver(self, incoming: Incoming | Invitation) -> None:
        """Take one message from the transport (on its delivery path: nothing may escape to it)."""
        try:
            self._receive(incoming)
        except Exception:  # the delivery's top boundary: a bug or a store error loses this message, no more
            log.exception("handling a message from %s failed", sorted(incoming.sender.addresses))

    def _receive(self, incoming: Incoming | Invitation) -> None:
        if self._early is not None:
            self._early.append(incoming)
            return
        if isinstance(incoming, Invitation):
            self.groups.invited(incoming)
            return
        # A batch frame (several messages to us in one, coworker.core.batch) is split first; each part then takes
        # the path of a message that came alone, with the same authenticated sender, and is charged as one message.
        # A frame that cannot be split is charged as one message and dropped (logged, like an undecodable one).
        framed = incoming.group is None and batch.is_frame(incoming.data)  # a group post is never a frame
        parts: list[bytes] | str = batch.split(incoming.data) if framed else [incoming.data]
        refusal = parts if isinstance(parts, str) else None
        # The rate limit, as early as possible: before a task is spawned, before the bytes are decoded.
        sender = incoming.sender
        addresses = sender.addresses
        replies = any(a in self._awaiting or self._caller.awaits(a) for a in addresses)
        tier = max((self.store.trust_tier(a) for a in addresses), default=TrustTier.UNTRUSTED)
        for data in [incoming.data] if isinstance(parts, str) else parts:
            drop = self.limiter.admit(sender.inbox_id, tier, len(data), self.clock(), replies=replies)
            if drop is not None:
                if drop.say:
                    self._say_dropped(addresses, tier, drop.reason)
                self._link.journal.note("in", _sender(addresses), "unread", len(data), "dropped",
                                        reason=f"rate limit: {drop.reason}")
                continue
            if refusal is not None:
                log.warning("refused a batch frame from %s: %s", sorted(addresses), refusal)
                self._link.journal.note("in", _sender(addresses), "batch", len(data), "dropped", reason=refusal)
                continue
            if incoming.group is not None:  # a group post: runtime.groups
                work = self.groups.receive(incoming)
            else:
                part = incoming if data is incoming.data else Incoming(sender, data)
                work = self._dispatch(part, tier if replies else None)
            if work is not None:
                self._link.tasks.spawn(self._handle(work, addresses), "coworker-message")

    @staticmethod
    async def _handle(work: Coroutine[Any, Any, Any], addresses: frozenset[str]) -> None:
        try:
            await work
        except TransportError as exc:
            log.warning("could not answer %s: %s", sorted(addresses), exc)

    def _dispatch(self, incoming: Incoming,
                  replies_from: TrustTier | None = None) -> Coroutine[Any, Any, Any] | None:
        """Handle one message: the checks, and a reply, at once; what needs to wait (an answer to send, a request
        to serve) is returned as a coroutine, which runs in a task of its own. ``replies_from``: the message came
        in on the replies' budget of a peer held at that tier."""
        now_ms = self._link.now_ms()
        addresses = incoming.sender.addresses
        try:
            env = proto.decode(incoming.data)
        except RemoteProtocolError as exc:
            old = self._v1.translate(incoming, now_ms) if self._link.v1 else None
            if old is None:  # not CoWorker 1.0 either
                log.warning("refused a message from %s: %s", sorted(addresses), exc)
                note = self._link.journal.note("in", _sender(addresses), "undecodable", len(incoming.data),
                                               "dropped", reason=f"{exc.code}: {str(exc)[:300]}")
                if replies_from is None or self._charge_tier(incoming, replies_from):  # an answer costs the tier's
                    return self._refuse_undecodable(incoming, exc, note)
                return None
            translated, work = old
            if translated is None:
                return work
            env = translated
        if replies_from is not None and env.is_request and not self._charge_tier(incoming, replies_from):
            self._note(incoming, env, "dropped", "rate limit: a request on the replies' budget")
            return None  # the replies' budget is for replies: a request is charged to the tier's budget as well
        if env.sender.lower() not in addresses:
            log.warning("refused %s %s: body claims %s but the transport authenticated %s",
                        env.type, env.id, env.sender, sorted(addresses))
            message = "the sender in the message is not the sender the network authenticated"
            if env.is_request:
                self._note(incoming, env, "refused", f"SENDER_MISMATCH: {message}")
                forged = dataclasses.replace(env, sender=checksum(min(addresses)))
                return self._link.refuse(forged, "SENDER_MISMATCH", message)
            self._note(incoming, env, "dropped", f"SENDER_MISMATCH: {message}")
            return None
        if env.recipient.lower() != self.wallet.lower():
            log.warning("refused %s %s from %s: addressed to %s", env.type, env.id, env.sender, env.recipient)
            message = "message is addressed to another wallet"
            self._note(incoming, env, "refused" if env.is_request else "dropped", f"WRONG_RECIPIENT: {message}")
            if env.is_request:
                return self._link.refuse(env, "WRONG_RECIPIENT", message)
            return None
        stale = proto.check_fresh(env, now_ms)
        if stale is not None:
            log.warning("refused %s %s from %s: %s", env.type, env.id, env.sender, stale)
            self._note(incoming, env, "refused" if env.is_request else "dropped", f"EXPIRED: {stale}")
            if env.is_request:
                return self._link.refuse(env, "EXPIRED", stale)
            return None
        peer = checksum(env.sender)
        self._caller.heard(peer)  # it is there: drivers waiting for it go on (see runtime.caller)
        self._link.heard_in(peer, "1.0" if env.dialect is not None else "2")
        if env.is_reply:
            # Not remembered: a reply counts only while its request waits for it, and only once (_resolve), or
            # moves a task only forward (_task_reply), so a replayed reply changes nothing.
            self._touch(peer)
            if env.type in proto.TASK_REPLY_TYPES:
                ignored = self._caller.on_reply(env, peer, len(incoming.data))
            else:
                ignored = self._resolve(env, peer, len(incoming.data))
            self._note(incoming, env, "handled" if ignored is None else "dropped", ignored or "")
            return None
        # A call's task key (caller, task id) de-duplicates it already (a repeat is answered from the store and
        # never runs again), so a call.request costs no replay-id row.
        if env.type != "call.request" and not self.store.remember(env.id, env.exp, now_ms):
            log.info("ignored %s %s from %s: already seen", env.type, env.id, env.sender)
            self._note(incoming, env, "dropped", "duplicate")
            return None
        self._touch(peer)
        self._note(incoming, env, "handled")  # its answer may still refuse it (Journal.refused)
        return self._serve_request(env, peer, len(incoming.data))

    def _note(self, incoming: Incoming, env: proto.Envelope, verdict: str, reason: str = "") -> JournalEntry:
        """Note a decoded incoming message in the journal (from the sender the transport authenticated)."""
        addresses = incoming.sender.addresses
        peer = checksum(env.sender) if env.sender.lower() in addresses else _sender(addresses)
        task, detail = about(env)
        return self._link.journal.note("in", peer, env.type, len(incoming.data), verdict, message_id=env.id,
                                       task_id=task, reason=reason, detail=detail,
                                       protocol="2" if env.dialect is None else "1.0")

    async def _refuse_undecodable(self, incoming: Incoming, exc: RemoteProtocolError, note: JournalEntry) -> None:
        peeked = proto.peek_id(incoming.data)
        if peeked is None or len(incoming.sender.addresses) != 1 or peeked[1] not in proto.REQUEST_TYPES:
            return  # nothing to answer to: dropped (and logged above)
        self._link.journal.settle(note, "refused", note.reason)
        mid, kind = peeked
        (address,) = incoming.sender.addresses
        now = self._link.now_ms()
        stub = proto.Envelope(mid, kind, mid, checksum(address), self.wallet, now, now, {})
        task = proto.peek_task(incoming.data) if kind in ("call.request", "call.cancel") else None
        await self._link.refuse(stub, exc.code, str(exc)[:500], task=task)

    def _charge_tier(self, incoming: Incoming, tier: TrustTier) -> bool:
        """Whether the tier's budget admits a message that came in on the replies' budget (counted if not)."""
        drop = self.limiter.admit(incoming.sender.inbox_id, tier, len(incoming.data), self.clock())
        if drop is not None and drop.say:
            self._say_dropped(incoming.sender.addresses, tier, drop.reason)
        return drop is None

    def _say_dropped(self, addresses: frozenset[str], tier: TrustTier, reason: str) -> None:
        log.warning("dropping messages from %s (%s): %s; %d dropped so far for that reason, said at most once a "
                    "minute for each peer", sorted(addresses), tier.name, reason.replace("_", " "),
                    self.limiter.dropped[reason])

    @property
    def journal(self) -> Journal:
        """The messages in and out of this run (:mod:`coworker.runtime.journal`)."""
        return self._link.journal

    def away(self) -> dict[str, int]:
        """Peers presumed away (see :mod:`coworker.runtime.caller`), with our live tasks there."""
        return self._caller.away()

    def stats(self) -> dict[str, object]:
        """What the rate limiter dropped, by reason, and how many peers it tracks."""
        return self.limiter.stats()

    def _touch(self, peer: str) -> None:
        now = self.clock()
        key = peer.lower()
        if now - self._touched.get(key, 0.0) >= PEER_TOUCH_INTERVAL:
            self._touched[key] = now
            self.store.touch_peer(peer, now)

    def _resolve(self, env: proto.Envelope, peer: str, size: int) -> str | None:
        """Hand a reply to the request waiting for it; why it was dropped, or None."""
        pending = self._pending.get(env.corr)
        if pending is None:
            if self.groups.asks(env.corr):
                return self.groups.answered(env, peer)
            if self._caller.took_probe_reply(env.corr):
                return None  # the pong to a probe of ours: that the peer answered is all it says
            if env.type in ("trust.grant", "trust.deny"):
                try:
                    body = proto.parse_body(env)
                except RemoteProtocolError as exc:  # a reply is never answered: refused, and logged like a request
                    log.warning("refused %s %s from %s: %s", env.type, env.id, peer, exc)
                    return f"{exc.code}: {exc}"
                state = "granted" if env.type == "trust.grant" else "denied"
                self.store.set_standing(peer, state, TrustTier.parse(body.tier), self.clock())
                log.info("%s %s our trust request", peer, state)
                return None
            log.info("ignored %s %s from %s: no request is waiting for it", env.type, env.id, peer)
            return "a reply nobody waits for"
        if pending.peer != peer.lower():
            log.warning("ignored %s from %s: the request went to %s", env.type, peer, pending.peer)
            return "a reply from another peer than the request went to"
        if pending.future.done():
            log.info("ignored %s %s from %s: its request was already answered", env.type, env.id, peer)
            return "a reply nobody waits for (its request was answered)"
        pending.future.set_result((env, size))
        return None

    # ---- requests -----------------------------------------------------------------------------------------

    async def _serve_request(self, env: proto.Envelope, peer: str, size: int) -> None:
        if env.type not in proto.REQUEST_TYPES:
            await self._link.refuse(env, "UNSUPPORTED", f"unsupported request type {env.type!r}")
            return
        try:
            body = proto.parse_body(env)
        except RemoteProtocolError as exc:
            await self._link.refuse(env, exc.code, str(exc))
            return
        tier = self.store.trust_tier(peer)
        skill_name = body.skill if env.type == "call.request" else None
        skill = self.skills.get(skill_name) if skill_name is not None else None
        decision = decide(tier, env.type, skill_name, None if skill is None else skill.min_trust_tier)
        if not decision.allowed:
            task_id = getattr(body, "task", None) or (env.id if env.type == "call.request" else None)
            if (env.type == "call.request" and decision.code == "SKILL_NOT_FOUND"
                    and await self._callee.answer_accepted(env, body, peer, tier)):
                return  # a repeat of a task this peer's call started before its skill was hidden: as it stands
            if env.type == "call.request" and task_id is not None:
                self._callee.reject(env, body, peer, decision.code, decision.message, size)
            await self._link.refuse(env, decision.code, decision.message, task=task_id)
            return
        if env.type == "ping":
            await self._link.answer(env, "pong", {"message": body.message})
        elif env.type == "discover":
            cards = [s.card() for s in self.skills.values() if may_see(tier, s.min_trust_tier)]
            await self._link.answer(env, "capabilities", {"name": self.name, "wallet": self.wallet, "skills": cards})
        elif env.type == "trust.request":
            await self._trust_request(env, body, peer, tier)
        elif env.type == "call.request":
            await self._callee.serve(env, body, peer, tier, size)
        elif env.type == "call.cancel":
            await self._callee.cancel(env, body, peer)
        else:
            await self._plan(env, body, tier)

    async def _trust_request(self, env: proto.Envelope, body: proto.TrustRequestBody, peer: str,
                             tier: TrustTier) -> None:
        requested = TrustTier(body.tier)
        outcome, new_tier = tier_after_request(tier, requested, self.policy.auto_accept, self.policy.max_auto_accept)
        now = self.clock()
        if outcome == "granted":
            if new_tier != tier:
                self.store.set_trust(peer, new_tier, now, by="policy")
                log.info("granted %s to %s automatically", new_tier.name, peer)
            self.store.pop_trust_request(peer)
            await self._link.answer(env, "trust.grant", {"tier": int(new_tier)})
            return
        waiting = self.store.add_trust_request(TrustRequest(peer, requested, body.reason, env.id, now))
        if waiting.tier < requested:  # the owner may have seen the waiting one listed: approval grants no more
            log.info("trust request from %s for %s: its request for %s still waits for approval", peer,
                     requested.name, waiting.tier.name)
        else:
            log.info("trust request from %s for %s: %r (pending approval)", peer, requested.name, body.reason)
        await self._link.answer(env, "trust.pending", {"tier": int(waiting.tier)})

    async def _plan(self, env: proto.Envelope, body: proto.PlanProposeBody, tier: TrustTier) -> None:
        reason = check_proposal(body, self.wallet, env.sender, tier, self.skills)
        if reason is None:
            log.info("accepted plan %s from %s: %r", body.collaboration, env.sender, body.goal)
            await self._link.answer(env, "plan.accept", {"collaboration": body.collaboration})
        else:
            log.info("rejected plan %s from %s: %s", body.collaboration, env.sender, reason)
            await self._link.answer(env, "plan.reject", {"collaboration": body.collaboration, "reason": reason})

    # ---- serving calls (the callee's side of a task) ------------------------------------------------------

    # ---- making calls (the caller's side of a task) -------------------------------------------------------


def _sender(addresses: frozenset[str]) -> str:
    """Who sent a message not read yet, for the journal: the smallest of the addresses the transport names."""
    return checksum(min(addresses)) if addresses else ""
