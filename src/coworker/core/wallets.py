"""Wallet addresses and EIP-191 signatures: pure functions over strings, no keys kept and no I/O."""

from __future__ import annotations

import functools

from eth_account.messages import defunct_hash_message
from eth_keys.datatypes import PublicKey, Signature
from eth_keys.exceptions import BadSignature
from eth_utils.address import to_checksum_address
from eth_utils.exceptions import ValidationError

from coworker._errors import ConfigurationError
from coworker.core.protocol import is_address


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
    malformed signature too. (Compares raw addresses: cheaper than :func:`recover_signer`.)"""
    try:
        signer: bytes = _recover(text, signature).to_canonical_address()
        return signer == bytes.fromhex(address.removeprefix("0x"))
    except (ValueError, TypeError, BadSignature, ValidationError):
        return False


def _recover(text: str, signature: str) -> PublicKey:
    raw = bytes.fromhex(signature.removeprefix("0x"))
    if len(raw) != 65 or raw[64] not in (27, 28):
        raise ValueError("not a 65-byte EIP-191 signature")
    vrs = Signature(signature_bytes=raw[:64] + bytes([raw[64] - 27]))
    return vrs.recover_public_key_from_msg_hash(defunct_hash_message(text=text))


def recover_signer(text: str, signature: str) -> str:
    """The checksummed address that made an EIP-191 ``signature`` of ``text``.

    Raises:
        ValueError: ``signature`` is not a 65-byte hex signature (r, s, v with v 27 or 28).
    """
    return checksum(_recover(text, signature).to_checksum_address())
