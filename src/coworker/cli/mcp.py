"""``coworker mcp``: the agent as an MCP server for MCP hosts (Claude Desktop, Cursor, ...).

Over stdio by default: stdout then carries the protocol only, and logs go to the agent's log file. With
``--http PORT``: streamable HTTP on 127.0.0.1, for requests that carry the bearer token printed on stderr once and
kept in ``<agent dir>/mcp_token`` (mode 0600). When the agent already runs (``coworker serve``), this process drives
it through its control port; otherwise the agent runs in this process (``coworker mcp APP.py`` for an agent with
code skills, as ``coworker serve APP.py``). See :mod:`coworker.agent.mcp_server` for the tools.

Example::

    coworker mcp --peer 0xB0B...                 # for an MCP host's configuration
    coworker mcp skills.py --http 8765           # http://127.0.0.1:8765/mcp, Authorization: Bearer <token>
    coworker mcp pin 0xB0B...                    # its skills are tools of every coworker mcp from now on
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coworker import _paths
from coworker.agent.agent import AsyncAgent
from coworker.agent.blocking import Agent
from coworker.agent.config import network_name
from coworker.agent.control import ControlClient, pin, unpin
from coworker.agent.invites import peer_wallet
from coworker.cli.common import CliError, print_json
from coworker.cli.network import _log_to_file, load_app
from coworker.store.identity import write_private

TOKEN_FILE = "mcp_token"
PIN_COMMANDS = ("pin", "unpin", "pins")
INSTALL_HINT = "coworker mcp needs the MCP Python SDK: pip install 'mcp>=1.10' (or pip install 'coworker-xmtp[mcp]')"


def _cmd_mcp(args: argparse.Namespace, choose: Callable[[argparse.Namespace], str]) -> int:
    if args.file in PIN_COMMANDS:
        return _cmd_pins(args, choose)
    if not args.refresh > 0:
        raise CliError(f"--refresh is a positive number of seconds, got {args.refresh!r}")
    if args.target is not None:
        raise CliError(f"coworker mcp takes one file, got {args.file!r} and {args.target!r} "
                       f"(or one of: {', '.join(PIN_COMMANDS)})")
    try:
        from coworker.agent.mcp_backends import ControlBackend
        from coworker.agent.mcp_server import McpBridge
    except ImportError as exc:
        raise CliError(f"{INSTALL_HINT} ({exc})") from None
    if args.file is not None:
        app: Agent | AsyncAgent = load_app(Path(args.file), getattr(args, "agent", None))
    else:
        app = AsyncAgent(choose(args))
    agent = app.aio if isinstance(app, Agent) else app
    running = ControlClient.find(agent.data_dir)
    _log_to_file(agent.data_dir)
    wallets = [peer_wallet(p, network_name(None, agent.data_dir)[0])[0] for p in args.peer]
    token = None
    if args.http is not None:
        token = secrets.token_urlsafe(32)
        path = agent.data_dir / TOKEN_FILE
        path.unlink(missing_ok=True)
        write_private(path, token.encode())

    async def serve(bridge: McpBridge) -> None:
        async with asyncio.TaskGroup() as group:
            fresh = group.create_task(bridge.keep_fresh(args.refresh))
            try:
                if token is None:
                    await bridge.run_stdio()
                else:
                    await bridge.run_http(args.http, token, ready=lambda port: _announce(port, token, agent))
            finally:
                fresh.cancel()

    async def run() -> None:
        if running is not None:  # one process owns an agent: this one drives it through its control port
            backend = ControlBackend(running, agent.name)
            await serve(McpBridge(backend, peers=wallets, wait=args.wait))
            return
        await agent.start()
        try:
            bridge = McpBridge(agent, peers=wallets, wait=args.wait)
            try:
                await serve(bridge)
            finally:
                await bridge.backend.close()
        finally:
            await agent.stop()

    try:
        asyncio.run(run())
    finally:
        agent.close()
    return 0


def _cmd_pins(args: argparse.Namespace, choose: Callable[[argparse.Namespace], str]) -> int:
    """``coworker mcp pin WALLET|INVITE``, ``unpin WALLET|INVITE``, ``pins``: the peers whose skills ``coworker
    mcp`` offers as tools, besides ``--peer``. Kept in the agent's database; through the running agent if any."""
    name = choose(args)
    data_dir = _paths.agent_dir(name)
    if (args.file == "pins") != (args.target is None):
        raise CliError("usage: coworker mcp pins | coworker mcp pin WALLET|INVITE | coworker mcp unpin WALLET|INVITE")
    wallet = peer_wallet(args.target, network_name(None, data_dir)[0])[0] if args.target is not None else ""
    running = ControlClient.find(data_dir)
    if running is not None:
        if args.file == "pins":
            pinned = running.request("mcp_pins")
        else:
            changed = running.request("mcp_" + args.file, wallet=wallet)
    else:
        agent = AsyncAgent(name)
        try:
            if args.file == "pins":
                pinned = agent.store.pinned_peers()
            else:
                changed = (pin if args.file == "pin" else unpin)(agent.store, wallet)
        finally:
            agent.close()
    if args.file == "pins":
        if args.json:
            print_json(pinned)
        else:
            print("\n".join(pinned) if pinned else "no peer is pinned for coworker mcp (coworker mcp pin WALLET)")
    elif args.file == "pin":
        print(f"pinned {wallet}: coworker mcp offers its skills" + ("" if changed else " (it was already)"))
    else:
        print(f"unpinned {wallet}" + ("" if changed else " (it was not pinned)"))
    return 0


def _announce(port: int, token: str, agent: AsyncAgent) -> None:
    print(f"MCP server of agent {agent.name}: http://127.0.0.1:{port}/mcp\n"
          f"bearer token (also in {agent.data_dir / TOKEN_FILE}): {token}", file=sys.stderr, flush=True)


def register(commands: Any, common: argparse.ArgumentParser, choose: Callable[[argparse.Namespace], str]) -> None:
    """Add ``coworker mcp`` to the ``coworker`` parser."""
    mcp = commands.add_parser(
        "mcp", parents=[common], help="serve the agent's skills and its peers' as MCP tools (stdio, or --http)",
        description="An MCP server for MCP hosts: the agent's skills, the skills of each --peer, and the tools "
                    "peers, connect, call, task, cancel and request_trust; the skills of the peers pinned with "
                    "`coworker mcp pin` too. A call that runs longer than --wait "
                    "returns its task id; the task tool fetches its result later.")
    mcp.add_argument("file", nargs="?", default=None,
                     help="a Python file that defines the agent and its skills; or pin, unpin, pins: mark a peer "
                          "for MCP (its skills become tools of every coworker mcp), unmark it, list them")
    mcp.add_argument("target", nargs="?", default=None, metavar="WALLET|INVITE", help="the peer to pin or unpin")
    mcp.add_argument("--peer", action="append", default=[], metavar="WALLET|INVITE",
                     help="offer this peer's skills as tools (<peer name>__<skill>); repeatable")
    mcp.add_argument("--http", type=int, default=None, metavar="PORT",
                     help="serve streamable HTTP on 127.0.0.1:PORT (0: any free port) with a bearer token")
    mcp.add_argument("--refresh", type=float, default=60.0, metavar="SECONDS",
                     help="discover the pinned peers again this often (and after each trust change), to keep their "
                          "tools current (default 60)")
    mcp.add_argument("--json", action="store_true", help="machine-readable output (coworker mcp pins)")
    mcp.add_argument("--wait", type=float, default=50.0,
                     help="seconds a tool call waits for its result before returning the task id (default 50)")
    mcp.set_defaults(func=lambda args: _cmd_mcp(args, choose))
