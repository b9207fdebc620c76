"""``coworker skills scan [DIR ...]``: each skill folder found, loadable or not and why, without starting an agent.

With no directory it looks where OpenClaw and Nanobot keep skills (``~/.openclaw/workspace/skills``,
``~/.agents/skills``, ``~/.openclaw/skills``, ``~/.nanobot/workspace/skills``), in that precedence.

Example::

    coworker skills scan
    coworker skills scan ~/my-skills --json
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from coworker.cli.common import print_json, shown

if TYPE_CHECKING:
    from coworker.core.skill_folders import FolderReport


def _row(report: FolderReport) -> dict[str, Any]:
    skill = report.skill
    kind = None if skill is None else "instructions (LLM)" if skill.instruction_only else f"script {skill.entrypoint}"
    return {"name": report.name, "path": str(report.path), "loadable": report.loadable, "kind": kind,
            "min_trust_tier": None if skill is None else skill.min_trust_tier.name.lower(),
            "problems": list(report.problems)}


def cmd_skills_scan(args: argparse.Namespace) -> int:
    """List each folder under the given roots (default: the OpenClaw, ``~/.agents`` and Nanobot ones)."""
    from coworker.agent.folder_skills import roots_or_default, scan  # with YAML: loaded for this command only

    roots = roots_or_default(args.dirs)
    rows = [_row(r) for r in scan(roots)]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no skill folders under {', '.join(shown(r) for r in roots)}")
        return 0
    for row in rows:
        if row["loadable"]:
            print(f"ok    {shown(row['name'])}: {shown(row['kind'])}, tier {row['min_trust_tier']} "
                  f"({shown(row['path'])})")
        else:
            print(f"skip  {shown(row['name'])}: {shown('; '.join(row['problems']))} ({shown(row['path'])})")
    loadable = sum(1 for row in rows if row["loadable"])
    print(f"{loadable} of {len(rows)} folders loadable; `coworker serve --skills DIR` serves them (hidden from "
          f"peers until `coworker skills expose NAME`, or --expose)")
    return 0


def register(actions: Any, common: argparse.ArgumentParser) -> None:
    """Add ``scan`` to the ``coworker skills`` actions."""
    scan_parser = actions.add_parser("scan", parents=[common], help="list the skill folders found: loadable or not "
                                                                    "and why")
    scan_parser.add_argument("dirs", nargs="*", metavar="DIR", help="a folder of skill folders, or one skill folder "
                                                                   "(default: the OpenClaw, ~/.agents and Nanobot "
                                                                   "skill folders)")
    scan_parser.add_argument("--json", action="store_true", help="machine-readable output")
    scan_parser.set_defaults(func=cmd_skills_scan)
