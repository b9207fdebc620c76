"""What both sides of the runtime send through: the agent's wallet, store, clock and transport, and the
encoding of requests, one-way messages and replies (a reply that cannot be sent becomes an error reply).

Everything sent goes through the :class:`~coworker.runtime.outbox.Outbox` of the open transport, which batches
what waits for one peer and keeps to the network's write limit.

A peer that speaks only CoWorker 1.0 (:mod:`coworker.core.v1`) gets everything in 1.0, alone (1.0 agents read no
batch frames); what has no 1.0 form (acknowledgements, progress, cancellations) is not sent to it. The wire
format of each peer is the one its messages came in (v2 once it spoke v2), remembered in the store.

Every message sent is noted in the run's :class:`~coworker.runtime.journal.Journal` (:meth:`Link.post`), and a
refusal gives the incoming request it answers its final verdict there."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from coworker._errors import CoworkerError, LocalProtocolError, TransportError
from coworker.core import protocol as proto
from coworker.core import v1
from coworker.runtime.journal import Journal, progress_detail
from coworker.runtime.outbox import Outbox
from coworker.runtime.taskset import TaskSet
from coworker.store.identity import Identity
from coworker.store.records import Store
from coworker.transports.base import Transport

log = logging.getLogger("coworker.runtime")

# The start of every message proto.encode makes (its keys in a fixed order): the id follows, 32 characters
_V2_START = b'{"coworker":%d,"id":"' % proto.VERSION
_ERRORS = frozenset({"error", "call.error"})


class Link:
    """One agent's outgoing side. ``transport`` is None while the agent is stopped; ``tasks`` owns every
    background task the runtime spawns (handlers, acknowledgements, notifications, the outbox's drains).
    ``outbox`` is the outbox of the transport opened last (kept after it closes, for its figures)."""

    def __init__(self, identity: Identity, store: Store, clock: Callable[[], float] = time.time, *,
                 name: str = "", v1: bool = True) -> None:
        self.identity = identity
        self.wallet = identity.address
        self.store = store
        self.clock = clock
        self.name = name
        self.v1 = v1  # speak CoWorker 1.0 to peers that speak only that
        self._transport: Transport | None = None
        self.outbox: Outbox | None = None
        self.tasks = TaskSet()
        self.journal = Journal(clock=clock)
        self._protocols: dict[str, str | None] = {}  # lower-case wallet -> "2", "1.0" or None (not known yet)

    def protocol(self, peer: str) -> str | None:
        """The wire format ``peer`` speaks, as its latest message came (``"2"``, ``"1.0"``), or None."""
        key = peer.lower()
        if key not in self._protocols:
            self._protocols[key] = self.store.peer_protocol(key)
        return self._protocols[key]

    def speaks_v1(self, peer: str) -> bool:
        """Whether messages to ``peer`` go in CoWorker 1.0."""
        return self.v1 and self.protocol(peer) == "1.0"

    def heard_in(self, peer: str, protocol: str) -> None:
        """A message from ``peer`` (checksummed) came in ``protocol``: remember it (stored when it changes). A
        peer that spoke v2 stays v2: its 1.0 messages are the copies a v2 agent sends on first contact."""
        known = self.protocol(peer)
        if known != protocol and not (known == "2" and protocol == "1.0"):
            self._protocols[peer.lower()] = protocol
            self.store.set_peer_protocol(peer, protocol, self.clock())

    @property
    def transport(self) -> Transport | None:
        return self._transport

    @transport.setter
    def transport(self, transport: Transport | None) -> None:
        self._transport = transport
        if transport is not None:
            self.outbox = Outbox.for_transport(transport, self.tasks)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def encode_request(self, env: proto.Envelope) -> bytes:
        """A request's (or a one-way message's) bytes, in the peer's wire format; empty when it has no 1.0 form
        and the peer speaks only 1.0 (nothing to send)."""
        if self.speaks_v1(env.recipient):
            return v1.encode_request(env, name=self.name, now_ms=self.now_ms()) or b""
        return proto.encode(env)

    async def send(self, env: proto.Envelope) -> int:
        data = self.encode_request(env)
        if len(data) > proto.MAX_ENVELOPE_BYTES:
            raise LocalProtocolError(f"message of {len(data)} bytes exceeds the network limit of "
                                     f"{proto.MAX_ENVELOPE_BYTES} bytes")
        task = env.body.get("task") if env.type.startswith("call.") else None
        detail = progress_detail(env.body) if env.type == "call.progress" else None
        await self.post(env.recipient, data, env.type, task=task if isinstance(task, str) else None, detail=detail)
        return len(data)

    async def send_data(self, recipient: str, data: bytes, *, alone: bool = False) -> None:
        """Send encoded bytes; empty ones are a message with no form in the peer's wire format: nothing goes.
        ``alone``: never in a batch frame (bytes in CoWorker 1.0 for a peer not known to speak it yet); a peer
        known to speak 1.0 gets everything alone anyway."""
        if self._transport is None or self.outbox is None:
            raise TransportError("agent is not started")
        if not data or recipient.lower() == self.wallet.lower():
            return  # nothing to send, or to the agent itself (a task its owner ran through it: stored, not sent)
        await self.outbox.send(recipient, data, alone=alone or self.speaks_v1(recipient))

    async def post(self, recipient: str, data: bytes, kind: str, *, task: str | None = None, code: str | None = None,
                   alone: bool = False, detail: dict[str, Any] | None = None) -> None:
        """:meth:`send_data`, noted in the journal as ``kind`` (about ``task``; an error with its ``code``): sent,
        or failed with the error the send raised (raised again)."""
        if not data or recipient.lower() == self.wallet.lower():
            await self.send_data(recipient, data, alone=alone)  # nothing goes: nothing to note
            return
        v2 = data.startswith(_V2_START)
        mid = data[len(_V2_START):len(_V2_START) + 32].decode() if v2 else None
        try:
            await self.send_data(recipient, data, alone=alone)
        except Exception as exc:
            self.journal.note("out", recipient, kind, len(data), "failed", message_id=mid, task_id=task,
                              reason=str(exc)[:500] or type(exc).__name__, protocol="2" if v2 else "1.0",
                              detail=detail if code is None else {"code": code})
            raise
        self.journal.note("out", recipient, kind, len(data), "sent", message_id=mid, task_id=task,
                          reason=code or "", protocol="2" if v2 else "1.0",
                          detail=detail if code is None else {"code": code})

    async def notify(self, peer: str, kind: str, body: dict[str, Any], corr: str) -> None:
        """Send a one-way message that answers an earlier request ``corr`` (e.g. a later trust grant)."""
        now = self.now_ms()
        env = proto.Envelope(proto.new_id(), kind, corr, self.wallet, peer, now, now + proto.DEFAULT_TTL_MS, body)
        await self.send(env)

    def spawn_notify(self, peer: str, kind: str, body: dict[str, Any], corr: str) -> None:
        """:meth:`notify` in the background; a failure is logged (the peer can ask again)."""

        async def send() -> None:
            try:
                await self.notify(peer, kind, body, corr)
            except CoworkerError as exc:
                log.info("could not send %s to %s: %s", kind, peer, exc)

        self.tasks.spawn(send(), f"coworker-{kind}")

    def encoded(self, to: proto.Envelope, kind: str, body: dict[str, Any]) -> bytes | str:
        """The reply's bytes, or why it cannot be sent (a body JSON cannot carry, or one over the size limit)."""
        try:
            if to.dialect is not None:  # it came in CoWorker 1.0: answered in 1.0 (empty: 1.0 has no such answer)
                data = v1.encode_answer(to.dialect, kind, body, name=self.name, wallet=self.wallet,
                                        now_ms=self.now_ms()) or b""
            else:
                data = proto.encode(proto.reply(to, kind, body, now_ms=self.now_ms()))
        except (ValueError, TypeError) as exc:
            log.warning("cannot encode %s reply: %s", kind, exc)
            return f"the result cannot be sent as JSON: {exc}"
        if len(data) > proto.MAX_ENVELOPE_BYTES:
            return f"the result of {len(data)} bytes is over the {proto.MAX_ENVELOPE_BYTES}-byte message limit"
        return data

    def encode_reply(self, to: proto.Envelope, kind: str, body: dict[str, Any]) -> tuple[str, bytes]:
        """The reply's type and bytes; a reply that cannot be sent becomes a SKILL_FAILED error."""
        data = self.encoded(to, kind, body)
        if isinstance(data, bytes):
            return kind, data
        error_kind = "call.error" if to.type in ("call.request", "call.cancel") else "error"
        error = proto.error_body("SKILL_FAILED", data, task=body.get("task"))
        if to.dialect is not None:
            return error_kind, v1.encode_answer(to.dialect, error_kind, error, name=self.name, wallet=self.wallet,
                                                now_ms=self.now_ms()) or b""
        return error_kind, proto.encode(proto.reply(to, error_kind, error, now_ms=self.now_ms()))

    async def answer(self, to: proto.Envelope, kind: str, body: dict[str, Any]) -> int:
        """Send a reply to ``to``; an error reply (a refusal) makes the journal's entry of ``to`` say refused."""
        sent_kind, data = self.encode_reply(to, kind, body)
        code = (body.get("code") if sent_kind == kind else "SKILL_FAILED") if sent_kind in _ERRORS else None
        if code is not None:
            self.journal.refused(to.id, code, body.get("message", "") if sent_kind == kind else "")
        task = body.get("task")
        await self.post(to.sender, data, sent_kind, task=task if isinstance(task, str) else None, code=code)
        return len(data)

    async def refuse(self, to: proto.Envelope, code: str, message: str, task: str | None = None,
                     path: str = "") -> int:
        kind = "call.error" if to.type in ("call.request", "call.cancel") else "error"
        return await self.answer(to, kind, proto.error_body(code, message, path, task=task))
