"""Skill folders as skills: each call of a script skill runs its script in a subprocess; an instruction-only
folder asks the configured LLM.

Theory of operation. A script runs once per call, with no shell: ``[interpreter] <folder>/<entrypoint> <input>``
(``.py`` with this agent's Python, ``.js`` with node, ``.sh`` with sh, anything else executed as it is). The
validated input is JSON, on stdin and as the first argument (``-`` instead when it is over
:data:`MAX_ARGUMENT_BYTES`, the size one argument may have on Linux). The folder is the working directory and the
environment holds only PATH, HOME, LANG and what the skill's metadata requires: none of the agent's secrets. The
script is the leader of its own process group (a new session), so the timeout, a cancellation, too much output
or the end of the call kill the group: the script and every child it left. stdout is read up to
:data:`STDOUT_CAP` and parsed as a JSON object, else returned as text; stderr is read line by line: ``::progress
0.4 message`` lines become progress reports, the last other line explains a non-zero exit (paths blanked, as in
every error a peer sees).

An instruction-only folder (a SKILL.md and no script) is refused at load time unless an OpenAI-compatible
endpoint is configured (``COWORKER_LLM_BASE_URL``, ``COWORKER_LLM_MODEL``, optionally
``COWORKER_LLM_API_KEY_FILE``, read as :class:`~coworker.runtime.llm_planner.LLMPlanner` reads them); each call
sends the body as system prompt and the input as the user's message, and returns the answer's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from coworker._errors import ConfigurationError, SkillFailed
from coworker.core.skill_folders import (
    MAX_FILES,
    SKILL_FILE,
    FolderFiles,
    FolderReport,
    FolderSkill,
    Host,
    check_folders,
    default_roots,
    needed_bins,
    parse_folder,
)
from coworker.core.skills import CallContext, SkillFunction
from coworker.runtime.llm_planner import BASE_URL_VARIABLE, MODEL_VARIABLE, LLMPlanner

log = logging.getLogger("coworker.skills")

STDOUT_CAP = 1024 * 1024  # bytes of a script's stdout read; more kills it and fails the call
MAX_ARGUMENT_BYTES = 100_000  # of the input as first argument (Linux refuses one argument over 128 KiB)
_STDERR_LINE_MAX = 2000
_CHUNK = 65536
OUTPUT_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "object"}, {"type": "string"}]}


def roots_or_default(roots: Sequence[str | Path]) -> list[Path]:
    """The roots given (``~`` expanded), or the OpenClaw, ``~/.agents`` and Nanobot ones when none is."""
    return [Path(r).expanduser() for r in roots] if roots else default_roots(Path.home())


def read_folders(root: Path) -> list[FolderFiles]:
    """Read the skill folders under ``root`` (its subdirectories, or ``root`` itself when it holds SKILL.md)."""
    root = root.expanduser()
    if (root / SKILL_FILE).is_file():
        candidates = [root]
    else:
        try:
            candidates = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return []
    found: list[FolderFiles] = []
    for folder in candidates:
        try:
            text = (folder / SKILL_FILE).read_text(encoding="utf-8") if (folder / SKILL_FILE).is_file() else None
            files: set[str] = set()
            for path in sorted(folder.rglob("*")):
                if len(files) >= MAX_FILES:
                    break
                rel = path.relative_to(folder)
                if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                    files.add(rel.as_posix())
            found.append(FolderFiles(folder, text, frozenset(files)))
        except (OSError, UnicodeDecodeError) as exc:
            found.append(FolderFiles(folder, None, error=f"cannot read it: {type(exc).__name__}"))
    return found


def host_snapshot(skills: Iterable[FolderSkill]) -> Host:
    """This machine, as far as these skills' requirements go."""
    names = needed_bins(skills)
    return Host(platform=sys.platform, env=frozenset(k for k, v in os.environ.items() if v),
                bins=frozenset(b for b in names if shutil.which(b)),
                llm_configured=bool(os.environ.get(BASE_URL_VARIABLE) and os.environ.get(MODEL_VARIABLE)))


def scan(roots: Sequence[str | Path] = (), taken: Iterable[str] = ()) -> list[FolderReport]:
    """Every folder under the roots (default: :func:`~coworker.core.skill_folders.default_roots`), in precedence
    order: its skill when loadable, else why not. Names in ``taken`` (skills already registered) shadow folders."""
    folders = [f for root in roots_or_default(roots) for f in read_folders(root)]
    parsed = []
    for folder in folders:
        with contextlib.suppress(ValueError):
            parsed.append(parse_folder(folder))
    return check_folders(folders, host_snapshot(parsed), taken)


def skill_function(skill: FolderSkill) -> SkillFunction:
    """The function behind a folder's skill (for ``add_skill`` with the skill's JSON Schema as input schema).

    Raises:
        ConfigurationError: an instruction-only folder and no usable LLM endpoint.
    """
    if skill.instruction_only:
        return _instruction_function(skill)

    async def run_folder_script(_call_context: CallContext, **data: Any) -> Any:
        return await run_script(skill, data, _call_context)

    return run_folder_script


def _instruction_function(skill: FolderSkill) -> SkillFunction:
    try:
        planner = LLMPlanner(timeout=skill.timeout)
    except ConfigurationError as exc:
        raise ConfigurationError(f"skill folder {skill.name!r} is instruction-only (no script) and needs an "
                                 f"LLM endpoint: {exc}") from None
    system = skill.instructions or skill.description

    async def ask_model(_call_context: CallContext, **data: Any) -> str:
        strings = [v for v in data.values() if isinstance(v, str)]
        user = strings[0] if len(data) == 1 and strings else json.dumps(data, ensure_ascii=False, indent=1)
        try:
            return await planner.chat([{"role": "system", "content": system}, {"role": "user", "content": user}])
        except ConfigurationError as exc:
            log.warning("skill %s: %s", skill.name, exc)
            raise SkillFailed("the language model behind this skill did not answer (the agent's log says why)") \
                from None

    return ask_model


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # The script leads its own process group: killing the group reaches every child it started. Done before the
    # leader is awaited, so its pid (and group id) cannot have been reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _argv(skill: FolderSkill, payload: str) -> list[str]:
    assert skill.entrypoint is not None
    script = str(skill.folder / skill.entrypoint)
    interpreter = {"python": [sys.executable], None: []}.get(skill.interpreter, [str(skill.interpreter)])
    return [*interpreter, script, payload if len(payload.encode()) <= MAX_ARGUMENT_BYTES else "-"]


def _progress(ctx: CallContext, text: str) -> None:
    rest = text[len("::progress"):].strip()
    first, _, message = rest.partition(" ")
    try:
        value: float | None = min(1.0, max(0.0, float(first)))
    except ValueError:
        value, message = None, rest
    if value is not None and value != value:  # NaN
        value = None
    ctx.progress(value, message.strip())


async def run_script(skill: FolderSkill, data: dict[str, Any], ctx: CallContext) -> Any:
    """Run the skill's script once with ``data`` as input; its JSON object output, else its text.

    Raises:
        SkillFailed: the script could not start, exited non-zero (with its last stderr line), timed out, or wrote
            more than :data:`STDOUT_CAP` bytes.
    """
    payload = json.dumps(data, ensure_ascii=False)
    env = {name: os.environ[name] for name in skill.env_names() if name in os.environ}
    try:
        proc = await asyncio.create_subprocess_exec(
            *_argv(skill, payload), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=skill.folder, env=env, start_new_session=True)
    except OSError as exc:
        raise SkillFailed(f"the script cannot start: {exc.strerror or type(exc).__name__}") from None
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    last_line = ""
    overflow = False

    async def feed() -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(payload.encode())
            await stdin.drain()
        stdin.close()

    async def read_out() -> bytes:
        nonlocal overflow
        chunks: list[bytes] = []
        size = 0
        while chunk := await stdout.read(_CHUNK):
            size += len(chunk)
            if size > STDOUT_CAP:
                overflow = True
                _kill_group(proc)  # it would block on a full pipe until its timeout
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def line(raw: bytes) -> None:
        nonlocal last_line
        text = raw[:_STDERR_LINE_MAX].decode("utf-8", errors="replace").rstrip("\r")
        if text.startswith("::progress"):
            _progress(ctx, text)
        elif text.strip():
            last_line = text.strip()

    async def read_err() -> None:
        pending = b""
        while chunk := await stderr.read(_CHUNK):
            *lines, pending = (pending + chunk).split(b"\n")
            pending = pending[-_CHUNK:]
            for raw in lines:
                line(raw)
        if pending:
            line(pending)

    try:
        async with asyncio.timeout(skill.timeout):
            async with asyncio.TaskGroup() as group:
                group.create_task(feed())
                out = group.create_task(read_out())
                group.create_task(read_err())
            returncode = await proc.wait()
    except TimeoutError:
        raise SkillFailed(f"the script did not finish within its timeout of {skill.timeout:g} s (killed)") from None
    finally:
        _kill_group(proc)  # also what it left running, on every way out (a cancelled call included)
        with contextlib.suppress(ProcessLookupError):
            await proc.wait()
    if overflow:
        raise SkillFailed(f"the script wrote more than {STDOUT_CAP // (1024 * 1024)} MB to stdout (cut there, "
                          f"the script killed)")
    if returncode != 0:
        status = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
        raise SkillFailed(f"the script failed ({status})" + (f": {last_line}" if last_line else ""))
    text = out.result().decode("utf-8", errors="replace").strip()
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def load(roots: Sequence[str | Path], taken: Iterable[str]) -> list[tuple[FolderSkill, SkillFunction]]:
    """The loadable skills under the roots with their functions; each folder not loaded is logged with why."""
    loaded: list[tuple[FolderSkill, SkillFunction]] = []
    for report in scan(roots, taken):
        if report.skill is None and report.problems == ("no SKILL.md",):
            continue  # a plain directory next to the skill folders
        if not report.loadable or report.skill is None:
            log.warning("skill folder %s not loaded: %s", report.path, "; ".join(report.problems))
            continue
        try:
            loaded.append((report.skill, skill_function(report.skill)))
        except ConfigurationError as exc:
            log.warning("skill folder %s not loaded: %s", report.path, exc)
    return loaded
