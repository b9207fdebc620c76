"""A devnet stopped and restarted on its SQLite file loses nothing the clients need."""

from __future__ import annotations

from pathlib import Path

import pytest

from coworker.devnet import DevnetConfig, DevnetServer, PortInUseError

from ..conftest import require_node_sdk
from .conftest import NewClient, assert_no_unimplemented_calls

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


async def _start(data_dir: Path) -> DevnetServer:
    server = DevnetServer(DevnetConfig(data_dir=data_dir))
    try:
        await server.start()
    except PortInUseError as exc:
        pytest.fail(f"{exc}. The devnet tests need port 5556 (the Node SDK's fixed local address).")
    return server


async def test_restart_between_two_messages_loses_nothing_and_the_receiver_can_reply(
    tmp_path: Path, xmtp_clients: NewClient
) -> None:
    require_node_sdk()
    data_dir = tmp_path / "devnet"
    server = await _start(data_dir)
    try:
        alice = await xmtp_clients("alice")
        bob = await xmtp_clients("bob")
        dm = await alice.request("newDm", address=bob.address)
        await alice.request("send", conversationId=dm["conversationId"], text="before the restart")
        await bob.driver.wait_message(lambda e: e["text"] == "before the restart", timeout=20)
        stored = server.status().counts
        assert_no_unimplemented_calls(server)

        await server.stop()
        server = await _start(data_dir)
        assert server.status().counts == stored
        assert (data_dir / "devnet.sqlite3").stat().st_mode & 0o777 == 0o600

        await alice.request("send", conversationId=dm["conversationId"], text="after the restart")
        # The live stream reconnects on its own after a retry delay; a sync collects the message at
        # once. The driver reports each message once, whichever path brings it first.
        await bob.request("sync")
        got = await bob.driver.wait_message(lambda e: e["text"] == "after the restart", timeout=20)
        assert got["senderInboxId"] == alice.inbox_id

        await bob.request("send", conversationId=got["conversationId"], text="reply after the restart")
        await alice.request("sync")
        reply = await alice.driver.wait_message(lambda e: e["text"] == "reply after the restart", timeout=20)
        assert reply["senderInboxId"] == bob.inbox_id
        assert_no_unimplemented_calls(server)
    finally:
        await server.stop()
