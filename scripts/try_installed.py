"""Try CoWorker as a new user gets it: the built wheel installed into a fresh virtual environment, in an empty
directory outside the checkout, with a fresh CoWorker home.

Then, as the README says: ``coworker setup``; ``coworker demo`` (exit 0, "OK"); and the two-process story: alice
served by ``python alice.py`` in one process, bob in another asking for trust, approval from a third command,
and bob's call answered by alice's skill over the local XMTP node; then alice's dashboard, logged in with the link
``coworker dashboard`` prints. Exits 0 when every step went as it should;
otherwise prints the step that failed with what it printed, and exits 1. Leaves nothing running.

Run: ``python scripts/try_installed.py dist/coworker_xmtp-*.whl`` (``make wheel`` builds it; .ci/run does both).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ALICE = '''\
from coworker import Agent

alice = Agent("alice")


@alice.skill("summarize", description="Summarize text")
def summarize(text: str, max_words: int = 50) -> dict:
    return {"summary": " ".join(text.split()[:max_words]), "word_count": len(text.split())}


if __name__ == "__main__":
    alice.serve()
'''
STEP_TIMEOUT = 300.0  # seconds for one command (the first `coworker setup` runs npm ci)
READY_TIMEOUT = 60.0  # seconds for alice to be up on the network


class Failed(Exception):
    pass


def run(env: dict[str, str], cwd: Path, *args: str, check: bool = True) -> str:
    started = time.monotonic()
    print(f"$ {' '.join(args)}", flush=True)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT,
                            check=False)
    output = (result.stdout + result.stderr).rstrip()
    if output:
        print("  " + output.replace("\n", "\n  "), flush=True)
    print(f"  (exit {result.returncode}, {time.monotonic() - started:.1f} s)", flush=True)
    if check and result.returncode != 0:
        raise Failed(f"`{' '.join(args)}` exited with {result.returncode}")
    return result.stdout


def wait_serving(env: dict[str, str], cwd: Path, coworker: str, alice: subprocess.Popen[str]) -> str:
    """Alice's wallet once her running process answers on its control port with an XMTP inbox."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if alice.poll() is not None:
            raise Failed(f"python alice.py exited with {alice.returncode}")
        result = subprocess.run([coworker, "--agent", "alice", "bridge", "status", "--json"], cwd=cwd, env=env,
                                capture_output=True, text=True, timeout=30, check=False)
        if result.returncode == 0:
            status = json.loads(result.stdout)
            if isinstance(status.get("xmtp"), dict) and status["xmtp"].get("inboxId"):
                return str(status["wallet"])
        time.sleep(0.2)  # a script polling a process it started, not a test
    raise Failed(f"alice was not serving after {READY_TIMEOUT:g} s")


def try_dashboard(link: dict[str, str]) -> None:
    """Log in to alice's dashboard with the link `coworker dashboard` printed; its task page lists bob's call and
    its script is served (the templates and assets are in the wheel)."""
    url = urllib.parse.urlsplit(link["login"])
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    connection.request("GET", f"{url.path}?{url.query}")
    login = connection.getresponse()
    login.read()
    cookie = (login.getheader("set-cookie") or "").split(";")[0]
    if login.status != 303 or not cookie:
        raise Failed(f"the dashboard's login link answered {login.status}")
    for path, expected in (("/tasks", "summarize"), ("/assets/dashboard.js", "EventSource")):
        connection.request("GET", path, headers={"Cookie": cookie})
        page = connection.getresponse()
        body = page.read().decode()
        if page.status != 200 or expected not in body:
            raise Failed(f"the dashboard's {path} answered {page.status} without {expected!r}")
    connection.close()
    print(f"dashboard at {link['url']}: logged in once, task page and script served", flush=True)


def main(wheel: Path) -> int:
    wheel = wheel.resolve()
    work = Path(tempfile.mkdtemp(prefix="coworker-try-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COWORKER_", "VIRTUAL_ENV", "PYTHON"))}
    env["COWORKER_HOME"] = str(work / "home")  # a new user's home: setup installs the Node side from scratch
    env["COWORKER_LOCAL_ONLY"] = "1"
    bin_dir = work / "venv" / "bin"
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    coworker, python = str(bin_dir / "coworker"), str(bin_dir / "python")
    alice: subprocess.Popen[str] | None = None
    try:
        run(env, work, sys.executable, "-m", "venv", str(work / "venv"))
        run(env, work, python, "-m", "pip", "install", "--quiet", str(wheel))
        run(env, work, coworker, "setup")
        demo = run(env, work, coworker, "demo")
        if not demo.rstrip().endswith("OK"):
            raise Failed("coworker demo did not end with OK")

        (work / "alice.py").write_text(ALICE)
        with open(work / "alice.out", "w") as alice_out:  # the child keeps its own copy of the descriptor
            alice = subprocess.Popen([python, "alice.py"], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                     stdout=alice_out, stderr=subprocess.STDOUT, text=True)
        alice_wallet = wait_serving(env, work, coworker, alice)
        print(f"alice serving as {alice_wallet}:\n  " + (work / "alice.out").read_text().rstrip()
              .replace("\n", "\n  "), flush=True)
        run(env, work, coworker, "init", "--name", "bob")
        bob_wallet = json.loads(run(env, work, coworker, "--agent", "bob", "status", "--json"))["wallet"]
        first = json.loads(run(env, work, coworker, "--agent", "bob", "connect", alice_wallet, "--json"))
        if first["skills"] != []:
            raise Failed(f"a stranger saw skills: {first['skills']}")
        asked = run(env, work, coworker, "--agent", "bob", "trust", "request", alice_wallet, "--reason", "hello")
        if "pending" not in asked:
            raise Failed("the trust request was not pending")
        run(env, work, coworker, "--agent", "alice", "trust", "list")
        run(env, work, coworker, "--agent", "alice", "trust", "approve", bob_wallet)
        second = json.loads(run(env, work, coworker, "--agent", "bob", "connect", alice_wallet, "--json"))
        if second["skills"] != ["summarize"]:
            raise Failed(f"after approval bob sees {second['skills']}, not ['summarize']")
        answer = run(env, work, coworker, "--agent", "bob", "call", alice_wallet, "summarize",
                     "--input", json.dumps({"text": "hello from another process", "max_words": 2}))
        if "hello from" not in answer or "4" not in answer:
            raise Failed(f"unexpected call result: {answer!r}")
        try_dashboard(json.loads(run(env, work, coworker, "--agent", "alice", "dashboard", "--json", "--no-browser")))
        alice.send_signal(signal.SIGINT)
        if alice.wait(30) != 0:
            raise Failed(f"alice exited with {alice.returncode} on Ctrl-C")
        print("installed package: setup, demo, a two-process call over XMTP and the dashboard: OK", flush=True)
        return 0
    except (Failed, subprocess.TimeoutExpired, ValueError, KeyError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr, flush=True)
        if (work / "alice.out").exists():
            print("alice.py printed:\n" + (work / "alice.out").read_text(), file=sys.stderr)
        return 1
    finally:
        if alice is not None and alice.poll() is None:
            alice.kill()
            alice.wait()
        if (bin_dir / "coworker").exists():
            subprocess.run([coworker, "devnet", "stop"], cwd=work, env=env, capture_output=True, timeout=60,
                           check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/try_installed.py WHEEL")
    sys.exit(main(Path(sys.argv[1])))
