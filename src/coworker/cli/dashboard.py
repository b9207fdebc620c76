"""``coworker dashboard``: a one-time login link to a running agent's dashboard, printed and opened.

The agent serves the dashboard (``coworker serve``, ``coworker bridge start``, ``agent.serve()``); this asks it,
over its control port, for a link that logs one browser in once, within a few minutes. A browser is opened only
where there is a display to show it (``--no-browser`` never opens one): on a headless machine, a terminal browser
would take over the terminal.

Example::

    coworker dashboard --agent alice
    coworker dashboard --agent alice --no-browser --json   # {"url": ..., "login": ...}
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from coworker import _paths
from coworker.agent.control import ControlClient
from coworker.cli.common import CliError, print_json


def _cmd_dashboard(args: argparse.Namespace, choose: Callable[[argparse.Namespace], str]) -> int:
    name = choose(args)
    client = ControlClient.find(_paths.agent_dir(name))
    if client is None:
        raise CliError(f"agent {name} is not running: start it with `coworker serve --agent {name}` or "
                       f"`coworker bridge start --agent {name}` (the dashboard is served by the running agent)")
    link = client.request("dashboard_link")
    if args.json:
        print_json(link)
        return 0
    opened = False if args.no_browser else _open(link["login"])
    print(f"dashboard of {name}: {link['url']}")
    print(f"log in (this link works once, for 5 minutes): {link['login']}")
    if opened:
        print("opened in your browser", file=sys.stderr)
    return 0


def _open(url: str) -> bool:
    """Open ``url`` in a graphical browser, where there is one."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    import webbrowser

    try:
        return webbrowser.open(url, new=2)
    except webbrowser.Error:
        return False


def register(commands: Any, common: argparse.ArgumentParser, choose: Callable[[argparse.Namespace], str]) -> None:
    """Add ``coworker dashboard`` to the ``coworker`` parser."""
    dashboard = commands.add_parser(
        "dashboard", parents=[common], help="log in to the running agent's dashboard (a one-time link)",
        description="Ask the running agent for a one-time login link to its dashboard, print it and open it in a "
                    "browser where there is one. The link works once, for 5 minutes.")
    dashboard.add_argument("--no-browser", action="store_true", help="print the link only")
    dashboard.add_argument("--json", action="store_true", help="machine-readable output: url and login")
    dashboard.set_defaults(func=lambda args: _cmd_dashboard(args, choose))
