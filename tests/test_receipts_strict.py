"""Receipts verify strictly: exactly the signed fields, a canonical (low-s) signature, strict hex. Each forged
variant here verified before (an attack run found them); the caller's own check refuses them end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from coworker import AsyncAgent, MemoryNetwork, Network, Receipt
from coworker.core.protocol import decode, encode, is_address, reply
from coworker.core.wallets import SECP256K1_N, recover_signer, signed_by
from coworker.store.identity import Identity

from .conftest import RawClient

PROVIDER, CALLER = Identity.generate(), Identity.generate()


@pytest.fixture
def network() -> Network:
    return MemoryNetwork()


def signed(task_id: str = "a" * 32, *, provider: Identity = PROVIDER, caller: str = CALLER.address,
           skill: str = "echo", status: str = "completed") -> Receipt:
    receipt = Receipt(task_id=task_id, caller=caller, provider=provider.address, skill=skill, version="1.0.0",
                      status=status, started_at=1.5, duration_ms=2.0, input_bytes=10, output_bytes=20)
    return dataclasses.replace(receipt, signature=provider.sign_text(receipt.canonical()))


def high_s_twin(signature: str) -> str:
    """The other signature of the same text by the same key: s' = n - s, with v flipped (27 <-> 28)."""
    raw = bytes.fromhex(signature[2:])
    s = int.from_bytes(raw[32:64])
    return "0x" + (raw[:32] + (SECP256K1_N - s).to_bytes(32) + bytes([55 - raw[64]])).hex()


def caller_accepts(data: dict[str, Any], provider: str = PROVIDER.address) -> bool:
    """What a caller concludes of a receipt it was sent (as runtime/caller.py checks one)."""
    try:
        return Receipt.from_dict(data).verify(provider)
    except ValueError:
        return False


def test_our_signer_makes_only_low_s_signatures_and_they_verify() -> None:
    for n in range(64):
        receipt = signed(f"{n:032x}")
        s = int.from_bytes(bytes.fromhex(receipt.signature[2:])[32:64])
        assert 0 < s <= SECP256K1_N // 2
        assert caller_accepts(receipt.to_dict())


def test_a_receipt_with_an_unsigned_extra_field_is_not_a_receipt() -> None:
    forged = {**signed().to_dict(), "paid": True}
    with pytest.raises(ValueError, match="not a receipt: unsigned field paid"):
        Receipt.from_dict(forged)
    assert not caller_accepts(forged)


def test_a_receipt_missing_a_signed_field_is_not_a_receipt() -> None:
    data = signed().to_dict()
    del data["v"]
    with pytest.raises(ValueError, match="not a receipt: missing v"):
        Receipt.from_dict(data)


def test_the_high_s_twin_of_a_valid_signature_does_not_verify() -> None:
    receipt = signed()
    twin = high_s_twin(receipt.signature)
    # The twin is a real signature of the same text by the same wallet: plain EIP-191 tools accept it.
    assert Account.recover_message(encode_defunct(text=receipt.canonical()), signature=twin) == PROVIDER.address
    assert not dataclasses.replace(receipt, signature=twin).verify(PROVIDER.address)
    assert not caller_accepts({**receipt.to_dict(), "signature": twin})
    assert not signed_by(receipt.canonical(), twin, PROVIDER.address)
    with pytest.raises(ValueError, match="high-s"):
        recover_signer(receipt.canonical(), twin)


SPELLINGS: dict[str, Callable[[str], str]] = {
    "a space inside": lambda sig: sig[:40] + " " + sig[40:],
    "a leading space": lambda sig: " " + sig,
    "a trailing space (odd length)": lambda sig: sig + " ",
    "a trailing newline": lambda sig: sig + "\n",
    "uppercase 0X": lambda sig: "0X" + sig[2:],
    "no 0x": lambda sig: sig[2:],
    "an odd number of digits": lambda sig: sig[:-1],
    "a byte too many": lambda sig: sig + "00",
    "non-ASCII digits": lambda sig: sig[:-2] + "\u0661\u0662",
}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_a_signature_in_loose_hex_does_not_verify(spelling: str) -> None:
    receipt = signed()
    loose = SPELLINGS[spelling](receipt.signature)
    assert not dataclasses.replace(receipt, signature=loose).verify(PROVIDER.address)
    assert not caller_accepts({**receipt.to_dict(), "signature": loose})
    with pytest.raises(ValueError, match="0x and 130 hex digits"):
        recover_signer(receipt.canonical(), loose)


def test_uppercase_hex_digits_are_the_same_signature() -> None:
    # The one latitude, and a documented one: the digits' case (some tools print them upper-case).
    receipt = signed()
    assert caller_accepts({**receipt.to_dict(), "signature": "0x" + receipt.signature[2:].upper()})


def test_a_receipt_with_a_number_that_is_not_finite_is_not_a_receipt() -> None:
    with pytest.raises(ValueError, match="not a receipt: duration_ms is inf"):
        Receipt.from_dict({**signed().to_dict(), "duration_ms": float("inf")})


# ---- through a caller ---------------------------------------------------------------------------------------

Forgery = Callable[[dict[str, Any]], dict[str, Any]]


def new_signature(change: Callable[[str], str]) -> Forgery:
    return lambda receipt: {**receipt, "signature": change(receipt["signature"])}


FORGERIES: dict[str, Forgery] = {
    "genuine": lambda receipt: receipt,
    "an unsigned extra field": lambda receipt: {**receipt, "paid": True},
    "the high-s twin": new_signature(high_s_twin),
    "a space in the signature": new_signature(SPELLINGS["a space inside"]),
    "a signature without 0x": new_signature(SPELLINGS["no 0x"]),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
async def test_a_caller_marks_a_forged_receipt_invalid(forgery: str, network: Network, raw: RawClient,
                                                       tmp_path: Path) -> None:
    bob = AsyncAgent("bob", network=network, data_dir=tmp_path / "bob")
    await bob.start()
    try:
        task_id = await bob.request(raw.wallet, "echo", {"text": "hi"})
        incoming = await raw.receive()
        assert incoming["type"] == "call.request"
        receipt = signed(task_id, provider=raw.identity, caller=bob.wallet)
        body = {"task": task_id, "output": "hi", "duration_ms": 2.0,
                "receipt": FORGERIES[forgery](receipt.to_dict())}
        request = decode(json.dumps(incoming).encode())
        await raw.send(bob.wallet, encode(reply(request, "call.result", body, now_ms=int(time.time() * 1000))))
        assert await asyncio.wait_for(bob.wait(task_id), 10) == "hi"
        assert bob.get_result(task_id)["receipt_valid"] is (forgery == "genuine")
    finally:
        await bob.stop()
        bob.close()



def test_an_address_with_a_final_newline_is_not_an_address() -> None:
    # re.match with "$" let one through: a receipt's provider (or any address) is exactly 0x and 40 hex digits.
    assert is_address(PROVIDER.address) and not is_address(PROVIDER.address + "\n")
    assert not signed_by("text", PROVIDER.sign_text("text"), PROVIDER.address + "\n")
