"""Durable tasks on the in-memory network: exactly-once calls over a lossy network, restarts, progress, partial
results, cancellation and signed receipts."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

import coworker
import coworker.runtime.callee
import coworker.transports.base
from coworker import AsyncAgent, CallContext, MemoryNetwork, Progress, Receipt, RetryPolicy, TaskState, TrustTier
from coworker.core.tasks import TERMINAL, TRANSITIONS, advance, expires_at, state_for_error
from coworker.store.identity import Identity

FAST = RetryPolicy(first=0.05, factor=2.0, maximum=0.4)


# ---- the pure core ---------------------------------------------------------------------------------------

def test_final_states_never_change_and_live_states_can_all_end() -> None:
    for state in TERMINAL:
        assert all(advance(state, event) is None for event in
                   ("accept", "need_input", "resume", "complete", "fail", "cancel", "reject", "expire"))
    for state in (TaskState.SUBMITTED, TaskState.WORKING, TaskState.INPUT_REQUIRED):
        assert advance(state, "complete") == TaskState.COMPLETED  # a result may overtake a lost acknowledgement
        assert advance(state, "expire") == TaskState.EXPIRED
    assert advance(TaskState.WORKING, "accept") is None  # a repeated acknowledgement moves nothing
    assert {end for (_, _), end in TRANSITIONS.items()} == set(TaskState) - {TaskState.SUBMITTED}


def test_errors_map_to_final_states() -> None:
    assert state_for_error("SKILL_FAILED") == TaskState.FAILED
    assert state_for_error("ACCESS_DENIED") == TaskState.REJECTED
    assert state_for_error("INVALID_INPUT") == TaskState.REJECTED
    assert state_for_error("CANCELED") == TaskState.CANCELED


def test_retries_back_off_to_a_maximum_and_never_come_sooner_than_the_last_send_took() -> None:
    policy = RetryPolicy(first=1.0, factor=2.0, maximum=5.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    # never sooner than the copy took to send: its answer comes back through a send as slow
    assert [policy.delay(n, send_took=3.0) for n in range(1, 6)] == [3.0, 3.0, 4.0, 5.0, 5.0]
    assert policy.delay(5, send_took=12.0) == 12.0
    with pytest.raises(ValueError):
        RetryPolicy(first=0)


def test_progress_extends_a_timeout_up_to_the_cap() -> None:
    assert expires_at(100.0, 100.0, 10.0, 50.0) == 110.0
    assert expires_at(100.0, 130.0, 10.0, 50.0) == 140.0  # progress at 130 moved it on
    assert expires_at(100.0, 145.0, 10.0, 50.0) == 150.0  # but never past start + cap
    assert expires_at(100.0, 100.0, None, None) is None


def test_a_receipt_verifies_against_its_provider_and_not_once_changed() -> None:
    provider, other = Identity.generate(), Identity.generate()
    receipt = Receipt(task_id="a" * 32, caller=other.address, provider=provider.address, skill="echo",
                      version="1.0.0", status="completed", started_at=1.5, duration_ms=2.0, input_bytes=10,
                      output_bytes=20)
    signed = dataclasses.replace(receipt, signature=provider.sign_text(receipt.canonical()))
    assert signed.verify(provider.address) and signed.verify()
    assert not signed.verify(other.address)
    assert not dataclasses.replace(signed, duration_ms=1.0).verify(provider.address)
    assert not dataclasses.replace(signed, output_bytes=21).verify()
    forged = dataclasses.replace(receipt, signature=other.sign_text(receipt.canonical()))
    assert not forged.verify(provider.address)
    assert Receipt.from_dict(signed.to_dict()) == signed
    # an ordinary EIP-191 personal signature: any Ethereum tool recovers the provider from it
    recovered = Account.recover_message(encode_defunct(text=receipt.canonical()), signature=signed.signature)
    assert recovered == provider.address
    assert not dataclasses.replace(signed, signature="0x1234").verify()
    with pytest.raises(ValueError, match="not a receipt"):
        Receipt.from_dict({**signed.to_dict(), "duration_ms": "fast"})


# ---- two agents ------------------------------------------------------------------------------------------

async def agents(net: coworker.Network, tmp_path: Path, *, retry: RetryPolicy = FAST,
                 **options: Any) -> tuple[AsyncAgent, AsyncAgent]:
    """alice serves, bob calls; bob is KNOWN to alice."""
    alice = AsyncAgent("alice", network=net, data_dir=tmp_path / "alice", retry=retry, **options)
    bob = AsyncAgent("bob", network=net, data_dir=tmp_path / "bob", retry=retry, **options)
    alice.set_trust(bob.wallet, TrustTier.KNOWN)
    return alice, bob


async def echo_agents(net: coworker.Network, tmp_path: Path, *,
                      retry: RetryPolicy = FAST) -> tuple[AsyncAgent, AsyncAgent]:
    """:func:`agents`, with alice serving ``echo``."""
    alice, bob = await agents(net, tmp_path, retry=retry)

    @alice.skill()
    def echo(text: str) -> str:
        return text

    return alice, bob


@pytest.fixture
async def lossless(tmp_path: Path) -> AsyncIterator[tuple[AsyncAgent, AsyncAgent]]:
    alice, bob = await agents(MemoryNetwork(), tmp_path)
    await alice.start()
    await bob.start()
    yield alice, bob
    for agent in (bob, alice):
        await agent.stop()
        agent.close()


async def test_a_thousand_calls_over_a_lossy_network_all_complete_and_each_skill_runs_once(tmp_path: Path) -> None:
    net = MemoryNetwork(drop=0.2, duplicate=0.2, reorder=True, seed=5)
    alice, bob = await agents(net, tmp_path)
    runs: collections.Counter[str] = collections.Counter()

    @alice.skill()
    def double(n: int, ctx: CallContext) -> int:
        runs[ctx.call_id] += 1
        return 2 * n

    async with alice, bob:
        results = await asyncio.gather(*(bob.call(alice.wallet, "double", {"n": i}, timeout=60)
                                         for i in range(1000)))
        assert results == [2 * i for i in range(1000)]
        assert len(runs) == 1000 and set(runs.values()) == {1}
        assert net.stats["dropped"] > 300 and net.stats["duplicated"] > 300  # the faults did happen
        served = alice.list_tasks(direction="in", limit=2000)
        assert len(served) == 1000 and {t["state"] for t in served} == {"completed"}
        assert {t["task_id"] for t in served} == set(runs)
    for agent in (alice, bob):
        agent.close()


async def test_request_returns_at_once_and_the_task_can_be_followed(
        lossless: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = lossless
    release = asyncio.Event()

    @alice.skill()
    async def slow(text: str) -> str:
        await release.wait()
        return text.upper()

    task_id = await bob.request(alice.wallet, "slow", {"text": "hi"})
    first = bob.get_result(task_id)
    assert (first["task_id"], first["state"], first["result"], first["error"]) == (task_id, "submitted", None, None)
    with pytest.raises(coworker.CallTimeout, match="still"):
        await bob.wait(task_id, timeout=0.01)
    assert bob.get_result(task_id)["state"] in ("submitted", "working")  # waiting less does not end the task
    release.set()
    assert await bob.wait(task_id) == "HI"
    done = bob.get_result(task_id)
    assert (done["state"], done["result"], done["direction"], done["peer"]) == ("completed", "HI", "out",
                                                                                alice.wallet)
    assert [t["task_id"] for t in bob.list_tasks(state="completed")] == [task_id]
    assert alice.get_result(task_id)["direction"] == "in"
    with pytest.raises(coworker.ConfigurationError, match="not a task state"):
        bob.list_tasks(state="done")
    with pytest.raises(coworker.ConfigurationError, match="no task"):
        bob.get_result("f" * 32)


async def test_errors_end_tasks_and_wait_raises_them_as_call_does(lossless: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = lossless

    @alice.skill()
    def fail() -> str:
        raise RuntimeError("out of paper")

    failed = await bob.request(alice.wallet, "fail")
    with pytest.raises(coworker.SkillFailed, match="out of paper"):
        await bob.wait(failed)
    assert bob.get_result(failed)["error"]["code"] == "SKILL_FAILED"
    assert bob.get_result(failed)["state"] == "failed"
    unknown = await bob.request(alice.wallet, "missing")
    with pytest.raises(coworker.SkillNotFound):
        await bob.wait(unknown)
    assert bob.get_result(unknown)["state"] == alice.get_result(unknown)["state"] == "rejected"


async def test_a_canceled_task_stops_the_running_skill(lossless: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = lossless
    started, stopped = asyncio.Event(), asyncio.Event()

    @alice.skill()
    async def forever() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        return "never"

    task_id = await bob.request(alice.wallet, "forever")
    await asyncio.wait_for(started.wait(), 5)
    assert await bob.cancel(task_id)
    assert not await bob.cancel(task_id)  # ended already
    with pytest.raises(coworker.TaskCanceled):
        await bob.wait(task_id)
    await asyncio.wait_for(stopped.wait(), 5)
    assert alice.get_result(task_id)["state"] == "canceled"


async def test_a_call_that_reports_progress_outlives_its_timeout_and_a_silent_one_does_not(
        lossless: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = lossless
    silent_stopped = asyncio.Event()

    @alice.skill()
    async def chatty(seconds: int, ctx: CallContext) -> str:
        for second in range(seconds):
            ctx.progress(second / seconds, f"second {second}")
            await asyncio.sleep(1)  # the skill's own work, not the test waiting
        return "done"

    @alice.skill()
    async def silent(seconds: int) -> str:
        try:
            await asyncio.sleep(seconds)
        finally:
            silent_stopped.set()
        return "done"

    reports: list[Progress] = []
    timeout = 2.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    chatty_call = bob.call(alice.wallet, "chatty", {"seconds": 6}, timeout=timeout, on_progress=reports.append)
    silent_call = bob.call(alice.wallet, "silent", {"seconds": 6}, timeout=timeout)
    outcome, silent_outcome = await asyncio.gather(chatty_call, silent_call, return_exceptions=True)
    assert outcome == "done"
    assert loop.time() - started >= 3 * timeout  # it ran three times its timeout
    assert [r.message for r in reports] == [f"second {s}" for s in range(6)]
    assert isinstance(silent_outcome, coworker.CallTimeout)
    assert "no progress" in str(silent_outcome)
    await asyncio.wait_for(silent_stopped.wait(), 5)  # the callee was told to stop


async def test_progress_cannot_keep_a_call_alive_past_its_cap(lossless: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = lossless

    @alice.skill()
    async def endless(ctx: CallContext) -> str:
        while True:
            ctx.progress(message="still going")
            await asyncio.sleep(0.05)

    with pytest.raises(coworker.CallTimeout, match=r"cap of 0\.5 s"):
        await bob.call(alice.wallet, "endless", timeout=0.3, max_duration=0.5)


async def test_an_async_generator_skill_streams_partial_results_to_a_watcher(
        lossless: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = lossless
    step = asyncio.Event()

    @alice.skill()
    async def count(upto: int) -> AsyncIterator[int]:
        for n in range(upto):
            yield n
            step.clear()
            await step.wait()  # one partial per step of the test

    assert alice.skills["count"].output_schema == {"type": "array", "items": {"type": "integer"}}
    task_id = await bob.request(alice.wallet, "count", {"upto": 3})
    seen: list[int] = []
    async for update in bob.watch(task_id):
        seen.extend(update.partials)
        step.set()
    assert seen == [0, 1, 2]
    assert await bob.wait(task_id) == [0, 1, 2]


async def test_a_skill_that_yields_a_value_against_its_schema_fails(lossless: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = lossless

    @alice.skill()
    async def numbers() -> AsyncIterator[int]:
        yield 1
        yield "two"  # type: ignore[misc]

    with pytest.raises(coworker.SkillFailed, match="partial result 1"):
        await bob.call(alice.wallet, "numbers")


def test_a_plain_generator_is_refused_as_a_skill(tmp_path: Path) -> None:
    agent = AsyncAgent("a", network=MemoryNetwork(), data_dir=tmp_path / "a")

    def numbers() -> Any:
        yield 1

    with pytest.raises(coworker.ConfigurationError, match="must be async"):
        agent.add_skill(numbers)


async def test_both_sides_keep_a_receipt_signed_by_the_provider(lossless: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = lossless

    @alice.skill()
    def echo(text: str) -> str:
        return text

    task_id = await bob.request(alice.wallet, "echo", {"text": "héllo"})
    assert await bob.wait(task_id) == "héllo"
    ours, theirs = bob.get_result(task_id), alice.get_result(task_id)
    assert ours["receipt_valid"] is True
    assert ours["receipt"] == theirs["receipt"]
    receipt = Receipt.from_dict(ours["receipt"])
    assert (receipt.caller, receipt.provider, receipt.skill, receipt.version, receipt.status) == (
        bob.wallet, alice.wallet, "echo", "1.0.0", "completed")
    assert receipt.input_bytes == len('{"text":"héllo"}'.encode()) and receipt.output_bytes == len('"héllo"'.encode())
    assert receipt.verify(alice.wallet)
    assert not dataclasses.replace(receipt, skill="summarize").verify(alice.wallet)
    assert not receipt.verify(bob.wallet)


async def test_a_pending_request_survives_a_caller_restart(tmp_path: Path) -> None:
    net = MemoryNetwork(drop=1.0)  # nothing gets through until the caller has restarted
    alice, bob = await agents(net, tmp_path)
    runs: list[str] = []

    @alice.skill()
    def echo(text: str) -> str:
        runs.append(text)
        return text

    await alice.start()
    task_id = await bob.request(alice.wallet, "echo", {"text": "kept"})
    await bob.stop()
    bob.close()
    assert net.stats["dropped"] >= 1
    net.drop = 0.0
    again = AsyncAgent("bob", network=net, data_dir=tmp_path / "bob", retry=FAST)
    async with again:
        assert again.get_result(task_id)["state"] == "submitted"
        assert await again.wait(task_id, timeout=10) == "kept"
        assert again.get_result(task_id)["result"] == "kept"
    await alice.stop()
    assert runs == ["kept"]
    for agent in (alice, again):
        agent.close()


async def test_a_task_interrupted_by_a_callee_restart_runs_again_and_completes_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("coworker.runtime.taskset.SHUTDOWN_GRACE", 0.05)
    net = MemoryNetwork()
    alice, bob = await agents(net, tmp_path)
    attempts: list[int] = []
    completed: list[int] = []
    first_started, release = asyncio.Event(), asyncio.Event()

    async def work(ctx: CallContext) -> int:
        attempts.append(ctx.attempt)
        first_started.set()
        await release.wait()
        completed.append(ctx.attempt)
        return ctx.attempt

    alice.add_skill(work)
    async with bob:
        await alice.start()
        task_id = await bob.request(alice.wallet, "work")
        await asyncio.wait_for(first_started.wait(), 5)
        await alice.stop()  # the skill is cancelled mid-task; the task stays working
        alice.close()
        assert attempts == [1] and completed == []
        restarted = AsyncAgent("alice", network=net, data_dir=tmp_path / "alice", retry=FAST)
        restarted.add_skill(work)
        release.set()
        async with restarted:
            assert await bob.wait(task_id, timeout=10) == 2
            served = restarted.get_result(task_id)
            assert (served["state"], served["attempts"]) == ("completed", 2)
        restarted.close()
    assert attempts == [1, 2] and completed == [2]
    bob.close()


async def test_a_peer_that_never_answers_expires_the_task(tmp_path: Path) -> None:
    net = MemoryNetwork(drop=1.0)
    alice, bob = await agents(net, tmp_path)
    async with alice, bob:
        with pytest.raises(coworker.CallTimeout, match=r"did not answer call\.request within 0\.3 s"):
            await bob.call(alice.wallet, "anything", timeout=0.3)
        (task,) = bob.list_tasks()
        assert task["state"] == "expired" and task["error"]["code"] == "TIMEOUT"
    for agent in (alice, bob):
        agent.close()


async def test_a_call_whose_awaiting_coroutine_is_cancelled_cancels_the_task(
        lossless: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = lossless
    started, stopped = asyncio.Event(), asyncio.Event()

    @alice.skill()
    async def wait_forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    call = asyncio.ensure_future(bob.call(alice.wallet, "wait_forever"))
    await asyncio.wait_for(started.wait(), 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(stopped.wait(), 5)
    (task,) = bob.list_tasks()
    assert task["state"] == "canceled"


class _SlowSendNetwork(coworker.Network):
    """A memory network whose sends return only after the next message has reached the sender: an answer
    always arrives while the request's send is still being awaited (as on XMTP, where a send takes as long
    as a round trip)."""

    name = "slow-send"

    def __init__(self) -> None:
        self.inner = MemoryNetwork()

    async def open(self, identity: Identity, data_dir: Path, deliver: Any) -> coworker.transports.base.Transport:
        arrived = asyncio.Event()

        def on_message(incoming: Any) -> None:
            arrived.set()
            deliver(incoming)

        inner = await self.inner.open(identity, data_dir, on_message)

        class Transport(coworker.transports.base.Transport):
            async def send(self, recipient: str, data: bytes) -> None:
                arrived.clear()
                await inner.send(recipient, data)
                if b'"call.request"' in data:
                    await asyncio.wait_for(arrived.wait(), 5)

            async def close(self) -> None:
                await inner.close()

        return Transport()


async def test_an_answer_that_arrives_while_the_request_is_still_being_sent_ends_the_call(tmp_path: Path) -> None:
    net = _SlowSendNetwork()
    slow_retries = RetryPolicy(first=30.0, maximum=30.0)  # a missed wake-up would wait 30 s, past the timeout
    alice, bob = await echo_agents(net, tmp_path, retry=slow_retries)
    async with alice, bob:
        task_id = await bob.request(alice.wallet, "echo", {"text": "quick"})
        assert await bob.wait(task_id, timeout=3) == "quick"  # not after the next copy, 30 s away
    for agent in (alice, bob):
        agent.close()


class _LateAnswerNetwork(coworker.Network):
    """A memory network on which the caller's second copy of its request is sent only when the test releases it:
    the callee's answer (its skill waits for that copy to be under way) arrives while a copy that nobody needs any
    more is still being sent (as on a loaded XMTP sidecar, where a send waits seconds in its queue)."""

    name = "late-answer"

    def __init__(self) -> None:
        self.inner = MemoryNetwork()
        self.copies = 0
        self.second_copy_sending = asyncio.Event()
        self.release = asyncio.Event()
        self.second_copy_ended = asyncio.Event()
        self.second_copy: str | None = None  # how its send ended: "sent" or "abandoned"

    async def open(self, identity: Identity, data_dir: Path, deliver: Any) -> coworker.transports.base.Transport:
        inner, network = await self.inner.open(identity, data_dir, deliver), self

        class Transport(coworker.transports.base.Transport):
            async def send(self, recipient: str, data: bytes) -> None:
                if b'"call.request"' in data:
                    network.copies += 1
                    if network.copies == 2:
                        await network._send_second_copy()
                await inner.send(recipient, data)

            async def close(self) -> None:
                await inner.close()

        return Transport()

    async def _send_second_copy(self) -> None:
        self.second_copy_sending.set()
        try:
            await self.release.wait()
            self.second_copy = "sent"
        except asyncio.CancelledError:
            self.second_copy = "abandoned"
            raise
        finally:
            self.second_copy_ended.set()


async def test_an_answer_that_arrives_while_a_later_copy_is_being_sent_ends_the_call_and_the_copy_still_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The callee acknowledges at once, so the caller, having heard from it, sends its next copy on the retry
    # schedule (a peer that said nothing since the last copy would be probed instead: see test_retry_storms).
    monkeypatch.setattr(coworker.runtime.callee, "ACK_AFTER", 0.0)
    net = _LateAnswerNetwork()
    alice, bob = await agents(net, tmp_path)

    @alice.skill()
    async def echo(text: str) -> str:
        await net.second_copy_sending.wait()
        return text

    async with alice, bob:
        task_id = await bob.request(alice.wallet, "echo", {"text": "quick"})
        # The call ends with its answer, not once the copy nobody needs has been sent (it never is, here).
        assert await bob.wait(task_id, timeout=5) == "quick"
        assert bob.get_result(task_id)["state"] == "completed"
        assert net.second_copy is None
        net.release.set()
        await asyncio.wait_for(net.second_copy_ended.wait(), 5)
        # Nor was it cut short: a transport may send a copy whose sender stopped waiting for it all the same,
        # so a driver that abandoned its copies would pile them up.
        assert net.second_copy == "sent"
        assert net.copies == 2
    for agent in (alice, bob):
        agent.close()


async def test_a_caller_may_choose_the_task_id_and_cannot_use_it_twice(
        lossless: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = lossless

    @alice.skill()
    def echo(text: str) -> str:
        return text

    chosen = "0123456789abcdef" * 2
    assert await bob.request(alice.wallet, "echo", {"text": "once"}, task_id=chosen) == chosen
    assert await bob.wait(chosen) == "once"
    with pytest.raises(coworker.ConfigurationError, match="exists already"):
        await bob.request(alice.wallet, "echo", {"text": "twice"}, task_id=chosen)
    with pytest.raises(coworker.ConfigurationError, match="32 lower-case hex"):
        await bob.request(alice.wallet, "echo", {"text": "x"}, task_id="not-an-id")


async def test_a_closed_agent_says_so_when_started_again(tmp_path: Path) -> None:
    agent = AsyncAgent("a", network=MemoryNetwork(), data_dir=tmp_path / "a")
    agent.close()
    with pytest.raises(coworker.StoreError, match="was closed"):
        await agent.start()


async def test_a_result_too_large_to_send_fails_the_task_on_both_sides(
        lossless: tuple[AsyncAgent, AsyncAgent]) -> None:
    alice, bob = lossless

    @alice.skill()
    def huge() -> str:
        return "x" * 1_100_000

    task_id = await bob.request(alice.wallet, "huge")
    with pytest.raises(coworker.SkillFailed, match="over the 1000000-byte message limit"):
        await bob.wait(task_id)
    served = alice.get_result(task_id)
    assert (served["state"], served["result"], served["receipt"]["status"]) == ("failed", None, "failed")
    assert bob.get_result(task_id)["receipt_valid"] is True
