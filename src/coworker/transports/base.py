"""The one interface every transport implements, under the runtime.

A :class:`Network` opens a :class:`Transport` for one wallet. The transport hands every incoming message to the
runtime's ``deliver`` callback, on the runtime's event loop, together with the sender identity that the
transport itself authenticated (for XMTP: the sender's inbox and the wallets associated with it). The runtime
trusts nothing else about who sent a message.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coworker.store.identity import Identity


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent a message, as authenticated by the transport. ``addresses`` are lower-case."""

    inbox_id: str
    addresses: frozenset[str]


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message as received: the authenticated sender and the raw bytes."""

    sender: Sender
    data: bytes


Deliver = Callable[[Incoming], None]


class Transport(abc.ABC):
    """A wallet's connection to a network."""

    @abc.abstractmethod
    async def send(self, recipient: str, data: bytes) -> None:
        """Send ``data`` to the wallet ``recipient``.

        Raises:
            PeerUnreachable: the recipient has no inbox on this network.
            TransportError: the message could not be handed to the network.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop receiving and release resources; bounded in time."""


class Network(abc.ABC):
    """A network that agents can join; a name for display and a way to open a transport."""

    name: str = "network"

    @abc.abstractmethod
    async def open(self, identity: Identity, data_dir: Path, deliver: Deliver) -> Transport:
        """Join the network as ``identity``; incoming messages go to ``deliver`` on the current loop."""
