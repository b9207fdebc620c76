"""What `import coworker` loads: every CLI command and every agent pays for it, so the keystore's code (eth-account,
and through it BLS tables CoWorker never uses) is loaded only when a keystore is read or written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

KEYSTORE_MODULES = ("eth_account", "eth_keyfile", "py_ecc", "eth_keys")


def _loaded_after(code: str) -> list[str]:
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({KEYSTORE_MODULES!r}))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_coworker_and_its_cli_loads_no_keystore_code() -> None:
    assert _loaded_after("import coworker, coworker.cli.main") == []


def test_an_agent_with_a_plain_key_file_loads_no_keystore_code(tmp_path: Path) -> None:
    code = (f"from pathlib import Path\nfrom coworker.store.identity import Identity\n"
            f"a = Identity.load_or_create(Path({str(tmp_path)!r}))\n"
            f"b = Identity.load_or_create(Path({str(tmp_path)!r}))\nassert a.address == b.address")
    assert _loaded_after(code) == []


def test_a_keystore_loads_its_code_when_used_and_round_trips(tmp_path: Path) -> None:
    code = (f"from pathlib import Path\nfrom coworker.store.identity import Identity\n"
            f"a = Identity.load_or_create(Path({str(tmp_path)!r}), passphrase='pw')\n"
            f"b = Identity.load_or_create(Path({str(tmp_path)!r}), passphrase='pw')\n"
            f"assert a.address == b.address and a.sign_text('x') == b.sign_text('x')")
    assert "eth_account" in _loaded_after(code)
