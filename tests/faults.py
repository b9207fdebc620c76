"""A network wrapper that loses, repeats and reorders messages, for tests over transports that never do (XMTP).

:class:`FaultyNetwork` wraps any :class:`~coworker.Network`. The transports it opens pass every outgoing message
through a seeded random source: it is dropped (never handed to the real transport), sent twice, or held back and
sent after a later message, in shuffled order. Incoming deliveries can be dropped too. ``stats`` counts each fault,
so a test can show that the faults it survived really happened, and the sends whose sender stopped waiting for them
(``abandoned``).

Held messages leave with the next message that is not held; whatever is still held when the transport closes is
lost, which a sender that retries has to survive as well.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from coworker import CoworkerError, Network
from coworker.store.identity import Identity
from coworker.transports.base import Deliver, Incoming, Transport


class FaultyNetwork(Network):
    """``inner`` with faults injected into every transport it opens.

    Args:
        inner: the real network.
        drop: share of outgoing messages never sent (0..1).
        duplicate: share of outgoing messages sent twice (0..1).
        reorder: share of outgoing messages held back and sent after a later one (0..1).
        drop_incoming: share of incoming messages not delivered (0..1).
        seed: seed of the random source (timing on a real network still varies from run to run).
    """

    def __init__(self, inner: Network, *, drop: float = 0.0, duplicate: float = 0.0, reorder: float = 0.0,
                 drop_incoming: float = 0.0, seed: int | None = None) -> None:
        for label, rate in (("drop", drop), ("duplicate", duplicate), ("reorder", reorder),
                            ("drop_incoming", drop_incoming)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{label} must be between 0 and 1, got {rate}")
        self.inner = inner
        self.name = inner.name
        self.drop, self.duplicate, self.reorder, self.drop_incoming = drop, duplicate, reorder, drop_incoming
        self.random = random.Random(seed)
        self.stats = {"sent": 0, "dropped": 0, "duplicated": 0, "held": 0, "overtaken": 0, "lost_held": 0,
                      "abandoned": 0, "received": 0, "dropped_incoming": 0}

    async def open(self, identity: Identity, data_dir: Path, deliver: Deliver) -> Transport:
        def arrive(incoming: Incoming) -> None:
            self.stats["received"] += 1
            if self.random.random() < self.drop_incoming:
                self.stats["dropped_incoming"] += 1
                return
            deliver(incoming)

        return FaultyTransport(self, await self.inner.open(identity, data_dir, arrive))


class FaultyTransport(Transport):
    """A transport whose sends go through :class:`FaultyNetwork`'s faults."""

    def __init__(self, network: FaultyNetwork, inner: Transport) -> None:
        self.network, self.inner = network, inner
        self.send_policy = inner.send_policy  # batching and the write limit as the real network's
        self._held: list[tuple[str, bytes]] = []

    async def send(self, recipient: str, data: bytes) -> None:
        net, stats, rnd = self.network, self.network.stats, self.network.random
        stats["sent"] += 1
        if rnd.random() < net.drop:
            stats["dropped"] += 1
            return
        copies = 1
        if rnd.random() < net.duplicate:
            stats["duplicated"] += 1
            copies = 2
        if rnd.random() < net.reorder:
            stats["held"] += 1
            self._held.extend([(recipient, data)] * copies)
            return
        # Taken off the list before the first await: a concurrent send must not send the same ones again.
        overtaken, self._held = self._held, []
        rnd.shuffle(overtaken)
        stats["overtaken"] += len(overtaken)
        for _ in range(copies):
            await self._pass_on(recipient, data)
        for held_recipient, held_data in overtaken:
            try:
                await self._pass_on(held_recipient, held_data)
            except CoworkerError:  # a held message that cannot go is lost; it was not this sender's to report
                stats["lost_held"] += 1

    async def _pass_on(self, recipient: str, data: bytes) -> None:
        try:
            await self.inner.send(recipient, data)
        except asyncio.CancelledError:  # the sender stopped waiting; the real transport may send it all the same
            self.network.stats["abandoned"] += 1
            raise

    async def close(self) -> None:
        self.network.stats["lost_held"] += len(self._held)
        self._held = []
        await self.inner.close()
