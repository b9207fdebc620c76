"""Loading one benchmark from another by path (``benchmarks/`` is not a package); not a benchmark itself."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent


def sibling(name: str) -> ModuleType:
    """The benchmark module ``name`` of this directory, loaded once under the name run.py gives it."""
    module_name = f"benchmarks_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def print_figures(name: str, figures: Callable[[], dict[str, Any]], render: Callable[[dict[str, Any]], str],
                  as_json: bool) -> int:
    """A devnet benchmark's ending: its figures printed (JSON or a table); exit status 2, said on stderr, when
    port 5556, where it runs its own devnet, is taken."""
    from coworker.devnet import PortInUseError

    try:
        result = figures()
    except PortInUseError as exc:
        print(f"{name}: this benchmark runs its own devnet on port 5556, which is taken: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if as_json else render(result))
    return 0
