"""Pieces of the apps that the process tests run in child processes: source text that a test puts before its
own (after ``import os`` and ``from pathlib import Path``). No braces, so it stays as it is in a ``str.format``
template."""

APPEND_LINE = '''

def append(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` and make it durable: the test counts the lines, across processes and kills."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
'''
