"""An agent's identity: one Ethereum wallet, kept in the agent's own directory.

Without a passphrase the key is a hex file ``wallet.key``; with one it is a standard V3 keystore
``keystore.json``. Both are created with mode 0600 and never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import defunct_hash_message
from eth_account.signers.local import LocalAccount
from eth_keys.datatypes import PrivateKey

from coworker._errors import IdentityError
from coworker.core.wallets import checksum

log = logging.getLogger("coworker.identity")

KEY_FILE = "wallet.key"
KEYSTORE_FILE = "keystore.json"


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data``; refuse to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _ensure_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o); setting it to 0600", path.name, mode)
        os.chmod(path, 0o600)


class Identity:
    """The wallet of one agent. ``address`` is public; the key never leaves this object except to a transport."""

    __slots__ = ("_account", "_key", "address")

    def __init__(self, account: LocalAccount) -> None:
        self._account = account
        self._key = PrivateKey(bytes(account.key))  # signs without eth-account's per-call conversions
        self.address: str = checksum(account.address)

    def __repr__(self) -> str:
        return f"Identity({self.address})"

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random wallet that is not saved anywhere (tests, throwaway peers)."""
        return cls(Account.create())

    @classmethod
    def exists(cls, directory: Path) -> bool:
        return (directory / KEY_FILE).exists() or (directory / KEYSTORE_FILE).exists()

    @classmethod
    def load_or_create(cls, directory: Path, passphrase: str | None = None) -> Identity:
        """Load the agent's wallet from ``directory``, creating one there on first use.

        Args:
            directory: the agent's own directory (created with mode 0700 if missing).
            passphrase: encrypts a new key as a V3 keystore, decrypts an existing one.

        Raises:
            IdentityError: unreadable or corrupt key file, or a keystore without the right passphrase.
        """
        keystore, keyfile = directory / KEYSTORE_FILE, directory / KEY_FILE
        if keystore.exists():
            return cls._load_keystore(keystore, passphrase)
        if keyfile.exists():
            _ensure_private(keyfile)
            try:
                text = keyfile.read_text().strip()
                return cls(Account.from_key(text))
            except (OSError, ValueError) as exc:
                raise IdentityError(f"cannot read the wallet key in {keyfile}: {type(exc).__name__}") from None
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        account: LocalAccount = Account.create()
        try:
            if passphrase:
                encrypted = Account.encrypt(account.key, passphrase)
                write_private(keystore, json.dumps(encrypted).encode())
            else:
                write_private(keyfile, (account.key.hex() + "\n").encode())
        except FileExistsError:  # another process created it first: use theirs
            return cls.load_or_create(directory, passphrase)
        log.info("created wallet %s in %s", checksum(account.address), directory)
        return cls(account)

    @classmethod
    def _load_keystore(cls, path: Path, passphrase: str | None) -> Identity:
        _ensure_private(path)
        if not passphrase:
            raise IdentityError(f"the wallet in {path} is encrypted: set COWORKER_PASSPHRASE or pass passphrase=")
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            key = Account.decrypt(data, passphrase)
        except ValueError:
            raise IdentityError(f"cannot decrypt the wallet in {path}: wrong passphrase or corrupt file") from None
        except OSError as exc:
            raise IdentityError(f"cannot read {path}: {exc.strerror}") from None
        return cls(Account.from_key(key))

    def sign_text(self, text: str) -> str:
        """An EIP-191 personal signature of ``text``, as 0x-prefixed hex."""
        signature = self._key.sign_msg_hash(defunct_hash_message(text=text))
        return "0x" + signature.to_bytes()[:64].hex() + f"{signature.v + 27:02x}"

    def private_key_hex(self) -> str:
        """The raw key, for a transport that must sign for this wallet. Never log or send it."""
        return "0x" + bytes(self._account.key).hex()
