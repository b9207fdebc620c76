"""Skill folders (SKILL.md + scripts, as OpenClaw and Nanobot keep them) served to peers: loading, the report on
each folder, and the subprocess each call runs (input only as data, a bounded environment, timeout, output cap,
progress, cancellation), with real folders built in the test."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from coworker import AsyncAgent, CallContext, Network, SkillFailed, SkillNotFound, TrustTier
from coworker.agent import folder_skills
from coworker.agent.folder_skills import run_script, scan
from coworker.core.skill_folders import FolderFiles, Host, check_folders, default_roots, parse_folder

MISSING_BINARY = "coworker-test-no-such-binary"


def make_skill(root: Path, name: str, *, script: str | None = None, metadata: str = "",
               entrypoint: str = "scripts/main.py", front: str = "", body: str = "Do the thing.") -> Path:
    """A skill folder under ``root``: SKILL.md with ``name``, a description, optional metadata, and a script."""
    folder = root / name
    folder.mkdir(parents=True)
    meta = f"metadata: {metadata}\n" if metadata else ""
    (folder / "SKILL.md").write_text(f"---\nname: {name}\ndescription: The {name} skill.\n{meta}{front}---\n\n"
                                     f"# {name}\n\n{body}\n")
    if script is not None:
        path = folder / entrypoint
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(script))
    return folder


ECHO = """\
    import json, sys
    data = json.load(sys.stdin)
    print(json.dumps({"input": data, "argv_matches_stdin": json.loads(sys.argv[1]) == data}))
"""
ENV = """\
    import json, os
    print(json.dumps({"env": sorted(os.environ)}))
"""


def openclaw_workspace(home: Path) -> Path:
    """Three skills: echo-json (KNOWN), needs-tool (a required binary that is missing), vault (INTERNAL)."""
    root = home / ".openclaw" / "workspace" / "skills"
    make_skill(root, "echo-json", script=ECHO)
    make_skill(root, "needs-tool", script=ECHO,
               metadata=f'{{"openclaw": {{"requires": {{"bins": ["{MISSING_BINARY}"]}}}}}}')
    make_skill(root, "vault", script='print("{\\"secret\\": 42}")\n',
               metadata='{"coworker": {"min_trust_tier": "internal"}}')
    return root


def nanobot_workspace(home: Path) -> Path:
    """One Nanobot skill that requires a variable, with its script named after it."""
    root = home / ".nanobot" / "workspace" / "skills"
    make_skill(root, "show-env", script=ENV, entrypoint="scripts/show-env.py",
               metadata='{"nanobot": {"requires": {"bins": ["sh"], "env": ["WEATHER_TOKEN"]}}}')
    return root


def ctx(reports: list[tuple[float | None, str]] | None = None) -> CallContext:
    reporter = (lambda p, m: reports.append((p, m))) if reports is not None else None
    return CallContext(caller="0x" + "1" * 40, trust_tier=TrustTier.KNOWN, call_id="t", skill="s",
                       _reporter=reporter)


def gone(pid: int, timeout: float = 10) -> bool:
    """Whether process ``pid`` has ended (or ends within ``timeout``): waits on its pidfd, no polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


# ---- the format and the report on each folder ------------------------------------------------------------------


def test_scan_says_which_folders_load_and_why_the_others_do_not(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COWORKER_LLM_BASE_URL", raising=False)
    monkeypatch.setenv("WEATHER_TOKEN", "t0k3n")
    root = openclaw_workspace(tmp_path)
    make_skill(root, "instructions-only")
    make_skill(root, "wrong-name-dir", front="")  # renamed below: its SKILL.md says another name
    (root / "wrong-name-dir" / "SKILL.md").write_text("---\nname: other\ndescription: x\n---\n")
    (root / "bad-yaml").mkdir()
    (root / "bad-yaml" / "SKILL.md").write_text("---\nname: [unclosed\n---\n")
    make_skill(root, "mac-only", script=ECHO, metadata='{"openclaw": {"os": ["darwin"]}}')
    make_skill(root, "no-entry", script="print(1)\n", entrypoint="scripts/helper.py")
    make_skill(root, "wants-env", script=ECHO, metadata='{"nanobot": {"requires": {"env": ["UNSET_VAR_X"]}}}')
    make_skill(root, "wants-secret", script=ECHO,
               metadata='{"openclaw": {"requires": {"env": ["COWORKER_PASSPHRASE"]}}}')
    monkeypatch.delenv("UNSET_VAR_X", raising=False)
    reports = {r.path.name: r for r in scan([root, nanobot_workspace(tmp_path)])}

    assert {n for n, r in reports.items() if r.loadable} == {"echo-json", "vault", "show-env"}
    why = {n: "; ".join(r.problems) for n, r in reports.items() if not r.loadable}
    assert f"missing binary '{MISSING_BINARY}'" in why["needs-tool"]
    assert "instruction-only: needs an LLM endpoint" in why["instructions-only"]
    assert "differs from the folder's name" in why["wrong-name-dir"]
    assert "bad frontmatter" in why["bad-yaml"]
    assert "wrong OS" in why["mac-only"] or sys.platform == "darwin"
    assert "no entrypoint" in why["no-entry"]
    assert "UNSET_VAR_X is not set" in why["wants-env"]
    assert "never passed to a skill" in why["wants-secret"]
    assert reports["vault"].skill is not None and reports["vault"].skill.min_trust_tier == TrustTier.INTERNAL
    show_env = reports["show-env"].skill
    assert show_env is not None and show_env.entrypoint == "scripts/show-env.py"


def test_default_roots_follow_the_documented_precedence_and_the_first_name_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_roots(tmp_path) == [tmp_path / ".openclaw/workspace/skills", tmp_path / ".agents/skills",
                                       tmp_path / ".openclaw/skills", tmp_path / ".nanobot/workspace/skills"]
    make_skill(tmp_path / ".nanobot/workspace/skills", "echo-json", script=ECHO)
    make_skill(tmp_path / ".agents/skills", "echo-json", script=ECHO)
    reports = scan()
    assert [r.loadable for r in reports] == [True, False]
    assert reports[0].path.parent == tmp_path / ".agents/skills"
    assert reports[1].problems[0].startswith("shadowed by")


def test_metadata_coworker_sets_entrypoint_schema_timeout_and_tier() -> None:
    text = textwrap.dedent("""\
        ---
        name: convert
        description: Convert units.
        metadata:
          coworker:
            entrypoint: bin/convert.sh
            timeout: 5
            min_trust_tier: privileged
            input_schema: {"type": "object", "properties": {"value": {"type": "number"}}, "required": ["value"]}
        ---
        Body.
        """)
    skill = parse_folder(FolderFiles(Path("/x/convert"), text, frozenset({"bin/convert.sh"})))
    assert (skill.entrypoint, skill.interpreter, skill.timeout) == ("bin/convert.sh", "sh", 5.0)
    assert skill.min_trust_tier == TrustTier.PRIVILEGED and skill.input_schema["required"] == ["value"]
    declared = "---\nname: greet\ndescription: Greet.\narguments:\n  - {name: who, type: string}\n" \
               "  - {name: times, type: int, required: false}\n---\n"
    schema = parse_folder(FolderFiles(Path("/x/greet"), declared, frozenset({"scripts/run.py"}))).input_schema
    assert schema == {"type": "object", "properties": {"who": {"type": "string"}, "times": {"type": "integer"}},
                      "required": ["who"]}
    host = Host(platform="linux", env=frozenset(), bins=frozenset())
    escape = "---\nname: up\ndescription: x\nmetadata: {coworker: {entrypoint: ../../bin/sh}}\n---\n"
    report = check_folders([FolderFiles(Path("/x/up"), escape, frozenset())], host)[0]
    assert not report.loadable and "inside the folder" in report.problems[0]


# ---- served to peers -------------------------------------------------------------------------------------------


async def test_a_known_peer_sees_folder_skills_only_once_exposed_and_gets_the_scripts_json(
        network: Network, tmp_path: Path) -> None:
    """On the in-memory network and over XMTP through the devnet."""
    root = openclaw_workspace(tmp_path / "owner")
    alice = AsyncAgent("alice", network=network, data_dir=tmp_path / "alice")
    bob = AsyncAgent("bob", network=network, data_dir=tmp_path / "bob")
    added = alice.add_skill_folders(root)
    assert sorted(s.name for s in added) == ["echo-json", "vault"]  # needs-tool: its binary is missing
    alice.set_trust(bob.wallet, TrustTier.KNOWN)
    await alice.start()
    await bob.start()
    try:
        assert (await bob.connect(alice.wallet)).skills == []  # hidden until the owner exposes them
        with pytest.raises(SkillNotFound):
            await bob.call(alice.wallet, "echo-json", {"text": "hi"}, timeout=60)
        alice.expose_skill("echo-json")
        alice.expose_skill("vault")
        assert (await bob.connect(alice.wallet)).skills == ["echo-json"]  # vault needs INTERNAL
        result = await bob.call(alice.wallet, "echo-json", {"text": "hi", "n": 2}, timeout=60)
        assert result == {"input": {"text": "hi", "n": 2}, "argv_matches_stdin": True}
        with pytest.raises(SkillNotFound):
            await bob.call(alice.wallet, "vault", {}, timeout=60)
    finally:
        await bob.stop()
        await alice.stop()
        alice.close()
        bob.close()


@pytest.fixture
async def served(tmp_path: Path) -> Any:
    """Alice serves the folders under tmp_path/skills (exposed) to Bob, KNOWN, on the in-memory network."""
    from coworker import MemoryNetwork

    net = MemoryNetwork()
    alice = AsyncAgent("alice", network=net, data_dir=tmp_path / "alice")
    bob = AsyncAgent("bob", network=net, data_dir=tmp_path / "bob")
    alice.set_trust(bob.wallet, TrustTier.KNOWN)

    async def serve(root: Path) -> tuple[AsyncAgent, AsyncAgent]:
        alice.add_skill_folders(root, expose=True)
        await alice.start()
        await bob.start()
        return alice, bob

    yield serve
    await bob.stop()
    await alice.stop()
    alice.close()
    bob.close()


async def test_shell_syntax_in_the_input_reaches_the_script_only_as_data(served: Any, tmp_path: Path) -> None:
    root = tmp_path / "skills"
    make_skill(root, "echo-json", script=ECHO)
    alice, bob = await served(root)
    hostile = {"text": '"; rm -rf ~ #', "who": "$(id)", "tick": "`touch pwned`", "list": ["&& echo x > pwned"]}
    result = await bob.call(alice.wallet, "echo-json", hostile)
    assert result == {"input": hostile, "argv_matches_stdin": True}
    assert "pwned" not in os.listdir(root / "echo-json") and "pwned" not in os.listdir()


async def test_progress_lines_on_stderr_reach_the_caller(served: Any, tmp_path: Path) -> None:
    root = tmp_path / "skills"
    # The script reports, then waits for the caller's signal that the report arrived (no sleep anywhere).
    make_skill(root, "slow-steps", script="""\
        import os, signal, sys
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        print(f"::progress 0.4 reading pid={os.getpid()}", file=sys.stderr, flush=True)
        signal.sigwait({signal.SIGUSR1})
        print("done")
    """)
    alice, bob = await served(root)
    seen: list[tuple[float | None, str]] = []

    def on_progress(report: Any) -> None:
        seen.append((report.progress, report.message))
        os.kill(int(report.message.rpartition("pid=")[2]), signal.SIGUSR1)

    assert await bob.call(alice.wallet, "slow-steps", {}, timeout=30, on_progress=on_progress) == "done"
    assert seen[0][0] == 0.4 and seen[0][1].startswith("reading pid=")


async def test_a_failing_script_is_skill_failed_with_its_last_stderr_line_paths_blanked(
        served: Any, tmp_path: Path) -> None:
    root = tmp_path / "skills"
    make_skill(root, "broken", script="""\
        import os, sys
        print("warming up", file=sys.stderr)
        print(f"cannot open {os.getcwd()}/data/secret.db", file=sys.stderr)
        sys.exit(3)
    """)
    alice, bob = await served(root)
    with pytest.raises(SkillFailed) as failed:
        await bob.call(alice.wallet, "broken", {})
    message = str(failed.value)
    assert "exit status 3" in message and "cannot open <path>" in message and str(tmp_path) not in message


async def test_the_script_environment_holds_only_the_allowlist_and_what_its_metadata_requires(
        served: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEATHER_TOKEN", "t0k3n")
    monkeypatch.setenv("COWORKER_PASSPHRASE", "do-not-leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    alice, bob = await served(nanobot_workspace(tmp_path))
    env = set((await bob.call(alice.wallet, "show-env", {}))["env"])
    assert "WEATHER_TOKEN" in env and "PATH" in env
    assert env <= {"PATH", "HOME", "LANG", "WEATHER_TOKEN", "LC_CTYPE"}  # LC_CTYPE: Python's own locale coercion


# ---- the subprocess: timeout, output cap, cancellation -----------------------------------------------------------

SLEEPER = """\
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(f"::progress 0.1 pids={os.getpid()},{child.pid}", file=sys.stderr, flush=True)
    time.sleep(120)
"""


def _pids(reports: list[tuple[float | None, str]]) -> list[int]:
    return [int(p) for p in reports[0][1].rpartition("pids=")[2].split(",")]


async def test_a_script_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    make_skill(tmp_path, "sleeper", script=SLEEPER, metadata='{"coworker": {"timeout": 2}}')
    [report] = scan([tmp_path / "sleeper"])
    assert report.skill is not None
    reports: list[tuple[float | None, str]] = []
    with pytest.raises(SkillFailed, match="timeout of 2 s"):
        await run_script(report.skill, {}, ctx(reports))
    assert len(_pids(reports)) == 2 and all(gone(pid) for pid in _pids(reports))


async def test_cancelling_the_call_kills_the_script_and_its_children(tmp_path: Path) -> None:
    make_skill(tmp_path, "sleeper", script=SLEEPER)
    [report] = scan([tmp_path / "sleeper"])
    assert report.skill is not None
    started = asyncio.Event()
    reports: list[tuple[float | None, str]] = []
    context = CallContext(caller="0x" + "1" * 40, trust_tier=TrustTier.KNOWN, call_id="t", skill="s",
                          _reporter=lambda p, m: (reports.append((p, m)), started.set()))
    task = asyncio.create_task(run_script(report.skill, {}, context))
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(gone(pid) for pid in _pids(reports))


async def test_a_script_printing_ten_megabytes_is_cut_at_the_cap_and_killed(tmp_path: Path) -> None:
    make_skill(tmp_path, "chatty", script="""\
        import os, sys
        print(f"::progress 0 pids={os.getpid()}", file=sys.stderr, flush=True)
        block = "x" * 1024 * 1024
        for _ in range(10):
            sys.stdout.write(block)
        sys.stdout.flush()
    """)
    [report] = scan([tmp_path / "chatty"])
    assert report.skill is not None
    reports: list[tuple[float | None, str]] = []
    with pytest.raises(SkillFailed, match="more than 1 MB"):
        await run_script(report.skill, {}, ctx(reports))
    assert gone(_pids(reports)[0])


async def test_big_input_goes_on_stdin_with_a_dash_as_argument(tmp_path: Path) -> None:
    make_skill(tmp_path, "sizes", script="""\
        import json, sys
        print(json.dumps({"arg": sys.argv[1][:1], "size": len(json.load(sys.stdin)["text"])}))
    """)
    [report] = scan([tmp_path / "sizes"])
    assert report.skill is not None
    assert await run_script(report.skill, {"text": "y" * 300_000}, ctx()) == {"arg": "-", "size": 300_000}
    assert await run_script(report.skill, {"text": "y"}, ctx()) == {"arg": "{", "size": 1}


# ---- instruction-only folders ------------------------------------------------------------------------------------


async def test_an_instruction_only_folder_asks_the_configured_llm_with_its_body_as_system_prompt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_skill(tmp_path / "skills", "haiku", body="Answer with a haiku about the input.")
    agent = AsyncAgent("a", data_dir=tmp_path / "a")
    monkeypatch.delenv("COWORKER_LLM_BASE_URL", raising=False)
    assert agent.add_skill_folders(tmp_path / "skills") == []  # refused at load time: no endpoint
    asked: list[Any] = []

    async def chat(self: Any, messages: Any, *, temperature: float = 0) -> str:
        asked.append(messages)
        return "an old silent pond"

    monkeypatch.setenv("COWORKER_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("COWORKER_LLM_MODEL", "test-model")
    monkeypatch.setattr(folder_skills.LLMPlanner, "chat", chat)
    [skill] = agent.add_skill_folders(tmp_path / "skills")
    assert skill.min_trust_tier == TrustTier.PRIVILEGED and agent.skill_hidden("haiku")
    output = await skill.run(skill.bind({"text": "frogs"}, ctx()))
    assert output == "an old silent pond"
    assert asked[0][0] == {"role": "system", "content": "# haiku\n\nAnswer with a haiku about the input."}
    assert asked[0][1] == {"role": "user", "content": "frogs"}
    agent.close()


def test_a_folder_named_like_a_registered_skill_is_refused(tmp_path: Path) -> None:
    make_skill(tmp_path / "skills", "echo-json", script=ECHO)
    agent = AsyncAgent("a", data_dir=tmp_path / "a")
    agent.add_skill(lambda: 1, name="echo-json")
    with pytest.raises(Exception, match="already registered"):
        agent.add_skill_folders(tmp_path / "skills")
    agent.close()


def test_scan_output_is_json_serialisable_for_the_cli(tmp_path: Path) -> None:
    make_skill(tmp_path, "echo-json", script=ECHO)
    [report] = scan([tmp_path])
    assert json.dumps({"name": report.name, "loadable": report.loadable, "problems": list(report.problems)})


# ---- the CLI -------------------------------------------------------------------------------------------------------


def test_coworker_skills_scan_lists_each_folder_loadable_or_why_not(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from coworker.cli.main import main

    root = openclaw_workspace(tmp_path)
    assert main(["skills", "scan", str(root), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert [rows[n]["loadable"] for n in ("echo-json", "needs-tool", "vault")] == [True, False, True]
    assert rows["needs-tool"]["problems"] == [f"missing binary '{MISSING_BINARY}'"]
    assert main(["skills", "scan", str(root)]) == 0
    out = capsys.readouterr().out
    assert "ok    echo-json: script scripts/main.py, tier known" in out and "2 of 3 folders loadable" in out


def test_coworker_serve_skills_loads_the_folders_hidden_unless_expose(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from coworker.cli.main import main
    from coworker.cli.network import _add_skill_folders

    assert main(["serve", "--expose"]) == 1
    assert "--expose applies to the skill folders" in capsys.readouterr().err
    root = openclaw_workspace(tmp_path)
    agent = AsyncAgent("a", data_dir=tmp_path / "a")
    _add_skill_folders(agent, [str(root)], expose=False)
    assert "hidden from peers until `coworker skills expose NAME`: echo-json, vault" in capsys.readouterr().err
    other = AsyncAgent("b", data_dir=tmp_path / "b")
    _add_skill_folders(other, [str(root)], expose=True)
    assert not other.skill_hidden("echo-json") and agent.skill_hidden("echo-json")
    agent.close()
    other.close()
