"""Identity updates built and signed in Python as the XMTP clients build them, honest or forged, for the tests."""

from __future__ import annotations

import time
from typing import Protocol

import grpc
from Crypto.Hash import SHA512
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa
from eth_account import Account
from eth_account.messages import encode_defunct

from coworker.devnet._gen import identity_pb2
from coworker.devnet._identity import INSTALLATION_SIGNATURE_CONTEXT, inbox_id_for, signature_text

IDENTITY = "/xmtp.identity.api.v1.IdentityApi"


class Signer(Protocol):
    def sign(self, text: str) -> identity_pb2.Signature: ...

    def member(self) -> identity_pb2.MemberIdentifier: ...


class Wallet:
    """An Ethereum account that signs with ERC-191 (personal_sign)."""

    def __init__(self) -> None:
        self.account = Account.create()
        self.address = self.account.address.lower()

    def sign(self, text: str) -> identity_pb2.Signature:
        signed = self.account.sign_message(encode_defunct(text=text))
        return identity_pb2.Signature(erc_191=identity_pb2.RecoverableEcdsaSignature(bytes=bytes(signed.signature)))

    def member(self) -> identity_pb2.MemberIdentifier:
        return identity_pb2.MemberIdentifier(ethereum_address=self.address)


class Installation:
    """An installation key (Ed25519) that signs with Ed25519ph under XMTP's identity context."""

    def __init__(self) -> None:
        self.key = ECC.generate(curve="ed25519")
        self.public_key = self.key.public_key().export_key(format="raw")

    def sign(self, text: str) -> identity_pb2.Signature:
        signer = eddsa.new(self.key, "rfc8032", context=INSTALLATION_SIGNATURE_CONTEXT)
        signature = signer.sign(SHA512.new(text.encode()))
        return identity_pb2.Signature(
            installation_key=identity_pb2.RecoverableEd25519Signature(bytes=signature, public_key=self.public_key)
        )

    def member(self) -> identity_pb2.MemberIdentifier:
        return identity_pb2.MemberIdentifier(installation_public_key=self.public_key)


def _update(inbox_id: str) -> identity_pb2.IdentityUpdate:
    return identity_pb2.IdentityUpdate(inbox_id=inbox_id, client_timestamp_ns=time.time_ns())


def create_inbox(
    wallet: Wallet, installation: Installation | None = None, *, nonce: int = 0, signer: Signer | None = None,
    inbox_id: str | None = None, address: str | None = None,
) -> identity_pb2.IdentityUpdate:
    """What ``Client.create`` publishes: create the inbox, and (optionally) grant an installation access.

    ``signer``, ``inbox_id`` and ``address`` replace the honest values to forge one."""
    address = address if address is not None else wallet.address
    update = _update(inbox_id if inbox_id is not None else inbox_id_for(address, nonce))
    create = update.actions.add().create_inbox
    create.initial_identifier = address
    create.nonce = nonce
    create.initial_identifier_kind = identity_pb2.IDENTIFIER_KIND_ETHEREUM
    if installation is not None:
        update.actions.add().add.new_member_identifier.CopyFrom(installation.member())
    text = signature_text(update)
    create.initial_identifier_signature.CopyFrom((signer or wallet).sign(text))
    if installation is not None:
        add = update.actions[1].add
        add.existing_member_signature.CopyFrom(wallet.sign(text))
        add.new_member_signature.CopyFrom(installation.sign(text))
    return update


def add_member(inbox_id: str, existing: Signer, new: Signer) -> identity_pb2.IdentityUpdate:
    """``existing`` (a member, or the recovery address) adds ``new``; both sign."""
    update = _update(inbox_id)
    add = update.actions.add().add
    add.new_member_identifier.CopyFrom(new.member())
    text = signature_text(update)
    add.existing_member_signature.CopyFrom(existing.sign(text))
    add.new_member_signature.CopyFrom(new.sign(text))
    return update


def revoke(inbox_id: str, member: identity_pb2.MemberIdentifier, signer: Signer | None) -> identity_pb2.IdentityUpdate:
    """Revoke ``member``, signed by ``signer`` (``None``: unsigned)."""
    update = _update(inbox_id)
    action = update.actions.add().revoke
    action.member_to_revoke.CopyFrom(member)
    if signer is not None:
        action.recovery_identifier_signature.CopyFrom(signer.sign(signature_text(update)))
    return update


async def publish(channel: grpc.aio.Channel, update: identity_pb2.IdentityUpdate | bytes) -> None:
    """Publish an update (or raw bytes) as a client would; raises the server's AioRpcError."""
    raw = update if isinstance(update, bytes) else update.SerializeToString()
    request = identity_pb2.PublishIdentityUpdateRequest(identity_update=raw).SerializeToString()
    rpc = channel.unary_unary(
        f"{IDENTITY}/PublishIdentityUpdate", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    await rpc(request, timeout=10)


async def log_of(channel: grpc.aio.Channel, inbox_id: str) -> list[bytes]:
    """The inbox's identity log as the clients read it (the raw updates, in order)."""
    request = identity_pb2.GetIdentityUpdatesRequest()
    request.requests.add(inbox_id=inbox_id, sequence_id=0)
    rpc = channel.unary_unary(
        f"{IDENTITY}/GetIdentityUpdates", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    raw = await rpc(request.SerializeToString(), timeout=10)
    responses = identity_pb2.GetIdentityUpdatesResponse.FromString(raw).responses
    return [entry.update for response in responses for entry in response.updates]


async def inbox_of(channel: grpc.aio.Channel, address: str) -> str | None:
    """The inbox GetInboxIds answers for ``address``."""
    request = identity_pb2.GetInboxIdsRequest()
    request.requests.add(identifier=address, identifier_kind=identity_pb2.IDENTIFIER_KIND_ETHEREUM)
    rpc = channel.unary_unary(
        f"{IDENTITY}/GetInboxIds", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    raw = await rpc(request.SerializeToString(), timeout=10)
    (answer,) = identity_pb2.GetInboxIdsResponse.FromString(raw).responses
    return answer.inbox_id if answer.HasField("inbox_id") else None
