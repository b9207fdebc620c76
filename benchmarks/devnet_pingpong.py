"""DM ping-pong through the devnet between two real ``@xmtp/node-sdk`` clients: the XMTP reference.

Two ``driver.mjs`` processes (fresh wallets, ``env: "local"``, databases in a temporary directory)
talk through an in-memory devnet on port 5556, driven from this process over their JSON-lines pipes, the
way CoWorker's XMTP transport drives its sidecar:

``round trip``
    ``seq`` times: alice sends ``ping i`` in a DM; bob's live stream delivers it; bob sends ``pong i``;
    alice's stream delivers that. Timed from alice's send command to alice's pong event (p50, p99).
``throughput``
    alice sends ``total`` messages with ``in_flight`` send commands outstanding; timed from the first send
    until bob's stream has delivered the last one (messages/s, end to end).

Also reported: client creation and first-DM times. The XMTP transport's benchmark compares its own figures
with these (same machine, same run). Figures are information only, never an exit status.

Run: ``python benchmarks/devnet_pingpong.py`` (``--quick`` for a smoke run; needs ``coworker setup``
and port 5556 free). Import: ``run()`` returns the figures as a dict, ``render(figures)`` formats them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from coworker.devnet import DevnetServer, running_devnet
from coworker.transports.xmtp.driver import NodeDriver, node_sdk_available

_TIMEOUT_S = 30.0


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


@contextlib.asynccontextmanager
async def _devnet(given: DevnetServer | None) -> AsyncIterator[DevnetServer]:
    """The devnet given, or a fresh in-memory one on port 5556 for the duration of the block."""
    if given is not None:
        yield given
        return
    async with running_devnet() as devnet:
        yield devnet


async def run_async(seq: int = 200, total: int = 300, in_flight: int = 16, warmup: int = 10,
                    devnet: DevnetServer | None = None) -> dict[str, Any]:
    """Run the benchmark; return its figures (milliseconds and messages per second).

    ``devnet``: a running devnet on port 5556 to use (another benchmark's, so that both measure through the same
    node in one run); by default one is started in memory for the run and stopped after it.
    """
    if not node_sdk_available():
        return {"skipped": "Node or @xmtp/node-sdk is missing: run `coworker setup`"}
    figures: dict[str, Any] = {
        "seq": seq,
        "total": total,
        "in_flight": in_flight,
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory(prefix="coworker-bench-") as tmp:
        async with _devnet(devnet) as devnet:
            alice = await NodeDriver.start("alice")
            bob = await NodeDriver.start("bob")
            try:
                started = time.perf_counter()
                await alice.request("create", dbPath=str(Path(tmp) / "alice.db3"))
                figures["client_create_ms"] = (time.perf_counter() - started) * 1000
                peer = await bob.request("create", dbPath=str(Path(tmp) / "bob.db3"))
                await alice.request("stream")
                await bob.request("stream")
                started = time.perf_counter()
                dm = (await alice.request("newDm", address=peer["address"]))["conversationId"]
                figures["first_dm_ms"] = (time.perf_counter() - started) * 1000

                async def round_trip(label: str) -> float:
                    begin = time.perf_counter()
                    await alice.request("send", conversationId=dm, text=json.dumps({"ping": label}))
                    ping = await bob.wait_message(lambda e: e.get("text") == json.dumps({"ping": label}), _TIMEOUT_S)
                    reply = json.dumps({"pong": label})
                    await bob.request("send", conversationId=ping["conversationId"], text=reply)
                    await alice.wait_message(lambda e: e.get("text") == reply, _TIMEOUT_S)
                    return (time.perf_counter() - begin) * 1000

                for i in range(warmup):
                    await round_trip(f"warmup-{i}")
                rtts = [await round_trip(str(i)) for i in range(seq)]
                figures["rtt_p50_ms"] = statistics.median(rtts)
                figures["rtt_p99_ms"] = _percentile(rtts, 0.99)
                figures["rtt_mean_ms"] = statistics.fmean(rtts)

                texts = [json.dumps({"n": i, "burst": True}) for i in range(total)]
                expected = set(texts)
                window = asyncio.Semaphore(in_flight)

                async def send(text: str) -> None:
                    async with window:
                        await asyncio.wait_for(alice.submit("send", conversationId=dm, text=text), _TIMEOUT_S)

                async def receive_all() -> None:
                    while expected:
                        event = await bob.wait_message(lambda e: e.get("text") in expected, _TIMEOUT_S * 2)
                        expected.discard(event["text"])

                begin = time.perf_counter()
                receiving = asyncio.create_task(receive_all())
                try:
                    await asyncio.gather(*(send(t) for t in texts))
                    await receiving
                finally:
                    receiving.cancel()
                elapsed = time.perf_counter() - begin
                figures["messages_per_s"] = total / elapsed
                figures["burst_s"] = elapsed
                figures["unimplemented_calls"] = list(devnet.unimplemented_calls)
                figures["devnet_counts"] = dataclasses.asdict(devnet.status().counts)
            finally:
                await alice.close()
                await bob.close()
    return figures


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark in a fresh event loop; return its figures as a dict."""
    if quick:
        return asyncio.run(run_async(seq=20, total=50, in_flight=8, warmup=3))
    return asyncio.run(run_async())


def render(figures: dict[str, Any]) -> str:
    """Format the figures for a terminal."""
    if "skipped" in figures:
        return f"devnet_pingpong: skipped ({figures['skipped']})"
    return "\n".join(
        [
            "DM ping-pong between two @xmtp/node-sdk 5.5.0 clients through the devnet (loopback)",
            f"  client create      {figures['client_create_ms']:8.1f} ms",
            f"  first DM           {figures['first_dm_ms']:8.1f} ms",
            f"  round trip p50     {figures['rtt_p50_ms']:8.1f} ms   ({figures['seq']} round trips)",
            f"  round trip p99     {figures['rtt_p99_ms']:8.1f} ms",
            f"  throughput         {figures['messages_per_s']:8.1f} messages/s"
            f"   ({figures['total']} messages, {figures['in_flight']} in flight)",
            f"  unimplemented RPCs {figures['unimplemented_calls'] or 'none'}",
        ]
    )


def main() -> None:
    """Command line: ``python benchmarks/devnet_pingpong.py [--quick] [--json]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = run(quick=args.quick)
    print(json.dumps(figures, indent=2) if args.json else render(figures))


if __name__ == "__main__":
    main()
