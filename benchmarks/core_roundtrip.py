"""Round trip and throughput of one skill call: CoWorker on the in-memory network against two baselines.

Every contender runs the same workload in the same process and the same event loop: an echo of a small JSON
object (``{"text": "hello"}``), first ``seq`` calls one after the other (round trip p50 and p99), then
``total`` calls with ``in_flight`` of them outstanding at any time (calls per second). The contenders:

``coworker``
    Two :class:`coworker.AsyncAgent` on one :class:`coworker.MemoryNetwork`, each with its own temporary
    ``data_dir``, so every call is a durable task: stored and committed by the caller before ``request()``
    returns, by the callee before the skill runs and with its outcome before the answer leaves (SQLite in WAL
    mode, group commit), with a usage receipt signed by the callee and checked by the caller (off the call
    path). The callee trusts the caller at ``KNOWN`` (so the trust check runs on every call) and serves
    ``async def echo(text: str)``. The rate limiter runs on every message, with the callee's KNOWN budget and
    the caller's budget for replies raised to 1,000,000 messages/s: their defaults (50/s, 1,000/s) are limits
    on purpose, and this measures the cost of a call, not the budgets.
``tcp-json``
    A raw asyncio TCP echo on 127.0.0.1: newline-delimited JSON, one connection, a request id in every
    message so that any number of requests can be outstanding on it; a reader task on the client resolves the
    waiting futures by id. The floor for "JSON over a local socket" in pure asyncio.
``mcp-memory``
    The official MCP Python SDK: ``mcp.Client(server)`` on an in-process ``MCPServer`` with an ``echo`` tool.
    In mcp 2.x this dispatches directly (no JSON-RPC framing); it is the baseline of the throughput target.
``mcp-memory-jsonrpc``
    The same client with ``mode="legacy"``: JSON-RPC messages over the SDK's in-memory streams
    (``InMemoryTransport``), with the initialize handshake. Information only.

The MCP rows need the optional ``bench`` extra (``pip install -e '.[bench]'``); without it they are skipped.

Targets (information, never an exit status; see docs/style.md rule 20): CoWorker p50 <= 0.45 ms, and CoWorker
calls/s >= the ``mcp-memory`` calls/s measured in the same run.

Run: ``python benchmarks/core_roundtrip.py`` (``--quick`` for a smoke run). Import: ``run()`` returns the
figures as a dict, ``render(figures)`` formats them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

PAYLOAD: dict[str, Any] = {"text": "hello"}
TARGET_P50_MS = 0.45  # with durable tasks and signed receipts (an earlier 0.3 ms target had neither)
TARGET_BASELINE = "mcp-memory"

Call = Callable[[], Awaitable[Any]]


# ---- measurement -------------------------------------------------------------------------------------------

def _percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0..100) of already sorted values."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def burst(call: Call, total: int, in_flight: int) -> float:
    """Seconds to make ``total`` calls with ``in_flight`` outstanding at any time.

    A fixed pool of workers rather than gather() over ``total`` tasks: every contender gets the same driver and the
    driver's own cost (task creation) stays out of the figure.
    """
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    gc.collect()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - started


async def measure(call: Call, *, seq: int, total: int, in_flight: int, warmup: int) -> dict[str, Any]:
    """Warm up, then time ``seq`` sequential calls and ``total`` calls with ``in_flight`` outstanding."""
    for _ in range(warmup):
        await call()
    gc.collect()
    clock = time.perf_counter
    samples: list[float] = []
    for _ in range(seq):
        started = clock()
        await call()
        samples.append(clock() - started)
    samples.sort()

    elapsed = await burst(call, total, in_flight)
    return {
        "p50_ms": statistics.median(samples) * 1000,
        "p99_ms": _percentile(samples, 99) * 1000,
        "mean_ms": statistics.fmean(samples) * 1000,
        "calls_per_s": total / elapsed,
        "seq_calls": seq,
        "concurrent_calls": total,
        "in_flight": in_flight,
    }


def _check_echo(result: Any, contender: str) -> None:
    if result != PAYLOAD:
        raise RuntimeError(f"{contender}: the echo returned {result!r}, expected {PAYLOAD!r}")


# ---- contenders --------------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def coworker_echo() -> AsyncIterator[Call]:
    """Two agents on one MemoryNetwork, persistence and trust checks on; yields a call of the echo skill."""
    from coworker import AsyncAgent, MemoryNetwork, RateLimit, RateLimits, TrustTier

    with tempfile.TemporaryDirectory(prefix="coworker-bench-") as tmp:
        net = MemoryNetwork()
        # passphrase="": a plain key file, so that COWORKER_PASSPHRASE in the environment does not add scrypt.
        caller = AsyncAgent("bench-caller", network=net, data_dir=os.path.join(tmp, "caller"), passphrase="",
                            rate_limits=RateLimits(replies=RateLimit(1e6, 1e6)))
        callee = AsyncAgent("bench-callee", network=net, data_dir=os.path.join(tmp, "callee"), passphrase="",
                            rate_limits=RateLimits(known=RateLimit(1e6, 1e6)))

        @callee.skill()
        async def echo(text: str) -> dict[str, Any]:
            return {"text": text}

        callee.set_trust(caller.wallet, TrustTier.KNOWN)
        try:
            async with callee, caller:
                wallet = callee.wallet

                async def call() -> Any:
                    return await caller.call(wallet, "echo", PAYLOAD)

                _check_echo(await call(), "coworker")
                yield call
        finally:
            caller.close()
            callee.close()


@contextlib.asynccontextmanager
async def tcp_json_echo() -> AsyncIterator[Call]:
    """A newline-delimited JSON echo over loopback TCP, pipelined on one connection by request id."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                request = json.loads(line)
                writer.write(json.dumps({"id": request["id"], "result": request["params"]},
                                        separators=(",", ":")).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pending: dict[int, asyncio.Future[Any]] = {}

    async def read_replies() -> None:
        while line := await reader.readline():
            reply = json.loads(line)
            future = pending.pop(reply["id"], None)
            if future is not None and not future.done():
                future.set_result(reply["result"])

    reader_task = asyncio.create_task(read_replies(), name="tcp-json-reader")
    next_id = 0
    loop = asyncio.get_running_loop()

    async def call() -> Any:
        nonlocal next_id
        next_id += 1
        future = loop.create_future()
        pending[next_id] = future
        writer.write(json.dumps({"id": next_id, "params": PAYLOAD}, separators=(",", ":")).encode() + b"\n")
        await writer.drain()
        return await future

    try:
        _check_echo(await call(), "tcp-json")
        yield call
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(writer.wait_closed(), 5)
        await asyncio.wait_for(reader_task, 5)
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


def _mcp_server() -> Any:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("bench-echo")

    @server.tool()
    async def echo(text: str) -> dict[str, Any]:
        return {"text": text}

    return server


def _mcp_echo(mode: str, name: str) -> Callable[[], contextlib.AbstractAsyncContextManager[Call]]:
    @contextlib.asynccontextmanager
    async def contender() -> AsyncIterator[Call]:
        from mcp import Client

        async with Client(_mcp_server(), mode=mode) as client:
            async def call() -> Any:
                result = await client.call_tool("echo", PAYLOAD)
                return result

            first = await call()
            if first.is_error or json.loads(first.content[0].text) != PAYLOAD:
                raise RuntimeError(f"{name}: unexpected tool result {first!r}")
            yield call

    return contender


def mcp_version() -> str | None:
    """The installed MCP SDK's version, or None when the ``bench`` extra is not installed."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        import mcp  # noqa: F401
    except ImportError:
        return None
    try:
        return version("mcp")
    except PackageNotFoundError:
        return "unknown"


CONTENDERS: dict[str, tuple[str, Callable[[], contextlib.AbstractAsyncContextManager[Call]]]] = {
    "coworker": ("2 AsyncAgents, MemoryNetwork, SQLite + trust", coworker_echo),
    "tcp-json": ("asyncio TCP 127.0.0.1, NDJSON, 1 conn", tcp_json_echo),
    "mcp-memory": ("mcp Client(server), in-process (default)", _mcp_echo("auto", "mcp-memory")),
    "mcp-memory-jsonrpc": ("mcp Client(server, mode='legacy')", _mcp_echo("legacy", "mcp-memory-jsonrpc")),
}


# ---- the run -----------------------------------------------------------------------------------------------

async def run_async(*, seq: int = 2000, total: int = 5000, in_flight: int = 64, warmup: int = 300,
                    contenders: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Measure every contender in this loop; see :func:`run`."""
    names = contenders or tuple(CONTENDERS)
    have_mcp = mcp_version() is not None
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in names:
        label, factory = CONTENDERS[name]
        if name.startswith("mcp") and not have_mcp:
            skipped[name] = "the MCP SDK is not installed (pip install -e '.[bench]')"
            continue
        async with factory() as call:
            figures = await measure(call, seq=seq, total=total, in_flight=in_flight, warmup=warmup)
        results[name] = {"label": label, **figures}

    ratios: dict[str, dict[str, float]] = {}
    ours = results.get("coworker")
    if ours is not None:
        for name, theirs in results.items():
            if name != "coworker":
                ratios[name] = {"p50": ours["p50_ms"] / theirs["p50_ms"],
                                "calls_per_s": ours["calls_per_s"] / theirs["calls_per_s"]}
    targets: dict[str, Any] = {}
    if ours is not None:
        targets["p50_ms"] = {"target": TARGET_P50_MS, "measured": ours["p50_ms"],
                             "met": ours["p50_ms"] <= TARGET_P50_MS}
        baseline = results.get(TARGET_BASELINE)
        targets["calls_per_s"] = {
            "target": baseline["calls_per_s"] if baseline else None,
            "measured": ours["calls_per_s"],
            "met": (ours["calls_per_s"] >= baseline["calls_per_s"]) if baseline else None,
        }
    return {
        "results": results,
        "ratios": ratios,
        "targets": targets,
        "skipped": skipped,
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "cpus": os.cpu_count(),
            "mcp": mcp_version(),
            "date": time.strftime("%Y-%m-%d"),
        },
    }


def run(**options: Any) -> dict[str, Any]:
    """Run the benchmark in a fresh event loop and return its figures.

    Args:
        seq: sequential calls timed one by one (p50, p99).
        total: calls made with ``in_flight`` outstanding (calls/s).
        in_flight: concurrency of the throughput phase.
        warmup: untimed calls before each contender's measurements.
        contenders: names from :data:`CONTENDERS` (default: all).

    Returns:
        ``{"results": {name: figures}, "ratios": {baseline: {"p50", "calls_per_s"}}, "targets": ...,
        "skipped": {name: why}, "environment": ...}``. Ratios are CoWorker / baseline: a p50 ratio below 1
        and a calls/s ratio above 1 favour CoWorker.
    """
    return asyncio.run(run_async(**options))


def render(figures: dict[str, Any]) -> str:
    """The figures as a plain-text table with ratios and the targets."""
    env = figures["environment"]
    results = figures["results"]
    lines = [f"core round trip: echo {json.dumps(PAYLOAD)}  "
             f"(python {env['python']}, {env['cpus']} cpus, mcp {env['mcp'] or '-'}, {env['date']})"]
    any_result = next(iter(results.values()), None)
    if any_result is not None:
        lines.append(f"sequential: {any_result['seq_calls']} calls;  throughput: {any_result['concurrent_calls']} "
                     f"calls, {any_result['in_flight']} in flight")
    lines.append("")
    header = (f"{'contender':<20} {'what':<44} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>9} "
              f"{'p50 x':>7} {'calls/s x':>9}")
    lines += [header, "-" * len(header)]
    for name, r in results.items():
        ratio = figures["ratios"].get(name)
        p50x = f"{ratio['p50']:.2f}" if ratio else "-"
        cpsx = f"{ratio['calls_per_s']:.2f}" if ratio else "-"
        lines.append(f"{name:<20} {r['label']:<44} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
                     f"{r['calls_per_s']:>9,.0f} {p50x:>7} {cpsx:>9}")
    for name, why in figures["skipped"].items():
        lines.append(f"{name:<20} skipped: {why}")
    lines.append("ratios are coworker / that row: p50 x < 1 and calls/s x > 1 favour coworker")
    targets = figures["targets"]
    if targets:
        lines.append("")
        p50 = targets["p50_ms"]
        lines.append(f"target p50 <= {p50['target']} ms: {p50['measured']:.3f} ms -> "
                     f"{'met' if p50['met'] else 'NOT met'}")
        cps = targets["calls_per_s"]
        if cps["target"] is None:
            why = figures["skipped"].get(TARGET_BASELINE, "not selected")
            lines.append(f"target calls/s >= {TARGET_BASELINE}: no baseline measured ({why})")
        else:
            lines.append(f"target calls/s >= {TARGET_BASELINE} ({cps['target']:,.0f}): {cps['measured']:,.0f} -> "
                         f"{'met' if cps['met'] else 'NOT met'}")
        lines.append("(targets are information only: this benchmark never fails on them)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=2000, help="sequential calls (default 2000)")
    parser.add_argument("--total", type=int, default=5000, help="calls in the throughput phase (default 5000)")
    parser.add_argument("--in-flight", type=int, default=64, help="calls outstanding (default 64)")
    parser.add_argument("--warmup", type=int, default=300, help="untimed calls first (default 300)")
    parser.add_argument("--only", nargs="+", choices=tuple(CONTENDERS), help="run only these contenders")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200 sequential, 500 concurrent")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.quick:
        args.seq, args.total, args.warmup = 200, 500, 50
    figures = run(seq=args.seq, total=args.total, in_flight=args.in_flight, warmup=args.warmup,
                  contenders=tuple(args.only) if args.only else None)
    print(json.dumps(figures, indent=2) if args.json else render(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
