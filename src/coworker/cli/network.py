"""The ``coworker`` commands that talk to the network: serve, bridge, connect, call, invite, trust request.

A command that needs the agent on the network uses the agent's running process when there is one (through its
control endpoint, see :mod:`coworker.agent.control`); otherwise it starts the agent in this process for the length of
the command (its XMTP sidecar included) and stops it afterwards.

Example::

    coworker serve skills.py              # a file that defines `agent = Agent("my-bot")` and its skills
    coworker bridge start skills.py       # the same, in the background
    coworker invite                       # a code holding wallet, name and network, to give a peer
    coworker connect cwi1.eyJ3YWxsZXQiOi...
    coworker call 0xB0B... summarize --input '{"text": "hello"}'
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from coworker import _paths
from coworker._errors import CoworkerError
from coworker._process import NotReady, spawn_ready, wait_exit
from coworker.agent.agent import AsyncAgent
from coworker.agent.blocking import Agent
from coworker.agent.config import LOCK_FILE, AgentLock, network_name, parse_tier, validate_agent_name
from coworker.agent.control import ControlClient
from coworker.agent.invites import make_invite, peer_wallet
from coworker.agent.peer import peer_json
from coworker.cli.common import CliError, EscapingFormatter, json_text, open_agent, shown, suggest
from coworker.store.identity import Identity

log = logging.getLogger("coworker.cli")

_NOT_RUNNING = 3
_START_TIMEOUT = 90.0
_STOP_TIMEOUT = 15.0
DASHBOARD_PORT = 8090  # coworker.dashboard.DEFAULT_PORT (not imported: the dashboard loads only when served)


# ---- invites --------------------------------------------------------------------------------------------------


# ---- running an agent for one command -------------------------------------------------------------------------


def _run_with_agent(name: str, remote: Callable[[ControlClient], Any],
                    local: Callable[[AsyncAgent], Awaitable[Any]]) -> Any:
    """``remote(control)`` when the agent runs in another process, else ``local(agent)`` in this one."""
    data_dir = _paths.agent_dir(name)
    client = ControlClient.find(data_dir)
    if client is not None:
        return remote(client)
    agent = AsyncAgent(name)

    async def run() -> Any:
        try:
            await agent.start()
            return await local(agent)
        finally:
            await agent.stop()

    try:
        return asyncio.run(run())
    finally:
        agent.close()


def _cmd_connect(args: argparse.Namespace, choose: Callable[[argparse.Namespace], str]) -> int:
    name = choose(args)
    wallet, invited_as = peer_wallet(args.target, network_name(None, _paths.agent_dir(name))[0])
    timeout = args.timeout
    async def local(agent: AsyncAgent) -> dict[str, Any]:
        return peer_json(await agent.connect(wallet, timeout=timeout))

    peer = _run_with_agent(name, lambda c: c.request("connect", timeout + 10, wallet=wallet, timeout=timeout), local)
    if args.json:
        print(json.dumps(peer, indent=2))
        return 0
    invited = f" (invited as '{shown(invited_as)}')" if invited_as and invited_as != peer["name"] else ""
    print(f"peer:       {shown(peer['name'])}{invited}")
    print(f"wallet:     {shown(peer['wallet'])}")
    print(f"round trip: {peer['rtt_ms']:.1f} ms")
    print(f"we trust it: {shown(peer['trust_tier'])} (what we may see depends on how much it trusts us)")
    cards = peer["skill_cards"]
    if not cards:
        print("skills:     none visible to us: the peer does not trust us yet.")
        ask = suggest(args, name, f"trust request {shown(peer['wallet'])}")
        print(f"            ask it with {ask}")
        return 0
    print(f"skills:     {len(cards)} visible to us")
    names = [shown(card.get("name", "?")) for card in cards]
    width = max(len(n) for n in names)
    for card_name, card in zip(names, cards, strict=True):
        first_line = str(card.get("description") or "").splitlines()[0] if card.get("description") else ""
        print(f"  {card_name:<{width}}  {shown(first_line)}")
    return 0


def _parse_input(text: str) -> dict[str, Any]:
    source = "--input"
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        source = str(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{source} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError(f"{source} must be a JSON object, like '{{\"text\": \"hello\"}}'")
    return value


def _cmd_call(args: argparse.Namespace, choose: Callable[[argparse.Namespace], str]) -> int:
    name = choose(args)
    wallet, _ = peer_wallet(args.target, network_name(None, _paths.agent_dir(name))[0])
    payload, timeout = _parse_input(args.input), args.timeout
    output = _run_with_agent(
        name, lambda c: c.request("call", timeout + 10, wallet=wallet, skill=args.skill, input=payload,
                                  timeout=timeout),
        lambda a: a.call(wallet, args.skill, payload, timeout=timeout))
    if isinstance(output, str) and not args.json:
        print(shown(output, lines=True))  # text as it is, but for control characters other than newline and tab
    else:
        print(json_text(output))
    return 0


def _cmd_trust_request(args: argparse.Namespace, choose: Callable[[argparse.Namespace], str]) -> int:
    name = choose(args)
    wallet, _ = peer_wallet(args.target, network_name(None, _paths.agent_dir(name))[0])
    tier = parse_tier(args.tier)
    with open_agent(args) as me:  # refused before the agent starts or anything is sent
        if me.wallet.lower() == wallet.lower():
            raise CliError(f"{wallet} is agent {name}'s own wallet: an agent does not ask itself for trust")
    state = _run_with_agent(
        name, lambda c: c.request("request_trust", 40, wallet=wallet, tier=int(tier), reason=args.reason),
        lambda a: a.request_trust(wallet, tier, args.reason))
    explain = {"granted": "the peer trusts us now", "pending": "the peer's owner must approve it",
               "denied": "the peer refused"}[state]
    print(f"trust request to {wallet} for {tier.name.lower()}: {shown(state)} ({explain})")
    return 0


def _cmd_invite(args: argparse.Namespace, choose: Callable[[argparse.Namespace], str]) -> int:
    name = choose(args)
    data_dir = _paths.agent_dir(name)
    identity = Identity.load_or_create(data_dir, os.environ.get("COWORKER_PASSPHRASE"))
    network = network_name(None, data_dir)[0]
    code = make_invite(identity, name, network)
    if args.json:
        print(json.dumps({"invite": code, "wallet": identity.address, "name": name, "network": network}))
        return 0
    print(code)
    print(f"(agent {name}, wallet {identity.address}, network {network}; a peer runs `coworker connect <code>`)",
          file=sys.stderr)
    return 0


# ---- serve and bridge -----------------------------------------------------------------------------------------


def load_app(path: Path, name: str | None) -> Agent | AsyncAgent:
    """The agent a Python file defines (module-level ``Agent`` or ``AsyncAgent``; ``name`` picks among several)."""
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location("coworker_app", path)
    if spec is None or spec.loader is None:
        raise CliError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except CoworkerError:
        raise
    except Exception as exc:
        traceback.print_exc()
        raise CliError(f"{path} failed to load: {type(exc).__name__}: {exc}") from None
    agents = [v for v in vars(module).values() if isinstance(v, (Agent, AsyncAgent))]
    if name is not None:
        agents = [a for a in agents if a.name == name]
    if len(agents) == 1:
        return agents[0]
    found = ", ".join(sorted(a.name for a in agents))
    if not agents:
        wanted = f"agent named {name!r}" if name else "Agent"
        raise CliError(f"{path} defines no {wanted} at module level (like `agent = Agent(\"my-bot\")`)")
    raise CliError(f"{path} defines several agents ({found}): choose one with --agent NAME")


def _log_to_file(data_dir: Path) -> Path:
    logs = _paths.ensure_private_dir(data_dir / "logs")
    path = logs / "agent.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    handler = logging.FileHandler(path)
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    if root.level > logging.INFO or root.level == logging.NOTSET:  # not -v: the terminal shows warnings only
        for terminal in root.handlers:
            terminal.setLevel(max(terminal.level, logging.WARNING))
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    return path


def _cmd_serve(args: argparse.Namespace, choose: Callable[[argparse.Namespace], str]) -> int:
    if args.expose and not args.skills:
        raise CliError("--expose applies to the skill folders of --skills DIR: give at least one")
    app = load_app(Path(args.file), getattr(args, "agent", None)) if args.file is not None else Agent(choose(args))
    _log_to_file(app.data_dir)
    if args.skills:
        _add_skill_folders(app, args.skills, expose=args.expose)
    _add_mcp_servers(app, args.mcp_server)
    if isinstance(app, AsyncAgent):
        return asyncio.run(_serve_async(app, args))
    app.start()
    _report_ready(args)
    app.serve(**_dashboard_options(args))  # says what it serves and how to stop it
    return 0


def _dashboard_options(args: argparse.Namespace) -> dict[str, Any]:
    """serve()'s dashboard options from ``--no-dashboard``, ``--dashboard-port`` and ``--dashboard-host``."""
    if args.no_dashboard:
        return {"dashboard": False}
    return {"dashboard": True, "dashboard_port": args.dashboard_port, "dashboard_host": args.dashboard_host}


def _add_skill_folders(app: Agent | AsyncAgent, roots: list[str], *, expose: bool) -> None:
    """Load the skill folders under ``roots`` (``serve --skills``); say what was loaded and what is hidden."""
    added = app.add_skill_folders(*roots, expose=expose)
    hidden = [s.name for s in added if app.skill_hidden(s.name)]
    names = ", ".join(shown(s.name) for s in added) or "none"
    print(f"skill folders loaded: {names}" + (f"; hidden from peers until `coworker skills expose NAME`: "
                                             f"{', '.join(shown(n) for n in hidden)}" if hidden else ""),
          file=sys.stderr)


def _add_mcp_servers(app: Agent | AsyncAgent, commands: list[str]) -> None:
    """Serve each MCP server's tools as skills (``serve --mcp-server``); they are listed when the agent starts."""
    for command in commands:
        app.add_mcp_server(command)
    if commands:
        print(f"MCP servers: {len(commands)}; their tools become skills for peers trusted at INTERNAL when the "
              f"agent starts", file=sys.stderr)


async def _serve_async(agent: AsyncAgent, args: argparse.Namespace) -> int:
    await agent.start()
    _report_ready(args)
    await agent.serve(**_dashboard_options(args))
    return 0


def _dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-dashboard", action="store_true", help="serve no dashboard")
    parser.add_argument("--dashboard-port", type=int, default=DASHBOARD_PORT, metavar="PORT",
                        help=f"the dashboard's port, or the next free one after it (default {DASHBOARD_PORT}); "
                             f"`coworker dashboard` logs in")
    parser.add_argument("--dashboard-host", default="127.0.0.1", metavar="ADDRESS",
                        help="the address the dashboard listens on (default 127.0.0.1: this machine only)")


def _report_ready(args: argparse.Namespace) -> None:
    """Tell ``coworker bridge start``, through the inherited pipe, that the agent is on the network."""
    if args.ready_fd is not None:
        with os.fdopen(args.ready_fd, "w") as ready:
            ready.write(f"ready {os.getpid()}\n")


def _cmd_bridge_start(args: argparse.Namespace, choose: Callable[[argparse.Namespace], str]) -> int:
    if args.file is not None and getattr(args, "agent", None):
        name = validate_agent_name(args.agent)  # the file may define a new agent: serving it creates its wallet
    elif args.file is not None:
        app = load_app(Path(args.file), None)  # the name of the agent the file defines
        name = app.name
        app.close()
    else:
        name = choose(args)
    data_dir = _paths.agent_dir(name)
    pid = AgentLock.holder(data_dir / LOCK_FILE)
    if pid is not None:
        print(f"agent {name} is already running (pid {pid})", file=sys.stderr)
        return 1
    log_path = _paths.ensure_private_dir(data_dir / "logs") / "agent.log"

    def command(ready_fd: int) -> list[str]:
        serve = [sys.executable, "-m", "coworker", "serve"]
        if args.file is not None:
            serve.append(str(Path(args.file).resolve()))
        dashboard = (["--no-dashboard"] if args.no_dashboard else
                     ["--dashboard-port", str(args.dashboard_port), "--dashboard-host", args.dashboard_host])
        return [*serve, "--agent", name, "--ready-fd", str(ready_fd), *dashboard]

    try:
        child, _ = spawn_ready(command, log_path, _START_TIMEOUT)
    except NotReady as exc:
        raise CliError(f"agent {name} did not start; {exc}") from None
    print(f"agent {name} serves in the background: pid {child}, log {log_path}")
    return _print_bridge(name)


def _cmd_bridge_stop(args: argparse.Namespace, choose: Callable[[argparse.Namespace], str]) -> int:
    name = choose(args)
    data_dir = _paths.agent_dir(name)
    pid = AgentLock.holder(data_dir / LOCK_FILE)
    if pid is None:
        print(f"agent {name} is not running")
        return 0
    client = ControlClient.find(data_dir)
    try:
        if client is None:
            raise CoworkerError("no control endpoint")
        client.request("stop", 10)
    except CoworkerError:
        if pid > 0:
            os.kill(pid, signal.SIGTERM)
    if pid > 0 and not wait_exit(pid, _STOP_TIMEOUT):
        print(f"agent {name} (pid {pid}) did not stop within {_STOP_TIMEOUT:g} s; killing it", file=sys.stderr)
        os.kill(pid, signal.SIGKILL)
        wait_exit(pid, _STOP_TIMEOUT)
    print(f"agent {name} stopped (pid {pid})")
    return 0


def bridge_status(name: str) -> dict[str, Any] | None:
    """What the running agent reports of itself (wallet, network, XMTP inbox and sidecar), or None."""
    client = ControlClient.find(_paths.agent_dir(name))
    if client is None:
        return None
    try:
        result: dict[str, Any] = client.request("status", 15)
    except CoworkerError as exc:
        return {"error": str(exc), "pid": client.pid}
    return result


def _print_bridge(name: str) -> int:
    status = bridge_status(name)
    if status is None:
        print(f"agent {name}: not running")
        return _NOT_RUNNING
    if "error" in status and "wallet" not in status:
        print(f"agent {name}: running (pid {shown(status['pid'])}) but not answering: {shown(status['error'])}")
        return 1
    print(f"agent {name}: running, pid {shown(status['pid'])}, network {shown(status['network'])}")
    print(f"  wallet:       {shown(status['wallet'])}")
    print(f"  skills:       {', '.join(shown(s) for s in status['skills']) or 'none'}")
    if status.get("dashboard"):
        print(f"  dashboard:    {shown(status['dashboard'])} (`coworker dashboard --agent {name}` logs in)")
    xmtp = status.get("xmtp")
    if isinstance(xmtp, dict) and "error" not in xmtp:
        last = xmtp.get("lastSyncMs")
        print(f"  XMTP inbox:   {shown(xmtp.get('inboxId'))}")
        print(f"  installation: {shown(xmtp.get('installationId'))}")
        print(f"  sidecar:      pid {shown(xmtp.get('pid'))}, stream {'up' if xmtp.get('streaming') else 'down'}, "
              f"{shown(xmtp.get('reported'))} messages received, last sync "
              f"{'never' if last is None else f'{max(0.0, (time.time() * 1000 - last) / 1000):.0f} s ago'}")
    elif isinstance(xmtp, dict):
        print(f"  sidecar:      {shown(xmtp['error'])}")
    return 0


def _cmd_bridge_status(args: argparse.Namespace, choose: Callable[[argparse.Namespace], str]) -> int:
    name = choose(args)
    if args.json:
        status = bridge_status(name)
        print(json.dumps({"name": name, "running": status is not None, **(status or {})}, indent=2))
        return 0 if status is not None else _NOT_RUNNING
    return _print_bridge(name)


# ---- the parser -----------------------------------------------------------------------------------------------


def register(commands: Any, common: argparse.ArgumentParser, choose: Callable[[argparse.Namespace], str],
             trust_commands: Any) -> None:
    """Add serve, bridge, connect, call, invite and ``trust request`` to the ``coworker`` parser."""

    def bind(handler: Callable[[argparse.Namespace, Callable[[argparse.Namespace], str]], int]) -> Any:
        return lambda args: handler(args, choose)

    serve = commands.add_parser("serve", parents=[common], help="run an agent and answer peers until Ctrl-C",
                                description="Serve the agent a Python file defines (a module-level "
                                            "`agent = Agent(...)` with its skills), or the chosen agent with "
                                            "no skills when no file is given; --skills DIR adds the skill "
                                            "folders under DIR (OpenClaw, Nanobot, Agent Skills).")
    serve.add_argument("file", nargs="?", default=None, help="a Python file that defines an Agent")
    serve.add_argument("--skills", action="append", default=[], metavar="DIR",
                       help="also serve the skill folders (SKILL.md + scripts) under DIR; repeatable. Not loadable "
                            "ones are skipped with a warning (`coworker skills scan DIR` says why)")
    serve.add_argument("--expose", action="store_true",
                       help="let peers see the folders' skills found for the first time at once (default: hidden "
                            "until `coworker skills expose NAME`)")
    serve.add_argument("--mcp-server", action="append", default=[], metavar="\"CMD ARGS\"|URL",
                       help="also serve the tools of this MCP server as skills (for INTERNAL peers): a command run "
                            "with no shell while the agent runs, or a streamable-HTTP URL; repeatable")
    serve.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    _dashboard_arguments(serve)
    serve.set_defaults(func=bind(_cmd_serve))

    bridge = commands.add_parser("bridge", parents=[common], help="run an agent (and its XMTP sidecar) in the "
                                                                  "background: start, stop, status")
    actions = bridge.add_subparsers(dest="bridge_command", metavar="ACTION")
    start = actions.add_parser("start", parents=[common], help="serve the agent in the background")
    start.add_argument("file", nargs="?", default=None, help="a Python file that defines the agent and its skills")
    _dashboard_arguments(start)
    start.set_defaults(func=bind(_cmd_bridge_start))
    stop = actions.add_parser("stop", parents=[common], help="stop the agent serving in the background")
    stop.set_defaults(func=bind(_cmd_bridge_stop))
    status = actions.add_parser("status", parents=[common], help="is the agent running; its XMTP inbox and sidecar")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=bind(_cmd_bridge_status))
    bridge.set_defaults(func=bind(_cmd_bridge_status), json=False)

    connect = commands.add_parser("connect", parents=[common], help="discover a peer: its name and the skills it "
                                                                    "lets us see")
    connect.add_argument("target", metavar="WALLET|INVITE", help="the peer's wallet address or invite code")
    connect.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)")
    connect.add_argument("--json", action="store_true", help="machine-readable output")
    connect.set_defaults(func=bind(_cmd_connect))

    call = commands.add_parser("call", parents=[common], help="run a peer's skill and print its output (text as it "
                                                              "is, anything else as JSON)")
    call.add_argument("target", metavar="WALLET|INVITE", help="the peer's wallet address or invite code")
    call.add_argument("skill", help="the skill's name")
    call.add_argument("--input", default="{}", help="the input, a JSON object, or @FILE to read it from a file")
    call.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the result (default 30)")
    call.add_argument("--json", action="store_true", help="print the output as JSON, text included")
    call.set_defaults(func=bind(_cmd_call))

    invite = commands.add_parser("invite", parents=[common], help="print an invite code (wallet, name, network, "
                                                                  "signed) for `coworker connect`")
    invite.add_argument("--json", action="store_true", help="machine-readable output")
    invite.set_defaults(func=bind(_cmd_invite))

    request = trust_commands.add_parser("request", parents=[common], help="ask a peer to trust us")
    request.add_argument("target", metavar="WALLET|INVITE", help="the peer's wallet address or invite code")
    request.add_argument("--tier", default="known", help="the tier to ask for (default: known)")
    request.add_argument("--reason", default="", help="a note for the peer's owner")
    request.set_defaults(func=bind(_cmd_trust_request))
