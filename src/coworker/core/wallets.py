"""Wallet addresses and EIP-191 signatures: pure functions over strings, no keys kept and no I/O.

Signatures are read strictly, so that one signed text has exactly one signature string that verifies (up to the
case of its hex digits): ``0x`` and 130 hex digits (r, s, v; digits in either case, nothing else - no spaces, no
``0X``, no missing prefix), v 27 or 28, and the canonical low-s form (s at most n/2 of secp256k1, as EIP-2 asks
of transactions). Any other spelling - the high-s twin (n - s with v flipped), which recovers the same wallet,
included - is not a signature here: our own signer (eth-keys) only makes low-s ones.
"""

from __future__ import annotations

import functools
import re
from typing import Final

from eth_account.messages import defunct_hash_message
from eth_keys.datatypes import PublicKey, Signature
from eth_keys.exceptions import BadSignature
from eth_utils.address import to_checksum_address
from eth_utils.exceptions import ValidationError

from coworker._errors import ConfigurationError
from coworker.core.protocol import is_address

SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # the curve's order
_SIGNATURE_RE: Final = re.compile(r"0x[0-9a-fA-F]{130}")  # used with fullmatch: "$" would let a newline end it


@functools.lru_cache(maxsize=4096)
def checksum(address: str) -> str:
    """The EIP-55 checksummed form of ``address``.

    Raises:
        ConfigurationError: not a 0x-prefixed 20-byte hex address.
    """  # cached: the keccak hash behind EIP-55 costs ~80 us, and the same peers come back on every message
    if not is_address(address):
        raise ConfigurationError(f"not a wallet address: {address!r} (expected 0x and 40 hex digits)")
    return str(to_checksum_address(address))


def same_wallet(a: str, b: str) -> bool:
    """Whether two addresses name the same wallet (case-insensitive)."""
    return a.lower() == b.lower()


def signed_by(text: str, signature: str, address: str) -> bool:
    """Whether ``signature`` is an EIP-191 signature of ``text`` by the wallet ``address``; False for a
    malformed or non-canonical signature too (see the module's docstring). (Compares raw addresses: cheaper than
    :func:`recover_signer`.)"""
    if not is_address(address):
        return False
    try:
        signer: bytes = _recover(text, signature).to_canonical_address()
        return signer == bytes.fromhex(address[2:])
    except (ValueError, TypeError, BadSignature, ValidationError):
        return False


def _recover(text: str, signature: str) -> PublicKey:
    if _SIGNATURE_RE.fullmatch(signature) is None:
        raise ValueError("not a signature: expected 0x and 130 hex digits")
    raw = bytes.fromhex(signature[2:])
    r, s = int.from_bytes(raw[:32]), int.from_bytes(raw[32:64])
    if raw[64] not in (27, 28):
        raise ValueError("not an EIP-191 signature: v must be 27 or 28")
    if not (0 < r < SECP256K1_N and 0 < s <= SECP256K1_N // 2):
        raise ValueError("not a canonical signature: r out of range or s above n/2 (high-s)")
    vrs = Signature(signature_bytes=raw[:64] + bytes([raw[64] - 27]))
    return vrs.recover_public_key_from_msg_hash(defunct_hash_message(text=text))


def recover_signer(text: str, signature: str) -> str:
    """The checksummed address that made an EIP-191 ``signature`` of ``text``.

    Raises:
        ValueError: ``signature`` is not a strict, canonical 65-byte hex signature (r, s, v with v 27 or 28 and
            s at most n/2; see the module's docstring).
    """
    return checksum(_recover(text, signature).to_checksum_address())
