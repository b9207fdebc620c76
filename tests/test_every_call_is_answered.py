"""Every accepted call reaches an answer and an end: a number JSON parses as infinity (1e400) is refused at decode,
and a served task that breaks while being finished ends failed and says so, instead of staying ``working`` and
running again on every start (what an attack run found)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

import coworker
from coworker import AsyncAgent, MemoryNetwork, Network, TrustTier
from coworker.core.protocol import decode, encode, new_id, request
from coworker.core.tasks import LIVE
from coworker.store.records import TaskRecord

from .conftest import RawClient

SENDER, RECIPIENT = "0x" + "a" * 40, "0x" + "b" * 40


@pytest.fixture
def network() -> Network:
    return MemoryNetwork()


def call_bytes(sender: str, recipient: str, input: dict[str, Any], *, task: str | None = None,
               replace: tuple[bytes, bytes] | None = None) -> bytes:
    """A call.request; ``replace`` swaps a literal in its bytes (our encoder would never write 1e400)."""
    body: dict[str, Any] = {"skill": "square", "input": input, "task": task or new_id()}
    data = encode(request("call.request", body, sender=sender, recipient=recipient,
                          now_ms=int(time.time() * 1000), ttl_ms=60_000))
    if replace is not None:
        assert data.count(replace[0]) == 1
        data = data.replace(*replace)
    return data


# ---- decode --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("where", "literal"), [
    ("the input", b'"x":1e400'),
    ("the input, negative", b'"x":-1e400'),
    ("the input, just past the largest float", b'"x":1.8e308'),
    ("the input, as 310 digits and a fraction", b'"x":1' + b"0" * 310 + b".5"),
    ("a list deep in the input", b'"x":[1,{"y":[2,1E+400]}]'),
    ("a body field no model reads", b'"x":1.5,"junk":1e999'),
])
def test_decode_refuses_a_number_beyond_a_float_anywhere_in_the_message(where: str, literal: bytes) -> None:
    data = call_bytes(SENDER, RECIPIENT, {"x": 1.5}, replace=(b'"x":1.5', literal))
    with pytest.raises(coworker.RemoteProtocolError, match="out of the range of a 64-bit float") as refused:
        decode(data)
    assert refused.value.code == "INVALID_INPUT"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_decode_refuses_nan_and_infinity_literals(literal: bytes) -> None:
    with pytest.raises(coworker.RemoteProtocolError, match="not UTF-8 JSON"):
        decode(call_bytes(SENDER, RECIPIENT, {"x": 1.5}, replace=(b"1.5", literal)))


def test_decode_keeps_the_largest_finite_float_and_tiny_ones() -> None:
    data = call_bytes(SENDER, RECIPIENT, {"x": 1.5}, replace=(b'"x":1.5', b'"x":1.7976931348623157e308,"y":1e-400'))
    assert decode(data).body["input"] == {"x": 1.7976931348623157e308, "y": 0.0}


# ---- a callee ------------------------------------------------------------------------------------------------

async def serving(network: Network, tmp_path: Path, runs: list[float], *trusted: str) -> AsyncAgent:
    alice = AsyncAgent("alice", network=network, data_dir=tmp_path / "alice")

    @alice.skill()
    def square(x: float) -> float:
        runs.append(x)
        return x * x

    for wallet in trusted:
        alice.set_trust(wallet, TrustTier.KNOWN)
    await alice.start()
    return alice


async def test_a_call_with_1e400_in_its_input_is_refused_and_leaves_no_task(network: Network, raw: RawClient,
                                                                           tmp_path: Path) -> None:
    runs: list[float] = []
    alice = await serving(network, tmp_path, runs, raw.wallet)
    try:
        task = new_id()
        await raw.send(alice.wallet, call_bytes(raw.wallet, alice.wallet, {"x": 1.5}, task=task,
                                                replace=(b'"x":1.5', b'"x":1e400')))
        refused = await raw.receive(timeout=10)
        assert (refused["type"], refused["body"]["code"]) == ("call.error", "INVALID_INPUT")
        assert refused["body"]["task"] == task  # the caller's task is named: it ends rejected, not expired
        assert "out of the range of a 64-bit float" in refused["body"]["message"]
        assert runs == [] and alice.list_tasks(direction="in") == []
        # a finite call of the same peer is served as ever
        await raw.send(alice.wallet, call_bytes(raw.wallet, alice.wallet, {"x": 3.0}))
        answer = await raw.receive(timeout=10)
        assert (answer["type"], answer["body"]["output"]) == ("call.result", 9.0)
    finally:
        await alice.stop()
        alice.close()


async def test_a_task_that_breaks_while_being_finished_ends_failed_and_its_caller_hears_so(
        network: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("receipt builder broke")

    monkeypatch.setattr("coworker.runtime.callee.Callee._receipt", broken)
    bob = AsyncAgent("bob", network=network, data_dir=tmp_path / "bob")
    runs: list[float] = []
    alice = await serving(network, tmp_path, runs, bob.wallet)
    await bob.start()
    try:
        task_id = await bob.request(alice.wallet, "square", {"x": 2.0})
        with pytest.raises(coworker.SkillFailed, match="internal error at the provider") as failed:
            await asyncio.wait_for(bob.wait(task_id), 10)
        assert "receipt builder broke" not in str(failed.value)  # logged by the provider, not sent
        assert bob.get_result(task_id)["state"] == "failed"
        served = alice.get_result(task_id)
        assert (served["state"], served["error"]["code"]) == ("failed", "SKILL_FAILED")
        assert runs == [2.0]
        # ended: a restart does not run it again
        await alice.stop()
        alice.close()
        alice = await serving(network, tmp_path, runs, bob.wallet)
        assert alice.get_result(task_id)["state"] == "failed" and runs == [2.0]
    finally:
        for agent in (bob, alice):
            await agent.stop()
            agent.close()


async def test_a_task_stored_with_an_infinite_input_ends_failed_on_the_next_start_instead_of_running_forever(
        network: Network, raw: RawClient, tmp_path: Path) -> None:
    # What an older agent stored after accepting 1e400: a working task whose receipt cannot be built.
    runs: list[float] = []
    alice = await serving(network, tmp_path, runs, raw.wallet)
    await alice.stop()
    task_id = new_id()
    now = time.time()
    alice.store.add_task(TaskRecord(task_id, "in", raw.wallet, "square", "working", {"x": float("inf")}, now,
                                    version="1.0.0", updated_at=now, last_activity=now, attempts=1))
    alice.close()
    for start in (1, 2):
        alice = await serving(network, tmp_path, runs, raw.wallet)
        try:
            if start == 1:
                answer = await raw.receive(timeout=10)
                assert (answer["type"], answer["body"]["code"], answer["body"]["task"]) == (
                    "call.error", "SKILL_FAILED", task_id)
            assert alice.get_result(task_id)["state"] == "failed"
            assert [t for t in alice.list_tasks(direction="in") if t["state"] in LIVE] == []
        finally:
            await alice.stop()
            alice.close()
    assert runs == [float("inf")]  # run once, on the first start; never again


async def test_a_task_whose_run_breaks_outside_the_skill_ends_failed_with_a_receipt(
        network: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the machinery around the skill broke")

    monkeypatch.setattr("coworker.core.skills.Skill.run", broken)
    bob = AsyncAgent("bob", network=network, data_dir=tmp_path / "bob")
    alice = await serving(network, tmp_path, [], bob.wallet)
    await bob.start()
    try:
        task_id = await bob.request(alice.wallet, "square", {"x": 2.0})
        with pytest.raises(coworker.SkillFailed, match="internal error at the provider"):
            await asyncio.wait_for(bob.wait(task_id), 10)
        assert (alice.get_result(task_id)["state"], bob.get_result(task_id)["receipt_valid"]) == ("failed", True)
    finally:
        for agent in (bob, alice):
            await agent.stop()
            agent.close()
