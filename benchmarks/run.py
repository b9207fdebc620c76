"""Run every benchmark in this directory and print its figures (``make bench``).

A benchmark is a module here that exposes ``run()`` (plain or async) returning its figures, and optionally
``render(figures) -> str`` to format them; ``run.py`` itself and modules starting with ``_`` are not
benchmarks. Known benchmarks run first, in the order below; a module without ``run()`` is skipped with a note.

Benchmarks print numbers and ratios; they never fail on a wall-clock threshold (docs/style.md rule 20). The
exit status is non-zero only when a benchmark crashed.

Usage: ``python benchmarks/run.py [name ...]`` (default: all).
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ORDER = ("core_roundtrip", "devnet_pingpong", "xmtp_calls", "flood", "absent_peer", "store_lookups", "import_time")


def discover() -> list[str]:
    """Benchmark module names: the known ones first (if present), then any others, alphabetically."""
    found = {p.stem for p in HERE.glob("*.py") if p.stem != "run" and not p.stem.startswith("_")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_one(name: str) -> str:
    """Run one benchmark; its outcome: "ok", "skipped" or "failed"."""
    print(f"== {name} ==", flush=True)
    try:
        module = load(name)
    except Exception:
        traceback.print_exc()
        print(f"{name}: failed to import\n", flush=True)
        return "failed"
    run = getattr(module, "run", None)
    if not callable(run):
        print(f"{name}: skipped (no run() function)\n", flush=True)
        return "skipped"
    started = time.perf_counter()
    try:
        figures: Any = run()
        if inspect.iscoroutine(figures):
            figures = asyncio.run(figures)
    except Exception:
        traceback.print_exc()
        print(f"{name}: failed\n", flush=True)
        return "failed"
    render = getattr(module, "render", None)
    if callable(render):
        print(render(figures))
    elif figures is not None:
        print(json.dumps(figures, indent=2, default=str))
    print(f"({name}: {time.perf_counter() - started:.1f} s)\n", flush=True)
    return "ok"


def main(argv: list[str]) -> int:
    names = argv or discover()
    unknown = [n for n in names if not (HERE / f"{n}.py").exists()]
    for n in unknown:
        print(f"{n}: skipped (no benchmarks/{n}.py)")
    outcomes = {n: run_one(n) for n in names if n not in unknown}
    if "devnet_pingpong" not in outcomes and not argv:
        print("devnet_pingpong: skipped (benchmarks/devnet_pingpong.py does not exist yet)")
    print("summary: " + ", ".join(f"{n} {o}" for n, o in outcomes.items()))
    return 1 if "failed" in outcomes.values() else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
