"""``coworker demo``: two agents, in two processes, meet over XMTP through the local node.

The demo makes sure the local XMTP node runs (``coworker devnet``, started in the background if needed), then
starts two agent processes (``python -m coworker.cli.demo ROLE DIR``), each with a fresh wallet under
``$COWORKER_HOME/demo``: *assistant* (summarize, translate) and *researcher* (research, write). It drives them
through their control endpoints, as ``coworker connect`` and ``coworker call`` would, and prints each step of
first contact with its timing: 0 visible skills, the trust request, its approval, discovery, calls and their
results, then a two-step collaboration (research on the researcher, its findings summarized by the
assistant). Every message between the two goes through the node as MLS-encrypted XMTP, via each agent's sidecar.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coworker import _paths
from coworker._errors import CoworkerError
from coworker._process import read_line, tail
from coworker.agent.agent import AsyncAgent
from coworker.agent.control import ControlClient
from coworker.cli.common import shown

log = logging.getLogger("coworker.demo")

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0

_WORDS_FR = {"hello": "bonjour", "world": "monde", "agents": "agents", "from": "de", "the": "le", "and": "et",
             "talk": "parlent", "to": "à", "each": "chacun", "other": "autre"}


def summarize(text: str, max_words: int = 12) -> dict[str, Any]:
    """Summarize text: its first max_words words."""
    words = text.split()
    summary = " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")
    return {"summary": summary, "word_count": len(words)}


def translate(text: str, to: str = "fr") -> dict[str, Any]:
    """Translate text word by word (a toy dictionary, English to French)."""
    if to != "fr":
        raise ValueError(f"this demo only translates to 'fr', not {to!r}")
    return {"translation": " ".join(_WORDS_FR.get(w.lower(), w) for w in text.split()), "to": to}


def research(topic: str) -> dict[str, Any]:
    """Research a topic (canned findings)."""
    return {"findings": [f"{topic}: agents are identified by wallets",
                         f"{topic}: peers see only the skills their trust tier allows"]}


def write(topic: str, findings: list[str]) -> dict[str, Any]:
    """Write a short report from findings."""
    return {"report": f"Report on {topic}\n" + "\n".join(f"- {f}" for f in findings)}


ROLES: dict[str, tuple[Callable[..., Any], ...]] = {"assistant": (summarize, translate),
                                                   "researcher": (research, write)}

COLLABORATION_GOAL = "Research XMTP agents, then summarize the findings"
DEMO_TEXT = ("Hello world from the coworker demo: two agents find each other, agree on trust and call each "
             "other's skills.")


# ---- one agent process ----------------------------------------------------------------------------------------


async def _serve(role: str, data_dir: Path) -> None:
    """Run one demo agent: report on stdout once it is on the network, then serve until stopped.

    It also stops when its stdin closes: the demo holds the other end, so an agent never outlives the demo, even
    one that was killed.
    """
    agent = AsyncAgent(role, network="local", data_dir=data_dir, passphrase="")
    for skill in ROLES[role]:
        agent.add_skill(skill)
    try:
        await agent.start()
        info = getattr(agent.transport, "info", None)
        print(json.dumps({"wallet": agent.wallet, "pid": os.getpid(), "inbox": getattr(info, "inbox_id", None),
                          "installation": getattr(info, "installation_id", None),
                          "sidecar": getattr(info, "pid", None)}), flush=True)
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the ready line only; the banner goes to the log
            await _serve_while_stdin_open(agent)
    finally:
        agent.close()


async def _serve_while_stdin_open(agent: AsyncAgent) -> None:
    loop = asyncio.get_running_loop()
    orphaned = asyncio.Event()

    def read_stdin() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            orphaned.set()

    loop.add_reader(0, read_stdin)
    serving = asyncio.create_task(agent.serve(), name="coworker-demo-serve")
    watching = asyncio.create_task(orphaned.wait(), name="coworker-demo-stdin")
    try:
        await asyncio.wait({serving, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(0)
        watching.cancel()
    if not serving.done():
        log.warning("the demo went away: stopping")
        await agent.stop()
    await serving


# ---- the orchestrator -----------------------------------------------------------------------------------------


@dataclass
class _Process:
    role: str
    data_dir: Path
    log_path: Path
    popen: subprocess.Popen[bytes]
    info: dict[str, Any] | None = None
    control: ControlClient | None = None

    def ask(self, cmd: str, timeout: float = 40.0, **args: Any) -> Any:
        if self.control is None:
            raise CoworkerError(f"the {self.role} process of the demo is not ready")
        return self.control.request(cmd, timeout, **args)


class _Steps:
    def __init__(self) -> None:
        self.total_ms = 0.0

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[list[str]]:
        lines: list[str] = []
        started = time.perf_counter()
        yield lines
        ms = (time.perf_counter() - started) * 1000
        self.total_ms += ms
        print(f"{label:<48} {ms:8.1f} ms", flush=True)
        for line in lines:
            print(f"    {shown(line)}", flush=True)


def _agent_command(role: str, data_dir: Path) -> list[str]:
    """The command line of one demo agent process."""
    return [sys.executable, "-m", "coworker.cli.demo", role, str(data_dir)]


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold a Ctrl-C back until the block ends (then raise it), so that a process started in the block is always
    recorded, and stopped, before the interrupt unwinds the demo."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def _spawn(role: str, root: Path, processes: list[_Process]) -> None:
    """Start one agent process and add it to ``processes``.

    Each agent gets a session of its own, so a Ctrl-C at the terminal reaches the demo alone, which stops the
    agents in order (:func:`_stop`); its stdin is a pipe from the demo, and it stops when that closes.
    """
    data_dir = _paths.ensure_private_dir(root / role)
    log_path = _paths.ensure_private_dir(data_dir / "logs") / "agent.log"
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with _interrupts_held():
            popen = subprocess.Popen(_agent_command(role, data_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=log_fd, start_new_session=True)
            processes.append(_Process(role, data_dir, log_path, popen))
    finally:
        os.close(log_fd)


def _await_ready(processes: list[_Process], timeout: float) -> None:
    """Read each process's ready line (they start side by side; bounded); raise, in one line, if one fails."""
    deadline = time.monotonic() + timeout
    for process in processes:
        stdout = process.popen.stdout
        line = read_line(stdout.fileno(), max(deadline - time.monotonic(), 0.0)) if stdout is not None else ""
        where = f"see {process.log_path}"
        if not line:
            raise CoworkerError(_not_ready(process, timeout))
        try:
            process.info = json.loads(line)
        except ValueError:
            raise CoworkerError(f"the {process.role} process of the demo wrote {line[:60]!r} instead of its ready "
                                f"line; {where}") from None
        process.control = ControlClient.find(process.data_dir)
        if process.control is None:
            raise CoworkerError(f"the {process.role} process of the demo has no control endpoint; {where}")


def _not_ready(process: _Process, timeout: float) -> str:
    """Why a process gave no ready line: it exited (with the last line of its log: the cause), or stayed silent."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.popen.wait(_STOP_TIMEOUT)  # its stdout closed: it is exiting
    code = process.popen.returncode
    if code is None:
        return f"the {process.role} process of the demo did not get ready within {timeout:g} s; see {process.log_path}"
    lines = [line for line in tail(process.log_path, 5).splitlines() if line.strip()]
    cause = f": {lines[-1].strip()}" if lines else ""
    return f"the {process.role} process of the demo exited with code {code} before it was ready{cause}; " \
           f"see {process.log_path}"


def _stop(processes: list[_Process]) -> None:
    """Stop the agent processes and wait for them (bounded): each is asked to stop, so that it leaves the network
    cleanly; one not ready yet, or not answering, is terminated; one still there after the wait, killed. A second
    Ctrl-C meanwhile kills them all at once."""
    try:
        for process in processes:
            if process.popen.poll() is None:
                try:
                    process.ask("stop", 10)
                except CoworkerError:
                    process.popen.terminate()
        for process in processes:
            try:
                process.popen.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
    except KeyboardInterrupt:
        for process in processes:
            if process.popen.poll() is None:
                process.popen.kill()
        for process in processes:
            process.popen.wait()
        raise
    finally:
        for process in processes:
            for pipe in (process.popen.stdin, process.popen.stdout):
                if pipe is not None:
                    pipe.close()


def run_demo() -> bool:
    """The demo, printed step by step; True when every step went as it should."""
    from coworker.transports.xmtp import node
    from coworker.transports.xmtp.transport import autostart_allowed, ensure_local_node

    node.ensure_installed()  # before the processes start: they would each wait for it
    print("CoWorker demo: two agents in two processes, over XMTP (MLS, end-to-end encrypted) through the local "
          "node.", flush=True)
    print(flush=True)
    steps = _Steps()
    root = _paths.home() / "demo"
    shutil.rmtree(root, ignore_errors=True)  # fresh wallets: every run is a first contact
    _paths.ensure_private_dir(root)
    processes: list[_Process] = []
    try:
        with steps.step("1. the local XMTP node (port 5556)") as out:
            pid = ensure_local_node(autostart_allowed())
            out.append("already running" if pid is None else
                       f"started in the background (pid {pid}); `coworker devnet stop` stops it")
        with steps.step("2. start assistant and researcher (2 processes)") as out:
            _spawn("assistant", root, processes)
            _spawn("researcher", root, processes)
            _await_ready(processes, _START_TIMEOUT)
            for process in processes:
                info = process.info or {}
                skills = ", ".join(f.__name__ for f in ROLES[process.role])
                out.append(f"{process.role:<10} {info.get('wallet')}  pid {info.get('pid')}  skills: {skills}")
                out.append(f"{'':<10} XMTP inbox {str(info.get('inbox'))[:16]}..., sidecar pid {info.get('sidecar')}")
        assistant, researcher = processes
        target = (assistant.info or {})["wallet"]
        me = (researcher.info or {})["wallet"]
        with steps.step("3. researcher discovers assistant (first contact)") as out:
            first = researcher.ask("connect", wallet=target)
            out.append(f"researcher sees {len(first['skills'])} skills: assistant does not trust it yet")
        with steps.step("4. researcher asks assistant for trust (known)") as out:
            state = researcher.ask("request_trust", wallet=target, tier=1, reason="the coworker demo")
            pending = assistant.ask("trust_requests")
            listed = "; ".join(f"{r['wallet']} asks for {r['tier']}" for r in pending) or "none"
            out.append(f"assistant answers {state!r}; its pending requests: {listed}")
        with steps.step("5. assistant's owner approves researcher") as out:
            granted = assistant.ask("approve", wallet=me)
            out.append(f"researcher now holds tier {granted} at assistant (the grant is sent to it)")
        with steps.step("6. researcher discovers assistant again") as out:
            second = researcher.ask("connect", wallet=target)
            out.append(f"researcher sees {len(second['skills'])} skills: {', '.join(second['skills'])}")
        with steps.step("7. researcher calls assistant's summarize") as out:
            result = researcher.ask("call", wallet=target, skill="summarize",
                                    input={"text": DEMO_TEXT, "max_words": 8})
            out.append(f"result: {json.dumps(result)}")
        with steps.step("8. researcher calls assistant's translate") as out:
            translated = researcher.ask("call", wallet=target, skill="translate", input={"text": "hello world"})
            out.append(f"result: {json.dumps(translated, ensure_ascii=False)}")
        with steps.step("9. researcher collaborates with assistant") as out:
            together = researcher.ask("collaborate", wallet=target, goal=COLLABORATION_GOAL)
            for step in together["steps"]:
                where = "researcher" if step["side"] == "self" else "assistant"
                fed = f", fed with {', '.join(step['inputs_from'])}'s output" if step["inputs_from"] else ""
                out.append(f"step {step['skill']} on {where}: {step['status']} in {step['duration_ms']:.1f} ms{fed}")
            out.append(f"{together['state']} ({together['progress']} steps): "
                       f"{together['steps'][-1]['output']['summary'][:60]}")
        print(f"{'total':<48} {steps.total_ms:8.1f} ms", flush=True)
    finally:
        _stop(processes)
    return (state == "pending" and not first["skills"] and sorted(second["skills"]) == ["summarize", "translate"]
            and isinstance(result, dict) and result.get("word_count") == len(DEMO_TEXT.split())
            and translated == {"translation": "bonjour monde", "to": "fr"}
            and together["state"] == "completed" and together["progress"] == "2/2"
            and together["steps"][1]["inputs_from"] == ["research"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    asyncio.run(_serve(sys.argv[1], Path(sys.argv[2])))
