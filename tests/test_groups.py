"""Groups on the in-memory network: the API, trust (membership grants none), removal, and posts that are dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from coworker import AccessDenied, AsyncAgent, ConfigurationError, MemoryNetwork, Network, TrustTier
from coworker.core import groups as posts
from coworker.core.groups import GroupPost
from coworker.transports.base import Incoming, Sender

BOUND = 15.0  # seconds any wait here may take at most (over XMTP too)


@pytest.fixture
def group_network() -> Network:
    """The network the group tests run on (tests/test_groups_xmtp.py runs them over XMTP)."""
    return MemoryNetwork()


@pytest.fixture
async def four(group_network: Network, tmp_path: Path) -> AsyncIterator[tuple[AsyncAgent, ...]]:
    """A, B, C, D on one network; B and C trust A (KNOWN), D does not; each serves one skill."""
    net = group_network
    agents = tuple(AsyncAgent(n, network=net, data_dir=tmp_path / n) for n in ("a", "b", "c", "d"))
    a, b, c, d = agents
    for agent, skill in ((b, "research"), (c, "analyze"), (d, "secret")):
        def run(text: str, _skill: str = skill) -> str:
            return f"{_skill}: {text}"
        agent.add_skill(run, name=skill)
    for agent in agents:
        await agent.start()
    for member in (b, c, d):
        member.set_trust(a.wallet, TrustTier.KNOWN if member is not d else TrustTier.UNTRUSTED)
        a.set_trust(member.wallet, TrustTier.KNOWN)
    yield agents
    for agent in agents:
        await agent.stop()


async def until(agents: tuple[AsyncAgent, ...], condition: Callable[[], bool]) -> None:
    """Wait (bounded) until ``condition()`` holds, checking it whenever one of ``agents`` journals a message (an
    invitation or a post is journaled once decided)."""
    changed = asyncio.Event()
    journals = [agent.journal for agent in agents if agent.journal is not None]
    for journal in journals:
        journal.add_listener(changed.set)
    try:
        async with asyncio.timeout(BOUND):
            while not condition():
                await changed.wait()
                changed.clear()
    finally:
        for journal in journals:
            journal.remove_listener(changed.set)


def test_a_post_reads_as_text_first_and_parses_back() -> None:
    data = posts.post("discover", post_id="ab" * 16, sender="0x" + "1" * 40, sender_name="alice\nbob",
                      group="g1", now_ms=1000, ttl_ms=5000)
    text, machine = data.decode().split("\n")
    assert text == "alice bob asks the members of this group which skills they offer"
    assert machine == ('coworker-group 1 {"type":"discover","id":"' + "ab" * 16 + '","from":"0x' + "1" * 40
                       + '","group":"g1","ts":1000,"exp":6000}')
    assert posts.is_post(data)
    assert posts.parse(data) == GroupPost("discover", "ab" * 16, "0x" + "1" * 40, "g1", 1000, 6000)
    assert posts.parse(data.replace(b"discover", b"call")) == "unknown group post type 'call'"
    assert str(posts.parse(data.replace(b'"ts"', b'"ts2"'))).startswith("the machine line")
    assert posts.parse(b"hello everyone") == "a group post ends with its machine line"
    assert "at most" in str(posts.parse(b"x" * 5000))
    assert posts.coworker_version(posts.app_data("1.2.3")) == "1.2.3"
    assert posts.coworker_version("a human's app data") is None


async def test_discover_from_a_group_shows_each_members_skills_as_its_trust_of_the_asker_allows(
        four: tuple[AsyncAgent, ...]) -> None:
    a, b, c, d = four
    group = await a.create_group("research", [b.wallet, c.wallet, d.wallet], description="papers on MLS")
    await until(four, lambda: all(m.store.group(group.id) is not None for m in (b, c, d)))
    assert sorted(await group.members()) == sorted([a.wallet, b.wallet, c.wallet, d.wallet])
    assert [(g.id, g.state) for g in b.groups()] == [(group.id, "joined")]
    assert b.groups()[0].inviter == a.wallet and b.groups()[0].description == "papers on MLS"
    assert d.groups()[0].state == "ignored"  # D holds A as a stranger: it does not even read the group
    peers = await group.discover(timeout=0.5)
    assert {w: p.skills for w, p in peers.items()} == {b.wallet: ["research"], c.wallet: ["analyze"], d.wallet: []}
    assert peers[d.wallet].name == ""  # no answer from D
    sent = [e for e in a.journal.entries() if e.kind == "group.discover"]  # type: ignore[union-attr]
    assert len(sent) == 1 and sent[0].verdict == "sent"  # one post for every member


async def test_a_member_that_no_longer_trusts_the_asker_answers_with_no_skills(four: tuple[AsyncAgent, ...]) -> None:
    a, b, c, _d = four
    group = await a.create_group("research", [b.wallet, c.wallet])
    await until(four, lambda: c.store.group(group.id) is not None)
    c.set_trust(a.wallet, TrustTier.UNTRUSTED)  # joined while it trusted A; membership keeps no trust
    peers = await group.discover(timeout=BOUND)
    assert {w: (p.name, p.skills) for w, p in peers.items()} == {b.wallet: ("b", ["research"]), c.wallet: ("c", [])}


async def test_a_group_call_is_an_ordinary_task_over_the_pairs_dm(four: tuple[AsyncAgent, ...]) -> None:
    a, b, c, d = four
    group = await a.create_group("work", [b.wallet, c.wallet])
    await until(four, lambda: c.store.group(group.id) is not None)
    assert await group.call(b.wallet, "research", {"text": "MLS"}) == "research: MLS"
    task_id = await group.request(c.wallet, "analyze", {"text": "x"})
    assert await a.wait(task_id, timeout=BOUND) == "analyze: x"
    seen_by_c = [e for e in c.journal.entries() if e.task_id is not None]  # type: ignore[union-attr]
    assert {e.task_id for e in seen_by_c} == {task_id}  # C saw only its own task, nothing of A's call to B
    with pytest.raises(AccessDenied):
        await group.call(d.wallet, "secret", {"text": "x"})  # not a member: refused here, nothing sent


async def test_an_invitation_from_a_stranger_is_ignored_and_nothing_in_that_group_is_read(
        four: tuple[AsyncAgent, ...]) -> None:
    _a, b, c, d = four
    group = await d.create_group("spam", [b.wallet, c.wallet])  # b and c hold d as a stranger
    await until(four, lambda: b.store.group(group.id) is not None and c.store.group(group.id) is not None)
    assert b.groups()[0].state == "ignored" and b.groups()[0].inviter == d.wallet
    peers = await group.discover(timeout=0.5)
    assert {w: p.skills for w, p in peers.items()} == {b.wallet: [], c.wallet: []}
    assert all(p.name == "" for p in peers.values())  # nobody answered: the posts were not even delivered
    with pytest.raises(ConfigurationError):
        await b.group(group.id).members()


async def test_a_removed_member_receives_nothing_posted_after_and_cannot_be_called(
        four: tuple[AsyncAgent, ...]) -> None:
    a, b, c, _d = four
    group = await a.create_group("work", [b.wallet, c.wallet])
    await until(four, lambda: c.store.group(group.id) is not None)
    await group.remove(c.wallet)
    assert c.wallet not in await group.members()
    before = len([e for e in c.journal.entries() if e.kind.startswith("group.")])  # type: ignore[union-attr]
    peers = await group.discover(timeout=BOUND)
    assert list(peers) == [b.wallet]
    assert len([e for e in c.journal.entries() if e.kind.startswith("group.")]) == before  # type: ignore[union-attr]
    with pytest.raises(AccessDenied):
        await group.call(c.wallet, "analyze", {"text": "x"})
    with pytest.raises(ConfigurationError, match="removed"):
        await c.group(group.id).members()
    assert c.groups()[0].state == "removed"


async def test_a_member_that_leaves_is_gone_at_once(four: tuple[AsyncAgent, ...]) -> None:
    a, b, c, _d = four
    group = await a.create_group("work", [b.wallet, c.wallet])
    await until(four, lambda: b.store.group(group.id) is not None)
    await b.group(group.id).leave()
    assert b.groups()[0].state == "left"  # nothing in it is read from now on
    with pytest.raises(ConfigurationError, match="left"):
        await b.group(group.id).members()
    # the admin's member list drops b: at once in memory; over XMTP when a's sidecar reads b's request (ms)
    async with asyncio.timeout(BOUND):
        while b.wallet in await group.members():  # noqa: ASYNC110 (a's sidecar tells nobody when it removed b)
            await asyncio.sleep(0.05)
    assert sorted(await group.members()) == sorted([a.wallet, c.wallet])


async def test_a_post_from_a_non_member_or_a_forged_sender_is_dropped_with_the_reason(
        four: tuple[AsyncAgent, ...]) -> None:
    a, b, c, d = four
    group = await a.create_group("work", [b.wallet])
    await until(four, lambda: b.store.group(group.id) is not None)
    runtime = b._runtime
    assert runtime is not None
    now = runtime._link.now_ms()
    for sender, name in ((d.wallet, "d"), (c.wallet, "c-claiming-d")):
        data = posts.post("discover", post_id=f"{now:032x}"[-32:], sender=d.wallet, sender_name=name,
                          group=group.id, now_ms=now, ttl_ms=60_000)
        runtime._deliver(Incoming(Sender(f"memory:{sender}", frozenset({sender.lower()})), data, group.id))
        now += 1
    await until(four, lambda: len([e for e in b.journal.entries() if e.kind == "group.post"]) == 2)  # type: ignore[union-attr]
    reasons = [e.reason for e in b.journal.entries() if e.kind == "group.post"]  # type: ignore[union-attr]
    assert reasons == ["the sender is not a member of the group",
                       "SENDER_MISMATCH: the post names another sender than the network"]


async def test_creating_a_group_needs_another_member(four: tuple[AsyncAgent, ...]) -> None:
    a = four[0]
    with pytest.raises(ConfigurationError):
        await a.create_group("alone", [a.wallet])
    with pytest.raises(ConfigurationError):
        await a.create_group("bad", ["not-a-wallet"])
