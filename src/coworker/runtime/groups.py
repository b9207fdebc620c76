"""The runtime's side of groups: invitations, posts, and asking every member at once.

Theory of operation. A group is a coordination channel and grants no trust (see :mod:`coworker.core.groups`).

- **Invitations** (:meth:`Groups.invited`): the transport says who added us. An invitation from a peer we hold
  below KNOWN is recorded ``ignored``: the transport is told to stop giving us its posts (XMTP: consent denied) and
  any that still come are dropped unread. One from a KNOWN peer or better is recorded ``joined``.
- **Posts** (:meth:`Groups.receive`): a post counts only in a group we joined, from a sender who is a current
  member (the transport's list, asked when the post comes), that is the ``from`` it names, fresh and not seen
  before. A ``discover`` post is then served exactly as a ``discover`` sent over the DM would be (the runtime's
  ``serve``: the trust decision, then the skills the asker's tier may see), and answered over the DM: so a member
  that does not trust the asker answers with no skills. Everything else is dropped and journaled with the reason.
- **Asking** (:meth:`Groups.discover`): one post to the group, then the answers (``capabilities`` replies whose
  ``corr`` is the post's id) are collected from the members as they come over their DMs, until all answered or
  the time is up. The dispatcher hands such replies here (:meth:`Groups.answered`).

Leaving and removal take effect at once: our record says so, so posts in that group are dropped from then on, and
the transport stops delivering them (MLS: a removed member cannot read what is posted after its removal).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from coworker._errors import ConfigurationError, TransportError
from coworker.core import groups as posts
from coworker.core import protocol as proto
from coworker.core.trust import TrustTier
from coworker.core.wallets import checksum
from coworker.runtime.link import Link
from coworker.store.records import GroupRecord
from coworker.transports.base import Incoming, Invitation, Transport

log = logging.getLogger("coworker.runtime")

Serve = Callable[[proto.Envelope, str, int], Coroutine[Any, Any, None]]


@dataclass(slots=True)
class _Ask:
    members: frozenset[str]  # lower-case addresses expected to answer
    answers: dict[str, proto.Envelope] = field(default_factory=dict)
    complete: asyncio.Event = field(default_factory=asyncio.Event)


class Groups:
    """Groups for one running agent: its transport, store and journal (through ``link``), and ``serve``, the
    runtime's way of answering a request (used for a post as for the same request sent over the DM)."""

    def __init__(self, link: Link, serve: Serve, awaiting: collections.Counter[str]) -> None:
        self._link = link
        self._serve = serve
        self._awaiting = awaiting  # the runtime's: peers whose replies we wait for (their own rate budget)
        self._asks: dict[str, _Ask] = {}

    @property
    def transport(self) -> Transport:
        """The running transport.

        Raises:
            TransportError: the agent is not started.
        """
        transport = self._link.transport
        if transport is None:
            raise TransportError("agent is not started")
        return transport

    # ---- what we do -----------------------------------------------------------------------------------------

    async def create(self, name: str, description: str, app_data: str, members: list[str]) -> GroupRecord:
        """Make a group with ``members`` (admin-only: we add and remove) and record it joined."""
        group_id = await self.transport.create_group(name, description, app_data, members)
        now = self._link.clock()
        record = GroupRecord(group_id, name, description, self._link.wallet, "joined", now, now)
        self._link.store.save_group(record)
        self._link.journal.note("out", self._link.wallet, "group.create", 0, "sent",
                                detail={"group": group_id, "members": len(members)})
        return record

    def record(self, group_id: str) -> GroupRecord | None:
        return self._link.store.group(group_id)

    def joined(self, group_id: str) -> GroupRecord:
        """Our record of a group we are in.

        Raises:
            ConfigurationError: no such group, or we ignored, left or were removed from it.
        """
        record = self._link.store.group(group_id)
        if record is None:
            raise ConfigurationError(f"no group {group_id!r}: see groups()")
        if record.state != "joined":
            raise ConfigurationError(f"the group {group_id!r} is {record.state}: we are not in it")
        return record

    async def members(self, group_id: str) -> frozenset[str]:
        """A group's current members (lower-case addresses, us included). When we are no longer among them our
        record says ``removed`` from then on.

        Raises:
            ConfigurationError: we are not in that group (any more).
        """
        self.joined(group_id)
        try:
            members = await self.transport.group_members(group_id)
        except TransportError as exc:
            if "not a member" not in str(exc):
                raise
            members = frozenset()
        if self._link.wallet.lower() not in members:
            self._link.store.set_group_state(group_id, "removed", self._link.clock())
            raise ConfigurationError(f"we were removed from the group {group_id!r}")
        return members

    async def leave(self, group_id: str) -> None:
        self.joined(group_id)
        await self.transport.leave_group(group_id)
        self._link.store.set_group_state(group_id, "left", self._link.clock())

    async def discover(self, group_id: str, timeout: float) -> dict[str, proto.Envelope | None]:
        """Ask every other member at once which skills it lets us see; each member's reply (``capabilities``, or
        an ``error``), or None for one that did not answer within ``timeout`` seconds."""
        members = await self.members(group_id) - {self._link.wallet.lower()}
        post_id = proto.new_id()
        now = self._link.now_ms()
        ttl = min(max(proto.DEFAULT_TTL_MS, int(timeout * 1000) + 60_000), proto.MAX_TTL_MS)
        data = posts.post("discover", post_id=post_id, sender=self._link.wallet, sender_name=self._link.name,
                          group=group_id, now_ms=now, ttl_ms=ttl)
        ask = self._asks[post_id] = _Ask(members)
        for member in members:
            self._awaiting[member] += 1
        try:
            if not members:
                ask.complete.set()
            try:
                await self.transport.send_group(group_id, data)
            except TransportError as exc:
                self._note_out(group_id, data, post_id, "failed", str(exc)[:500])
                raise
            self._note_out(group_id, data, post_id, "sent")
            try:
                async with asyncio.timeout(timeout):
                    await ask.complete.wait()
            except TimeoutError:
                log.info("group %s: %d of %d members answered within %g s", group_id, len(ask.answers),
                         len(members), timeout)
        finally:
            del self._asks[post_id]
            for member in members:
                self._awaiting[member] -= 1
                if self._awaiting[member] <= 0:
                    del self._awaiting[member]
        return {member: ask.answers.get(member) for member in sorted(members)}

    def _note_out(self, group_id: str, data: bytes, post_id: str, verdict: str, reason: str = "") -> None:
        self._link.journal.note("out", self._link.wallet, "group.discover", len(data), verdict, message_id=post_id,
                                reason=reason, detail={"group": group_id})

    # ---- what comes -----------------------------------------------------------------------------------------

    def asks(self, corr: str) -> bool:
        """Whether a reply with this ``corr`` answers one of our group posts."""
        return corr in self._asks

    def answered(self, env: proto.Envelope, peer: str) -> str | None:
        """Take a member's answer to our post; why it was dropped, or None."""
        ask = self._asks[env.corr]
        key = peer.lower()
        if key not in ask.members:
            return "an answer to a group post from a peer that was not asked"
        if key in ask.answers:
            return "a second answer to a group post"
        ask.answers[key] = env
        if len(ask.answers) == len(ask.members):
            ask.complete.set()
        return None

    def invited(self, invitation: Invitation) -> None:
        """Decide on an invitation: joined when its sender is KNOWN or better, else ignored (and nothing in the
        group is read)."""
        addresses = invitation.sender.addresses
        if self._link.wallet.lower() in addresses or not addresses:
            return  # a group we made ourselves
        store = self._link.store
        old = store.group(invitation.group)
        if old is not None and old.state in ("joined", "ignored"):
            return  # told again (a restart's sync): decided already
        tier = max(store.trust_tier(a) for a in addresses)
        inviter = checksum(max(addresses, key=store.trust_tier))
        state = "joined" if tier >= TrustTier.KNOWN else "ignored"
        now = self._link.clock()
        store.save_group(GroupRecord(invitation.group, invitation.name, invitation.description, inviter, state,
                                     now if old is None else old.created_at, now))
        reason = "" if state == "joined" else f"an invitation from a peer we hold {tier.name}: the group is ignored"
        self._link.journal.note("in", inviter, "group.invite", 0, "handled" if state == "joined" else "dropped",
                                reason=reason, detail={"group": invitation.group, "name": invitation.name[:100]})
        log.info("group %s (%r) from %s: %s", invitation.group, invitation.name, inviter, state)
        if state == "ignored":
            self._link.tasks.spawn(self._ignore(invitation.group), "coworker-group-ignore")

    async def _ignore(self, group_id: str) -> None:
        try:
            await self.transport.ignore_group(group_id)
        except TransportError as exc:
            log.warning("could not stop the posts of the ignored group %s: %s", group_id, exc)

    def receive(self, incoming: Incoming) -> Coroutine[Any, Any, None] | None:
        """Check a post at once (the group's state in our records, its form, its sender); what needs the
        transport (the members) and the answer run in the coroutine returned."""
        addresses = incoming.sender.addresses
        sender = checksum(min(addresses)) if addresses else ""
        why = self._refusal(incoming, addresses)
        if isinstance(why, str):
            self._drop(sender, incoming, why)
            return None
        return self._answer(why, incoming)

    def _refusal(self, incoming: Incoming, addresses: frozenset[str]) -> proto.Envelope | str:
        """The post as a request to serve, or why it is dropped."""
        group_id = incoming.group or ""
        record = self._link.store.group(group_id)
        if record is None or record.state != "joined":
            return f"a post in a group we are not in ({'not recorded' if record is None else record.state})"
        if not posts.is_post(incoming.data):
            return "text, not a CoWorker post"
        post = posts.parse(incoming.data)
        if isinstance(post, str):
            return post
        if post.sender.lower() not in addresses:
            return "SENDER_MISMATCH: the post names another sender than the network"
        if post.group != group_id:
            return "a post naming another group"
        stub = proto.Envelope(post.id, post.type, post.id, checksum(post.sender), self._link.wallet, post.ts,
                              post.exp, {})
        stale = proto.check_fresh(stub, self._link.now_ms())
        return stub if stale is None else f"EXPIRED: {stale}"

    async def _answer(self, stub: proto.Envelope, incoming: Incoming) -> None:
        group_id = incoming.group or ""
        try:
            members = await self.transport.group_members(group_id)
        except TransportError as exc:
            self._drop(stub.sender, incoming, f"the group's members are unknown: {exc}")
            return
        if not incoming.sender.addresses & members:
            self._drop(stub.sender, incoming, "the sender is not a member of the group")
            return
        if not self._link.store.remember(stub.id, stub.exp, self._link.now_ms()):
            self._drop(stub.sender, incoming, "duplicate")
            return
        self._link.journal.note("in", stub.sender, f"group.{stub.type}", len(incoming.data), "handled",
                                message_id=stub.id, detail={"group": group_id})
        await self._serve(stub, stub.sender, len(incoming.data))

    def _drop(self, sender: str, incoming: Incoming, reason: str) -> None:
        log.info("dropped a post from %s in group %s: %s", sender, incoming.group, reason)
        self._link.journal.note("in", sender, "group.post", len(incoming.data), "dropped", reason=reason,
                                detail={"group": incoming.group})
