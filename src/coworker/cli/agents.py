"""``coworker init``, ``status``, ``tasks`` and ``task``: an agent's own state, read through the library."""

from __future__ import annotations

import argparse
import getpass
import os
from typing import Any

from coworker import _paths
from coworker.agent.agent import AsyncAgent
from coworker.agent.config import (
    LOCK_FILE,
    AgentLock,
    network_name,
    read_config,
    validate_agent_name,
    write_config,
)
from coworker.cli.common import (
    CliError,
    count,
    json_text,
    key_kind,
    open_agent,
    print_json,
    published_skills,
    shown,
)
from coworker.cli.network import bridge_status
from coworker.core.tasks import Receipt
from coworker.core.trust import TrustTier
from coworker.store.identity import Identity

# ---- init -----------------------------------------------------------------------------------------------------


def _passphrase_for_init(encrypt: bool) -> str:
    """COWORKER_PASSPHRASE if set, else (with --encrypt) one typed twice at the terminal, else "" (no encryption)."""
    env = os.environ.get("COWORKER_PASSPHRASE")
    if env:
        return env
    if not encrypt:
        return ""
    first = getpass.getpass("Passphrase for the new wallet: ")
    if not first:
        raise CliError("the passphrase is empty")
    if getpass.getpass("Repeat the passphrase: ") != first:
        raise CliError("the passphrases differ; nothing was created")
    return first


def cmd_init(args: argparse.Namespace) -> int:
    name = validate_agent_name(args.name)
    data_dir = _paths.agent_dir(name)
    if Identity.exists(data_dir):
        agent = AsyncAgent(name, passphrase="")
        try:
            config = read_config(data_dir)
            if args.network is not None and config.get("network") != args.network:
                write_config(data_dir, {**config, "name": name, "network": args.network})
                print(f"agent {name!r} already exists; its network is now {args.network}")
            else:
                print(f"agent {name!r} already exists; its wallet is kept")
            _print_agent(agent)
        finally:
            agent.close()
        return 0
    passphrase = _passphrase_for_init(args.encrypt)
    agent = AsyncAgent(name, passphrase=passphrase)
    try:
        write_config(agent.data_dir, {"name": name, "network": args.network or "local"})
        print(f"created agent {name!r}")
        _print_agent(agent)
    finally:
        agent.close()
    return 0


def _print_agent(agent: AsyncAgent) -> None:
    kind, key_path = key_kind(agent.data_dir)
    net, source = network_name(None, agent.data_dir)
    print(f"  wallet:    {agent.wallet}")
    print(f"  directory: {agent.data_dir}")
    print(f"  key:       {key_path} ({kind})")
    print(f"  network:   {net} (from {source})")


# ---- status ---------------------------------------------------------------------------------------------------


def _status(agent: AsyncAgent) -> dict[str, Any]:
    net, source = network_name(None, agent.data_dir)
    kind, key_path = key_kind(agent.data_dir)
    pid = AgentLock.holder(agent.data_dir / LOCK_FILE)
    counts = agent.store.call_counts()
    made = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("out:")}
    served = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("in:")}
    trusted = [(w, t) for w, t in agent.store.trusted_peers() if t > TrustTier.UNTRUSTED]
    bridge = (bridge_status(agent.name) or {}) if pid is not None else {}
    published, hidden = published_skills(agent), agent.store.hidden_skills()
    return {
        "name": agent.name,
        "wallet": agent.wallet,
        "network": net,
        "network_source": source,
        "last_network": agent.store.get_setting("network"),
        "data_dir": str(agent.data_dir),
        "key": {"kind": "encrypted" if kind == "encrypted keystore" else "plain", "path": str(key_path)},
        "running": pid is not None,
        "pid": pid if pid is not None and pid > 0 else None,
        "trusted_peers": len(trusted),
        "peers_by_protocol": agent.store.peers_by_protocol(),  # {"2": n, "1.0": n}: CoWorker 1.0 agents among them
        "pending_trust_requests": len(agent.trust_requests()),
        "calls": {"made": sum(made.values()), "served": sum(served.values()),
                  "made_by_status": made, "served_by_status": served},
        # what peers may see, as published on the last run; hidden ones only by name (`coworker skills`)
        "skills": None if published is None else [c for c in published if c.get("name") not in hidden],
        "hidden_skills": sorted(str(c.get("name")) for c in published or [] if c.get("name") in hidden),
        "xmtp": bridge.get("xmtp"),
        "rate_limits": bridge.get("rate_limits"),  # what the running agent dropped, by reason
        "outbox": bridge.get("outbox"),  # what it sent: frames, messages in them, the write budget used
        "away": bridge.get("away"),  # peers presumed away, with our live tasks there
        "dashboard": bridge.get("dashboard"),  # its URL while the agent serves one (`coworker dashboard` logs in)
    }


def _writes_line(outbox: object, network: str) -> str | None:
    """The running agent's write budget and batching, e.g. ``writes:    XMTP writes: 123 of 3000 in the last
    300 s (412 messages in 123 sends)``; None when it does not say."""
    if not isinstance(outbox, dict):
        return None
    try:
        frames, payloads = int(outbox["frames_sent"]), int(outbox["payloads_sent"])
        window = float(outbox["write_window_s"])
        limit, used = outbox.get("write_limit"), outbox.get("writes_in_window")
    except (KeyError, TypeError, ValueError):
        return None
    sent = f"{payloads} messages in {frames} sends"
    if limit is None or used is None:
        return f"writes:    {sent}, no write limit on {shown(network)}"
    kind = "XMTP writes" if network in ("local", "dev", "production") else "writes"
    waited = outbox.get("budget_wait_s")
    waiting = f", {float(waited):.1f} s waited for the budget" if isinstance(waited, (int, float)) and waited else ""
    return f"writes:    {kind}: {shown(used)} of {shown(limit)} in the last {window:g} s ({sent}{waiting})"


def cmd_status(args: argparse.Namespace) -> int:
    with open_agent(args) as agent:
        status = _status(agent)
    if args.json:
        print_json(status)
        return 0

    def breakdown(by_status: dict[str, int]) -> str:
        return f" ({', '.join(f'{n} {s}' for s, n in sorted(by_status.items()))})" if by_status else ""

    pid = f" (pid {status['pid']})" if status["pid"] else ""
    running = f"yes{pid}" if status["running"] else "no"
    key_kind = "encrypted keystore" if status["key"]["kind"] == "encrypted" else "plain file"
    last = f", last run on {status['last_network']}" if status["last_network"] else ""
    skills = status["skills"]
    calls = status["calls"]
    print(f"agent:     {status['name']}")
    print(f"wallet:    {status['wallet']}")
    print(f"network:   {status['network']} (from {status['network_source']}{last})")
    print(f"data dir:  {status['data_dir']}")
    print(f"key:       {status['key']['path']} ({key_kind})")
    print(f"running:   {running}")
    xmtp = status["xmtp"]
    if isinstance(xmtp, dict) and "inboxId" in xmtp:
        print(f"XMTP:      inbox {shown(xmtp['inboxId'])}, installation {shown(xmtp['installationId'])}, "
              f"sidecar pid {shown(xmtp['pid'])}")
    if status.get("dashboard"):
        print(f"dashboard: {shown(status['dashboard'])} (`coworker dashboard --agent {shown(status['name'])}` "
              f"logs in)")
    writes = _writes_line(status["outbox"], status["network"])
    if writes:
        print(writes)
    away = status["away"]
    if isinstance(away, dict) and away:
        print("away:      " + "; ".join(f"{shown(wallet)} ({count(tasks, 'task')} waiting, probed)"
                                        for wallet, tasks in sorted(away.items())[:5])
              + (f"; {len(away) - 5} more" if len(away) > 5 else ""))
    old = status["peers_by_protocol"].get("1.0", 0)
    if old:
        print(f"peers:     {count(status['peers_by_protocol'].get('2', 0), 'peer')} on protocol v2, "
              f"{old} on CoWorker 1.0 (spoken to in 1.0)")
    print(f"trust:     {count(status['trusted_peers'], 'trusted peer')}, "
          f"{count(status['pending_trust_requests'], 'pending request')}")
    print(f"calls:     {calls['made']} made{breakdown(calls['made_by_status'])}, "
          f"{calls['served']} served{breakdown(calls['served_by_status'])}")
    if skills is None:
        print("skills:    none published yet (the agent has not run)")
    else:
        names = ", ".join(shown(c.get("name", "?")) for c in skills) or "none"
        hidden = status["hidden_skills"]
        when = "published now" if status["running"] else "published on the last run"
        print(f"skills:    {len(skills)} {when}: {names}"
              + (f" ({len(hidden)} more hidden from peers: `coworker skills` lists them)" if hidden else ""))
    return 0


# ---- tasks ----------------------------------------------------------------------------------------------------

def cmd_tasks(args: argparse.Namespace) -> int:
    with open_agent(args) as agent:
        tasks = agent.list_tasks(args.state, args.limit, direction=args.direction)
    if args.json:
        print_json(tasks)
        return 0
    if not tasks:
        print("no tasks" + (f" in state {args.state}" if args.state else ""))
        return 0
    print(f"{'TASK':<32}  {'DIR':<3}  {'STATE':<14}  {'SKILL':<20}  {'MS':>9}  PEER")
    for t in tasks:
        print(f"{shown(t['task_id']):<32}  {shown(t['direction']):<3}  {shown(t['state']):<14}  "
              f"{shown(t['skill'])[:20]:<20}  {t['duration_ms']:>9.1f}  {shown(t['peer'])}")
    return 0


def _full_task_id(agent: AsyncAgent, given: str) -> str:
    """The id of the one task whose id starts with ``given`` (a whole id, or enough of its first digits)."""
    prefix = given.strip().lower()
    if not prefix or any(c not in "0123456789abcdef" for c in prefix):
        raise CliError(f"not a task id: {given!r} (task ids are 32 hex digits; their first few are enough)")
    found, first = agent.store.task_ids_starting(prefix)
    if found == 0:
        raise CliError(f"no task {prefix}" if len(prefix) == 32 else f"no task id starts with {prefix!r}")
    if found > 1:
        shown = ", ".join(first) + (", ..." if found > len(first) else "")
        raise CliError(f"{found} tasks have an id starting with {prefix!r} ({shown}): give more digits")
    return first[0]


def cmd_task(args: argparse.Namespace) -> int:
    with open_agent(args) as agent:
        task = agent.get_result(_full_task_id(agent, args.task_id))
        provider = task["peer"] if task["direction"] == "out" else agent.wallet
    receipt = task["receipt"]
    task["receipt_verifies"] = None
    if receipt is not None:
        try:
            task["receipt_verifies"] = Receipt.from_dict(receipt).verify(provider)
        except ValueError:
            task["receipt_verifies"] = False
    if args.json:
        print_json(task)
        return 0
    print(f"task      {shown(task['task_id'])} ({'ours' if task['direction'] == 'out' else 'served'})")
    print(f"peer      {shown(task['peer'])}")
    print(f"skill     {shown(task['skill'])}")
    print(f"state     {shown(task['state'])}" + (f" after {task['attempts']} runs" if task["attempts"] > 1 else ""))
    if task["error"] is not None:
        error = task["error"]
        print(f"error     {shown(error['code'])}: {shown(error['message'])}"
              + (f" (at {shown(error['path'])})" if error["path"] else ""))
    if task["state"] == "completed":
        print(f"result    {json_text(task['result'], indent=None)}")
    if receipt is not None:
        verdict = "signature verifies" if task["receipt_verifies"] else "SIGNATURE DOES NOT VERIFY"
        print(f"receipt   {shown(receipt['status'])}, {shown(receipt['duration_ms'])} ms, "
              f"{shown(receipt['input_bytes'])} B in, {shown(receipt['output_bytes'])} B out, "
              f"signed by {shown(receipt['provider'])}: {verdict}")
    return 0
