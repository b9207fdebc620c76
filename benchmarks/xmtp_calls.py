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
    ``in_flight`` outstanding at any time (calls/s).

Target (information, never an exit status; docs/style.md rule 20): CoWorker's p50 within 1.3x of the raw
ping-pong's p50 measured in the same run. For context, the original CoWorker spent 1.5-3 s per call on polling.

``COWORKER_HOME`` points into the run's temporary directory while it runs, so nothing touches ``~/.coworker``.

Run: ``python benchmarks/xmtp_calls.py`` (``--quick`` for a smoke run; needs ``coworker setup`` and port
5556 free). Import: ``run()`` returns the figures as a dict, ``render(figures)`` formats them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coworker.devnet import DEFAULT_PORT, PortInUseError, running_devnet
from coworker.transports.xmtp.driver import node_sdk_available

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _siblings import sibling  # noqa: E402 (after the path it needs)

PAYLOAD: dict[str, Any] = {"text": "hello"}
TARGET_RATIO = 1.3
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


async def coworker_calls(data_dir: Path, *, seq: int, total: int, in_flight: int, warmup: int) -> dict[str, Any]:
    """Time B calling A's ``echo`` skill over the local XMTP node (which must be listening on port 5556)."""
    from coworker import AsyncAgent, RateLimit, RateLimits, TrustTier
    from coworker.transports.xmtp.transport import XmtpNetwork

    network = XmtpNetwork("local", start_devnet=False)
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

            figures["burst_s"] = await core.burst(call, total, in_flight)
            figures["calls_per_s"] = total / figures["burst_s"]
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
            ours = await coworker_calls(Path(tmp) / "agents", seq=seq, total=total, in_flight=in_flight,
                                        warmup=warmup)
            unimplemented = sorted(set(devnet.unimplemented_calls))
    ratio = ours["p50_ms"] / raw["rtt_p50_ms"]
    return {
        "raw": raw,
        "coworker": ours,
        "ratios": {
            "p50": ratio,
            "p99": ours["p99_ms"] / raw["rtt_p99_ms"],
            # a call is two XMTP messages (request and reply); the raw burst counts one-way messages
            "messages_per_s": 2 * ours["calls_per_s"] / raw["messages_per_s"],
        },
        "target": {"p50_ratio": TARGET_RATIO, "measured": ratio, "met": ratio <= TARGET_RATIO},
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
        ``{"raw": devnet_pingpong's figures, "coworker": {...}, "ratios": {"p50", "p99", "messages_per_s"},
        "target": ..., "workload": ..., "unimplemented_calls": [...], "environment": ...}``; ``{"skipped": why}``
        without Node or the SDK. Ratios are CoWorker / raw: below 1 favours CoWorker, except messages/s.

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
    env, work, raw, ours = figures["environment"], figures["workload"], figures["raw"], figures["coworker"]
    ratios, target = figures["ratios"], figures["target"]
    lines = [
        f"skill call over XMTP vs raw @xmtp/node-sdk DM ping-pong, one in-memory devnet on loopback "
        f"(python {env['python']}, {env['cpus']} cpus, {env['date']})",
        f"sequential: {work['seq']} after {work['warmup']} warm-up;  throughput: {work['total']}, "
        f"{work['in_flight']} in flight",
        "",
    ]
    header = f"{'contender':<9} {'what':<53} {'p50 ms':>7} {'p99 ms':>7} {'throughput':>15} {'p50 x':>6}"
    lines += [header, "-" * len(header)]
    lines.append(f"{'raw':<9} {'2 node-sdk clients (driver.mjs): DM ping, pong':<53} {raw['rtt_p50_ms']:>7.1f} "
                 f"{raw['rtt_p99_ms']:>7.1f} {raw['messages_per_s']:>7.1f} msg/s   {'-':>6}")
    lines.append(f"{'coworker':<9} {'b.call(a, echo): 2 agents + sidecars, SQLite, trust':<53} "
                 f"{ours['p50_ms']:>7.1f} {ours['p99_ms']:>7.1f} {ours['calls_per_s']:>7.1f} calls/s "
                 f"{ratios['p50']:>6.2f}")
    lines += [
        f"set-up: raw client create {raw['client_create_ms']:.0f} ms, first DM {raw['first_dm_ms']:.0f} ms;  "
        f"coworker agents start {ours['agents_start_ms']:.0f} ms, first call {ours['first_call_ms']:.0f} ms",
        f"p99 x {ratios['p99']:.2f};  a call is 2 messages: {2 * ours['calls_per_s']:.1f} msg/s, "
        f"x {ratios['messages_per_s']:.2f} the raw one-way burst",
        f"unimplemented RPCs: {', '.join(figures['unimplemented_calls']) or 'none'}",
        "",
        f"target p50 within {target['p50_ratio']}x of the raw ping-pong: {ours['p50_ms']:.1f} / "
        f"{raw['rtt_p50_ms']:.1f} ms = {target['measured']:.2f}x -> {'met' if target['met'] else 'NOT met'}",
    ]
    low, high = ORIGINAL_POLLING_S
    lines += [
        f"context: the original CoWorker spent {low}-{high} s per call on polling alone "
        f"({low * 1000 / raw['rtt_p50_ms']:.0f}-{high * 1000 / raw['rtt_p50_ms']:.0f}x this ping-pong)",
        "(the target is information only: this benchmark never fails on it)",
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
    try:
        figures = run(quick=args.quick, **options)
    except PortInUseError as exc:
        print(f"xmtp_calls: this benchmark runs its own devnet on port {DEFAULT_PORT}, which is taken: {exc}",
              file=sys.stderr)
        return 2
    print(json.dumps(figures, indent=2) if args.json else render(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
