"""Background processes started from the command line: the devnet and agents served in the background.

:func:`spawn_ready` starts a detached child that writes ``ready ...`` on an inherited pipe (``--ready-fd N``) once
it serves, with its output appended to a private log file, and returns when it has said so (bounded).
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


class NotReady(Exception):
    """The child exited or stayed silent; the message quotes the end of its log."""


def spawn_ready(command: Callable[[int], list[str]], log_path: Path, timeout: float) -> tuple[int, str]:
    """Start ``command(ready_fd)`` detached and wait for its ``ready`` line: (pid, the line).

    Raises:
        NotReady: no ``ready`` line within ``timeout`` seconds (the child is terminated, as it is when the wait is
            interrupted).
    """
    read_end, write_end = os.pipe()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        child = subprocess.Popen(command(write_end), stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                 pass_fds=(write_end,), start_new_session=True)
    finally:
        os.close(log_fd)
        os.close(write_end)
    try:
        line = read_line(read_end, timeout)
    except BaseException:  # interrupted (Ctrl-C) before it was ready: nobody else would stop it
        child.terminate()
        raise
    finally:
        os.close(read_end)
    if not line.startswith("ready"):
        if child.poll() is None:
            child.terminate()
        raise NotReady(f"the end of {log_path}:\n{tail(log_path)}")
    return child.pid, line


def read_line(fd: int, timeout: float) -> str:
    """Read one line from a pipe, or what came before EOF or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    chunks = b""
    while b"\n" not in chunks:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        chunks += chunk
    return chunks.decode(errors="replace").split("\n", 1)[0]


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to exit (a pidfd becomes readable when it does)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(pidfd)
