"""The one interface every transport implements, under the runtime.

A :class:`Network` opens a :class:`Transport` for one wallet. The transport hands every incoming message to the
runtime's ``deliver`` callback, on the runtime's event loop, together with the sender identity that the
transport itself authenticated (for XMTP: the sender's inbox and the wallets associated with it). The runtime
trusts nothing else about who sent a message.

A transport also says how the runtime may send through it (:class:`SendPolicy`): whether several messages to one
peer may go as one batch frame, and the network's write limit, which the runtime's outbox keeps to.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coworker._errors import ConfigurationError, TransportError
from coworker.store.identity import Identity


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent a message, as authenticated by the transport. ``addresses`` are lower-case."""

    inbox_id: str
    addresses: frozenset[str]


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message as received: the authenticated sender and the raw bytes; ``group`` is the group's id for a
    message posted in a group (None: a direct message)."""

    sender: Sender
    data: bytes
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Invitation:
    """We were added to a group: by ``sender`` (authenticated by the transport), with the group's metadata."""

    sender: Sender
    group: str
    name: str
    description: str
    app_data: str


Deliver = Callable[[Incoming | Invitation], None]


@dataclass(frozen=True, slots=True)
class SendPolicy:
    """How the runtime sends through a transport.

    Args:
        batch: messages that wait for a send to the same peer go together as one batch frame (off: one message
            per send, as before batching; a baseline for benchmarks).
        write_limit: at most this many sends (frames) in any ``write_window`` seconds; more wait and coalesce.
            None: no limit.
        write_window: the limit's sliding window, in seconds.
    """

    batch: bool = True
    write_limit: int | None = None
    write_window: float = 300.0

    def __post_init__(self) -> None:
        if self.write_limit is not None and not (isinstance(self.write_limit, int) and self.write_limit > 0):
            raise ConfigurationError(f"write_limit is a positive number of sends (or None), got {self.write_limit!r}")
        if not self.write_window > 0:
            raise ConfigurationError(f"write_window is a positive number of seconds, got {self.write_window!r}")


class Transport(abc.ABC):
    """A wallet's connection to a network."""

    send_policy: SendPolicy = SendPolicy()  # batching on, no write limit; a network's transports may say otherwise

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

    # Groups (optional: a transport without them refuses every group operation). Wallets are addresses; a group's
    # members are told of it by an :class:`Invitation` and its posts arrive as :class:`Incoming` with ``group``.

    async def create_group(self, name: str, description: str, app_data: str, members: list[str]) -> str:
        """Make a group with us and ``members`` in it, admin-only permissions (we are its admin); its id.

        Raises:
            PeerUnreachable: a member has no inbox on this network.
            TransportError: the group could not be made.
        """
        raise TransportError(f"{type(self).__name__} has no groups")

    async def add_members(self, group: str, wallets: list[str]) -> None:
        """Add ``wallets`` to a group we administer."""
        raise TransportError(f"{type(self).__name__} has no groups")

    async def remove_members(self, group: str, wallets: list[str]) -> None:
        """Remove ``wallets`` from a group we administer: they receive nothing posted after."""
        raise TransportError(f"{type(self).__name__} has no groups")

    async def leave_group(self, group: str) -> None:
        """Leave a group (ask to be removed from it)."""
        raise TransportError(f"{type(self).__name__} has no groups")

    async def ignore_group(self, group: str) -> None:
        """Stop receiving a group's posts (an invitation we refuse); we stay a member as far as others know."""
        raise TransportError(f"{type(self).__name__} has no groups")

    async def group_members(self, group: str) -> frozenset[str]:
        """The lower-case addresses of a group's current members (us included)."""
        raise TransportError(f"{type(self).__name__} has no groups")

    async def send_group(self, group: str, data: bytes) -> None:
        """Post ``data`` to every current member of a group.

        Raises:
            TransportError: we are not a member, or the post could not be handed to the network.
        """
        raise TransportError(f"{type(self).__name__} has no groups")


class Network(abc.ABC):
    """A network that agents can join; a name for display and a way to open a transport."""

    name: str = "network"

    @abc.abstractmethod
    async def open(self, identity: Identity, data_dir: Path, deliver: Deliver) -> Transport:
        """Join the network as ``identity``; incoming messages go to ``deliver`` on the current loop."""
