"""Skill folders: what a ``SKILL.md`` folder says, whether this machine can run it, and how.

A skill folder is the Agent Skills layout that OpenClaw and Nanobot share: a directory holding ``SKILL.md`` (YAML
frontmatter, then Markdown instructions) and, optionally, scripts. The frontmatter's ``name`` (lower-case letters,
digits and single hyphens, at most 64 characters, equal to the folder's name) and ``description`` (at most 1024
characters) are required. ``metadata.openclaw`` (or its aliases ``clawdbot`` and ``clawdis``) and
``metadata.nanobot`` state what the skill needs: ``requires.bins`` (every one on PATH), ``requires.anyBins`` (one
of them), ``requires.env`` (set) and ``os`` (``darwin``, ``linux``, ``win32``). An optional ``metadata.coworker``
block says how peers call it: ``entrypoint`` (a file in the folder), ``input_schema`` (JSON Schema of an object),
``timeout`` (seconds) and ``min_trust_tier``.

Without an entrypoint the script is ``scripts/main.py``, ``scripts/run.py`` or ``scripts/<name>.py``, as
CoWorker 1.0's adapters found them; a folder with no script at all is instruction-only (its body becomes an LLM's
system prompt, served at PRIVILEGED unless it says otherwise).

Everything here is pure: it takes what :func:`coworker.agent.folder_skills.read_folders` read of the disk and a
:class:`Host` snapshot (binaries found, variables set, the OS) and returns values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import yaml

from coworker.core.trust import TrustTier

SKILL_FILE = "SKILL.md"
NAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
NAME_MAX = 64
DESCRIPTION_MAX = 1024
DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 3600.0
METADATA_BLOCKS = ("openclaw", "clawdbot", "clawdis", "nanobot")  # the same requirements format, by its owners
# What runs a script, by its suffix ("python" is the agent's own interpreter); other files must be executable.
INTERPRETERS = {".py": "python", ".js": "node", ".mjs": "node", ".cjs": "node", ".sh": "sh", ".bash": "bash"}
ALWAYS_PASSED_ENV = ("PATH", "HOME", "LANG")
_FORBIDDEN_ENV = re.compile(r"^COWORKER_")  # our passphrase and LLM key file never reach a skill
MAX_FILES = 5000  # files listed per folder (the rest is ignored: a skill is not a node_modules)


def default_roots(home: Path) -> list[Path]:
    """Where OpenClaw and Nanobot keep skill folders, highest precedence first.

    OpenClaw's documented order is ``<workspace>/skills``, ``~/.agents/skills``, ``~/.openclaw/skills``; Nanobot's
    workspace comes after them. A name found in an earlier root shadows the same name in later ones.
    """
    return [home / ".openclaw" / "workspace" / "skills", home / ".agents" / "skills", home / ".openclaw" / "skills",
            home / ".nanobot" / "workspace" / "skills"]


@dataclass(frozen=True)
class FolderFiles:
    """What :func:`~coworker.agent.folder_skills.read_folders` read of one folder: its ``SKILL.md`` text and its
    files' relative paths."""

    path: Path
    skill_md: str | None
    files: frozenset[str] = frozenset()
    error: str = ""  # why the folder could not be read


@dataclass(frozen=True)
class Requirements:
    bins: tuple[str, ...] = ()
    any_bins: tuple[tuple[str, ...], ...] = ()
    env: tuple[str, ...] = ()
    os: tuple[str, ...] = ()
    primary_env: tuple[str, ...] = ()  # passed when set, but not required


@dataclass(frozen=True)
class Host:
    """A snapshot of the machine: the OS (``sys.platform``), the variables set and the binaries on PATH."""

    platform: str
    env: frozenset[str]
    bins: frozenset[str]
    llm_configured: bool = False


@dataclass(frozen=True)
class FolderSkill:
    """A folder's skill as its ``SKILL.md`` describes it; ``entrypoint`` None means instruction-only."""

    name: str
    description: str
    folder: Path
    instructions: str
    entrypoint: str | None
    interpreter: str | None
    input_schema: dict[str, Any]
    timeout: float
    min_trust_tier: TrustTier
    requirements: Requirements = field(default_factory=Requirements)

    @property
    def instruction_only(self) -> bool:
        return self.entrypoint is None

    def env_names(self) -> list[str]:
        """The variables the script's environment may hold: the always-passed ones and those its metadata names."""
        names = [*ALWAYS_PASSED_ENV, *self.requirements.env, *self.requirements.primary_env]
        return list(dict.fromkeys(n for n in names if not _FORBIDDEN_ENV.match(n)))


@dataclass(frozen=True)
class FolderReport:
    """One folder found under a root: its skill when loadable, else why not."""

    path: Path
    name: str
    skill: FolderSkill | None
    problems: tuple[str, ...] = ()

    @property
    def loadable(self) -> bool:
        return self.skill is not None and not self.problems


class _Bad(Exception):
    """A folder that cannot be a skill; the message says why."""


def split_frontmatter(text: str) -> tuple[dict[str, Any], str]:
    """The frontmatter (a mapping) and the body of a ``SKILL.md``; raise ValueError when malformed."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        raise ValueError("SKILL.md does not start with a '---' frontmatter block")
    for end in range(1, len(lines)):
        if lines[end].strip() == "---":
            break
    else:
        raise ValueError("SKILL.md's frontmatter has no closing '---'")
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 2})" if mark is not None else ""
        raise ValueError(f"bad frontmatter: {getattr(exc, 'problem', None) or 'invalid YAML'}{where}") from None
    if not isinstance(data, dict):
        raise ValueError("bad frontmatter: not a mapping of keys to values")
    return data, "\n".join(lines[end + 1:]).strip()


def _metadata(front: Mapping[str, Any]) -> dict[str, Any]:
    meta = front.get("metadata", {})
    if isinstance(meta, str):  # OpenClaw's docs write it as one line of JSON
        try:
            meta = json.loads(meta)
        except ValueError:
            raise _Bad("bad frontmatter: metadata is neither a mapping nor JSON") from None
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise _Bad("bad frontmatter: metadata is not a mapping")
    return meta


def _names(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _Bad(f"bad frontmatter: {what} is not a list of names")
    return tuple(value)


def _requirements(meta: Mapping[str, Any]) -> Requirements:
    bins: list[str] = []
    any_bins: list[tuple[str, ...]] = []
    env: list[str] = []
    oses: list[str] = []
    primary: list[str] = []
    for owner in METADATA_BLOCKS:
        block = meta.get(owner)
        if block is None:
            continue
        if not isinstance(block, dict):
            raise _Bad(f"bad frontmatter: metadata.{owner} is not a mapping")
        requires = block.get("requires") or {}
        if not isinstance(requires, dict):
            raise _Bad(f"bad frontmatter: metadata.{owner}.requires is not a mapping")
        bins += _names(requires.get("bins"), f"metadata.{owner}.requires.bins")
        if requires.get("anyBins"):
            any_bins.append(_names(requires.get("anyBins"), f"metadata.{owner}.requires.anyBins"))
        env += _names(requires.get("env"), f"metadata.{owner}.requires.env")
        oses += _names(block.get("os"), f"metadata.{owner}.os")
        primary += _names(block.get("primaryEnv"), f"metadata.{owner}.primaryEnv")
    return Requirements(tuple(dict.fromkeys(bins)), tuple(any_bins), tuple(dict.fromkeys(env)),
                        tuple(dict.fromkeys(oses)), tuple(dict.fromkeys(primary)))


def _declared_schema(front: Mapping[str, Any]) -> dict[str, Any]:
    """The input schema from the frontmatter's declared ``arguments`` (a list or a map), else any object."""
    declared = front.get("arguments", front.get("parameters"))
    if declared is None:
        return {"type": "object"}
    properties: dict[str, Any] = {}
    required: list[str] = []
    items: list[tuple[str, Any]] = []
    if isinstance(declared, dict):
        items = [(str(k), v) for k, v in declared.items()]
    elif isinstance(declared, list):
        for entry in declared:
            if isinstance(entry, str):
                items.append((entry, "string"))
            elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
                items.append((entry["name"], entry))
            else:
                raise _Bad("bad frontmatter: each of arguments is a name or a mapping with a name")
    else:
        raise _Bad("bad frontmatter: arguments is neither a list nor a mapping")
    for key, spec in items:
        optional = False
        if isinstance(spec, str):
            optional = spec.endswith("?")
            prop: dict[str, Any] = {"type": _json_type(spec.rstrip("?"), key)}
        elif isinstance(spec, dict):
            prop = {"type": _json_type(str(spec.get("type", "string")), key)}
            if isinstance(spec.get("description"), str):
                prop["description"] = spec["description"]
            optional = spec.get("required", True) is False or "default" in spec
        else:
            raise _Bad(f"bad frontmatter: argument {key!r} has no usable type")
        properties[key] = prop
        if not optional:
            required.append(key)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


_JSON_TYPES = {"str": "string", "string": "string", "text": "string", "int": "integer", "integer": "integer",
               "float": "number", "number": "number", "bool": "boolean", "boolean": "boolean", "list": "array",
               "array": "array", "dict": "object", "object": "object"}


def _json_type(text: str, key: str) -> str:
    found = _JSON_TYPES.get(text.strip().lower())
    if found is None:
        raise _Bad(f"bad frontmatter: argument {key!r} has unknown type {text!r}")
    return found


def _entrypoint(files: frozenset[str], name: str, declared: Any) -> str | None:
    if declared is not None:
        if not isinstance(declared, str) or not declared.strip():
            raise _Bad("metadata.coworker.entrypoint is not a relative path")
        path = PurePosixPath(declared.strip())
        if path.is_absolute() or ".." in path.parts or "\\" in declared:
            raise _Bad("metadata.coworker.entrypoint must be a path inside the folder")
        if path.as_posix() not in files:
            raise _Bad(f"no entrypoint: {path.as_posix()} (named by metadata.coworker) is not in the folder")
        return path.as_posix()
    for candidate in ("scripts/main.py", "scripts/run.py", f"scripts/{name}.py"):
        if candidate in files:
            return candidate
    if any(f.startswith("scripts/") for f in files):
        raise _Bad(f"no entrypoint: scripts/ has no main.py, run.py or {name}.py (name one in "
                   f"metadata.coworker.entrypoint)")
    return None


def parse_folder(folder: FolderFiles) -> FolderSkill:
    """The skill a folder describes; raise ValueError saying why it is not one."""
    if folder.error:
        raise ValueError(folder.error)
    if folder.skill_md is None:
        raise ValueError(f"no {SKILL_FILE}")
    front, body = split_frontmatter(folder.skill_md)
    try:
        return _parse(folder, front, body)
    except _Bad as exc:
        raise ValueError(str(exc)) from None


def _parse(folder: FolderFiles, front: Mapping[str, Any], body: str) -> FolderSkill:
    name = front.get("name")
    if not isinstance(name, str) or not name:
        raise _Bad("bad frontmatter: no name")
    if len(name) > NAME_MAX or not NAME_RE.match(name):
        raise _Bad(f"bad frontmatter: name {name!r} is not lower-case letters, digits and single hyphens "
                   f"(at most {NAME_MAX})")
    if name != folder.path.name:
        raise _Bad(f"name {name!r} differs from the folder's name {folder.path.name!r}")
    description = front.get("description")
    if not isinstance(description, str) or not description.strip():
        raise _Bad("bad frontmatter: no description")
    if len(description) > DESCRIPTION_MAX:
        raise _Bad(f"bad frontmatter: description over {DESCRIPTION_MAX} characters")
    meta = _metadata(front)
    own = meta.get("coworker") or {}
    if not isinstance(own, dict):
        raise _Bad("bad frontmatter: metadata.coworker is not a mapping")
    entrypoint = _entrypoint(folder.files, name, own.get("entrypoint"))
    interpreter = INTERPRETERS.get(PurePosixPath(entrypoint).suffix) if entrypoint else None
    if "input_schema" in own:
        schema = own["input_schema"]
        if not isinstance(schema, dict) or schema.get("type", "object") != "object":
            raise _Bad("metadata.coworker.input_schema is not the JSON Schema of an object")
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise _Bad(f"metadata.coworker.input_schema is not valid JSON Schema: {exc.message}") from None
        schema = {"type": "object", **schema}
    else:
        schema = _declared_schema(front)
    timeout = own.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise _Bad(f"metadata.coworker.timeout is not a number of seconds in (0, {MAX_TIMEOUT:g}]")
    default_tier = TrustTier.PRIVILEGED if entrypoint is None else TrustTier.KNOWN
    try:
        tier = TrustTier.parse(own.get("min_trust_tier", default_tier))
    except ValueError as exc:
        raise _Bad(f"metadata.coworker.min_trust_tier: {exc}") from None
    return FolderSkill(name=name, description=description.strip(), folder=folder.path, instructions=body,
                       entrypoint=entrypoint, interpreter=interpreter, input_schema=schema, timeout=float(timeout),
                       min_trust_tier=tier, requirements=_requirements(meta))


def needed_bins(skills: Iterable[FolderSkill]) -> set[str]:
    """Every binary these skills may need: the snapshot a :class:`Host` must say yes or no to."""
    names: set[str] = set()
    for skill in skills:
        names.update(skill.requirements.bins)
        for group in skill.requirements.any_bins:
            names.update(group)
        if skill.interpreter not in (None, "python"):
            names.add(str(skill.interpreter))
    return names


def unmet(skill: FolderSkill, host: Host) -> list[str]:
    """What this machine lacks to run ``skill`` (empty: it can run)."""
    req = skill.requirements
    problems = [f"missing binary {b!r}" for b in req.bins if b not in host.bins]
    problems += [f"needs one of the binaries {', '.join(g)}" for g in req.any_bins if not set(g) & host.bins]
    if skill.interpreter not in (None, "python") and skill.interpreter not in host.bins:
        problems.append(f"missing binary {skill.interpreter!r} to run {skill.entrypoint}")
    problems += [f"environment variable {e} is not set" for e in req.env
                 if e not in host.env and not _FORBIDDEN_ENV.match(e)]
    problems += [f"asks for {e}, which is never passed to a skill" for e in req.env if _FORBIDDEN_ENV.match(e)]
    if req.os and host.platform not in req.os:
        problems.append(f"wrong OS: runs on {', '.join(req.os)}, this is {host.platform}")
    if skill.instruction_only and not host.llm_configured:
        problems.append("instruction-only: needs an LLM endpoint (set COWORKER_LLM_BASE_URL and "
                        "COWORKER_LLM_MODEL)")
    return problems


def check_folders(folders: Iterable[FolderFiles], host: Host, taken: Iterable[str] = ()) -> list[FolderReport]:
    """Report on each folder, in order: loadable, or why not. A name seen earlier (or in ``taken``) shadows it."""
    seen: dict[str, str] = {name: "an earlier skill" for name in taken}
    reports: list[FolderReport] = []
    for folder in folders:
        try:
            skill = parse_folder(folder)
        except ValueError as exc:
            reports.append(FolderReport(folder.path, folder.path.name, None, (str(exc),)))
            continue
        problems = unmet(skill, host)
        if skill.name in seen:
            problems.insert(0, f"shadowed by {seen[skill.name]}")
        else:
            seen[skill.name] = str(folder.path)
        reports.append(FolderReport(folder.path, skill.name, skill, tuple(problems)))
    return reports
