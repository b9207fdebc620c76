"""One CoWorker skill call over XMTP, against the raw ``@xmtp/node-sdk`` DM ping-pong, through one local devnet.

Both contenders run in one process, one event loop and one run, through the same in-memory devnet on port 5556
(``coworker.devnet.running_devnet()``), so all traffic stays on loopback and the ratio compares like with like:

``raw``
    ``devnet_pingpong.run_async``: two ``driver.mjs`` clients; alice sends ``ping i`` in a DM, bob's live
    stream delivers it, bob answers ``pong i``, alice's stream delivers that (round trip p50, p99); then a burst
    of one-way messages with ``in_flight`` sends outstanding (messages/s). The floor: the XMTP SDK alone.
``coworker``
    Two :class:`coworker.AsyncAgent` on ``XmtpNetwork("local", start_devnet=False)``, each with its own sidecar
    (``sidecar.mjs``) and its own temporary ``data_dir`` (SQLite on, call records kept). Agent A serves
    ``async def echo(text: str)`` and trusts B at ``KNOWN`` (the trust check runs on every call; the rate limiter
    too, with the KNOWN budget raised from 50 to 1,000,000 calls/s so that it does not bind); B calls
    ``await b.call(a.wallet, "echo", {"text": "hello"})``: a request message and a reply message, each through
    the devnet. After ``warmup`` untimed calls: ``seq`` sequential calls (p50, p99), then ``total`` calls with
    ``in_flight`` outstanding at any time (calls/s), counting the messages both agents put on the wire (frames).
    It runs twice, on fresh agents: ``batching off`` (``XmtpNetwork(batch=False)``: one XMTP message per protocol
    message, the behaviour before batching; the baseline) and ``batching on`` (what waits for one peer goes as
    one batch frame). The write budget is raised to 1,000,000 writes per 300 s in both so that it never binds
    (the production default, 3,000, is a limit a run of this size could reach with batching off).

Targets (information, never an exit status; docs/style.md rule 20), from the issue: with batching on, calls/s at
``in_flight`` as a ratio to the raw burst of the same run at least 1.5x that ratio with batching off; at most 1.2
messages on the wire per call under load; p50 within 1.3x of the raw ping-pong's p50. For context, the original
CoWorker spent 1.5-3 s per call on polling.

``COWORKER_HOME`` points into the run's temporary directory while it runs, so nothing touches ``~/.coworker``.

Run: ``python benchmarks/xmtp_calls.py`` (``--quick`` for a smoke run; needs ``coworker setup`` and port
5556 free). Import: ``run()`` returns the figures as a dict, ``render(figures)`` formats them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coworker.devnet import running_devnet
from coworker.transports.xmtp.driver import node_sdk_available

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _siblings import print_figures, sibling  # noqa: E402 (after the path it needs)

PAYLOAD: dict[str, Any] = {"text": "hello"}
TARGET_RATIO = 1.3
TARGET_SPEEDUP = 1.5  # calls/s x raw with batching on, over the same with batching off
TARGET_MESSAGES_PER_CALL = 1.2
BENCH_WRITE_LIMIT = 1_000_000  # writes per 300 s: high enough never to bind here (XMTP production: 3,000)
ORIGINAL_POLLING_S = (1.5, 3.0)  # what the original CoWorker spent per call on polling alone
CALL_TIMEOUT_S = 30.0


pingpong = sibling("devnet_pingpong")
core = sibling("core_roundtrip")


@contextlib.contextmanager
def _private_environment(home: Path) -> Iterator[None]:
    """``COWORKER_HOME`` in the run's temporary directory and only the local network; restored afterwards. The
    Node side stays the one installed for the real home (``coworker setup``): nothing is installed for a run."""
    from coworker.transports.xmtp import node

    wanted = {"COWORKER_HOME": str(home), "COWORKER_LOCAL_ONLY": "1",
              "COWORKER_NODE_DIR": os.environ.get("COWORKER_NODE_DIR") or str(node.install_dir())}
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def coworker_calls(data_dir: Path, *, seq: int, total: int, in_flight: int, warmup: int,
                         batch: bool = True) -> dict[str, Any]:
    """Time B calling A's ``echo`` skill over the local XMTP node (which must be listening on port 5556), with
    batching on or off; counts the frames both agents sent during the burst."""
    from coworker import AsyncAgent, RateLimit, RateLimits, TrustTier
    from coworker.transports.xmtp.transport import XmtpNetwork

    network = XmtpNetwork("local", start_devnet=False, batch=batch, write_limit=BENCH_WRITE_LIMIT)
    # passphrase="": plain key files, so that COWORKER_PASSPHRASE in the environment does not add scrypt.
    a = AsyncAgent("bench-a", network=network, data_dir=data_dir / "a", passphrase="",
                   rate_limits=RateLimits(known=RateLimit(1e6, 1e6)))
    b = AsyncAgent("bench-b", network=network, data_dir=data_dir / "b", passphrase="")

    @a.skill()
    async def echo(text: str) -> dict[str, Any]:
        return {"text": text}

    a.set_trust(b.wallet, TrustTier.KNOWN)
    clock = time.perf_counter
    figures: dict[str, Any] = {}
    try:
        begin = clock()
        await a.start()
        await b.start()
        figures["agents_start_ms"] = (clock() - begin) * 1000
        try:
            wallet = a.wallet

            async def call() -> None:
                result = await b.call(wallet, "echo", PAYLOAD, timeout=CALL_TIMEOUT_S)
                if result != PAYLOAD:
                    raise RuntimeError(f"the echo returned {result!r}, expected {PAYLOAD!r}")

            begin = clock()
            await call()  # B's sidecar creates the DM with A here
            figures["first_call_ms"] = (clock() - begin) * 1000
            for _ in range(warmup):
                await call()
            gc.collect()
            samples: list[float] = []
            for _ in range(seq):
                begin = clock()
                await call()
                samples.append((clock() - begin) * 1000)
            figures["p50_ms"] = statistics.median(samples)
            figures["p99_ms"] = pingpong._percentile(samples, 0.99)  # the raw side's definition, for like with like
            figures["mean_ms"] = statistics.fmean(samples)

            def sent() -> tuple[int, int]:
                stats = [agent.stats()["outbox"] for agent in (a, b)]
                return sum(s["frames_sent"] for s in stats), sum(s["payloads_sent"] for s in stats)

            frames, payloads = sent()
            figures["burst_s"] = await core.burst(call, total, in_flight)
            figures["calls_per_s"] = total / figures["burst_s"]
            await a._runtime._link.tasks.idle(CALL_TIMEOUT_S)  # type: ignore[union-attr] (the last answers' sends)
            frames_after, payloads_after = sent()
            figures["burst_frames"] = frames_after - frames
            figures["burst_payloads"] = payloads_after - payloads
            figures["messages_per_call"] = figures["burst_frames"] / total
            figures["budget_waits"] = sum(agent.stats()["outbox"]["budget_waits"] for agent in (a, b))
            figures["batch"] = batch
        finally:
            await b.stop()
            await a.stop()
    finally:
        a.close()
        b.close()
    return figures


async def run_async(*, seq: int = 200, total: int = 400, in_flight: int = 16, warmup: int = 10) -> dict[str, Any]:
    """Measure both contenders through one devnet in this loop; see :func:`run`."""
    if not node_sdk_available():
        return {"skipped": "Node or @xmtp/node-sdk is missing: run `coworker setup`"}
    with tempfile.TemporaryDirectory(prefix="coworker-bench-") as tmp, _private_environment(Path(tmp) / "home"):
        async with running_devnet() as devnet:
            raw = await pingpong.run_async(seq=seq, total=total, in_flight=in_flight, warmup=warmup, devnet=devnet)
            off = await coworker_calls(Path(tmp) / "off", seq=seq, total=total, in_flight=in_flight, warmup=warmup,
                                       batch=False)
            on = await coworker_calls(Path(tmp) / "on", seq=seq, total=total, in_flight=in_flight, warmup=warmup)
            unimplemented = sorted(set(devnet.unimplemented_calls))

    def ratios(ours: dict[str, Any]) -> dict[str, float]:
        return {
            "p50": ours["p50_ms"] / raw["rtt_p50_ms"],
            "p99": ours["p99_ms"] / raw["rtt_p99_ms"],
            "calls_per_s": ours["calls_per_s"] / raw["messages_per_s"],  # calls/s over the raw one-way msg/s
            # a call is two protocol messages (request and reply); the raw burst counts one-way messages
            "messages_per_s": 2 * ours["calls_per_s"] / raw["messages_per_s"],
        }

    ratios_off, ratios_on = ratios(off), ratios(on)
    speedup = ratios_on["calls_per_s"] / ratios_off["calls_per_s"]
    return {
        "raw": raw,
        "coworker": on,
        "coworker_unbatched": off,
        "ratios": ratios_on,
        "ratios_unbatched": ratios_off,
        "target": {
            "p50_ratio": TARGET_RATIO, "measured": ratios_on["p50"], "met": ratios_on["p50"] <= TARGET_RATIO,
            "speedup": TARGET_SPEEDUP, "speedup_measured": speedup, "speedup_met": speedup >= TARGET_SPEEDUP,
            "messages_per_call": TARGET_MESSAGES_PER_CALL, "messages_per_call_measured": on["messages_per_call"],
            "messages_per_call_met": on["messages_per_call"] <= TARGET_MESSAGES_PER_CALL,
        },
        "write_limit": BENCH_WRITE_LIMIT,
        "workload": {"seq": seq, "total": total, "in_flight": in_flight, "warmup": warmup},
        "unimplemented_calls": unimplemented,
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"),
        },
    }


def run(quick: bool = False, **options: Any) -> dict[str, Any]:
    """Run the benchmark in a fresh event loop and return its figures.

    Args:
        quick: a smoke run (20 sequential, 48 concurrent, 3 warm-up); ``options`` override either default.
        seq: round trips / calls timed one by one (p50, p99).
        total: messages / calls sent with ``in_flight`` outstanding (throughput).
        in_flight: concurrency of the throughput phase.
        warmup: untimed round trips / calls first.

    Returns:
        ``{"raw": devnet_pingpong's figures, "coworker": {...} (batching on), "coworker_unbatched": {...},
        "ratios"/"ratios_unbatched": {"p50", "p99", "calls_per_s", "messages_per_s"}, "target": ...,
        "write_limit": n, "workload": ..., "unimplemented_calls": [...], "environment": ...}``;
        ``{"skipped": why}`` without Node or the SDK. Ratios are CoWorker / raw: below 1 favours CoWorker, except
        calls/s and messages/s.

    Raises:
        PortInUseError: port 5556 is taken (a devnet left running?); this benchmark needs its own devnet.
    """
    if quick:
        options = {"seq": 20, "total": 48, "warmup": 3, **options}
    return asyncio.run(run_async(**options))


def render(figures: dict[str, Any]) -> str:
    """The figures as a plain-text table with the ratio and the target."""
    if "skipped" in figures:
        return f"xmtp_calls: skipped ({figures['skipped']})"
    env, work, raw = figures["environment"], figures["workload"], figures["raw"]
    on, off, target = figures["coworker"], figures["coworker_unbatched"], figures["target"]
    lines = [
        f"skill call over XMTP vs raw @xmtp/node-sdk DM ping-pong, one in-memory devnet on loopback "
        f"(python {env['python']}, {env['cpus']} cpus, {env['date']})",
        f"sequential: {work['seq']} after {work['warmup']} warm-up;  throughput: {work['total']}, "
        f"{work['in_flight']} in flight",
        f"write budget {figures['write_limit']:,} writes per 300 s per agent: it does not bind "
        f"(budget waits: {off['budget_waits'] + on['budget_waits']})",
        "",
    ]
    header = (f"{'contender':<13} {'what':<51} {'p50 ms':>7} {'p99 ms':>7} {'throughput':>15} {'x raw':>6} "
              f"{'msg/call':>8} {'p50 x':>6}")
    lines += [header, "-" * len(header)]
    lines.append(f"{'raw':<13} {'2 node-sdk clients (driver.mjs): DM ping, pong':<51} {raw['rtt_p50_ms']:>7.1f} "
                 f"{raw['rtt_p99_ms']:>7.1f} {raw['messages_per_s']:>7.1f} msg/s   {'1.00':>6} {'1':>8} {'-':>6}")
    for label, ours, ratios in (("batching off", off, figures["ratios_unbatched"]),
                                ("batching on", on, figures["ratios"])):
        lines.append(f"{label:<13} {'b.call(a, echo): 2 agents + sidecars, SQLite, trust':<51} "
                     f"{ours['p50_ms']:>7.1f} {ours['p99_ms']:>7.1f} {ours['calls_per_s']:>7.1f} calls/s "
                     f"{ratios['calls_per_s']:>6.2f} {ours['messages_per_call']:>8.2f} {ratios['p50']:>6.2f}")
    lines += [
        f"set-up: raw client create {raw['client_create_ms']:.0f} ms, first DM {raw['first_dm_ms']:.0f} ms;  "
        f"coworker agents start {on['agents_start_ms']:.0f} ms, first call {on['first_call_ms']:.0f} ms",
        f"x raw: calls/s over the raw burst's one-way msg/s; msg/call: XMTP messages both agents sent per call "
        f"during the burst (batching on: {on['burst_payloads']} protocol messages in {on['burst_frames']})",
        f"unimplemented RPCs: {', '.join(figures['unimplemented_calls']) or 'none'}",
        "",
        f"target calls/s x raw >= {target['speedup']}x today's (batching off): "
        f"{figures['ratios']['calls_per_s']:.2f} / {figures['ratios_unbatched']['calls_per_s']:.2f} = "
        f"{target['speedup_measured']:.2f}x -> {'met' if target['speedup_met'] else 'NOT met'}",
        f"target messages per call under load <= {target['messages_per_call']}: "
        f"{target['messages_per_call_measured']:.2f} -> {'met' if target['messages_per_call_met'] else 'NOT met'}",
        f"target p50 <= {target['p50_ratio']}x raw: {on['p50_ms']:.1f} / {raw['rtt_p50_ms']:.1f} ms = "
        f"{target['measured']:.2f}x -> {'met' if target['met'] else 'NOT met'} "
        f"(batching off: {figures['ratios_unbatched']['p50']:.2f}x)",
    ]
    low, high = ORIGINAL_POLLING_S
    lines += [
        f"context: the original CoWorker spent {low}-{high} s per call on polling alone "
        f"({low * 1000 / raw['rtt_p50_ms']:.0f}-{high * 1000 / raw['rtt_p50_ms']:.0f}x this ping-pong)",
        "(the targets are information only: this benchmark never fails on them)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python benchmarks/xmtp_calls.py [--quick] [--json] [--seq N] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seq", type=int, help="sequential round trips / calls (default 200)")
    parser.add_argument("--total", type=int, help="messages / calls in the throughput phase (default 400)")
    parser.add_argument("--in-flight", type=int, help="outstanding in the throughput phase (default 16)")
    parser.add_argument("--warmup", type=int, help="untimed round trips / calls first (default 10)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 sequential, 48 concurrent")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k in ("seq", "total", "in_flight", "warmup") and v is not None}
    return print_figures("xmtp_calls", lambda: run(quick=args.quick, **options), render, args.json)


if __name__ == "__main__":
    sys.exit(main())
