"""The sidecar's Node side: finding Node.js and installing the XMTP SDK into the CoWorker home.

The wheel carries the sidecar's sources (``sidecar/``: the scripts, ``package.json`` and the lockfile that pins
``@xmtp/node-sdk``), never its ``node_modules``. :func:`ensure_installed` puts them in
``$COWORKER_HOME/node/<version>-<lock hash>/`` and runs ``npm ci`` there once; ``coworker setup`` calls it, and so
does the first start of an agent that needs it. Each installation is keyed by the CoWorker version and a hash of
the lockfile, so an upgrade installs beside the old one and two versions never share a ``node_modules``. The
scripts go in a folder of that installation named by a hash of their contents (``scripts-<hash>/``; Node finds
``node_modules`` one level up), so two copies of CoWorker whose scripts differ never run each other's; a script
found changed there is written again, which costs a few small reads per start.
``$COWORKER_NODE_DIR`` names another directory to use instead (the tests point every temporary home at one
installation with it).

Every way this can fail (no Node.js, too old a Node.js, no npm, a failed ``npm ci``) raises :class:`SetupError`
with one line that names the missing piece and the command that fixes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from coworker import _paths
from coworker._errors import ConfigurationError
from coworker._version import __version__

SOURCES = Path(__file__).resolve().parent / "sidecar"
SCRIPTS = ("sidecar.mjs", "driver.mjs", "jsonlines.mjs", "wallet.mjs")
MANIFESTS = ("package.json", "package-lock.json")
SDK = "@xmtp/node-sdk"
# @noble/curves and @noble/hashes declare ">= 20.19.0"; the SDK's native bindings say ">=22" but run on 20.
MIN_NODE = (20, 19, 0)
MARKER = ".coworker-installed"  # written after a successful `npm ci`; holds the lock hash
INSTALL_TIMEOUT = 900.0  # seconds for `npm ci`
NODE_HELP = "install Node.js >= 20.19 with npm (e.g. `apt-get install nodejs npm`, or from nodejs.org)"


class SetupError(ConfigurationError):
    """The Node side cannot be used: Node.js or npm is missing or too old, or installing the SDK failed."""


def lock_hash() -> str:
    """The first 12 hex digits of the SHA-256 of the packaged manifests (what ``npm ci`` installs from)."""
    digest = hashlib.sha256()
    for name in MANIFESTS:
        digest.update((SOURCES / name).read_bytes())
    return digest.hexdigest()[:12]


def install_dir() -> Path:
    """Where the Node side lives: ``$COWORKER_NODE_DIR``, else ``$COWORKER_HOME/node/<version>-<lock hash>``."""
    value = os.environ.get("COWORKER_NODE_DIR")
    if value:
        return Path(value).expanduser()
    return _paths.home() / "node" / f"{__version__}-{lock_hash()}"


def sdk_version() -> str:
    """The pinned ``@xmtp/node-sdk`` version, from the packaged ``package.json``."""
    match = re.search(r'"@xmtp/node-sdk"\s*:\s*"([^"]+)"', (SOURCES / "package.json").read_text())
    return match.group(1) if match else "?"


def scripts_hash() -> str:
    """The first 12 hex digits of the SHA-256 of the packaged scripts."""
    digest = hashlib.sha256()
    for name in SCRIPTS:
        digest.update(name.encode() + b"\0" + (SOURCES / name).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def scripts_dir(directory: Path | None = None) -> Path:
    """Where this package's scripts live in the installation ``directory`` (default :func:`install_dir`)."""
    return (directory or install_dir()) / f"scripts-{scripts_hash()}"


def script(name: str, directory: Path | None = None) -> Path:
    """The path of one of the scripts (``sidecar.mjs``, ``driver.mjs``) in an installation, put there if missing
    (:func:`ensure_installed` has checked them byte for byte already)."""
    directory = directory or install_dir()
    path = scripts_dir(directory) / name
    return path if path.is_file() else _sync_scripts(directory) / name


def installed(directory: Path | None = None) -> bool:
    """Whether ``directory`` (default :func:`install_dir`) holds an installed SDK."""
    directory = directory or install_dir()
    return (directory / "node_modules" / "@xmtp" / "node-sdk").is_dir()


def node_available(directory: Path | None = None) -> bool:
    """True when ``node`` is on PATH and the Node side is installed in ``directory`` (default :func:`install_dir`)."""
    return shutil.which("node") is not None and installed(directory)


def node_version(node: str = "node") -> tuple[int, int, int] | None:
    """The version of Node.js on PATH, or None when there is none (or it does not answer)."""
    path = shutil.which(node)
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", out.strip())
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None


def check_tools() -> None:
    """Raise :class:`SetupError` (one line: what is missing, and how to fix it) unless Node.js and npm are usable."""
    version = node_version()
    if version is None:
        raise SetupError(f"Node.js is not installed (CoWorker's XMTP sidecar runs on it): {NODE_HELP}, "
                         f"then run `coworker setup`")
    if version < MIN_NODE:
        have, need = ".".join(map(str, version)), ".".join(map(str, MIN_NODE))
        raise SetupError(f"Node.js {have} is too old (the XMTP SDK needs >= {need}): {NODE_HELP}, "
                         f"then run `coworker setup`")
    if shutil.which("npm") is None:
        raise SetupError("npm is not installed (it installs the XMTP SDK): install it (e.g. `apt-get install npm`), "
                         "then run `coworker setup`")


def _write_if_changed(target: Path, data: bytes) -> None:
    with contextlib.suppress(OSError):
        if target.read_bytes() == data:
            return
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)


def _sync(directory: Path) -> None:
    """Put the manifests (what ``npm ci`` installs from) and the scripts in ``directory``."""
    for name in (*MANIFESTS, "README.md"):
        _write_if_changed(directory / name, (SOURCES / name).read_bytes())
    _sync_scripts(directory)


def _sync_scripts(directory: Path) -> Path:
    """Make sure ``scripts-<hash>/`` in ``directory`` holds this package's scripts, byte for byte; its path.
    Every writer writes the same bytes there (the folder is named by them), each file replaced atomically."""
    folder = scripts_dir(directory)
    folder.mkdir(parents=True, exist_ok=True)
    for name in SCRIPTS:
        _write_if_changed(folder / name, (SOURCES / name).read_bytes())
    return folder


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory``'s install (two agents starting at once install it once)."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _say(line: str) -> None:
    print(f"coworker: {line}", file=sys.stderr, flush=True)


def ensure_installed(*, force: bool = False, say: Callable[[str], None] = _say) -> Path:
    """Make sure the Node side is installed; its directory. Installs it when missing (or when ``force``).

    An install prints one line before (what, where, that it happens once) and one after (how long it took)
    through ``say``, and logs npm's output to ``npm-install.log`` beside it.

    Raises:
        SetupError: Node.js or npm is missing or too old, or ``npm ci`` failed.
    """
    directory = install_dir()
    if not force and node_available(directory) and (directory / MARKER).is_file():
        _sync(directory)
        return directory
    check_tools()
    if not os.environ.get("COWORKER_NODE_DIR"):
        _paths.ensure_private_dir(_paths.home())
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        _sync(directory)
        current = lock_hash()
        marker = directory / MARKER
        if not force and installed(directory) and marker.is_file() and marker.read_text().strip() == current:
            return directory  # another process installed it while we waited for the lock
        say(f"installing the XMTP SDK ({SDK} {sdk_version()}) into {directory}, once per CoWorker version ...")
        started = time.monotonic()
        log_path = directory / "npm-install.log"
        with open(log_path, "wb") as log_file:
            try:
                result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                                        cwd=directory, stdin=subprocess.DEVNULL, stdout=log_file,
                                        stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT, check=False)
                code = result.returncode
            except subprocess.TimeoutExpired:
                code = -1
            except OSError as exc:
                raise SetupError(f"could not run npm ({exc.strerror}): install npm, then run `coworker setup`") \
                    from None
        if code != 0:
            reason = "timed out" if code == -1 else f"exited with {code}"
            raise SetupError(f"installing the XMTP SDK failed (`npm ci` {reason}: {_last_line(log_path)}); "
                             f"the whole log is {log_path}; fix that, then run `coworker setup`")
        marker.write_text(current + "\n")
        say(f"XMTP SDK installed in {time.monotonic() - started:.1f} s")
    return directory


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1][:300]
    return "no output"
