"""The receiving side of CoWorker 1.0 (:mod:`coworker.core.v1`): a 1.0 message becomes the envelope it stands for,
which then takes the path of any other message (:meth:`coworker.runtime.dispatch.Runtime._dispatch`), or is
refused in 1.0, or dropped."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Coroutine
from typing import Any

from coworker._errors import RemoteProtocolError
from coworker.core import protocol as proto
from coworker.core import v1
from coworker.core.wallets import checksum
from coworker.runtime.caller import Caller
from coworker.runtime.link import Link
from coworker.transports.base import Incoming

log = logging.getLogger("coworker.runtime")

# Requests that go to a peer of unknown wire format in both (v2 and CoWorker 1.0): whichever it answers tells.
FIRST_CONTACT = frozenset({"discover", "ping", "trust.request"})


class V1Inbound:
    """Reads CoWorker 1.0 messages for one agent's runtime."""

    def __init__(self, link: Link, caller: Caller) -> None:
        self._link = link
        self._caller = caller

    def translate(self, incoming: Incoming,
                 now_ms: int) -> tuple[proto.Envelope | None, Coroutine[Any, Any, Any] | None] | None:
        """A CoWorker 1.0 message (:mod:`coworker.core.v1`): the envelope it becomes, which then takes the path of
        any other message, or (None, what to do instead: a refusal in 1.0, or nothing); None when the bytes are
        not 1.0 either. The sender is the one the transport authenticated: a ``sender_wallet`` that differs is
        refused, to the real sender, and changes nothing."""
        try:
            obj = proto.parse_json(incoming.data)
        except ValueError:
            return None
        if not v1.is_v1(obj) or proto.unacceptable(obj) is not None:
            return None
        addresses = incoming.sender.addresses
        sole = checksum(min(addresses)) if len(addresses) == 1 else None
        try:
            msg = v1.parse(obj)
        except RemoteProtocolError as exc:
            log.warning("refused a CoWorker 1.0 message from %s: %s", sorted(addresses), exc)
            correlation = obj.get("correlation_id")
            answered = sole is not None and isinstance(correlation, str) and 0 < len(correlation) <= 128
            self._note(incoming, str(obj.get("type"))[:64], answered, f"PROTOCOL_ERROR: {str(exc)[:300]}")
            if sole is None or not isinstance(correlation, str) or not answered:
                return None, None
            return None, self.answer(sole, proto.Dialect(correlation, str(obj.get("type"))[:64]), "error",
                                     proto.error_body("PROTOCOL_ERROR", str(exc)))
        claimed = msg.sender_wallet.lower() if msg.sender_wallet is not None else None
        if claimed is not None and claimed not in addresses:
            log.warning("refused CoWorker 1.0 %s: it claims %s but the transport authenticated %s", msg.type,
                        claimed, sorted(addresses))
            message = "the sender in the message is not the sender the network authenticated"
            self._note(incoming, msg.type, sole is not None and msg.type in v1.REQUESTS, f"SENDER_MISMATCH: {message}")
            if sole is None or msg.type not in v1.REQUESTS:
                return None, None
            return None, self.answer(sole, proto.Dialect(msg.correlation_id, msg.type), "error",
                                     proto.error_body("SENDER_MISMATCH", message))
        sender = checksum(claimed) if claimed is not None else sole
        if sender is None:
            log.warning("ignored CoWorker 1.0 %s: no wallet of its own from %s", msg.type, sorted(addresses))
            self._note(incoming, msg.type, False, "no wallet of its own")
            return None, None
        if v1.REQUESTS.get(msg.type) in FIRST_CONTACT and self._link.protocol(sender) == "2":
            self._note(incoming, msg.type, False, "the 1.0 copy of a request that came in v2 too")
            return None, None  # the 1.0 copy a v2 agent sends on first contact: its v2 one is answered
        mid = v1.message_id(incoming.sender.inbox_id, incoming.data)
        try:
            env = v1.to_envelope(msg, mid=mid, sender=sender, recipient=self._link.wallet)
        except RemoteProtocolError as exc:
            log.warning("refused CoWorker 1.0 %s from %s: %s", msg.type, sender, exc)
            self._note(incoming, msg.type, msg.type in v1.REQUESTS, f"{exc.code}: {str(exc)[:300]}")
            if msg.type not in v1.REQUESTS:
                return None, None
            return None, self.answer(sender, proto.Dialect(msg.correlation_id, msg.type), "error",
                                     proto.error_body(exc.code, str(exc)))
        if env is None:  # taken, and not answered (agent_card_query: see coworker.core.v1)
            self._link.heard_in(sender, "1.0")
            self._link.journal.note("in", sender, f"1.0:{msg.type}", len(incoming.data), "handled", protocol="1.0")
            return None, None
        if env.type == "error" and self._caller.watch(env.corr) is not None:
            env = dataclasses.replace(env, type="call.error")  # 1.0 refuses calls with a plain error
        return env, None

    def _note(self, incoming: Incoming, kind: str, answered: bool, reason: str) -> None:
        """Note in the journal a 1.0 message that took no envelope's form: refused (``answered``) or dropped."""
        addresses = incoming.sender.addresses
        self._link.journal.note("in", checksum(min(addresses)) if addresses else "", f"1.0:{kind}",
                                len(incoming.data), "refused" if answered else "dropped", reason=reason,
                                protocol="1.0")

    async def answer(self, to: str, dialect: proto.Dialect, kind: str, body: dict[str, Any]) -> None:
        data = v1.encode_answer(dialect, kind, body, name=self._link.name, wallet=self._link.wallet,
                                now_ms=self._link.now_ms())
        await self._link.post(to, data or b"", kind, alone=True, code=body.get("code"))
