"""The in-memory network: agents given the same :class:`MemoryNetwork` object reach each other.

It behaves like a store-and-forward relay: a wallet that has joined once keeps a mailbox, and messages sent to
it while it is away are delivered, in order, when it joins again. Groups are sets of members kept by the network:
a post reaches every current member but its sender (never one removed or gone), only a member may post, only the
group's admin (its creator) adds and removes, and each member added hears of it by an invitation naming who added
it. Faults apply to direct messages only. Faults can be injected for tests: dropped,
duplicated, reordered and delayed messages, drawn from a seeded random source so that a failure replays.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from coworker._errors import ConfigurationError, PeerUnreachable, TransportError
from coworker.store.identity import Identity
from coworker.transports.base import Deliver, Incoming, Invitation, Network, Sender, SendPolicy, Transport


@dataclass
class _Mailbox:
    sender: Sender
    loop: asyncio.AbstractEventLoop | None = None
    deliver: Deliver | None = None
    backlog: deque[Incoming | Invitation] = field(default_factory=deque)
    shuffle: list[Incoming] = field(default_factory=list)


@dataclass
class _Group:
    id: str
    name: str
    description: str
    app_data: str
    admin: str  # lower-case address
    members: set[str] = field(default_factory=set)
    ignoring: set[str] = field(default_factory=set)  # members that refused the invitation: posts skip them


class MemoryNetwork(Network):
    """A network inside one process, for tests, examples and benchmarks.

    Args:
        drop: share of messages lost (0..1).
        duplicate: share of messages delivered twice (0..1).
        reorder: hold messages to each recipient for ``max(delay, 0.001)`` s and deliver the batch shuffled.
        delay: seconds every message takes.
        seed: seed of the random source for the faults.
        batch: let the runtime send several messages to one peer as one batch frame (a send to this network
            completes at once, so batching only happens when a write limit makes messages wait).
        write_limit: at most this many sends per agent in any ``write_window`` seconds (default: no limit; for
            tests of the write budget).
        write_window: the write limit's window, in seconds.

    Example::

        net = MemoryNetwork()
        a, b = Agent("a", network=net), Agent("b", network=net)
    """

    name = "memory"

    def __init__(self, drop: float = 0.0, duplicate: float = 0.0, reorder: bool = False, delay: float = 0.0,
                 seed: int | None = None, *, batch: bool = True, write_limit: int | None = None,
                 write_window: float = 300.0) -> None:
        for label, rate in (("drop", drop), ("duplicate", duplicate)):
            if not 0.0 <= rate <= 1.0:
                raise ConfigurationError(f"{label} must be between 0 and 1, got {rate}")
        if delay < 0:
            raise ConfigurationError(f"delay must be >= 0 seconds, got {delay}")
        self.drop, self.duplicate, self.reorder, self.delay = drop, duplicate, reorder, delay
        self.send_policy = SendPolicy(batch, write_limit, write_window)
        self._random = random.Random(seed)
        self._mailboxes: dict[str, _Mailbox] = {}
        self._groups: dict[str, _Group] = {}
        self.stats = {"sent": 0, "delivered": 0, "dropped": 0, "duplicated": 0}

    def __repr__(self) -> str:
        return (f"MemoryNetwork(drop={self.drop}, duplicate={self.duplicate}, reorder={self.reorder}, "
                f"delay={self.delay}, members={len(self._mailboxes)})")

    async def open(self, identity: Identity, data_dir: Path, deliver: Deliver) -> Transport:
        key = identity.address.lower()
        box = self._mailboxes.get(key)
        if box is None:
            box = self._mailboxes[key] = _Mailbox(Sender(f"memory:{key}", frozenset({key})))
        if box.deliver is not None:
            raise TransportError(f"wallet {identity.address} is already connected to this network")
        box.loop, box.deliver = asyncio.get_running_loop(), deliver
        while box.backlog:
            self._hand_over(box, box.backlog.popleft(), 0.0)
        return _MemoryTransport(self, box)

    def _send(self, origin: _Mailbox, recipient: str, data: bytes) -> None:
        box = self._mailboxes.get(recipient.lower())
        if box is None:
            raise PeerUnreachable(f"{recipient} has never joined this network")
        self.stats["sent"] += 1
        rnd = self._random
        if self.drop and rnd.random() < self.drop:
            self.stats["dropped"] += 1
            return
        copies = 1
        if self.duplicate and rnd.random() < self.duplicate:
            copies = 2
            self.stats["duplicated"] += 1
        message = Incoming(origin.sender, data)
        if self.reorder:
            if not box.shuffle:
                asyncio.get_running_loop().call_later(max(self.delay, 0.001), self._release, box)
            box.shuffle.extend([message] * copies)
            return
        for _ in range(copies):
            self._hand_over(box, message, self.delay)

    def _release(self, box: _Mailbox) -> None:
        batch, box.shuffle = box.shuffle, []
        self._random.shuffle(batch)
        for message in batch:
            self._hand_over(box, message, 0.0)

    def _hand_over(self, box: _Mailbox, message: Incoming | Invitation, wait: float) -> None:
        loop, deliver = box.loop, box.deliver
        if loop is None or deliver is None or loop.is_closed():
            box.backlog.append(message)
            return

        def arrive() -> None:
            if box.deliver is deliver:
                self.stats["delivered"] += 1
                deliver(message)
            else:  # the recipient left (or left and came back) while the message was in flight
                self._hand_over(box, message, 0.0)

        try:
            same_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            same_loop = False
        if same_loop:
            if wait > 0:
                loop.call_later(wait, arrive)
            else:
                loop.call_soon(arrive)
        elif wait > 0:
            loop.call_soon_threadsafe(loop.call_later, wait, arrive)
        else:
            loop.call_soon_threadsafe(arrive)

    def _leave(self, box: _Mailbox) -> None:
        box.loop = box.deliver = None

    # ---- groups -------------------------------------------------------------------------------------------

    def _box(self, wallet: str) -> _Mailbox:
        box = self._mailboxes.get(wallet.lower())
        if box is None:
            raise PeerUnreachable(f"{wallet} has never joined this network")
        return box

    def _group(self, origin: _Mailbox, group_id: str, *, admin: bool = False) -> _Group:
        me = min(origin.sender.addresses)
        group = self._groups.get(group_id)
        if group is None or me not in group.members:
            raise TransportError(f"not a member of the group {group_id}")
        if admin and group.admin != me:
            raise TransportError(f"only the admin of the group {group_id} may change its members")
        return group

    def _invite(self, origin: _Mailbox, group: _Group, wallets: list[str]) -> None:
        boxes = [self._box(w) for w in wallets]  # all or none
        for box in boxes:
            key = min(box.sender.addresses)
            if key in group.members:
                continue
            group.members.add(key)
            group.ignoring.discard(key)
            invitation = Invitation(origin.sender, group.id, group.name, group.description, group.app_data)
            self._hand_over(box, invitation, self.delay)

    def _create_group(self, origin: _Mailbox, name: str, description: str, app_data: str, members: list[str]) -> str:
        me = min(origin.sender.addresses)
        group = _Group(secrets.token_hex(16), name, description, app_data, me, {me})
        self._invite(origin, group, members)
        self._groups[group.id] = group
        return group.id

    def _post(self, origin: _Mailbox, group_id: str, data: bytes) -> None:
        group = self._group(origin, group_id)
        me = min(origin.sender.addresses)
        message = Incoming(origin.sender, data, group.id)
        for member in sorted(group.members - group.ignoring - {me}):
            self._hand_over(self._mailboxes[member], message, self.delay)


class _MemoryTransport(Transport):
    def __init__(self, network: MemoryNetwork, box: _Mailbox) -> None:
        self._network, self._box, self._closed = network, box, False
        self.send_policy = network.send_policy

    async def send(self, recipient: str, data: bytes) -> None:
        if self._closed:
            raise TransportError("transport is closed")
        self._network._send(self._box, recipient, bytes(data))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._network._leave(self._box)

    def _open(self) -> MemoryNetwork:
        if self._closed:
            raise TransportError("transport is closed")
        return self._network

    async def create_group(self, name: str, description: str, app_data: str, members: list[str]) -> str:
        return self._open()._create_group(self._box, name, description, app_data, members)

    async def add_members(self, group: str, wallets: list[str]) -> None:
        network = self._open()
        network._invite(self._box, network._group(self._box, group, admin=True), wallets)

    async def remove_members(self, group: str, wallets: list[str]) -> None:
        found = self._open()._group(self._box, group, admin=True)
        found.members -= {w.lower() for w in wallets}

    async def leave_group(self, group: str) -> None:
        found = self._open()._group(self._box, group)
        found.members -= self._box.sender.addresses

    async def ignore_group(self, group: str) -> None:
        found = self._open()._group(self._box, group)
        found.ignoring |= self._box.sender.addresses

    async def group_members(self, group: str) -> frozenset[str]:
        return frozenset(self._open()._group(self._box, group).members)

    async def send_group(self, group: str, data: bytes) -> None:
        self._open()._post(self._box, group, bytes(data))
