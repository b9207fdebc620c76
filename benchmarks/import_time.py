"""Start-up cost: ``import coworker`` and ``coworker --help`` in a fresh interpreter, against baselines.

Each contender is a fresh child process of this interpreter (``sys.executable``), timed from spawn to exit
(wall time, output discarded):

``interpreter``     ``python -c pass``: starting Python at all (the floor; spawning the process is in every row)
``stdlib``          ``python -c "import json, asyncio, sqlite3"``: the standard library CoWorker cannot do without
``eth_account``     ``python -c "import eth_account"``: what eth-account alone costs (CoWorker signs with it)
``import coworker`` ``python -c "import coworker"``
``coworker --help`` the ``coworker`` console script next to ``sys.executable`` (``python -m coworker`` when there
                    is none): importing the CLI and building its parser

The children get this environment without ``PYTHONDONTWRITEBYTECODE`` (a user's imports read cached bytecode),
and every contender runs once untimed first, so that the bytecode is written. Then ``reps`` rounds (default 15),
each running every contender once, in turn, so that a change in the machine's load falls on all of them alike;
median and minimum per contender, the median net of the interpreter's median, and its ratio to it.

Also ``python -X importtime -c "import coworker"`` (three runs, the median per module): the 10 modules with the
largest cumulative import time (a package's own time plus everything it imported first).

Target (information, never an exit status; docs/style.md rule 20): ``import coworker`` <= 0.35 s, measured
as the median wall time of the whole child (interpreter start included).

Run: ``python benchmarks/import_time.py`` (``--quick``: 5 rounds; ``--json``). Import: ``run()`` returns the
figures as a dict, ``render(figures)`` formats them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPS = 15
QUICK_REPS = 5
IMPORTTIME_RUNS = 3
TOP = 10
TARGET_S = 0.35
TIMEOUT_S = 60  # one child; a hang would be a bug, not a figure

_IMPORTTIME_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)\s*$")


def child_env() -> dict[str, str]:
    """This environment, less what would change the children's imports: bytecode writing stays on."""
    env = dict(os.environ)
    for name in ("PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME", "PYTHONVERBOSE"):
        env.pop(name, None)
    return env


def cli_command() -> tuple[list[str], str]:
    """How a user starts ``coworker --help`` here, and a label for it."""
    script = Path(sys.executable).with_name("coworker.exe" if os.name == "nt" else "coworker")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "--help"], f"{script.name} --help (console script)"
    return [sys.executable, "-m", "coworker", "--help"], "python -m coworker --help"


def contenders() -> dict[str, tuple[list[str], str]]:
    """Name -> (command, what it is)."""
    py = sys.executable
    cli, cli_label = cli_command()
    return {
        "interpreter": ([py, "-c", "pass"], "python -c pass"),
        "stdlib": ([py, "-c", "import json, asyncio, sqlite3"], "python -c 'import json, asyncio, sqlite3'"),
        "eth_account": ([py, "-c", "import eth_account"], "python -c 'import eth_account'"),
        "import coworker": ([py, "-c", "import coworker"], "python -c 'import coworker'"),
        "coworker --help": (cli, cli_label),
    }


def time_once(command: list[str], env: dict[str, str]) -> float:
    """Seconds from spawning ``command`` to its exit; raises if it fails (a broken import is not a figure)."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=TIMEOUT_S, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}: "
                           f"{done.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def import_times(env: dict[str, str], runs: int) -> list[dict[str, Any]]:
    """Per module of ``import coworker``, the median self and cumulative microseconds over ``runs`` runs of
    ``-X importtime``, largest cumulative first; ``depth`` is the nesting of its first import."""
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import coworker"], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=TIMEOUT_S, check=True)
        for line in done.stderr.decode(errors="replace").splitlines():
            match = _IMPORTTIME_LINE.match(line)
            if match is None:
                continue  # the header, or anything else a module printed
            self_us, cumulative_us, indent, name = match.groups()
            entry = seen.setdefault(name, {"module": name, "depth": len(indent) // 2, "self": [], "cumulative": []})
            entry["self"].append(int(self_us))
            entry["cumulative"].append(int(cumulative_us))
    modules = [{"module": e["module"], "depth": e["depth"], "self_ms": statistics.median(e["self"]) / 1000,
                "cumulative_ms": statistics.median(e["cumulative"]) / 1000} for e in seen.values()]
    modules.sort(key=lambda m: m["cumulative_ms"], reverse=True)
    return modules


def run(*, reps: int | None = None, quick: bool = False, top: int = TOP) -> dict[str, Any]:
    """Time every contender ``reps`` times, interleaved, and return the figures.

    Args:
        reps: timed rounds (default 15; 5 with ``quick``).
        quick: a smoke run.
        top: how many modules of ``-X importtime`` to keep.

    Returns:
        ``{"results": {name: {"command", "label", "median_s", "min_s", "net_s", "x_interpreter"}},
        "importtime": [{"module", "depth", "self_ms", "cumulative_ms"}, ...], "target": ..., ...}``.
    """
    reps = reps or (QUICK_REPS if quick else REPS)
    env = child_env()
    table = contenders()
    for command, _ in table.values():
        time_once(command, env)  # untimed: writes the bytecode, warms the OS's caches
    samples: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(reps):
        for name, (command, _) in table.items():
            samples[name].append(time_once(command, env))
    floor = statistics.median(samples["interpreter"])
    results: dict[str, Any] = {}
    for name, (command, label) in table.items():
        median = statistics.median(samples[name])
        results[name] = {"command": command, "label": label, "median_s": median, "min_s": min(samples[name]),
                         "net_s": median - floor, "x_interpreter": median / floor, "runs": len(samples[name])}
    modules = import_times(env, IMPORTTIME_RUNS)
    measured = results["import coworker"]["median_s"]
    return {
        "results": results,
        "importtime": modules[:top],
        "importtime_modules": len(modules),
        "target": {"s": TARGET_S, "measured_s": measured, "met": measured <= TARGET_S},
        "environment": {"python": platform.python_version(), "executable": sys.executable,
                        "platform": platform.platform(terse=True), "cpus": os.cpu_count(),
                        "date": time.strftime("%Y-%m-%d")},
    }


def render(figures: dict[str, Any]) -> str:
    """The figures as plain text: the contenders, the heaviest imports, the target."""
    env = figures["environment"]
    results = figures["results"]
    runs = next(iter(results.values()))["runs"]
    lines = [f"import time: fresh interpreters, {runs} rounds  (python {env['python']}, {env['cpus']} cpus, "
             f"{env['date']})", ""]
    header = f"{'contender':<16} {'what':<48} {'median s':>9} {'min s':>7} {'net s':>7} {'x start':>8}"
    lines += [header, "-" * len(header)]
    for name, r in results.items():
        lines.append(f"{name:<16} {r['label']:<48} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['net_s']:>7.3f} "
                     f"{r['x_interpreter']:>8.2f}")
    lines.append("net: median less the interpreter's median; x start: median / the interpreter's median")
    lines += ["", f"-X importtime of import coworker, top {len(figures['importtime'])} of "
                  f"{figures['importtime_modules']} modules by cumulative time (median of {IMPORTTIME_RUNS} runs):"]
    header = f"{'cumulative ms':>13} {'self ms':>8}  module (indented by nesting)"
    lines += [header, "-" * len(header)]
    for m in figures["importtime"]:
        lines.append(f"{m['cumulative_ms']:>13.1f} {m['self_ms']:>8.1f}  {'  ' * m['depth']}{m['module']}")
    target = figures["target"]
    ours = results["import coworker"]
    lines += ["", f"import coworker: {ours['median_s']:.3f} s, x {ours['x_interpreter']:.2f} the interpreter's start "
                  f"({results['interpreter']['median_s']:.3f} s)",
              f"target import coworker <= {target['s']} s: {target['measured_s']:.3f} s -> "
              f"{'met' if target['met'] else 'NOT met'}",
              "(targets are information only: this benchmark never fails on them)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python benchmarks/import_time.py [--quick] [--json] [--reps N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, help=f"timed rounds (default {REPS})")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK_REPS} rounds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args(argv)
    figures = run(reps=args.reps, quick=args.quick)
    print(json.dumps(figures, indent=2) if args.json else render(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
