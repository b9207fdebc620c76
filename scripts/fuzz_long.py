"""The fuzz suite's long run: a million broken envelopes (``tests/fuzzing.py``) against one agent on the in-memory
network, from a trusted peer and from a stranger. Prints cases, crashes (errors the agent logged, exceptions its
event loop saw), served tasks left live, answers sent, RSS before and after, and the time taken; exits 1 when
anything crashed or a served task was left live.

Run: ``python scripts/fuzz_long.py [--cases N] [--seed S]`` (default 1,000,000 cases, about a minute or two).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_fuzz import run_fuzz


async def main(cases: int, seed: int) -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        outcome = await run_fuzz(Path(directory), cases, seed, stop_at_error=False)
        elapsed = time.perf_counter() - started
        alice = outcome["alice"]
        crashes = len(outcome["errors"]) + len(outcome["loop_errors"])
        print(f"cases:        {outcome['cases']:,} (seed {seed})")
        print(f"time:         {elapsed:.1f} s ({outcome['cases'] / elapsed:,.0f} cases/s)")
        print(f"crashes:      {crashes} ({len(outcome['errors'])} logged errors, "
              f"{len(outcome['loop_errors'])} event loop errors)")
        print(f"live served:  {len(outcome['live_in'])} tasks")
        print(f"served:       {outcome['served']:,} tasks; answers sent: {outcome['answers']:,}")
        print(f"RSS:          {outcome['rss_before']:.0f} MB before, {outcome['rss_after']:.0f} MB after")
        print(f"afterwards:   a trusted peer's call answered {outcome['answer']!r}")
        kinds = collections.Counter(record.strip().splitlines()[-1][:160] for record in outcome["errors"])
        for kind, count in kinds.most_common(10):
            print(f"  {count:>6}  {kind}")
        await alice.stop()
        alice.close()
    return 1 if crashes or outcome["live_in"] else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.cases, args.seed)))
