"""Identity updates checked as the XMTP network checks them: signatures verified, then applied to the inbox's state.

Theory of operation
-------------------
An inbox's identity is a log of updates. Folding the log from nothing gives the inbox's association state: its
members (wallet addresses, installation keys, passkeys), who added each, the recovery identifier, and every
signature already used. :func:`apply_update` takes the state before an update (``None`` for a new inbox) and the
update, and returns the state after it or raises :class:`IdentityUpdateRefused`; it does no I/O. The server folds
the stored log once per inbox, keeps the state, and stores an update only if this accepts it, so the log never
holds an update that the clients (which fold the same log themselves) would choke on.

The rules are XMTP's (libxmtp ``xmtp_id::associations``), restated from its public behaviour:

- Every signature signs one text built from the whole update (:func:`signature_text`)::

      XMTP : Authenticate to inbox

      Inbox ID: <inbox id>
      Current time: <client_timestamp_ns as RFC 3339, whole seconds, Z>

      - Create inbox
        (Owner: <address>)
      - Grant messaging access to app
        (ID: <installation key, hex>)

      For more info: https://xmtp.org/signatures

  one ``- ...`` entry per action, in order (the other entries: "Link address to inbox" / "Link passkey to
  inbox" with "(Address: ...)" / "(Passkey: ...)", "Revoke messaging access from app", "Unlink address from
  inbox", "Unlink passkey from inbox", "Change inbox recovery address" with "(Address: ...)").
- A wallet signs with ERC-191 (``personal_sign``): the signer is the address recovered from the 65-byte
  signature, lower case, after s is made low. An installation signs with Ed25519ph (SHA-512 prehash) under the
  context ``IDENTITY UPDATE SIGNATURE``; the signer is the public key carried next to the signature.
- CreateInbox: only on a new inbox; the address must be the signer, exactly (so lower case), 42 characters
  ``0x`` + hex; the inbox id is the SHA-256 hex digest of the address followed by the nonce in decimal. The
  address becomes the only member and the recovery identifier.
- AddAssociation: the new member signs for itself, and an existing member (or the recovery identifier) signs
  for the inbox; an installation may not add an installation, nobody adds itself.
- RevokeAssociation and ChangeRecoveryAddress: signed by the recovery identifier. A revoked member's
  installations go with it.
- No signature may be used twice in an inbox's log; after its actions the state's inbox id must be the one the
  update names.

What the devnet refuses although the hosted network may accept it: smart-contract wallet (ERC-1271/6492)
signatures, which need a chain to verify (the devnet's VerifySmartContractWalletSignatures answers "not valid"
for the same reason, so clients would reject them too); passkey (P-256) signatures; legacy delegated (XMTP v2
key) signatures. The SDK's own clients with ordinary (EOA) wallets use none of these.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

# pycryptodome (it comes with eth-account, through eth-keyfile) is what verifies Ed25519ph with a context.
from Crypto.Hash import SHA512
from Crypto.Signature import eddsa

from coworker.core.wallets import SECP256K1_N, eip191_hash, recover
from coworker.devnet._gen import identity_pb2

INSTALLATION_SIGNATURE_CONTEXT = b"IDENTITY UPDATE SIGNATURE"
_HEADER = "XMTP : Authenticate to inbox"
_FOOTER = "For more info: https://xmtp.org/signatures"
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")

ETHEREUM = "ethereum"
INSTALLATION = "installation"
PASSKEY = "passkey"

Member = tuple[str, str]
"""A member identifier: (kind, value) with the value as the signature text shows it (addresses as given,
keys in lower-case hex)."""


class IdentityUpdateRefused(Exception):
    """The update is one the XMTP network would refuse (the message says why)."""


@dataclass(frozen=True)
class InboxState:
    """An inbox's association state: what its identity log adds up to."""

    inbox_id: str
    recovery: Member
    members: Mapping[Member, Member | None]
    """Each member and the member that added it (``None`` for the inbox's creator)."""
    seen_signatures: frozenset[bytes] = field(default_factory=frozenset)


@dataclass(frozen=True)
class _Signed:
    signer: Member
    kind: str  # ETHEREUM (ERC-191) or INSTALLATION (Ed25519ph)
    raw: bytes  # what counts for replay: the low-s form for ERC-191


def inbox_id_for(address: str, nonce: int) -> str:
    """The inbox id a CreateInbox for ``address`` with ``nonce`` makes."""
    return hashlib.sha256(f"{address}{nonce}".encode()).hexdigest()


def apply_update(state: InboxState | None, update: identity_pb2.IdentityUpdate) -> InboxState:
    """The inbox's state after ``update``; ``state`` is the state before it (``None``: no inbox yet).

    Raises:
        IdentityUpdateRefused: a signature does not verify, or it is not by a member allowed to make the change.
    """
    text = signature_text(update)
    used: list[bytes] = []
    for index, action in enumerate(update.actions):
        try:
            state = _apply_action(state, action, text, used)
        except IdentityUpdateRefused as exc:
            raise IdentityUpdateRefused(f"actions[{index}]: {exc}") from None
    if state is None:
        raise IdentityUpdateRefused("the inbox does not exist: its first update must create it")
    if state.inbox_id != update.inbox_id:
        raise IdentityUpdateRefused(f"the update names inbox {update.inbox_id!r}, its actions are for {state.inbox_id}")
    return replace(state, seen_signatures=state.seen_signatures | frozenset(used))


def signature_text(update: identity_pb2.IdentityUpdate) -> str:
    """The text every signature of ``update`` signs."""
    entries = [_action_text(action) for action in update.actions]
    return (
        f"{_HEADER}\n\nInbox ID: {update.inbox_id}\nCurrent time: {_timestamp(update.client_timestamp_ns)}\n\n"
        + "\n".join(entries)
        + f"\n\n{_FOOTER}"
    )


def _timestamp(ns: int) -> str:
    # The clients read the u64 as a signed 64-bit count of nanoseconds, and print whole seconds.
    signed = ns - (1 << 64) if ns >= 1 << 63 else ns
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=signed // 1_000_000_000)
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}Z"


def _action_text(action: identity_pb2.IdentityAction) -> str:
    which = action.WhichOneof("kind")
    if which == "create_inbox":
        create = action.create_inbox
        return f"- Create inbox\n  (Owner: {_identifier(create.initial_identifier, create.initial_identifier_kind)[1]})"
    if which == "add":
        kind, value = _member(action.add.new_member_identifier)
        prefix = {INSTALLATION: "Grant messaging access to app", ETHEREUM: "Link address to inbox",
                  PASSKEY: "Link passkey to inbox"}[kind]
        return f"- {prefix}\n  ({_LABEL[kind]}: {value})"
    if which == "revoke":
        kind, value = _member(action.revoke.member_to_revoke)
        prefix = {INSTALLATION: "Revoke messaging access from app", ETHEREUM: "Unlink address from inbox",
                  PASSKEY: "Unlink passkey from inbox"}[kind]
        return f"- {prefix}\n  ({_LABEL[kind]}: {value})"
    if which == "change_recovery_address":
        change = action.change_recovery_address
        identifier = _identifier(change.new_recovery_identifier, change.new_recovery_identifier_kind)
        return f"- Change inbox recovery address\n  (Address: {identifier[1]})"
    raise IdentityUpdateRefused("an action has no kind")


_LABEL = {ETHEREUM: "Address", INSTALLATION: "ID", PASSKEY: "Passkey"}


def _identifier(value: str, kind: int) -> Member:
    if kind == identity_pb2.IDENTIFIER_KIND_PASSKEY:
        try:
            return (PASSKEY, bytes.fromhex(value).hex())
        except ValueError:
            raise IdentityUpdateRefused(f"passkey identifier {value!r} is not hex") from None
    if kind in (identity_pb2.IDENTIFIER_KIND_UNSPECIFIED, identity_pb2.IDENTIFIER_KIND_ETHEREUM):
        return (ETHEREUM, value)
    raise IdentityUpdateRefused(f"unknown identifier kind {kind}")


def _member(member: identity_pb2.MemberIdentifier) -> Member:
    which = member.WhichOneof("kind")
    if which == "ethereum_address":
        return (ETHEREUM, member.ethereum_address)
    if which == "installation_public_key":
        return (INSTALLATION, member.installation_public_key.hex())
    if which == "passkey":
        return (PASSKEY, member.passkey.key.hex())
    raise IdentityUpdateRefused("a member identifier is missing")


def _apply_action(
    state: InboxState | None, action: identity_pb2.IdentityAction, text: str, used: list[bytes]
) -> InboxState:
    which = action.WhichOneof("kind")
    if which == "create_inbox":
        create = action.create_inbox
        account = _identifier(create.initial_identifier, create.initial_identifier_kind)
        signed = _verify(create.initial_identifier_signature, text, create.HasField("initial_identifier_signature"))
        if state is not None:
            raise IdentityUpdateRefused("the inbox already exists")
        if signed.signer != account:
            raise IdentityUpdateRefused(f"create inbox for {account[1]} is signed by {signed.signer[1]}")
        if not _ADDRESS.fullmatch(account[1]):
            raise IdentityUpdateRefused(f"{account[1]!r} is not an address (0x and 40 hex digits)")
        used.append(signed.raw)
        return InboxState(inbox_id_for(account[1], create.nonce), recovery=account, members={account: None})
    if state is None:
        raise IdentityUpdateRefused("the inbox does not exist: its first update must create it")
    if which == "add":
        add = action.add
        new = _member(add.new_member_identifier)
        new_signed = _verify(add.new_member_signature, text, add.HasField("new_member_signature"))
        existing = _verify(add.existing_member_signature, text, add.HasField("existing_member_signature"))
        _not_replayed(state, new_signed, existing)
        if new_signed.signer != new:
            raise IdentityUpdateRefused(f"the new member {new[1]} is not who signed for it ({new_signed.signer[1]})")
        if new_signed.signer == existing.signer:
            raise IdentityUpdateRefused("a member cannot add itself")
        if new[0] != new_signed.kind:
            raise IdentityUpdateRefused(f"a {new[0]} member cannot sign as {new_signed.kind}")
        if existing.signer not in state.members and existing.signer != state.recovery:
            raise IdentityUpdateRefused(f"{existing.signer[1]} is not a member of inbox {state.inbox_id}")
        if existing.signer[0] == INSTALLATION and new[0] == INSTALLATION:
            raise IdentityUpdateRefused("an installation cannot add an installation")
        used.extend((new_signed.raw, existing.raw))
        return replace(state, members={**state.members, new: existing.signer})
    if which == "revoke":
        revoke = action.revoke
        revoked = _member(revoke.member_to_revoke)
        signed = _verify(revoke.recovery_identifier_signature, text, revoke.HasField("recovery_identifier_signature"))
        _not_replayed(state, signed)
        _by_recovery(state, signed, "revoke")
        used.append(signed.raw)
        members = {
            member: parent for member, parent in state.members.items()
            if member != revoked and not (parent == revoked and member[0] == INSTALLATION)
        }
        return replace(state, members=members)
    if which == "change_recovery_address":
        change = action.change_recovery_address
        new_recovery = _identifier(change.new_recovery_identifier, change.new_recovery_identifier_kind)
        signed = _verify(change.existing_recovery_identifier_signature, text,
                         change.HasField("existing_recovery_identifier_signature"))
        _not_replayed(state, signed)
        _by_recovery(state, signed, "change the recovery address")
        used.append(signed.raw)
        return replace(state, recovery=new_recovery)
    raise IdentityUpdateRefused("an action has no kind")


def _not_replayed(state: InboxState, *signed: _Signed) -> None:
    if any(s.raw in state.seen_signatures for s in signed):
        raise IdentityUpdateRefused("a signature already used in this inbox's log")


def _by_recovery(state: InboxState, signed: _Signed, what: str) -> None:
    if signed.signer != state.recovery:
        raise IdentityUpdateRefused(
            f"only the recovery identifier {state.recovery[1]} may {what}, not {signed.signer[1]}"
        )


# --- signatures -----------------------------------------------------------------------------------


def _verify(signature: identity_pb2.Signature, text: str, present: bool) -> _Signed:
    which = signature.WhichOneof("signature") if present else None
    if which == "erc_191":
        return _verify_erc191(signature.erc_191.bytes, text)
    if which == "installation_key":
        return _verify_installation(signature.installation_key.public_key, signature.installation_key.bytes, text)
    if which == "erc_6492":
        raise IdentityUpdateRefused("smart-contract wallet signatures cannot be verified on the devnet (no chain)")
    if which == "passkey":
        raise IdentityUpdateRefused("the devnet does not verify passkey signatures")
    if which == "delegated_erc_191":
        raise IdentityUpdateRefused("the devnet does not accept legacy delegated signatures")
    raise IdentityUpdateRefused("a signature is missing")


def _verify_erc191(signature: bytes, text: str) -> _Signed:
    if len(signature) != 65:
        raise IdentityUpdateRefused(f"an ERC-191 signature is 65 bytes, not {len(signature)}")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N) or v not in (0, 1, 27, 28):
        raise IdentityUpdateRefused("an ERC-191 signature is malformed")
    if s > SECP256K1_N // 2:  # the clients take the low-s twin and keep v
        s = SECP256K1_N - s
    low_s = signature[:32] + s.to_bytes(32, "big") + signature[64:]
    try:
        signer = recover(eip191_hash(text), r, s, v % 27)
    except ValueError as exc:
        raise IdentityUpdateRefused(f"an ERC-191 signature does not verify: {exc}") from None
    return _Signed((ETHEREUM, signer), ETHEREUM, low_s)


def _verify_installation(public_key: bytes, signature: bytes, text: str) -> _Signed:
    if len(public_key) != 32 or len(signature) != 64:
        raise IdentityUpdateRefused("an installation key signature needs a 32-byte key and 64 bytes")
    try:
        key = eddsa.import_public_key(public_key)
        eddsa.new(key, "rfc8032", context=INSTALLATION_SIGNATURE_CONTEXT).verify(
            SHA512.new(text.encode()), signature
        )
    except ValueError:
        raise IdentityUpdateRefused(f"the installation key signature by {public_key.hex()} does not verify") from None
    return _Signed((INSTALLATION, public_key.hex()), INSTALLATION, signature)
