"""Fixtures for the devnet integration tests: a live devnet on port 5556 and Node SDK clients.

``devnet`` is module-scoped (one in-memory node per test module; each test uses fresh wallets).
``xmtp_clients`` starts ``node/driver.mjs`` processes whose databases live in the test's tmp dir.
Both fail loudly rather than share state: a devnet the user left running on 5556 fails the
fixture, and any UNIMPLEMENTED call a client made fails the module at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from coworker.devnet import DevnetServer, PortInUseError, running_devnet
from coworker.transports.xmtp.driver import NodeDriver

from ..conftest import require_node_sdk


def assert_no_unimplemented_calls(server: DevnetServer) -> None:
    """The contract check: the clients used no RPC that the devnet lacks."""
    assert not server.unimplemented_calls, (
        f"clients called RPCs the devnet does not implement: {sorted(set(server.unimplemented_calls))}"
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def devnet() -> AsyncIterator[DevnetServer]:
    """An in-memory devnet on 127.0.0.1 and ::1, port 5556, for one test module."""
    require_node_sdk()
    try:
        async with running_devnet() as server:
            yield server
            assert_no_unimplemented_calls(server)
    except PortInUseError as exc:
        pytest.fail(f"{exc}. The devnet tests need port 5556 (the Node SDK's fixed local address).")


@dataclass
class Client:
    """A Node SDK client in its own process, with the wallet and inbox it was created with."""

    driver: NodeDriver
    address: str
    private_key: str
    inbox_id: str
    installation_id: str
    db_path: Path

    async def request(self, cmd: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        """Run one driver command (see node/driver.mjs)."""
        return await self.driver.request(cmd, timeout, **args)


NewClient = Callable[..., Awaitable[Client]]


@pytest_asyncio.fixture(loop_scope="module")
async def xmtp_clients(tmp_path: Path) -> AsyncIterator[NewClient]:
    """A factory of clients: ``await xmtp_clients("alice", private_key=None, stream=True)``."""
    drivers: list[NodeDriver] = []
    counter = 0

    async def new_client(name: str, private_key: str | None = None, stream: bool = True) -> Client:
        nonlocal counter
        counter += 1
        driver = await NodeDriver.start(name)
        drivers.append(driver)
        db_path = tmp_path / f"{name}-{counter}.db3"
        args: dict[str, Any] = {"env": "local", "dbPath": str(db_path)}
        if private_key is not None:
            args["privateKey"] = private_key
        info = await driver.request("create", 60.0, **args)
        if stream:
            await driver.request("stream")
        return Client(driver, info["address"], info["privateKey"], info["inboxId"], info["installationId"], db_path)

    try:
        yield new_client
    finally:
        for driver in drivers:
            await driver.close()
