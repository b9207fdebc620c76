"""``coworker setup``: install the Node side (the XMTP SDK for the sidecar) into the CoWorker home."""

from __future__ import annotations

import argparse
import shutil
from typing import Any

from coworker.transports.xmtp import node


def _cmd_setup(args: argparse.Namespace) -> int:
    directory = node.ensure_installed(force=args.force)
    version = node.node_version() or (0, 0, 0)
    print(f"Node.js {'.'.join(map(str, version))} ({shutil.which('node')}), "
          f"{node.SDK} {node.sdk_version()} in {directory}: ready")
    return 0


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    setup = commands.add_parser("setup", parents=[common], help="install the XMTP SDK (Node side) once per version")
    setup.add_argument("--force", action="store_true", help="install again even when it is installed")
    setup.set_defaults(func=_cmd_setup)
