"""The runtime: receives messages from a transport, admits or refuses them, runs handlers, correlates replies.

Theory of operation. Every incoming message takes one path (:meth:`Runtime._handle`), in this order:

1. decode (size, UTF-8 JSON, nesting, envelope schema) - failures are answered when the message names an id;
2. the body's ``from`` must be one of the addresses the *transport* authenticated, and ``to`` must be us;
3. freshness (creation time, expiry) - only fresh messages are remembered;
4. replay defence: a message id seen before is ignored;
5. replies resolve the pending request with that correlation id, and only if they come from the wallet the
   request went to; requests go through :func:`coworker._trust.decide`, the single trust choke point, and
   then to their handler.

Each message is handled in its own task, so a slow skill never holds up other messages. Tasks belong to the
runtime's task set and are cancelled and awaited (with a bound) by :meth:`Runtime.close`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _protocol as proto
from ._errors import CallTimeout, CoworkerError, LocalProtocolError, RemoteProtocolError, SkillFailed, TransportError
from ._identity import Identity, checksum
from ._skills import CallContext, Skill
from ._store import CallRecord, Store, TrustRequest
from ._transport import Incoming, Network, Transport
from ._trust import TrustTier, decide, may_see, tier_after_request

log = logging.getLogger("coworker.runtime")

PEER_TOUCH_INTERVAL = 60.0  # seconds between two last-seen updates of one peer
SHUTDOWN_GRACE = 5.0  # seconds running handlers get on close before they are cancelled
MAX_CONCURRENT_SKILLS = 256


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """How trust requests are answered."""

    auto_accept: bool = False
    max_auto_accept: TrustTier = TrustTier.KNOWN


@dataclass(slots=True)
class _Pending:
    peer: str  # lower-case wallet the request went to
    future: asyncio.Future[tuple[proto.Envelope, int]]


class TaskSet:
    """The runtime's background tasks: every task is tracked, errors are logged, close cancels and awaits."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self, grace: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)


class Runtime:
    """Drives protocol v2 for one agent over one transport."""

    def __init__(self, *, identity: Identity, name: str, store: Store, skills: Mapping[str, Skill],
                 policy: TrustPolicy, clock: Callable[[], float] = time.time) -> None:
        self.identity = identity
        self.wallet = identity.address
        self.name = name
        self.store = store
        self.skills = skills
        self.policy = policy
        self.clock = clock
        self._transport: Transport | None = None
        self._pending: dict[str, _Pending] = {}
        self._tasks = TaskSet()
        self._touched: dict[str, float] = {}
        self._skill_slots = asyncio.Semaphore(MAX_CONCURRENT_SKILLS)
        self._early: list[Incoming] | None = None

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
        for incoming in early:
            self._deliver(incoming)

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(TransportError("agent stopped"))
        await self._tasks.close(SHUTDOWN_GRACE)
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

    async def request(self, peer: str, kind: str, body: dict[str, Any], timeout: float,
                      message_id: str | None = None) -> tuple[proto.Envelope, int, int]:
        """Send a request and wait for its reply: (reply, bytes sent, bytes received).

        Raises:
            CallTimeout: no reply within ``timeout`` seconds.
        """
        ttl_ms = max(proto.DEFAULT_TTL_MS, int(timeout * 1000) + 60_000)
        env = proto.request(kind, body, sender=self.wallet, recipient=peer, now_ms=self._now_ms(),
                            ttl_ms=min(ttl_ms, proto.MAX_TTL_MS), message_id=message_id)
        future: asyncio.Future[tuple[proto.Envelope, int]] = asyncio.get_running_loop().create_future()
        self._pending[env.id] = _Pending(peer.lower(), future)
        try:
            async with asyncio.timeout(timeout):
                sent = await self._send(env)
                reply, received = await future
        except TimeoutError:
            raise CallTimeout(f"{peer} did not answer {kind} within {timeout:g} s") from None
        finally:
            del self._pending[env.id]
        return reply, sent, received

    async def notify(self, peer: str, kind: str, body: dict[str, Any], corr: str) -> None:
        """Send a one-way message that answers an earlier request ``corr`` (e.g. a later trust grant)."""
        now = self._now_ms()
        env = proto.Envelope(proto.new_id(), kind, corr, self.wallet, peer, now, now + proto.DEFAULT_TTL_MS, body)
        await self._send(env)

    # ---- receiving ----------------------------------------------------------------------------------------

    def _deliver(self, incoming: Incoming) -> None:
        if self._early is not None:
            self._early.append(incoming)
            return
        self._tasks.spawn(self._handle(incoming), "coworker-message")

    def _encode_reply(self, to: proto.Envelope, kind: str, body: dict[str, Any]) -> tuple[str, bytes]:
        """The reply's type and bytes; a body JSON cannot carry, or one over the size limit, becomes an error."""
        now = self._now_ms()
        try:
            data = proto.encode(proto.reply(to, kind, body, now_ms=now))
        except ValueError as exc:
            log.warning("cannot encode %s reply: %s", kind, exc)
            problem = f"the result cannot be sent as JSON: {exc}"
        else:
            if len(data) <= proto.MAX_ENVELOPE_BYTES:
                return kind, data
            problem = f"the result of {len(data)} bytes is over the {proto.MAX_ENVELOPE_BYTES}-byte message limit"
        error_kind = "call.error" if to.type == "call.request" else "error"
        return error_kind, proto.encode(proto.reply(to, error_kind, proto.error_body("SKILL_FAILED", problem),
                                                    now_ms=now))

    async def _answer(self, to: proto.Envelope, kind: str, body: dict[str, Any]) -> int:
        _, data = self._encode_reply(to, kind, body)
        await self._send_data(to.sender, data)
        return len(data)

    async def _refuse(self, to: proto.Envelope, code: str, message: str) -> int:
        kind = "call.error" if to.type == "call.request" else "error"
        return await self._answer(to, kind, proto.error_body(code, message))

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
            # Not remembered: a reply counts only while its request waits for it, and only once (_resolve), so
            # a replayed reply finds nothing to resolve.
            self._touch(peer)
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
            sent = await self._refuse(env, decision.code, decision.message)
            if env.type == "call.request":
                self._record_in(env, peer, skill_name or "", "refused", decision.code, 0.0, size, sent)
            return
        if env.type == "ping":
            await self._answer(env, "pong", {"message": body.message})
        elif env.type == "discover":
            cards = [s.card() for s in self.skills.values() if may_see(tier, s.min_trust_tier)]
            await self._answer(env, "capabilities", {"name": self.name, "wallet": self.wallet, "skills": cards})
        elif env.type == "trust.request":
            await self._trust_request(env, body, peer, tier)
        else:
            await self._call(env, body, peer, tier, size)

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

    async def _call(self, env: proto.Envelope, body: proto.CallRequestBody, peer: str, tier: TrustTier,
                    size: int) -> None:
        skill = self.skills[body.skill]
        started = time.perf_counter()
        wall = self.clock()
        ctx = CallContext(caller=peer, trust_tier=tier, call_id=env.id, skill=skill.name)
        try:
            kwargs = skill.bind(body.input, ctx)
            async with self._skill_slots:
                output = await skill.run(kwargs)
        except CoworkerError as exc:
            if isinstance(exc, SkillFailed) and exc.__cause__ is not None:
                log.warning("skill %s failed for %s", skill.name, peer, exc_info=exc.__cause__)
            duration = (time.perf_counter() - started) * 1000
            code = getattr(exc, "code", "SKILL_FAILED")
            _, data = self._encode_reply(env, "call.error", proto.error_body(code, str(exc), getattr(exc, "path", "")))
            self._record_in(env, peer, skill.name, "failed", code, duration, size, len(data), wall)
        else:
            duration = (time.perf_counter() - started) * 1000
            kind, data = self._encode_reply(env, "call.result", {"output": output, "duration_ms": round(duration, 3)})
            status, code = ("completed", None) if kind == "call.result" else ("failed", "SKILL_FAILED")
            self._record_in(env, peer, skill.name, status, code, duration, size, len(data), wall)
        await self._send_data(env.sender, data)  # recorded first: the caller may look as soon as it has the reply

    def _record_in(self, env: proto.Envelope, peer: str, skill: str, status: str, code: str | None,
                   duration: float, size_in: int, size_out: int, started: float | None = None) -> None:
        self.store.record_call(CallRecord(env.id, "in", peer, skill, status, code,
                                          started if started is not None else self.clock(), duration, size_in,
                                          size_out))
