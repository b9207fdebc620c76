"""Task lookups in an agent's SQLite store: how each scales from 1,000 tasks to ``tasks`` (default 100,000).

Two stores are built in a temporary directory through :meth:`SQLiteStore.add_task`, the same mix in both: half
``in`` (served, from 50 peer wallets), half ``out`` (our calls to the same peers); of the ended tasks about 90 %
``completed`` (with an output and a receipt-sized JSON), 5 % ``failed``, 5 % ``rejected``; ``live`` of them (300
by default) ``submitted`` or ``working``, among the newest. The live tasks are the same count in both stores: an
agent's live tasks are bounded by what it has in flight, not by its history, so ``live_tasks`` finds the same
rows at both sizes. Task ids are 32 random hex digits, as :func:`coworker.core.protocol.new_id` makes them. Each
store is filled in one transaction (the adds run inside an event loop, so the store groups them, then
``flush()``), closed, and reopened as an agent would find it after a restart.

Then each lookup runs many times on each store (a few untimed calls first; at most ``reps`` timed calls, or as
many as fit in ``budget_s`` seconds, at least 20), cycling through existing ids and peers:

``get_result``        ``store.task("in", id)``: a served task by id alone (the peer not given)
``get_result peer``   ``store.task("in", id, peer)``: a served task by its key
``own task``          ``store.task("out", id)``
``tasks in/out S``    ``store.tasks(direction, S, limit=20)`` for S in completed, failed, working and any state
``ids ab12``          ``store.task_ids_starting("ab12")``: the prefix search behind ``coworker task ab12``
``live out``          ``store.live_tasks("out")``

Baselines measured in the same run: the same lookups on the 1,000-task store (the ratio N / 1k shows how each
lookup scales with the history), and ``trust_tier(wallet)``, a primary-key lookup in a small table, on the big
store (the floor of one query through the store).

Target (information, never an exit status; docs/style.md rule 20): every lookup's median <= 1 ms at 100,000
tasks.

Run: ``python benchmarks/store_lookups.py`` (``--quick``: 10,000 tasks; ``--json``). Import: ``run()`` returns
the figures as a dict, ``render(figures)`` formats them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from coworker.core.trust import TrustTier
from coworker.store.records import TaskRecord
from coworker.store.sqlite import SQLiteStore

TASKS = 100_000
QUICK_TASKS = 10_000
BASELINE_TASKS = 1_000
LIVE = 300
PEERS = 50
PREFIX = "ab12"
TARGET_MS = 1.0
TARGET_AT = 100_000
MIN_SAMPLES = 20


# ---- the data ----------------------------------------------------------------------------------------------

def _address(rng: random.Random) -> str:
    """A wallet address; the store keys peers lower-case, so its case does not matter here."""
    return f"0x{rng.getrandbits(160):040x}"


def _tasks(n: int, live: int, peers: list[str], rng: random.Random) -> list[TaskRecord]:
    """``n`` tasks, oldest first, over 30 days: the mix described in the module's docstring."""
    live = min(live, n // 2)
    live_at = set(rng.sample(range(n - min(n, 2 * live), n), live))  # among the newest
    start = time.time() - 30 * 86400
    step = 30 * 86400 / n
    tasks = []
    for i in range(n):
        direction = "in" if i % 2 else "out"
        peer = rng.choice(peers)
        created = start + i * step
        if i in live_at:
            state = "working" if direction == "in" or rng.random() < 0.5 else "submitted"
        else:
            roll = rng.random()
            state = "completed" if roll < 0.9 else "failed" if roll < 0.95 else "rejected"
        task_id = f"{rng.getrandbits(128):032x}"
        ended = state in ("completed", "failed")
        task = TaskRecord(task_id, direction, peer, "summarise", state, {"text": f"document {i}", "words": 120},
                          created, version="1.0.0", updated_at=created + 0.05, last_activity=created,
                          timeout=30.0, attempts=1)
        if state == "completed":
            task.output = {"summary": f"summary of document {i}", "words": 40}
            task.duration_ms, task.request_bytes, task.response_bytes = 48.0, 160, 210
        elif state == "failed":
            task.error_code, task.error_message = "skill_error", "the skill raised ValueError"
        elif state == "rejected":
            task.error_code, task.error_message = "not_trusted", "the caller is not trusted for this skill"
        if ended:
            task.receipt = {"v": 1, "task_id": task_id, "caller": peer, "provider": peers[0], "skill": "summarise",
                            "version": "1.0.0", "status": state, "started_at": created, "duration_ms": 48.0,
                            "input_bytes": 40, "output_bytes": 50, "signature": f"0x{rng.getrandbits(520):0130x}"}
            task.receipt_valid = direction == "out" or None
        tasks.append(task)
    return tasks


def build(path: str, n: int, live: int, seed: int) -> tuple[SQLiteStore, dict[str, Any]]:
    """A store at ``path`` holding ``n`` tasks, reopened after the fill; and what the lookups cycle through."""
    rng = random.Random(seed)
    peers = [_address(rng) for _ in range(PEERS)]
    tasks = _tasks(n, live, peers, rng)
    store = SQLiteStore(path)
    started = time.perf_counter()

    async def fill() -> None:
        # Inside a running loop the store groups writes into one transaction (committed by flush()), instead
        # of one commit per add_task outside a loop.
        for task in tasks:
            store.add_task(task)
        for peer in peers:
            store.set_trust(peer, TrustTier.KNOWN, started)
        store.flush()

    asyncio.run(fill())
    fill_s = time.perf_counter() - started
    store.close()
    store = SQLiteStore(path)
    served = [t for t in tasks if t.direction == "in"]
    own = [t for t in tasks if t.direction == "out"]
    samples = {
        "served": [(t.id, t.peer) for t in rng.sample(served, min(1000, len(served)))],
        "own": [t.id for t in rng.sample(own, min(1000, len(own)))],
        "peers": peers,
    }
    states: dict[str, int] = {}
    for t in tasks:
        key = f"{t.direction}:{t.state}"
        states[key] = states.get(key, 0) + 1
    info = {"tasks": n, "fill_s": fill_s, "rows_per_s": n / fill_s, "db_bytes": os.path.getsize(path),
            "states": dict(sorted(states.items()))}
    return store, {"samples": samples, "info": info}


# ---- the lookups -------------------------------------------------------------------------------------------

Lookup = Callable[[int], int]  # the i-th call; returns the rows found


def lookups(store: SQLiteStore, samples: dict[str, Any]) -> dict[str, Lookup]:
    """Every lookup, by name, as a function of a call counter (so that calls cycle through ids and peers)."""
    served: list[tuple[str, str]] = samples["served"]
    own: list[str] = samples["own"]
    peers: list[str] = samples["peers"]

    def found(record: TaskRecord | None) -> int:
        return 0 if record is None else 1

    table: dict[str, Lookup] = {
        "get_result": lambda i: found(store.task("in", served[i % len(served)][0])),
        "get_result peer": lambda i: found(store.task("in", *served[i % len(served)])),
        "own task": lambda i: found(store.task("out", own[i % len(own)])),
    }

    def newest(direction: str, state: str | None) -> Lookup:
        return lambda i: len(store.tasks(direction, state, limit=20))

    for direction in ("in", "out"):
        for state in ("completed", "failed", "working", None):
            table[f"tasks {direction} {state or 'any'}"] = newest(direction, state)
    table[f"ids {PREFIX}"] = lambda i: store.task_ids_starting(PREFIX)[0]
    table["live out"] = lambda i: len(store.live_tasks("out"))
    table["trust_tier (pk)"] = lambda i: int(store.trust_tier(peers[i % len(peers)]) > TrustTier.UNTRUSTED)
    return table


def _percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0..100) of already sorted values."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def measure(lookup: Lookup, *, reps: int, budget_s: float, warmup: int = 5) -> dict[str, Any]:
    """Time ``lookup`` call by call: at most ``reps`` calls or ``budget_s`` seconds, at least MIN_SAMPLES."""
    for i in range(warmup):
        lookup(i)
    gc.collect()
    clock = time.perf_counter
    samples: list[float] = []
    rows = 0
    deadline = clock() + budget_s
    for i in range(reps):
        started = clock()
        rows = lookup(i)
        ended = clock()
        samples.append(ended - started)
        if ended > deadline and len(samples) >= MIN_SAMPLES:
            break
    samples.sort()
    return {"p50_ms": statistics.median(samples) * 1000, "p99_ms": _percentile(samples, 99) * 1000,
            "calls": len(samples), "rows": rows}


# ---- the run -----------------------------------------------------------------------------------------------

def run(*, tasks: int | None = None, baseline_tasks: int = BASELINE_TASKS, live: int = LIVE,
        reps: int | None = None, budget_s: float | None = None, quick: bool = False,
        seed: int = 1) -> dict[str, Any]:
    """Build both stores, time every lookup on each and return the figures.

    Args:
        tasks: tasks in the big store (default 100,000; 10,000 with ``quick``).
        baseline_tasks: tasks in the baseline store (default 1,000).
        live: live (submitted or working) tasks in each store (default 300).
        reps: the most timed calls per lookup and store (default 1,000; 300 with ``quick``).
        budget_s: seconds per lookup and store after which timing stops, once MIN_SAMPLES calls are in
            (default 1.0; 0.15 with ``quick``).
        quick: a smoke run.
        seed: the random seed of the data (ids, peers, states).

    Returns:
        ``{"stores": {"baseline"|"big": info}, "results": {lookup: {"baseline": figures, "big": figures,
        "ratio": big / baseline p50, "x_pk": big p50 / trust_tier p50, "target_met": bool}}, ...}``.
    """
    n = tasks or (QUICK_TASKS if quick else TASKS)
    reps = reps or (300 if quick else 1000)
    budget_s = budget_s if budget_s is not None else (0.15 if quick else 1.0)
    figures: dict[str, Any] = {"stores": {}, "results": {}}
    per_store: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="coworker-bench-store-") as tmp:
        for size_name, size in (("baseline", baseline_tasks), ("big", n)):
            store, built = build(os.path.join(tmp, f"{size_name}.db"), size, live, seed)
            try:
                figures["stores"][size_name] = built["info"]
                per_store[size_name] = {name: measure(lookup, reps=reps, budget_s=budget_s)
                                        for name, lookup in lookups(store, built["samples"]).items()}
            finally:
                store.close()
    pk = per_store["big"]["trust_tier (pk)"]["p50_ms"]
    for name, big in per_store["big"].items():
        base = per_store["baseline"][name]
        figures["results"][name] = {"baseline": base, "big": big, "ratio": big["p50_ms"] / base["p50_ms"],
                                    "x_pk": big["p50_ms"] / pk, "target_met": big["p50_ms"] <= TARGET_MS}
    figures["target"] = {"ms": TARGET_MS, "at_tasks": TARGET_AT, "this_run_tasks": n}
    figures["environment"] = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                              "platform": platform.platform(terse=True), "cpus": os.cpu_count(),
                              "date": time.strftime("%Y-%m-%d")}
    return figures


def render(figures: dict[str, Any]) -> str:
    """The figures as a plain-text table: each lookup at 1k and at N, the ratio, and the target."""
    env = figures["environment"]
    stores = figures["stores"]
    base_n, big_n = stores["baseline"]["tasks"], stores["big"]["tasks"]
    lines = [f"store lookups: SQLiteStore, {base_n:,} against {big_n:,} tasks  (python {env['python']}, "
             f"sqlite {env['sqlite']}, {env['cpus']} cpus, {env['date']})"]
    for label, info in (("1k", stores["baseline"]), ("N", stores["big"])):
        lines.append(f"{label}: {info['tasks']:,} tasks filled in {info['fill_s']:.2f} s "
                     f"({info['rows_per_s']:,.0f} add_task/s), database {info['db_bytes'] / 1e6:.1f} MB")
    lines.append("")
    n_label = f"{big_n // 1000}k" if big_n % 1000 == 0 else f"{big_n:,}"
    header = (f"{'lookup':<20} {'rows':>5} {'1k p50':>8} {'1k p99':>8} {n_label + ' p50':>9} "
              f"{n_label + ' p99':>9} {'x 1k':>7} {'x pk':>7}  target")
    lines += [header, "-" * len(header)]
    for name, r in figures["results"].items():
        base, big = r["baseline"], r["big"]
        target = "-" if name.endswith("(pk)") else ("met" if r["target_met"] else "NOT met")
        lines.append(f"{name:<20} {big['rows']:>5} {base['p50_ms']:>8.3f} {base['p99_ms']:>8.3f} "
                     f"{big['p50_ms']:>9.3f} {big['p99_ms']:>9.3f} {r['ratio']:>7.1f} {r['x_pk']:>7.1f}  {target}")
    calls = [r["big"]["calls"] for r in figures["results"].values()]
    lines.append(f"ms per call; rows: found at N; x 1k: p50 at N / p50 at 1k; x pk: p50 / trust_tier's p50 at N; "
                 f"{min(calls)}-{max(calls)} timed calls per lookup at N")
    target = figures["target"]
    lines.append("")
    met = [name for name, r in figures["results"].items() if r["target_met"] and not name.endswith("(pk)")]
    missed = [name for name, r in figures["results"].items() if not r["target_met"]]
    where = "" if target["this_run_tasks"] == target["at_tasks"] else \
        f" (this run: {target['this_run_tasks']:,} tasks, so not the target's measure)"
    lines.append(f"target p50 <= {target['ms']:g} ms at {target['at_tasks']:,} tasks{where}: "
                 f"met by {len(met)}, NOT met by {len(missed)}" + (f": {', '.join(missed)}" if missed else ""))
    lines.append("(targets are information only: this benchmark never fails on them)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python benchmarks/store_lookups.py [--quick] [--json] [--tasks N] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, help=f"tasks in the big store (default {TASKS:,})")
    parser.add_argument("--baseline-tasks", type=int, default=BASELINE_TASKS,
                        help=f"tasks in the baseline store (default {BASELINE_TASKS:,})")
    parser.add_argument("--live", type=int, default=LIVE, help=f"live tasks in each store (default {LIVE})")
    parser.add_argument("--reps", type=int, help="the most timed calls per lookup (default 1000)")
    parser.add_argument("--budget", type=float, help="seconds per lookup and store (default 1.0)")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK_TASKS:,} tasks")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args(argv)
    figures = run(tasks=args.tasks, baseline_tasks=args.baseline_tasks, live=args.live, reps=args.reps,
                  budget_s=args.budget, quick=args.quick)
    print(json.dumps(figures, indent=2) if args.json else render(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
