"""An agent's identity: one Ethereum wallet, kept in the agent's own directory.

Without a passphrase the key is a hex file ``wallet.key``; with one it is a standard V3 keystore
``keystore.json``. Both are created with mode 0600 and never overwritten.

The key is held as one libsecp256k1 key object (coincurve), made once: signing costs one call into the C
library. The keystore code (eth-account, scrypt) is loaded only when a keystore is read or written.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from coincurve import PrivateKey

from coworker._errors import IdentityError
from coworker.core.wallets import SECP256K1_N, address_of, checksum, eip191_hash

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

    __slots__ = ("_key", "address")

    def __init__(self, secret: bytes) -> None:
        """From the 32 bytes of a private key.

        Raises:
            IdentityError: not a valid secp256k1 private key.
        """
        if len(secret) != 32 or not 0 < int.from_bytes(secret, "big") < SECP256K1_N:
            raise IdentityError("not a private key: 32 bytes below the secp256k1 order, not zero")
        self._key = PrivateKey(bytes(secret))
        self.address: str = checksum(address_of(self._key.public_key))

    def __repr__(self) -> str:
        return f"Identity({self.address})"

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random wallet that is not saved anywhere (tests, throwaway peers)."""
        return cls(_new_secret())

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
                return cls(_parse_hex_key(text))
            except (OSError, ValueError, IdentityError) as exc:
                raise IdentityError(f"cannot read the wallet key in {keyfile}: {type(exc).__name__}") from None
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        secret = _new_secret()
        try:
            if passphrase:
                from eth_account import Account  # the keystore's code (scrypt): loaded only for a keystore

                encrypted = Account.encrypt(secret, passphrase)
                write_private(keystore, json.dumps(encrypted).encode())
            else:
                write_private(keyfile, (secret.hex() + "\n").encode())
        except FileExistsError:  # another process created it first: use theirs
            return cls.load_or_create(directory, passphrase)
        identity = cls(secret)
        log.info("created wallet %s in %s", identity.address, directory)
        return identity

    @classmethod
    def _load_keystore(cls, path: Path, passphrase: str | None) -> Identity:
        _ensure_private(path)
        if not passphrase:
            raise IdentityError(f"the wallet in {path} is encrypted: set COWORKER_PASSPHRASE or pass passphrase=")
        from eth_account import Account  # the keystore's code (scrypt): loaded only for a keystore

        try:
            data: dict[str, Any] = json.loads(path.read_text())
            key = Account.decrypt(data, passphrase)
        except ValueError:
            raise IdentityError(f"cannot decrypt the wallet in {path}: wrong passphrase or corrupt file") from None
        except OSError as exc:
            raise IdentityError(f"cannot read {path}: {exc.strerror}") from None
        return cls(bytes(key))

    def sign_text(self, text: str) -> str:
        """An EIP-191 personal signature of ``text``, as 0x-prefixed hex (r, s, v with v 27 or 28; low s)."""
        signature = self._key.sign_recoverable(eip191_hash(text), hasher=None)
        return "0x" + signature[:64].hex() + f"{signature[64] + 27:02x}"

    def private_key_hex(self) -> str:
        """The raw key, for a transport that must sign for this wallet. Never log or send it."""
        return "0x" + self._key.secret.hex()


def _new_secret() -> bytes:
    """32 random bytes that make a valid private key (one draw in about 2^128 is not, and is drawn again)."""
    while True:
        secret = secrets.token_bytes(32)
        if 0 < int.from_bytes(secret, "big") < SECP256K1_N:
            return secret


def _parse_hex_key(text: str) -> bytes:
    """The 32 bytes of a hex private key, with or without ``0x``.

    Raises:
        ValueError: not 64 hex digits.
    """
    digits = text[2:] if text[:2] in ("0x", "0X") else text
    if len(digits) != 64:
        raise ValueError("a private key is 64 hex digits")
    return bytes.fromhex(digits)
