"""Wallet addresses and EIP-191 signatures: pure functions over strings and bytes, no keys kept and no I/O.

Signatures are read strictly, so that one signed text has exactly one signature string that verifies (up to the
case of its hex digits): ``0x`` and 130 hex digits (r, s, v; digits in either case, nothing else - no spaces, no
``0X``, no missing prefix), v 27 or 28, and the canonical low-s form (s at most n/2 of secp256k1, as EIP-2 asks
of transactions). Any other spelling - the high-s twin (n - s with v flipped), which recovers the same wallet,
included - is not a signature here: our own signer (libsecp256k1, through coincurve) only makes low-s ones.

The arithmetic is libsecp256k1's (coincurve) and Keccak-256 is pycryptodome's, called directly: the same results
as eth-account and eth-keys, at a fraction of their cost per call and of their import time (eth-account loads
BLS tables CoWorker never uses).
"""

from __future__ import annotations

import functools
import re
from typing import Final

from coincurve import PublicKey
from Crypto.Hash import keccak as _keccak

from coworker._errors import ConfigurationError
from coworker.core.protocol import is_address

SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # the curve's order
_SIGNATURE_RE: Final = re.compile(r"0x[0-9a-fA-F]{130}")  # used with fullmatch: "$" would let a newline end it


def keccak256(data: bytes) -> bytes:
    """Ethereum's Keccak-256 of ``data``."""
    return _keccak.new(digest_bits=256, data=data).digest()


def eip191_hash(text: str) -> bytes:
    """The hash an EIP-191 personal signature of ``text`` signs (``personal_sign``: the UTF-8 bytes, prefixed
    with ``"\\x19Ethereum Signed Message:\\n"`` and their length)."""
    message = text.encode("utf-8")
    return keccak256(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message)


def address_of(public_key: PublicKey) -> str:
    """The lower-case 0x address of a secp256k1 public key."""
    return "0x" + keccak256(public_key.format(compressed=False)[1:])[-20:].hex()


def recover(msg_hash: bytes, r: int, s: int, recovery_id: int) -> str:
    """The lower-case address whose key made the signature (r, s, recovery id 0 or 1) of a 32-byte hash.

    Raises:
        ValueError: the values do not make a signature any key could have made.
    """
    if recovery_id not in (0, 1) or not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise ValueError("not a secp256k1 signature: r, s or the recovery id out of range")
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([recovery_id])
    try:
        key = PublicKey.from_signature_and_message(raw, msg_hash, hasher=None)
    except Exception as exc:  # coincurve raises bare Exception when no key recovers
        raise ValueError(f"no public key recovers from this signature: {exc}") from None
    return address_of(key)


@functools.lru_cache(maxsize=4096)
def checksum(address: str) -> str:
    """The EIP-55 checksummed form of ``address``.

    Raises:
        ConfigurationError: not a 0x-prefixed 20-byte hex address.
    """  # cached: the Keccak hash behind EIP-55 costs microseconds, and the same peers come back on every message
    if not is_address(address):
        raise ConfigurationError(f"not a wallet address: {address!r} (expected 0x and 40 hex digits)")
    lower = address[2:].lower()
    digest = keccak256(lower.encode()).hex()
    return "0x" + "".join(c.upper() if d in "89abcdef" else c for c, d in zip(lower, digest[:40], strict=True))


def same_wallet(a: str, b: str) -> bool:
    """Whether two addresses name the same wallet (case-insensitive)."""
    return a.lower() == b.lower()


def signed_by(text: str, signature: str, address: str) -> bool:
    """Whether ``signature`` is an EIP-191 signature of ``text`` by the wallet ``address``; False for a
    malformed or non-canonical signature too (see the module's docstring)."""
    if not is_address(address):
        return False
    try:
        return _recover(text, signature) == address.lower()
    except ValueError:
        return False


def _recover(text: str, signature: str) -> str:
    if not isinstance(signature, str) or _SIGNATURE_RE.fullmatch(signature) is None:
        raise ValueError("not a signature: expected 0x and 130 hex digits")
    raw = bytes.fromhex(signature[2:])
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big")
    if raw[64] not in (27, 28):
        raise ValueError("not an EIP-191 signature: v must be 27 or 28")
    if not (0 < r < SECP256K1_N and 0 < s <= SECP256K1_N // 2):
        raise ValueError("not a canonical signature: r out of range or s above n/2 (high-s)")
    return recover(eip191_hash(text), r, s, raw[64] - 27)


def recover_signer(text: str, signature: str) -> str:
    """The checksummed address that made an EIP-191 ``signature`` of ``text``.

    Raises:
        ValueError: ``signature`` is not a strict, canonical 65-byte hex signature (r, s, v with v 27 or 28 and
            s at most n/2; see the module's docstring).
    """
    return checksum(_recover(text, signature))
