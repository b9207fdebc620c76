"""The devnet without Node: wire parsing, storage, and the gRPC surface driven by a Python client."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from coworker.devnet import DevnetConfig, DevnetServer, PortInUseError
from coworker.devnet._cli import register
from coworker.devnet._gen import mls_pb2
from coworker.devnet._limits import RateLimiter
from coworker.devnet._store import DB_FILENAME, NewGroupMessage, Store
from coworker.devnet._wire import WireFormatError, key_package_installation_key, mls_message_info

MLS = "/xmtp.mls.api.v1.MlsApi"
IDENTITY = "/xmtp.identity.api.v1.IdentityApi"


def vec(data: bytes) -> bytes:
    """An MLS variable-length vector (1-, 2- or 4-byte QUIC-style length prefix)."""
    n = len(data)
    if n < 0x40:
        return bytes([n]) + data
    if n < 0x4000:
        return (0x4000 | n).to_bytes(2, "big") + data
    return (0x80000000 | n).to_bytes(4, "big") + data


def key_package(signature_key: bytes) -> bytes:
    return b"\x00\x01" + b"\x00\x01" + vec(b"i" * 32) + vec(b"e" * 32) + vec(signature_key) + b"rest of the leaf"


def private_message(group_id: bytes, content_type: int = 1, body: bytes = b"ciphertext") -> bytes:
    return b"\x00\x01\x00\x02" + vec(group_id) + (7).to_bytes(8, "big") + bytes([content_type]) + vec(b"") + body


# --- wire -----------------------------------------------------------------------------------------


def test_key_package_yields_its_leaf_signature_key_as_installation_key() -> None:
    assert key_package_installation_key(key_package(b"K" * 32)) == b"K" * 32
    long_key = b"L" * 300  # a two-byte length prefix
    assert key_package_installation_key(key_package(long_key)) == long_key


def test_private_and_public_messages_yield_group_epoch_and_commit_flag() -> None:
    info = mls_message_info(private_message(b"group-1", content_type=3))
    assert (info.group_id, info.epoch, info.is_commit) == (b"group-1", 7, True)
    assert not mls_message_info(private_message(b"group-1", content_type=1)).is_commit
    public = b"\x00\x01\x00\x01" + vec(b"g2") + (1).to_bytes(8, "big") + b"\x01" + (0).to_bytes(4, "big")
    public += vec(b"aad") + b"\x03" + b"..."
    info = mls_message_info(public)
    assert (info.group_id, info.epoch, info.is_commit) == (b"g2", 1, True)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00\x01", b"\x00\x01\x00\x02\x05ab", b"\x00\x01\x00\x05" + vec(b"g") + bytes(9), b"\x00\x01\x00\x02\xc0"],
)
def test_truncated_or_foreign_mls_messages_raise_a_wire_format_error(payload: bytes) -> None:
    with pytest.raises(WireFormatError):
        mls_message_info(payload)


def test_truncated_key_package_raises_a_wire_format_error() -> None:
    with pytest.raises(WireFormatError):
        key_package_installation_key(key_package(b"K" * 32)[:40])


# --- store and limits -----------------------------------------------------------------------------


def test_store_file_is_private_and_keeps_messages_across_reopen(tmp_path: Path) -> None:
    store = Store.in_dir(tmp_path)
    stored = store.add_group_messages([NewGroupMessage(b"g", b"one", b"", True, False)], now_ns=5)
    assert store.add_group_messages([NewGroupMessage(b"g", b"one", b"", True, False)], now_ns=6) == []
    store.close()
    assert (tmp_path / DB_FILENAME).stat().st_mode & 0o777 == 0o600
    reopened = Store.in_dir(tmp_path)
    assert reopened.group_messages(b"g", 0, False, 100, 1 << 20) == stored
    assert reopened.counts().messages == 1
    reopened.close()


def test_rate_limiter_refuses_a_burst_and_refills_with_time() -> None:
    limiter = RateLimiter(rate=2.0)
    assert [limiter.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("b", 0.0)
    assert limiter.allow("a", 0.5)


# --- gRPC -------------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def server() -> AsyncIterator[DevnetServer]:
    async with DevnetServer(DevnetConfig(port=0, hosts=("127.0.0.1",), max_message_bytes=1000)) as devnet:
        yield devnet


@pytest_asyncio.fixture
async def channel(server: DevnetServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        yield chan


async def call(channel: grpc.aio.Channel, method: str, request: bytes) -> bytes:
    rpc = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    response: bytes = await rpc(request, timeout=10)
    return response


async def send(channel: grpc.aio.Channel, *payloads: bytes) -> None:
    request = mls_pb2.SendGroupMessagesRequest()
    for payload in payloads:
        request.messages.add().v1.data = payload
    await call(channel, f"{MLS}/SendGroupMessages", request.SerializeToString())


async def test_malformed_request_is_invalid_argument_and_the_server_keeps_serving(
    server: DevnetServer, channel: grpc.aio.Channel
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as garbage:
        await call(channel, f"{MLS}/QueryGroupMessages", b"\xff\xff\xff")
    assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as not_mls:
        await send(channel, b"not an MLS message")
    assert not_mls.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await send(channel, private_message(b"g"))
    assert server.status().counts.messages == 1


async def test_oversize_message_is_refused_with_a_status_that_names_the_limit(
    server: DevnetServer, channel: grpc.aio.Channel
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await send(channel, private_message(b"g", body=b"x" * 2000))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 1000 bytes" in (refused.value.details() or "")
    await send(channel, private_message(b"g"))


async def test_default_limit_is_one_megabyte_and_named_so() -> None:
    async with (
        DevnetServer(DevnetConfig(port=0, hosts=("127.0.0.1",))) as devnet,
        grpc.aio.insecure_channel(f"127.0.0.1:{devnet.port}") as chan,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await send(chan, private_message(b"g", body=b"x" * (1024 * 1024)))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1 MB" in (refused.value.details() or "")


async def test_unknown_method_is_unimplemented_and_recorded(server: DevnetServer, channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await call(channel, f"{MLS}/RegisterInstallation", b"")
    assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert server.unimplemented_calls == [f"{MLS}/RegisterInstallation"]


async def test_query_pages_ascending_and_descending_with_the_last_id_as_cursor(
    server: DevnetServer, channel: grpc.aio.Channel
) -> None:
    await send(channel, *(private_message(b"g", body=bytes([i])) for i in range(5)))

    async def page(direction: mls_pb2.SortDirection, limit: int, cursor: int) -> tuple[list[int], int]:
        request = mls_pb2.QueryGroupMessagesRequest(group_id=b"g")
        request.paging_info.direction = direction
        request.paging_info.limit = limit
        request.paging_info.id_cursor = cursor
        raw = await call(channel, f"{MLS}/QueryGroupMessages", request.SerializeToString())
        response = mls_pb2.QueryGroupMessagesResponse.FromString(raw)
        return [m.v1.id for m in response.messages], response.paging_info.id_cursor

    assert await page(mls_pb2.SORT_DIRECTION_ASCENDING, 2, 0) == ([1, 2], 2)
    assert await page(mls_pb2.SORT_DIRECTION_ASCENDING, 2, 2) == ([3, 4], 4)
    assert await page(mls_pb2.SORT_DIRECTION_DESCENDING, 2, 0) == ([5, 4], 4)
    assert await page(mls_pb2.SORT_DIRECTION_DESCENDING, 10, 4) == ([3, 2, 1], 1)


async def test_subscription_sends_headers_at_once_then_replays_and_streams_live(
    server: DevnetServer, channel: grpc.aio.Channel
) -> None:
    await send(channel, private_message(b"g", body=b"old"))
    request = mls_pb2.SubscribeGroupMessagesRequest()
    request.filters.add(group_id=b"g", id_cursor=0)
    stream = channel.unary_stream(
        f"{MLS}/SubscribeGroupMessages",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=mls_pb2.GroupMessage.FromString,
    )(request)
    await asyncio.wait_for(stream.initial_metadata(), 5)
    first = await asyncio.wait_for(stream.read(), 5)
    assert first.v1.id == 1
    await send(channel, private_message(b"g", body=b"new"), private_message(b"other"))
    second = await asyncio.wait_for(stream.read(), 5)
    assert (second.v1.id, second.v1.group_id) == (2, b"g")
    stream.cancel()


async def test_rate_limited_client_gets_resource_exhausted() -> None:
    config = DevnetConfig(port=0, hosts=("127.0.0.1",), rate_limit=1.0)
    async with (
        DevnetServer(config, monotonic=lambda: 0.0) as devnet,
        grpc.aio.insecure_channel(f"127.0.0.1:{devnet.port}") as chan,
    ):
        await call(chan, f"{IDENTITY}/GetInboxIds", b"")
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await call(chan, f"{IDENTITY}/GetInboxIds", b"")
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit" in (limited.value.details() or "")


async def test_taken_port_fails_with_a_clear_error(server: DevnetServer) -> None:
    second = DevnetServer(DevnetConfig(port=server.port, hosts=("127.0.0.1",)))
    with pytest.raises(PortInUseError, match="port is taken"):
        await second.start()


def test_cli_registers_devnet_with_its_four_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="coworker")
    register(parser.add_subparsers())
    args = parser.parse_args(["devnet", "status", "--data-dir", str(tmp_path)])
    assert args.func(args) == 3  # not running
    assert "not running" in capsys.readouterr().out
    for command in ("start", "stop", "run"):
        assert callable(parser.parse_args(["devnet", command]).func)
    args = parser.parse_args(["devnet", "run", "--memory", "--port", "6000", "--rate-limit", "5"])
    assert (args.memory, args.port, args.rate_limit, args.max_message_bytes) == (True, 6000, 5.0, 1024 * 1024)
