"""The devnet's gRPC server: XMTP's v3 node API on localhost, backed by :class:`Store`.

One piece: it is one gRPC service surface, an RPC per method of XMTP's node API in the order of the protos, and
the handlers share the server's state (subscriptions, rate limits, the refusal log); split, each part would
reach into the others.

Theory of operation
-------------------
Every RPC the official clients use (listed in ``_RPCS`` at the bottom) is a coroutine that takes a
parsed request and returns a response, or raises :class:`RpcError` with a gRPC status. A wrapper
parses the request bytes itself, so a malformed request is answered INVALID_ARGUMENT instead of a
generic INTERNAL, applies the optional per-client rate limit and turns unexpected exceptions into
INTERNAL (logged); the server keeps serving in every case. A method that is not in the table is
answered UNIMPLEMENTED, logged as an error and recorded in :attr:`DevnetServer.unimplemented_calls`:
the integration tests assert that list stays empty, which is the contract check that tells us when
a new SDK version starts to use a method the devnet lacks.

The two server streams first send their response headers (a client waits for them before it
considers the stream open), register with the in-process broker, replay every stored message after
the filter's cursor (0 included: a client that just joined a group subscribes with cursor 0 and
relies on this replay for messages sent while it was subscribing, as on the hosted node) and then
forward live ones, skipping ids already sent. A subscriber that falls
``_QUEUE_SIZE`` messages behind is closed with UNAVAILABLE; clients reconnect and sync.

Identity updates are checked as the hosted network checks them (``_identity``): an update whose
signatures do not verify, or that changes an inbox without a signature of a member allowed to, is
refused with INVALID_ARGUMENT and not stored, so nobody on the machine can cut an agent off by
writing into its inbox's log. Each inbox's association state is folded from its stored log on
first use and kept in memory. Beyond that, nothing is validated except the MLS framing the store
needs to index: clients verify key packages and MLS themselves (the hosted network also validates
key packages; the devnet does not).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError, Message

from coworker.devnet._gen import identity_pb2, migration_pb2, mls_pb2
from coworker.devnet._identity import IdentityUpdateRefused, InboxState, apply_update
from coworker.devnet._limits import RateLimiter
from coworker.devnet._store import (
    NewCommitLogEntry,
    NewGroupMessage,
    NewWelcome,
    Store,
    StoreCounts,
    StoredGroupMessage,
    StoredWelcome,
)
from coworker.devnet._wire import WireFormatError, key_package_installation_key, mls_message_info

log = logging.getLogger("coworker.devnet")

DEFAULT_PORT = 5556
DEFAULT_HOSTS = ("127.0.0.1", "::1")
ONE_MB = 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = ONE_MB
DEFAULT_PAGE_LIMIT = 100
MAX_PAGE_LIMIT = 100
# A query page stops growing past this many payload bytes: the clients fail to decode pages over
# 25 MiB, and with 1 MB messages a full page of 100 would be ~100 MB.
MAX_PAGE_BYTES = 8 * ONE_MB
# gRPC's own cap on a request: far above the message limit, so that an oversize message reaches
# our check and gets an answer that names the limit instead of a transport error.
_MAX_RECEIVE_BYTES = 64 * ONE_MB
_QUEUE_SIZE = 10_000

_IDENTITY = "xmtp.identity.api.v1.IdentityApi"
_MLS = "xmtp.mls.api.v1.MlsApi"
_MIGRATION = "xmtp.migration.api.v1.D14nMigrationApi"

_KIND_ETHEREUM = identity_pb2.IDENTIFIER_KIND_ETHEREUM
_KIND_PASSKEY = identity_pb2.IDENTIFIER_KIND_PASSKEY


class DevnetError(Exception):
    """The devnet could not start or run (for example: its port is taken)."""


class PortInUseError(DevnetError):
    """Another process (often a devnet left running) listens on the devnet's port."""


class RpcError(Exception):
    """Raised by an RPC implementation: answer the call with this gRPC status and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class DevnetConfig:
    """How a devnet runs.

    Args:
        port: TCP port on every host; 0 picks a free one (tests that do not use the Node SDK).
        hosts: addresses to listen on; the Node SDK dials ``localhost``, so both loopbacks.
        data_dir: directory of the SQLite database; ``None`` keeps everything in memory.
        max_message_bytes: largest group message accepted (the hosted network's limit is 1 MB).
        rate_limit: requests per second allowed per client connection; ``None`` for no limit.
    """

    port: int = DEFAULT_PORT
    hosts: tuple[str, ...] = DEFAULT_HOSTS
    data_dir: Path | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    rate_limit: float | None = None


@dataclass(frozen=True)
class Refusal:
    """A call the devnet answered with an error status."""

    method: str
    code: str
    message: str


@dataclass(frozen=True)
class DevnetStatus:
    """A running devnet's figures."""

    port: int
    data_dir: Path | None
    uptime_s: float
    counts: StoreCounts
    unimplemented_calls: tuple[str, ...]


K = TypeVar("K")
T = TypeVar("T")


class _Stored(Protocol):
    @property
    def id(self) -> int: ...


S = TypeVar("S", bound=_Stored)


@dataclass(eq=False)
class _Subscriber(Generic[T]):
    # None is the end-of-stream mark, put there when the server stops.
    queue: asyncio.Queue[T | None] = field(default_factory=lambda: asyncio.Queue(_QUEUE_SIZE))
    overflowed: bool = False


class _Topics(Generic[T]):
    """In-process fan-out of newly stored items to the streams subscribed to their key."""

    def __init__(self) -> None:
        self._subscribers: dict[bytes, set[_Subscriber[T]]] = {}

    def subscribe(self, keys: Sequence[bytes]) -> _Subscriber[T]:
        subscriber: _Subscriber[T] = _Subscriber()
        for key in keys:
            self._subscribers.setdefault(key, set()).add(subscriber)
        return subscriber

    def unsubscribe(self, keys: Sequence[bytes], subscriber: _Subscriber[T]) -> None:
        for key in keys:
            subscribers = self._subscribers.get(key)
            if subscribers is not None:
                subscribers.discard(subscriber)
                if not subscribers:
                    del self._subscribers[key]

    def publish(self, key: bytes, item: T) -> None:
        for subscriber in self._subscribers.get(key, ()):
            try:
                subscriber.queue.put_nowait(item)
            except asyncio.QueueFull:
                subscriber.overflowed = True

    def close_all(self) -> None:
        for subscriber in {s for subs in self._subscribers.values() for s in subs}:
            try:
                subscriber.queue.put_nowait(None)
            except asyncio.QueueFull:
                subscriber.overflowed = True


class DevnetServer:
    """An XMTP-compatible node on localhost.

    Use it as an async context manager (start on enter, stop on exit)::

        async with DevnetServer(DevnetConfig(data_dir=None)) as devnet:
            ...  # Node SDK clients with env "local" now talk to it
            assert not devnet.unimplemented_calls

    Args:
        config: where and how to serve.
        clock_ns: wall clock in nanoseconds, for the created_ns of stored messages.
        monotonic: seconds, for the rate limiter and uptime.
    """

    def __init__(
        self,
        config: DevnetConfig | None = None,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or DevnetConfig()
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self._store: Store | None = None
        self._server: Any = None
        self._port = 0
        self._started_at = 0.0
        self._groups: _Topics[StoredGroupMessage] = _Topics()
        self._welcomes: _Topics[StoredWelcome] = _Topics()
        self._limiter = RateLimiter(self.config.rate_limit) if self.config.rate_limit else None
        self.unimplemented_calls: list[str] = []
        """Full names of the methods clients called that the devnet does not implement."""
        self._inboxes: dict[str, InboxState] = {}  # association states, filled from the store as inboxes are used
        self.refusals: collections.deque[Refusal] = collections.deque(maxlen=1000)
        """The latest calls answered with an error status (the SDK often hides the server's message)."""

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens on (the chosen one when configured with 0)."""
        return self._port

    @property
    def store(self) -> Store:
        """The running server's store."""
        if self._store is None:
            raise DevnetError("the devnet is not running")
        return self._store

    async def start(self) -> None:
        """Open the store, bind the port on every host and start serving.

        Raises:
            PortInUseError: the port is taken on one of the hosts.
        """
        data_dir = self.config.data_dir
        if data_dir is not None:
            from coworker._paths import ensure_private_dir

            ensure_private_dir(data_dir)
        self._store = Store.in_dir(data_dir) if data_dir is not None else Store(None)
        self._inboxes.clear()
        try:
            self._server = grpc.aio.server(
                options=[
                    ("grpc.so_reuseport", 0),
                    ("grpc.max_receive_message_length", _MAX_RECEIVE_BYTES),
                    ("grpc.max_send_message_length", -1),
                    ("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
                    ("grpc.http2.max_ping_strikes", 0),
                ]
            )
            self._server.add_generic_rpc_handlers((_Router(self),))
            self._bind()
            await self._server.start()
        except BaseException:
            self._store.close()
            self._store = None
            self._server = None
            raise
        self._started_at = self._monotonic()
        where = data_dir if data_dir is not None else "memory"
        log.info("devnet listening on port %d (%s), data in %s", self._port, ", ".join(self.config.hosts), where)

    def _bind(self) -> None:
        port = self.config.port
        for index, host in enumerate(self.config.hosts):
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            try:
                bound = self._server.add_insecure_port(address)
            except RuntimeError:
                bound = 0
            if bound == 0:
                if ":" in host and not _ipv6_loopback_available():
                    log.warning("IPv6 loopback is not available: not listening on %s", host)
                    continue
                raise PortInUseError(
                    f"cannot listen on {address}: the port is taken (is a devnet already running? "
                    "`coworker devnet status` / `coworker devnet stop`)"
                )
            if index == 0:
                port = bound
        self._port = port

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving (open streams end) and close the store; a no-op when not running."""
        if self._server is not None:
            # End the open streams with UNAVAILABLE (clients retry) rather than cancelling them.
            self._groups.close_all()
            self._welcomes.close_all()
            await self._server.stop(grace)
            self._server = None
        if self._store is not None:
            self._store.close()
            self._store = None
            log.info("devnet stopped")

    async def wait_for_termination(self) -> None:
        """Wait until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def __aenter__(self) -> DevnetServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def status(self) -> DevnetStatus:
        """Figures of the running devnet: counts, uptime, unimplemented calls seen."""
        return DevnetStatus(
            port=self._port,
            data_dir=self.config.data_dir,
            uptime_s=self._monotonic() - self._started_at,
            counts=self.store.counts(),
            unimplemented_calls=tuple(self.unimplemented_calls),
        )

    def record_unimplemented(self, method: str) -> None:
        """Note a call to a method the devnet lacks (logged as an error)."""
        log.error("UNIMPLEMENTED: a client called %s, which the devnet does not implement", method)
        self.unimplemented_calls.append(method)

    def check_rate(self, peer: str) -> None:
        """Raise RESOURCE_EXHAUSTED if ``peer`` is over the per-client rate limit."""
        if self._limiter is not None and not self._limiter.allow(peer, self._monotonic()):
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit exceeded: the devnet allows {self._limiter.rate:g} requests/s per client",
            )

    # --- identity -------------------------------------------------------------------------------

    async def publish_identity_update(
        self, request: identity_pb2.PublishIdentityUpdateRequest, context: Any
    ) -> identity_pb2.PublishIdentityUpdateResponse:
        raw = request.identity_update
        update = _parse(identity_pb2.IdentityUpdate, raw, "identity_update")
        if not update.inbox_id:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "identity_update.inbox_id is empty")
        try:
            # No await between this check and the store: no other update of the inbox can come between.
            state = apply_update(self._inbox_state(update.inbox_id), update)
        except IdentityUpdateRefused as exc:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"identity update refused: {exc}") from exc
        associate: list[tuple[int, str]] = []
        dissociate: list[tuple[int, str]] = []
        for action in update.actions:
            which = action.WhichOneof("kind")
            if which == "create_inbox":
                create = action.create_inbox
                kind = _KIND_PASSKEY if create.initial_identifier_kind == _KIND_PASSKEY else _KIND_ETHEREUM
                associate.append((kind, _normalise(kind, create.initial_identifier)))
            elif which == "add":
                member = _member_key(action.add.new_member_identifier)
                if member is not None:
                    associate.append(member)
            elif which == "revoke":
                member = _member_key(action.revoke.member_to_revoke)
                if member is not None:
                    dissociate.append(member)
        self.store.add_identity_update(update.inbox_id, raw, self._clock_ns(), associate, dissociate)
        self._inboxes[update.inbox_id] = state
        return identity_pb2.PublishIdentityUpdateResponse()

    def _inbox_state(self, inbox_id: str) -> InboxState | None:
        """The inbox's association state: its stored log folded once, then kept up to date by each publish."""
        if inbox_id not in self._inboxes:
            state: InboxState | None = None
            for stored in self.store.identity_updates(inbox_id, 0):
                try:
                    state = apply_update(state, identity_pb2.IdentityUpdate.FromString(stored.raw))
                except (IdentityUpdateRefused, DecodeError) as exc:
                    # Stored by a devnet that did not check updates yet: left out, as if it had been refused.
                    log.warning("inbox %s: stored update %d does not apply: %s", inbox_id, stored.sequence_id, exc)
            if state is None:
                return None
            self._inboxes[inbox_id] = state
        return self._inboxes[inbox_id]

    async def get_identity_updates(
        self, request: identity_pb2.GetIdentityUpdatesRequest, context: Any
    ) -> identity_pb2.GetIdentityUpdatesResponse:
        response = identity_pb2.GetIdentityUpdatesResponse()
        for item in request.requests:
            entry = response.responses.add(inbox_id=item.inbox_id)
            for stored in self.store.identity_updates(item.inbox_id, item.sequence_id):
                entry.updates.add(
                    sequence_id=stored.sequence_id, server_timestamp_ns=stored.server_ns, update=stored.raw
                )
        return response

    async def get_inbox_ids(
        self, request: identity_pb2.GetInboxIdsRequest, context: Any
    ) -> identity_pb2.GetInboxIdsResponse:
        response = identity_pb2.GetInboxIdsResponse()
        for item in request.requests:
            kind = _KIND_PASSKEY if item.identifier_kind == _KIND_PASSKEY else _KIND_ETHEREUM
            inbox_id = self.store.inbox_id(kind, _normalise(kind, item.identifier))
            entry = response.responses.add(identifier=item.identifier, identifier_kind=item.identifier_kind)
            if inbox_id is not None:
                entry.inbox_id = inbox_id
        return response

    async def verify_smart_contract_wallet_signatures(
        self, request: identity_pb2.VerifySmartContractWalletSignaturesRequest, context: Any
    ) -> identity_pb2.VerifySmartContractWalletSignaturesResponse:
        response = identity_pb2.VerifySmartContractWalletSignaturesResponse()
        for _ in request.signatures:
            response.responses.add(
                is_valid=False,
                error="the devnet has no blockchain: smart-contract wallet signatures cannot be verified",
            )
        return response

    # --- key packages ---------------------------------------------------------------------------

    async def upload_key_package(self, request: mls_pb2.UploadKeyPackageRequest, context: Any) -> Message:
        key_package = request.key_package.key_package_tls_serialized
        try:
            installation_key = key_package_installation_key(key_package)
        except WireFormatError as exc:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid key package: {exc}") from exc
        self.store.put_key_package(installation_key, key_package, self._clock_ns())
        return empty_pb2.Empty()

    async def fetch_key_packages(
        self, request: mls_pb2.FetchKeyPackagesRequest, context: Any
    ) -> mls_pb2.FetchKeyPackagesResponse:
        response = mls_pb2.FetchKeyPackagesResponse()
        for key_package in self.store.key_packages(list(request.installation_keys)):
            response.key_packages.add(key_package_tls_serialized=key_package or b"")
        return response

    # --- group messages -------------------------------------------------------------------------

    async def send_group_messages(self, request: mls_pb2.SendGroupMessagesRequest, context: Any) -> Message:
        limit = self.config.max_message_bytes
        batch: list[NewGroupMessage] = []
        for index, message in enumerate(request.messages):
            if message.WhichOneof("version") != "v1":
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"messages[{index}] has no v1 payload")
            data = message.v1.data
            if len(data) > limit:
                raise RpcError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"message too large: {len(data)} bytes exceeds the devnet's per-message limit of "
                    f"{_describe_limit(limit)}; send large content as a remote attachment",
                )
            try:
                info = mls_message_info(data)
            except WireFormatError as exc:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"messages[{index}]: {exc}") from exc
            batch.append(
                NewGroupMessage(info.group_id, data, message.v1.sender_hmac, message.v1.should_push, info.is_commit)
            )
        for stored in self.store.add_group_messages(batch, self._clock_ns()):
            self._groups.publish(stored.group_id, stored)
        return empty_pb2.Empty()

    async def query_group_messages(
        self, request: mls_pb2.QueryGroupMessagesRequest, context: Any
    ) -> mls_pb2.QueryGroupMessagesResponse:
        if not request.group_id:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "group_id is empty")
        descending, limit, cursor = _paging(request.paging_info)
        page = self.store.group_messages(request.group_id, cursor, descending, limit, MAX_PAGE_BYTES)
        response = mls_pb2.QueryGroupMessagesResponse()
        for stored in page:
            _fill_group_message(response.messages.add(), stored)
        _fill_paging(response.paging_info, request.paging_info, limit, page[-1].id if page else 0)
        return response

    async def get_newest_group_message(
        self, request: mls_pb2.GetNewestGroupMessageRequest, context: Any
    ) -> mls_pb2.GetNewestGroupMessageResponse:
        response = mls_pb2.GetNewestGroupMessageResponse()
        for group_id in request.group_ids:
            entry = response.responses.add()
            stored = self.store.newest_group_message(group_id)
            if stored is not None:
                _fill_group_message(entry.group_message, stored, include_data=request.include_content)
        return response

    async def subscribe_group_messages(
        self, request: mls_pb2.SubscribeGroupMessagesRequest, context: Any
    ) -> AsyncIterator[mls_pb2.GroupMessage]:
        await context.send_initial_metadata(())
        keys = [f.group_id for f in request.filters]
        log.debug(
            "group subscription from %s: %s",
            context.peer(),
            ", ".join(f"{f.group_id.hex()[:8]}>{f.id_cursor}" for f in request.filters) or "no groups",
        )
        subscriber = self._groups.subscribe(keys)
        try:
            cursors = [(f.group_id, f.id_cursor) for f in request.filters]
            async for stored in self._replay_then_live(subscriber, cursors, self.store.group_messages_after,
                                                       lambda m: m.group_id):
                yield _group_message(stored)
        finally:
            self._groups.unsubscribe(keys, subscriber)

    # --- welcomes -------------------------------------------------------------------------------

    async def send_welcome_messages(self, request: mls_pb2.SendWelcomeMessagesRequest, context: Any) -> Message:
        batch: list[NewWelcome] = []
        for index, welcome in enumerate(request.messages):
            version = welcome.WhichOneof("version")
            if version == "v1":
                v1 = welcome.v1
                new = NewWelcome(
                    v1.installation_key, False, v1.data, v1.hpke_public_key, v1.wrapper_algorithm, v1.welcome_metadata
                )
            elif version == "welcome_pointer":
                p = welcome.welcome_pointer
                new = NewWelcome(
                    p.installation_key, True, p.welcome_pointer, p.hpke_public_key, p.wrapper_algorithm, b""
                )
            else:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"messages[{index}] has no known version")
            if not new.installation_key:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"messages[{index}].installation_key is empty")
            batch.append(new)
        for stored in self.store.add_welcomes(batch, self._clock_ns()):
            self._welcomes.publish(stored.installation_key, stored)
        return empty_pb2.Empty()

    async def query_welcome_messages(
        self, request: mls_pb2.QueryWelcomeMessagesRequest, context: Any
    ) -> mls_pb2.QueryWelcomeMessagesResponse:
        if not request.installation_key:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "installation_key is empty")
        descending, limit, cursor = _paging(request.paging_info)
        page = self.store.welcomes(request.installation_key, cursor, descending, limit)
        response = mls_pb2.QueryWelcomeMessagesResponse()
        for stored in page:
            _fill_welcome(response.messages.add(), stored)
        _fill_paging(response.paging_info, request.paging_info, limit, page[-1].id if page else 0)
        return response

    async def subscribe_welcome_messages(
        self, request: mls_pb2.SubscribeWelcomeMessagesRequest, context: Any
    ) -> AsyncIterator[mls_pb2.WelcomeMessage]:
        await context.send_initial_metadata(())
        keys = [f.installation_key for f in request.filters]
        log.debug(
            "welcome subscription from %s: %s",
            context.peer(),
            ", ".join(f"{f.installation_key.hex()[:8]}>{f.id_cursor}" for f in request.filters),
        )
        subscriber = self._welcomes.subscribe(keys)
        try:
            cursors = [(f.installation_key, f.id_cursor) for f in request.filters]
            async for stored in self._replay_then_live(subscriber, cursors, self.store.welcomes_after,
                                                       lambda w: w.installation_key):
                yield _welcome(stored)
        finally:
            self._welcomes.unsubscribe(keys, subscriber)

    async def _replay_then_live(self, subscriber: _Subscriber[S], cursors: list[tuple[bytes, int]],
                                fetch_after: Callable[[list[bytes], int], list[S]],
                                key_of: Callable[[S], bytes]) -> AsyncIterator[S]:
        """Stored items after each key's cursor, by id, then live ones: each item once, ids rising per key.

        The subscriber is registered before the backlog is read, so nothing falls between the two."""
        last_sent: dict[bytes, int] = {}
        backlog: list[S] = []
        for key, cursor in cursors:
            last_sent[key] = max(last_sent.get(key, 0), cursor)
            backlog.extend(fetch_after([key], cursor))
        for stored in sorted(backlog, key=lambda item: item.id):
            if stored.id > last_sent.get(key_of(stored), 0):
                last_sent[key_of(stored)] = stored.id
                yield stored
        async for stored in self._live(subscriber):
            if stored.id > last_sent.get(key_of(stored), 0):
                last_sent[key_of(stored)] = stored.id
                yield stored

    async def _live(self, subscriber: _Subscriber[T]) -> AsyncIterator[T]:
        while True:
            if subscriber.overflowed:
                raise RpcError(grpc.StatusCode.UNAVAILABLE, "subscriber fell too far behind; resubscribe and sync")
            item = await subscriber.queue.get()
            if item is None:
                raise RpcError(grpc.StatusCode.UNAVAILABLE, "the devnet is shutting down")
            yield item

    # --- commit log, migration ------------------------------------------------------------------

    async def batch_publish_commit_log(self, request: mls_pb2.BatchPublishCommitLogRequest, context: Any) -> Message:
        entries: list[NewCommitLogEntry] = []
        for index, item in enumerate(request.requests):
            if not item.group_id:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"requests[{index}].group_id is empty")
            entries.append(NewCommitLogEntry(item.group_id, item.serialized_commit_log_entry, item.signature))
        self.store.add_commit_log_entries(entries)
        return empty_pb2.Empty()

    async def batch_query_commit_log(
        self, request: mls_pb2.BatchQueryCommitLogRequest, context: Any
    ) -> mls_pb2.BatchQueryCommitLogResponse:
        response = mls_pb2.BatchQueryCommitLogResponse()
        for item in request.requests:
            descending, limit, cursor = _paging(item.paging_info, default_descending=False)
            page = self.store.commit_log(item.group_id, cursor, descending, limit)
            entry = response.responses.add(group_id=item.group_id)
            for stored in page:
                entry.commit_log_entries.add(
                    sequence_id=stored.sequence_id,
                    serialized_commit_log_entry=stored.entry,
                    signature=stored.signature,
                )
            _fill_paging(entry.paging_info, item.paging_info, limit, page[-1].sequence_id if page else 0)
        return response

    async def fetch_d14n_cutover(
        self, request: empty_pb2.Empty, context: Any
    ) -> migration_pb2.FetchD14nCutoverResponse:
        return migration_pb2.FetchD14nCutoverResponse(timestamp_ns=0)


# --- request/response helpers ---------------------------------------------------------------------

M = TypeVar("M", bound=Message)


def _parse(cls: type[M], raw: bytes, what: str) -> M:
    try:
        parsed: M = cls.FromString(raw)
    except DecodeError as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {what}: {exc}") from exc
    return parsed


def _describe_limit(limit: int) -> str:
    if limit % ONE_MB == 0:
        return f"{limit // ONE_MB} MB ({limit} bytes)"
    return f"{limit} bytes"


def _normalise(kind: int, identifier: str) -> str:
    return identifier.lower() if kind == _KIND_ETHEREUM else identifier


def _member_key(member: identity_pb2.MemberIdentifier) -> tuple[int, str] | None:
    which = member.WhichOneof("kind")
    if which == "ethereum_address":
        return (_KIND_ETHEREUM, member.ethereum_address.lower())
    if which == "passkey":
        return (_KIND_PASSKEY, member.passkey.key.hex())
    return None  # installation keys are not looked up by identifier


def _paging(paging: mls_pb2.PagingInfo, default_descending: bool = True) -> tuple[bool, int, int]:
    if paging.direction == mls_pb2.SORT_DIRECTION_UNSPECIFIED:
        descending = default_descending
    else:
        descending = paging.direction == mls_pb2.SORT_DIRECTION_DESCENDING
    limit = min(paging.limit or DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT)
    return descending, limit, paging.id_cursor


def _fill_paging(out: mls_pb2.PagingInfo, asked: mls_pb2.PagingInfo, limit: int, last_id: int) -> None:
    out.direction = asked.direction
    out.limit = limit
    out.id_cursor = last_id


def _fill_group_message(out: mls_pb2.GroupMessage, stored: StoredGroupMessage, include_data: bool = True) -> None:
    v1 = out.v1
    v1.id = stored.id
    v1.created_ns = stored.created_ns
    v1.group_id = stored.group_id
    if include_data:
        v1.data = stored.data
    v1.sender_hmac = stored.sender_hmac
    v1.should_push = stored.should_push
    v1.is_commit = stored.is_commit


def _group_message(stored: StoredGroupMessage) -> mls_pb2.GroupMessage:
    out = mls_pb2.GroupMessage()
    _fill_group_message(out, stored)
    return out


def _fill_welcome(out: mls_pb2.WelcomeMessage, stored: StoredWelcome) -> None:
    if stored.is_pointer:
        p = out.welcome_pointer
        p.id = stored.id
        p.created_ns = stored.created_ns
        p.installation_key = stored.installation_key
        p.welcome_pointer = stored.data
        p.hpke_public_key = stored.hpke_public_key
        p.wrapper_algorithm = stored.wrapper_algorithm
    else:
        v1 = out.v1
        v1.id = stored.id
        v1.created_ns = stored.created_ns
        v1.installation_key = stored.installation_key
        v1.data = stored.data
        v1.hpke_public_key = stored.hpke_public_key
        v1.wrapper_algorithm = stored.wrapper_algorithm
        v1.welcome_metadata = stored.welcome_metadata


def _welcome(stored: StoredWelcome) -> mls_pb2.WelcomeMessage:
    out = mls_pb2.WelcomeMessage()
    _fill_welcome(out, stored)
    return out


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# --- routing ----------------------------------------------------------------------------------------

_Unary = Callable[[DevnetServer, Any, Any], Awaitable[Message]]
_Streaming = Callable[[DevnetServer, Any, Any], AsyncIterator[Message]]


@dataclass(frozen=True)
class _Rpc:
    request: type[Message]
    impl: _Unary | _Streaming
    streaming: bool = False


_RPCS: dict[str, _Rpc] = {
    f"/{_IDENTITY}/PublishIdentityUpdate": _Rpc(
        identity_pb2.PublishIdentityUpdateRequest, DevnetServer.publish_identity_update
    ),
    f"/{_IDENTITY}/GetIdentityUpdates": _Rpc(identity_pb2.GetIdentityUpdatesRequest, DevnetServer.get_identity_updates),
    f"/{_IDENTITY}/GetInboxIds": _Rpc(identity_pb2.GetInboxIdsRequest, DevnetServer.get_inbox_ids),
    f"/{_IDENTITY}/VerifySmartContractWalletSignatures": _Rpc(
        identity_pb2.VerifySmartContractWalletSignaturesRequest, DevnetServer.verify_smart_contract_wallet_signatures
    ),
    f"/{_MLS}/UploadKeyPackage": _Rpc(mls_pb2.UploadKeyPackageRequest, DevnetServer.upload_key_package),
    f"/{_MLS}/FetchKeyPackages": _Rpc(mls_pb2.FetchKeyPackagesRequest, DevnetServer.fetch_key_packages),
    f"/{_MLS}/SendGroupMessages": _Rpc(mls_pb2.SendGroupMessagesRequest, DevnetServer.send_group_messages),
    f"/{_MLS}/SendWelcomeMessages": _Rpc(mls_pb2.SendWelcomeMessagesRequest, DevnetServer.send_welcome_messages),
    f"/{_MLS}/QueryGroupMessages": _Rpc(mls_pb2.QueryGroupMessagesRequest, DevnetServer.query_group_messages),
    f"/{_MLS}/QueryWelcomeMessages": _Rpc(mls_pb2.QueryWelcomeMessagesRequest, DevnetServer.query_welcome_messages),
    f"/{_MLS}/SubscribeGroupMessages": _Rpc(
        mls_pb2.SubscribeGroupMessagesRequest, DevnetServer.subscribe_group_messages, streaming=True
    ),
    f"/{_MLS}/SubscribeWelcomeMessages": _Rpc(
        mls_pb2.SubscribeWelcomeMessagesRequest, DevnetServer.subscribe_welcome_messages, streaming=True
    ),
    f"/{_MLS}/GetNewestGroupMessage": _Rpc(mls_pb2.GetNewestGroupMessageRequest, DevnetServer.get_newest_group_message),
    f"/{_MLS}/BatchPublishCommitLog": _Rpc(mls_pb2.BatchPublishCommitLogRequest, DevnetServer.batch_publish_commit_log),
    f"/{_MLS}/BatchQueryCommitLog": _Rpc(mls_pb2.BatchQueryCommitLogRequest, DevnetServer.batch_query_commit_log),
    f"/{_MIGRATION}/FetchD14nCutover": _Rpc(empty_pb2.Empty, DevnetServer.fetch_d14n_cutover),
}

IMPLEMENTED_METHODS: tuple[str, ...] = tuple(sorted(_RPCS))
"""Full gRPC method names the devnet serves (``/package.Service/Method``)."""


class _Router(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Routes calls to the table above; records and refuses everything else."""

    def __init__(self, server: DevnetServer) -> None:
        self._server = server

    def service(self, handler_call_details: Any) -> Any:
        method = str(handler_call_details.method)
        rpc = _RPCS.get(method)
        if rpc is None:
            self._server.record_unimplemented(method)
            return None  # gRPC answers UNIMPLEMENTED
        if rpc.streaming:
            return grpc.unary_stream_rpc_method_handler(self._streaming(method, rpc), response_serializer=_serialize)
        return grpc.unary_unary_rpc_method_handler(self._unary(method, rpc), response_serializer=_serialize)

    def _unary(self, method: str, rpc: _Rpc) -> Callable[[bytes, Any], Awaitable[Message]]:
        server = self._server
        impl: _Unary = rpc.impl  # type: ignore[assignment]

        async def handle(raw: bytes, context: Any) -> Message:
            try:
                server.check_rate(context.peer())
                request = _parse(rpc.request, raw, f"{method} request")
                log.debug("%s", method)
                return await impl(server, request, context)
            except RpcError as exc:
                log.info("%s refused: %s %s", method, exc.code.name, exc.message)
                server.refusals.append(Refusal(method, exc.code.name, exc.message))
                await context.abort(exc.code, exc.message)
                raise AssertionError("unreachable") from exc
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                log.exception("%s failed", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"devnet internal error: {exc}")
                raise AssertionError("unreachable") from exc

        return handle

    def _streaming(self, method: str, rpc: _Rpc) -> Callable[[bytes, Any], AsyncIterator[Message]]:
        server = self._server
        impl: _Streaming = rpc.impl  # type: ignore[assignment]

        async def handle(raw: bytes, context: Any) -> AsyncIterator[Message]:
            try:
                server.check_rate(context.peer())
                request = _parse(rpc.request, raw, f"{method} request")
                log.debug("%s opened", method)
                async for item in impl(server, request, context):
                    yield item
            except RpcError as exc:
                log.info("%s ended: %s %s", method, exc.code.name, exc.message)
                server.refusals.append(Refusal(method, exc.code.name, exc.message))
                await context.abort(exc.code, exc.message)
            except asyncio.CancelledError:
                # The client went away or the server is stopping: the stream simply ends. Not
                # re-raised, or gRPC logs every closed stream as an unhandled error.
                log.debug("%s closed", method)
                return
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                log.exception("%s failed", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"devnet internal error: {exc}")

        return handle


def _serialize(message: Message) -> bytes:
    data: bytes = message.SerializeToString()
    return data


@contextlib.asynccontextmanager
async def running_devnet(
    port: int = DEFAULT_PORT,
    *,
    data_dir: Path | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    rate_limit: float | None = None,
    hosts: tuple[str, ...] = DEFAULT_HOSTS,
) -> AsyncIterator[DevnetServer]:
    """Run a devnet for the duration of an ``async with`` block (in memory unless ``data_dir``).

    Example::

        async with running_devnet() as devnet:   # 127.0.0.1 and ::1, port 5556
            ...

    Raises:
        PortInUseError: the port is taken (for example by a devnet the user left running).
    """
    config = DevnetConfig(
        port=port, hosts=hosts, data_dir=data_dir, max_message_bytes=max_message_bytes, rate_limit=rate_limit
    )
    server = DevnetServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
