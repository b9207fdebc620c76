"""``python -m coworker.devnet run|start|stop|status``: the devnet without the main CLI."""

from __future__ import annotations

import argparse
import sys

from coworker.devnet._cli import add_commands


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the devnet command; return its exit code."""
    parser = argparse.ArgumentParser(prog="python -m coworker.devnet", description="The CoWorker devnet.")
    add_commands(parser)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
