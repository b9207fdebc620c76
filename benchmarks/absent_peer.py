"""10,000 live tasks to a peer that is away (issue 12): what the caller sends it meanwhile, and the drain on return.

Two agents: A calls, B serves ``async def echo(text: str)`` and holds A at ``KNOWN`` (its KNOWN budget raised from
50 to 1,000,000 calls/s, and A's budget for replies likewise, as in ``core_roundtrip``: this measures the retry
line, not the rate limiter). Each agent has its own temporary ``data_dir`` (SQLite on). A counting wrapper around
the network records everything A and B hand their transports, by sender, recipient and message type, with the
time: each protocol message (a batch frame counts as its parts) and each transport send (a frame: over XMTP, one
write).

``present`` (the baselines' run, on fresh agents)
    B is there all along; A submits ``tasks`` tasks (``request``, no wait; ``SUBMIT_BATCH`` requests awaited
    together, so that their commits are grouped) and the clock runs until every one completed: the reference for
    the drain.
``absent``
    B starts once (so that the network knows her and keeps her mailbox) and stops; A submits ``tasks`` tasks to
    her, then the run waits until ``absence`` seconds have passed since the first request. What A sent B meanwhile
    is split into the *first copies* (up to the moment the last task's first copy went) and the *background*
    (everything A sent B from then until B returns: probes, and any re-sent copy); the background is given as
    messages (and frames) per second, with the largest number in any one second. Then B starts again and the
    clock runs until every task completed (the *drain*), counting what each side sent meanwhile (copies A sent
    again, answers B sent, duplicates among them).

The old behaviour (each live task re-sends its own copy every ``RetryPolicy.maximum`` seconds) is not run; its
background rate is computed from the policy: ``tasks / maximum`` messages per second.

Targets (information, never an exit status; docs/style.md rule 20), from the issue: at most 1 message/s to the
absent peer in the background, and every task completed within a few minutes of its return on the devnet.

``--network devnet`` runs the same through a local devnet: ``coworker.devnet.running_devnet()`` (port 5556,
loopback) and agents on ``XmtpNetwork("local", start_devnet=False)`` with the write budget raised to 1,000,000
writes per 300 s so that it does not bind (XMTP's limit, the agents' default, is 3,000); needs ``coworker
setup``. ``COWORKER_HOME`` lives in the run's temporary directory.

Run: ``python benchmarks/absent_peer.py`` (``--quick``: 2,000 tasks, 10 s absent, a retry policy of 0.5-2 s;
``--network devnet``, ``--tasks N``, ``--absence S``). Import: ``run()`` returns the figures, ``render()`` formats
them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _siblings import print_figures, sibling  # noqa: E402 (after the path it needs)

DEFAULT_TASKS = 10_000
DEFAULT_ABSENCE_S = 60.0
QUICK_TASKS = 2_000
QUICK_ABSENCE_S = 10.0
QUICK_RETRY = (0.5, 2.0, 2.0)  # first, factor, maximum of the --quick RetryPolicy
SUBMIT_BATCH = 500  # requests awaited together while submitting
BENCH_WRITE_LIMIT = 1_000_000  # writes per 300 s: high enough never to bind here (XMTP production: 3,000)
TARGET_BACKGROUND_PER_S = 1.0
DRAIN_BOUND_S = 1800.0  # a drain that takes longer than this is reported as not finished
PAYLOAD_TEXT = "hello"


# ---- counting what goes on the wire --------------------------------------------------------------------------

@dataclass
class Log:
    """What one sender handed its transport for one recipient: (loop time, message type) per protocol message,
    and the loop time of each transport send (frame)."""

    messages: list[tuple[float, str]] = field(default_factory=list)
    frames: list[float] = field(default_factory=list)

    def between(self, start: float, end: float) -> tuple[collections.Counter[str], int]:
        """Messages by type and frames handed over in [start, end)."""
        kinds = collections.Counter(kind for t, kind in self.messages if start <= t < end)
        return kinds, sum(1 for t in self.frames if start <= t < end)


def _counting_network(inner: Any) -> Any:
    """``inner`` (a Network) with every send recorded in ``network.logs[(sender, recipient)]`` (lower-case)."""
    from coworker import Network
    from coworker.core import batch
    from coworker.transports.base import Transport

    class CountingNetwork(Network):
        def __init__(self) -> None:
            self.inner, self.name = inner, inner.name
            self.logs: dict[tuple[str, str], Log] = collections.defaultdict(Log)
            self.first_copies_done: asyncio.Event | None = None
            self.first_copies: tuple[tuple[str, str], int] | None = None  # (sender, recipient), how many

        async def open(self, identity: Any, data_dir: Path, deliver: Any) -> Transport:
            transport = await inner.open(identity, data_dir, deliver)
            network, me = self, identity.address.lower()

            class CountingTransport(Transport):
                send_policy = transport.send_policy

                async def send(self, recipient: str, data: bytes) -> None:
                    network.record(me, recipient.lower(), data)
                    await transport.send(recipient, data)

                async def close(self) -> None:
                    await transport.close()

            return CountingTransport()

        def record(self, sender: str, recipient: str, data: bytes) -> None:
            now = asyncio.get_running_loop().time()
            log = self.logs[(sender, recipient)]
            log.frames.append(now)
            parts = batch.split(data) if batch.is_frame(data) else [data]
            for part in parts if isinstance(parts, list) else []:
                log.messages.append((now, json.loads(part)["type"]))
            if self.first_copies is not None and self.first_copies_done is not None:
                key, count = self.first_copies
                if key == (sender, recipient) and not self.first_copies_done.is_set() and \
                        sum(1 for _, kind in log.messages if kind == "call.request") >= count:
                    self.first_copies_done.set()

    return CountingNetwork()


# ---- the scenario ------------------------------------------------------------------------------------------

@dataclass
class Pair:
    network: Any
    a: Any
    b: Any

    @property
    def a_to_b(self) -> Log:
        return self.network.logs[(self.a.wallet.lower(), self.b.wallet.lower())]  # type: ignore[no-any-return]

    @property
    def b_to_a(self) -> Log:
        return self.network.logs[(self.b.wallet.lower(), self.a.wallet.lower())]  # type: ignore[no-any-return]

    def close(self) -> None:
        self.a.close()
        self.b.close()


def _pair(inner: Any, data_dir: Path, retry: Any) -> Pair:
    from coworker import AsyncAgent, RateLimit, RateLimits, TrustTier

    network = _counting_network(inner)
    # passphrase="": plain key files, so that COWORKER_PASSPHRASE in the environment does not add scrypt.
    a = AsyncAgent("bench-a", network=network, data_dir=data_dir / "a", passphrase="", retry=retry,
                   rate_limits=RateLimits(replies=RateLimit(1e6, 1e6)))
    b = AsyncAgent("bench-b", network=network, data_dir=data_dir / "b", passphrase="", retry=retry,
                   rate_limits=RateLimits(known=RateLimit(1e6, 1e6)))

    @b.skill()
    async def echo(text: str) -> dict[str, Any]:
        return {"text": text}

    b.set_trust(a.wallet, TrustTier.KNOWN)
    return Pair(network, a, b)


async def _submit(pair: Pair, tasks: int) -> list[str]:
    ids: list[str] = []
    wallet = pair.b.wallet
    for start in range(0, tasks, SUBMIT_BATCH):
        ids += await asyncio.gather(*(pair.a.request(wallet, "echo", {"text": PAYLOAD_TEXT})
                                      for _ in range(start, min(tasks, start + SUBMIT_BATCH))))
    return ids


async def _wait_all(pair: Pair, ids: list[str]) -> bool:
    """Wait until every task ended (bounded); whether all completed with the echo."""
    results = await asyncio.wait_for(asyncio.gather(*(pair.a.wait(t) for t in ids)), DRAIN_BOUND_S)
    return all(r == {"text": PAYLOAD_TEXT} for r in results)


def _kinds(counter: collections.Counter[str]) -> dict[str, int]:
    return dict(sorted(counter.items()))


async def present(inner: Any, data_dir: Path, tasks: int, retry: Any) -> dict[str, Any]:
    """B there all along: seconds until every task completed, from the first request."""
    pair = _pair(inner, data_dir, retry)
    loop = asyncio.get_running_loop()
    try:
        await pair.b.start()
        await pair.a.start()
        try:
            begin = loop.time()
            ids = await _submit(pair, tasks)
            submitted = loop.time()
            ok = await _wait_all(pair, ids)
            done = loop.time()
            sent, frames = pair.a_to_b.between(begin, done + 1e9)
            answers, answer_frames = pair.b_to_a.between(begin, done + 1e9)
        finally:
            await pair.a.stop()
            await pair.b.stop()
    finally:
        pair.close()
    return {"submit_s": submitted - begin, "complete_s": done - begin, "all_completed": ok,
            "a_sent": _kinds(sent), "a_frames": frames, "b_sent": _kinds(answers), "b_frames": answer_frames}


async def absent(inner: Any, data_dir: Path, tasks: int, absence: float, retry: Any) -> dict[str, Any]:
    """B away while A submits and for ``absence`` s from the first request; then B returns and the tasks drain."""
    pair = _pair(inner, data_dir, retry)
    loop = asyncio.get_running_loop()
    figures: dict[str, Any] = {}
    try:
        await pair.b.start()  # B joins once: the network keeps her mailbox
        await pair.b.stop()
        await pair.a.start()
        try:
            pair.network.first_copies = ((pair.a.wallet.lower(), pair.b.wallet.lower()), tasks)
            pair.network.first_copies_done = first_done = asyncio.Event()
            begin = loop.time()
            ids = await _submit(pair, tasks)
            figures["submit_s"] = loop.time() - begin
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first_done.wait(), max(0.0, begin + absence - loop.time()))
            firsts = loop.time() if first_done.is_set() else None
            await asyncio.sleep(max(0.0, begin + absence - loop.time()))  # the absence itself: a benchmark waits
            back = loop.time()
            runtime = pair.a._runtime
            figures["away_before_return"] = dict(runtime._caller.away()) if runtime is not None else {}
            log = pair.a_to_b
            start_bg = firsts if firsts is not None else back
            first_kinds, first_frames = log.between(begin, start_bg)
            bg_kinds, bg_frames = log.between(start_bg, back)
            span = back - start_bg
            per_second = collections.Counter(int(t - start_bg) for t, _ in log.messages if start_bg <= t < back)
            figures.update({
                "absence_s": back - begin,
                "first_copies_s": (firsts - begin) if firsts is not None else None,
                "first_copies": _kinds(first_kinds), "first_copies_frames": first_frames,
                "background_s": span,
                "background": _kinds(bg_kinds), "background_frames": bg_frames,
                "background_per_s": sum(bg_kinds.values()) / span if span > 0 else None,
                "background_frames_per_s": bg_frames / span if span > 0 else None,
                "background_peak_1s": max(per_second.values(), default=0),
            })
            # B returns: the drain
            await pair.b.start()
            started = loop.time()
            figures["b_start_s"] = started - back
            ok = await _wait_all(pair, ids)
            done = loop.time()
            figures["drain_s"] = done - back
            figures["all_completed"] = ok
            resent, resent_frames = log.between(back, done)
            answers, answer_frames = pair.b_to_a.between(back, done)
            figures.update({"drain_a_sent": _kinds(resent), "drain_a_frames": resent_frames,
                            "drain_b_sent": _kinds(answers), "drain_b_frames": answer_frames})
        finally:
            await pair.a.stop()
            await pair.b.stop()
    finally:
        pair.close()
    return figures


@contextlib.contextmanager
def _devnet_environment(home: Path) -> Iterator[None]:
    with sibling("xmtp_calls")._private_environment(home):
        yield


async def run_async(*, network: str = "memory", tasks: int = DEFAULT_TASKS, absence: float = DEFAULT_ABSENCE_S,
                    retry: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """Both runs in this loop; see :func:`run`."""
    from coworker import MemoryNetwork, RetryPolicy

    policy = RetryPolicy(*retry) if retry is not None else RetryPolicy()
    figures: dict[str, Any] = {
        "network": network, "tasks": tasks, "absence_target_s": absence,
        "retry": {"first": policy.first, "factor": policy.factor, "maximum": policy.maximum,
                  "default": retry is None},
        "old_background_per_s": tasks / policy.maximum,
        "environment": {"python": platform.python_version(), "platform": platform.platform(terse=True),
                        "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")},
    }
    with tempfile.TemporaryDirectory(prefix="coworker-bench-") as tmp:
        root = Path(tmp)
        if network == "memory":
            figures["present"] = await present(MemoryNetwork(), root / "present", tasks, policy)
            figures["absent"] = await absent(MemoryNetwork(), root / "absent", tasks, absence, policy)
        elif network == "devnet":
            from coworker.devnet import running_devnet
            from coworker.transports.xmtp.driver import node_sdk_available
            from coworker.transports.xmtp.transport import XmtpNetwork

            if not node_sdk_available():
                return {"skipped": "Node or @xmtp/node-sdk is missing: run `coworker setup`"}
            figures["write_limit"] = BENCH_WRITE_LIMIT
            with _devnet_environment(root / "home"):
                async with running_devnet():
                    def xmtp() -> Any:
                        return XmtpNetwork("local", start_devnet=False, write_limit=BENCH_WRITE_LIMIT)

                    figures["present"] = await present(xmtp(), root / "present", tasks, policy)
                    figures["absent"] = await absent(xmtp(), root / "absent", tasks, absence, policy)
        else:
            raise ValueError(f"unknown network {network!r}: memory or devnet")
    gone = figures["absent"]
    figures["ratios"] = {
        "background_vs_old": (gone["background_per_s"] / figures["old_background_per_s"]
                              if gone["background_per_s"] is not None else None),
        "drain_vs_present": gone["drain_s"] / figures["present"]["complete_s"],
    }
    figures["target"] = {"background_per_s": TARGET_BACKGROUND_PER_S,
                         "met": gone["background_per_s"] is not None
                         and gone["background_per_s"] <= TARGET_BACKGROUND_PER_S}
    return figures


def run(quick: bool = False, **options: Any) -> dict[str, Any]:
    """Run the scenario in a fresh event loop and return its figures.

    Args:
        quick: a smoke run: 2,000 tasks, 10 s away, RetryPolicy(0.5, 2, 2); ``options`` override these.
        network: ``"memory"`` (default) or ``"devnet"`` (XMTP through a local devnet on port 5556).
        tasks: live tasks to the absent peer (default 10,000).
        absence: seconds from the first request until the peer returns (default 60).
        retry: ``(first, factor, maximum)`` of the RetryPolicy of both agents (default: the default policy).

    Returns:
        ``{"present": {...}, "absent": {...}, "old_background_per_s": x, "ratios": {...}, "target": ...,
        "retry": ..., "tasks": n, ...}``; ``{"skipped": why}`` on the devnet without Node or the SDK.
    """
    if quick:
        options = {"tasks": QUICK_TASKS, "absence": QUICK_ABSENCE_S, "retry": QUICK_RETRY, **options}
    return asyncio.run(run_async(**options))


def _fmt_kinds(kinds: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n:,}" for kind, n in kinds.items()) or "nothing"


def render(figures: dict[str, Any]) -> str:
    """The figures as plain text, with the baselines and the ratios."""
    if "skipped" in figures:
        return f"absent_peer: skipped ({figures['skipped']})"
    env, retry, tasks = figures["environment"], figures["retry"], figures["tasks"]
    here, gone, ratios = figures["present"], figures["absent"], figures["ratios"]
    policy = (f"RetryPolicy(first={retry['first']:g}, factor={retry['factor']:g}, maximum={retry['maximum']:g})"
              + (" (the default)" if retry["default"] else " (shortened for --quick)"))
    lines = [
        f"{tasks:,} live tasks to a peer that is away, {figures['network']} network "
        f"(python {env['python']}, {env['cpus']} cpus, {env['date']}); {policy}",
    ]
    if "write_limit" in figures:
        lines.append(f"write budget raised to {figures['write_limit']:,} writes per 300 s per agent so that it does "
                     "not bind (XMTP's own limit, the agents' default: 3,000)")
    first_s = gone["first_copies_s"]
    lines += [
        "",
        f"absent for {gone['absence_s']:.1f} s from the first request (submit took {gone['submit_s']:.1f} s; the "
        f"last first copy went at {first_s:.1f} s)" if first_s is not None else
        f"absent for {gone['absence_s']:.1f} s; NOT every first copy went before the peer returned",
        f"  first copies: {_fmt_kinds(gone['first_copies'])} in {gone['first_copies_frames']:,} transport sends",
        f"  background, {gone['background_s']:.1f} s: {_fmt_kinds(gone['background'])} in "
        f"{gone['background_frames']:,} transport sends = {gone['background_per_s']:.3f} messages/s, "
        f"{gone['background_frames_per_s']:.3f} sends/s (most in any 1 s: {gone['background_peak_1s']})",
        f"  old per-task re-sending ({tasks:,} tasks / {retry['maximum']:g} s gap): "
        f"{figures['old_background_per_s']:,.1f} messages/s;  background x old: {ratios['background_vs_old']:.5f}",
        f"  the caller presumed away, with its live tasks there: {len(gone['away_before_return'])} peer(s), "
        f"{sum(gone['away_before_return'].values()):,} task(s)",
        "",
        f"drain after the return: {gone['drain_s']:.2f} s until every task completed "
        f"({'all completed' if gone['all_completed'] else 'NOT all completed'}; the peer's start took "
        f"{gone['b_start_s']:.2f} s of it)",
        f"  A sent: {_fmt_kinds(gone['drain_a_sent'])} in {gone['drain_a_frames']:,} transport sends",
        f"  B sent: {_fmt_kinds(gone['drain_b_sent'])} in {gone['drain_b_frames']:,} transport sends",
        f"baseline, the peer present all along: {here['complete_s']:.2f} s from the first request until every "
        f"task completed (submit {here['submit_s']:.2f} s; "
        f"{'all completed' if here['all_completed'] else 'NOT all completed'})",
        f"  A sent: {_fmt_kinds(here['a_sent'])} in {here['a_frames']:,};  B sent: {_fmt_kinds(here['b_sent'])} "
        f"in {here['b_frames']:,} transport sends",
        f"drain x present: {ratios['drain_vs_present']:.2f}",
        "",
        f"target background <= {TARGET_BACKGROUND_PER_S:g} message/s to the absent peer: "
        f"{gone['background_per_s']:.3f} -> {'met' if figures['target']['met'] else 'NOT met'} "
        "(information only: this benchmark never fails on it)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python benchmarks/absent_peer.py [--quick] [--json] [--network devnet] [--tasks N] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--network", choices=("memory", "devnet"), default="memory",
                        help="memory (default) or devnet (XMTP through a local devnet on port 5556)")
    parser.add_argument("--tasks", type=int, help=f"live tasks to the absent peer (default {DEFAULT_TASKS:,})")
    parser.add_argument("--absence", type=float,
                        help=f"seconds away from the first request (default {DEFAULT_ABSENCE_S:g})")
    parser.add_argument("--retry", type=float, nargs=3, metavar=("FIRST", "FACTOR", "MAXIMUM"),
                        help="the agents' RetryPolicy (default: the default policy, 2 s x2 up to 30 s)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: {QUICK_TASKS:,} tasks, {QUICK_ABSENCE_S:g} s away, RetryPolicy"
                             f"{QUICK_RETRY}")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of text")
    args = parser.parse_args(argv)
    options: dict[str, Any] = {"network": args.network}
    for key in ("tasks", "absence"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.retry is not None:
        options["retry"] = tuple(args.retry)
    return print_figures("absent_peer", lambda: run(quick=args.quick, **options), render, args.json)


if __name__ == "__main__":
    sys.exit(main())
