"""The in-memory network: store-and-forward delivery and seeded fault injection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coworker import ConfigurationError, MemoryNetwork, PeerUnreachable, TransportError
from coworker.store.identity import Identity
from coworker.transports.base import Incoming


async def join(net: MemoryNetwork, tmp_path: Path) -> tuple[Identity, asyncio.Queue[Incoming], object]:
    identity = Identity.generate()
    inbox: asyncio.Queue[Incoming] = asyncio.Queue()
    transport = await net.open(identity, tmp_path, inbox.put_nowait)
    return identity, inbox, transport


async def drain(inbox: asyncio.Queue[Incoming], count: int) -> list[bytes]:
    return [(await asyncio.wait_for(inbox.get(), 5)).data for _ in range(count)]


async def test_messages_arrive_in_order_with_the_authenticated_sender(tmp_path: Path) -> None:
    net = MemoryNetwork()
    a, _, ta = await join(net, tmp_path)
    b, inbox, _ = await join(net, tmp_path)
    for i in range(10):
        await ta.send(b.address, str(i).encode())  # type: ignore[attr-defined]
    first = await asyncio.wait_for(inbox.get(), 5)
    assert first.sender.addresses == frozenset({a.address.lower()})
    assert [first.data, *await drain(inbox, 9)] == [str(i).encode() for i in range(10)]


async def test_messages_for_an_absent_member_wait_for_its_return(tmp_path: Path) -> None:
    net = MemoryNetwork()
    _, _, ta = await join(net, tmp_path)
    b = Identity.generate()
    tb = await net.open(b, tmp_path, lambda m: None)
    await tb.close()
    await ta.send(b.address, b"while away")  # type: ignore[attr-defined]
    inbox: asyncio.Queue[Incoming] = asyncio.Queue()
    await net.open(b, tmp_path, inbox.put_nowait)
    assert await drain(inbox, 1) == [b"while away"]


async def test_unknown_recipients_and_double_joins_are_errors(tmp_path: Path) -> None:
    net = MemoryNetwork()
    a, _, ta = await join(net, tmp_path)
    with pytest.raises(PeerUnreachable):
        await ta.send(Identity.generate().address, b"x")  # type: ignore[attr-defined]
    with pytest.raises(TransportError, match="already connected"):
        await net.open(a, tmp_path, lambda m: None)


async def test_faults_follow_their_rates_and_replay_with_the_same_seed(tmp_path: Path) -> None:
    async def run(seed: int) -> tuple[dict[str, int], list[bytes]]:
        net = MemoryNetwork(drop=0.2, duplicate=0.1, reorder=True, seed=seed)
        _, _, ta = await join(net, tmp_path)
        b, inbox, _ = await join(net, tmp_path)
        for i in range(1000):
            await ta.send(b.address, b"%d" % i)  # type: ignore[attr-defined]
        expected = net.stats["sent"] - net.stats["dropped"] + net.stats["duplicated"]
        return dict(net.stats), await drain(inbox, expected)

    stats, received = await run(7)
    assert 150 < stats["dropped"] < 250
    assert 50 < stats["duplicated"] < 150
    assert len(received) > len(set(received))  # duplicates arrived
    numbers = [int(x) for x in received]
    assert numbers != sorted(numbers)  # and out of order
    assert await run(7) == (stats, received)


async def test_delay_holds_every_message(tmp_path: Path) -> None:
    net = MemoryNetwork(delay=0.05)
    _, _, ta = await join(net, tmp_path)
    b, inbox, _ = await join(net, tmp_path)
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    await ta.send(b.address, b"late")  # type: ignore[attr-defined]
    assert inbox.empty()
    await drain(inbox, 1)
    assert loop.time() - sent_at >= 0.05


@pytest.mark.parametrize("options", [{"drop": 1.5}, {"duplicate": -0.1}, {"delay": -1}])
def test_bad_fault_settings_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        MemoryNetwork(**options)  # type: ignore[arg-type]
