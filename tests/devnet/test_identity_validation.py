"""The devnet refuses identity updates the XMTP network would refuse, and stores nothing of them.

Each attack is a local process that speaks gRPC to the devnet: before these checks, an unsigned revoke or a
forged create-inbox went into an agent's identity log and cut the agent off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from coworker.core.wallets import SECP256K1_N
from coworker.devnet import DevnetConfig, DevnetServer
from coworker.devnet._gen import identity_pb2
from coworker.devnet._identity import IdentityUpdateRefused, apply_update, inbox_id_for, signature_text

from .identities import Installation, Wallet, add_member, create_inbox, inbox_of, log_of, publish, revoke

# --- the rules, without a server ------------------------------------------------------------------


def test_inbox_id_is_the_sha256_of_the_address_and_the_decimal_nonce() -> None:
    # The vector libxmtp documents for this address and nonce 0.
    address = "0x1234567890abcdef1234567890abcdef12345678"
    assert inbox_id_for(address, 0) == "fcd18d86276d7a99fe522dba9660c420f03c8648785ada7c5daae232a3df77a9"
    assert inbox_id_for(address, 12) != inbox_id_for(address, 1)


def test_signature_text_lists_every_action_under_the_inbox_and_the_time() -> None:
    key = bytes(range(32))
    update = identity_pb2.IdentityUpdate(inbox_id="abc", client_timestamp_ns=1_700_000_000_999_999_999)
    update.actions.add().create_inbox.initial_identifier = "0xaa"
    update.actions.add().add.new_member_identifier.installation_public_key = key
    update.actions.add().add.new_member_identifier.ethereum_address = "0xbb"
    update.actions.add().revoke.member_to_revoke.installation_public_key = key
    update.actions.add().revoke.member_to_revoke.ethereum_address = "0xbb"
    update.actions.add().change_recovery_address.new_recovery_identifier = "0xcc"
    assert signature_text(update) == (
        "XMTP : Authenticate to inbox\n\nInbox ID: abc\nCurrent time: 2023-11-14T22:13:20Z\n\n"
        "- Create inbox\n  (Owner: 0xaa)\n"
        f"- Grant messaging access to app\n  (ID: {key.hex()})\n"
        "- Link address to inbox\n  (Address: 0xbb)\n"
        f"- Revoke messaging access from app\n  (ID: {key.hex()})\n"
        "- Unlink address from inbox\n  (Address: 0xbb)\n"
        "- Change inbox recovery address\n  (Address: 0xcc)\n\n"
        "For more info: https://xmtp.org/signatures"
    )


def test_honest_log_folds_into_members_with_their_parents() -> None:
    wallet, laptop, phone = Wallet(), Installation(), Installation()
    state = apply_update(None, create_inbox(wallet, laptop))
    state = apply_update(state, add_member(state.inbox_id, wallet, phone))
    assert set(state.members) == {("ethereum", wallet.address), ("installation", laptop.public_key.hex()),
                                  ("installation", phone.public_key.hex())}
    state = apply_update(state, revoke(state.inbox_id, laptop.member(), wallet))
    assert ("installation", laptop.public_key.hex()) not in state.members
    state = apply_update(state, revoke(state.inbox_id, wallet.member(), wallet))
    assert state.members == {}  # the wallet's installations go with it


def test_a_high_s_wallet_signature_is_read_as_the_clients_read_it() -> None:
    """The clients take the low-s twin of an ERC-191 signature and keep its v: (n - s, v) is the signature (s, v)."""
    wallet = Wallet()
    update = create_inbox(wallet)
    raw = update.actions[0].create_inbox.initial_identifier_signature.erc_191.bytes
    high_s = (SECP256K1_N - int.from_bytes(raw[32:64], "big")).to_bytes(32, "big")
    update.actions[0].create_inbox.initial_identifier_signature.erc_191.bytes = raw[:32] + high_s + raw[64:]
    assert apply_update(None, update).inbox_id == update.inbox_id
    out_of_range = (SECP256K1_N + 1).to_bytes(32, "big")
    update.actions[0].create_inbox.initial_identifier_signature.erc_191.bytes = raw[:32] + out_of_range + raw[64:]
    with pytest.raises(IdentityUpdateRefused, match="malformed"):
        apply_update(None, update)


def test_installation_may_not_add_an_installation_nor_anyone_add_itself() -> None:
    wallet, laptop = Wallet(), Installation()
    state = apply_update(None, create_inbox(wallet, laptop))
    with pytest.raises(IdentityUpdateRefused, match="installation cannot add an installation"):
        apply_update(state, add_member(state.inbox_id, laptop, Installation()))
    with pytest.raises(IdentityUpdateRefused, match="cannot add itself"):
        apply_update(state, add_member(state.inbox_id, wallet, wallet))


def test_smart_contract_wallet_signatures_are_refused_on_the_devnet() -> None:
    wallet = Wallet()
    update = create_inbox(wallet)
    update.actions[0].create_inbox.initial_identifier_signature.CopyFrom(
        identity_pb2.Signature(erc_6492=identity_pb2.SmartContractWalletSignature(
            account_id=f"eip155:1:{wallet.address}", signature=b"\x01" * 65))
    )
    with pytest.raises(IdentityUpdateRefused, match="smart-contract wallet"):
        apply_update(None, update)


# --- attacks over gRPC ----------------------------------------------------------------------------


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[DevnetServer]:
    async with DevnetServer(DevnetConfig(port=0, hosts=("127.0.0.1",), data_dir=tmp_path)) as devnet:
        yield devnet


@pytest_asyncio.fixture
async def channel(server: DevnetServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        yield chan


class Agent:
    """An inbox created honestly, as ``Client.create`` does: a wallet and one installation."""

    def __init__(self) -> None:
        self.wallet = Wallet()
        self.installation = Installation()
        self.inbox_id = inbox_id_for(self.wallet.address, 0)


@pytest_asyncio.fixture
async def agent(channel: grpc.aio.Channel) -> Agent:
    agent = Agent()
    await publish(channel, create_inbox(agent.wallet, agent.installation))
    return agent


async def refused(channel: grpc.aio.Channel, update: identity_pb2.IdentityUpdate | bytes, match: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await publish(channel, update)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert match in (error.value.details() or "")


async def test_undecodable_identity_update_is_refused(agent: Agent, channel: grpc.aio.Channel) -> None:
    before = await log_of(channel, agent.inbox_id)
    await refused(channel, b"\x1a\xff\xff", "malformed identity_update")
    await refused(channel, b"\x0a\x02\xff\xff", "malformed identity_update")
    no_kind = identity_pb2.IdentityUpdate(inbox_id=agent.inbox_id, actions=[identity_pb2.IdentityAction()])
    await refused(channel, no_kind, "an action has no kind")
    no_member = revoke(agent.inbox_id, identity_pb2.MemberIdentifier(), None)
    await refused(channel, no_member, "a member identifier is missing")
    assert await log_of(channel, agent.inbox_id) == before


async def test_unsigned_revoke_of_an_agents_installation_is_refused_and_the_log_unchanged(
    server: DevnetServer, agent: Agent, channel: grpc.aio.Channel
) -> None:
    before = await log_of(channel, agent.inbox_id)
    await refused(channel, revoke(agent.inbox_id, agent.installation.member(), None), "a signature is missing")
    await refused(channel, revoke(agent.inbox_id, agent.wallet.member(), None), "a signature is missing")
    assert await log_of(channel, agent.inbox_id) == before
    assert await inbox_of(channel, agent.wallet.address) == agent.inbox_id
    assert server.refusals[-1].code == "INVALID_ARGUMENT"


async def test_revoke_signed_by_a_stranger_or_by_a_mere_installation_is_refused(
    agent: Agent, channel: grpc.aio.Channel
) -> None:
    before = await log_of(channel, agent.inbox_id)
    stranger = Wallet()
    await refused(channel, revoke(agent.inbox_id, agent.installation.member(), stranger), "only the recovery")
    # Installations are members, but only the recovery address may revoke.
    await refused(channel, revoke(agent.inbox_id, agent.wallet.member(), agent.installation), "only the recovery")
    assert await log_of(channel, agent.inbox_id) == before


async def test_forged_signature_bytes_are_refused(agent: Agent, channel: grpc.aio.Channel) -> None:
    update = revoke(agent.inbox_id, agent.installation.member(), agent.wallet)
    update.client_timestamp_ns += 1_000_000_000  # signed text no longer matches: recovers another address
    await refused(channel, update, "only the recovery")
    forged = add_member(agent.inbox_id, agent.wallet, Installation())
    signature = forged.actions[0].add.new_member_signature.installation_key
    signature.bytes = bytes(64)
    await refused(channel, forged, "does not verify")


async def test_attacker_cannot_add_its_own_installation_to_an_agents_inbox(
    agent: Agent, channel: grpc.aio.Channel
) -> None:
    before = await log_of(channel, agent.inbox_id)
    attacker, attacker_wallet = Installation(), Wallet()
    await refused(channel, add_member(agent.inbox_id, attacker_wallet, attacker), "is not a member")
    assert await log_of(channel, agent.inbox_id) == before


async def test_create_inbox_for_someone_elses_address_is_refused(agent: Agent, channel: grpc.aio.Channel) -> None:
    attacker = Wallet()
    # Over the agent's own inbox, and as a new inbox (nonce 1) that would take the agent's address over.
    await refused(channel, create_inbox(agent.wallet, Installation(), signer=attacker), "the inbox already exists")
    await refused(channel, create_inbox(agent.wallet, Installation(), nonce=1, signer=attacker), "is signed by")
    unsigned = create_inbox(agent.wallet, nonce=2)
    unsigned.actions[0].create_inbox.ClearField("initial_identifier_signature")
    await refused(channel, unsigned, "a signature is missing")
    assert await inbox_of(channel, agent.wallet.address) == agent.inbox_id
    assert len(await log_of(channel, agent.inbox_id)) == 1


async def test_create_inbox_whose_id_is_not_derived_from_address_and_nonce_is_refused(
    agent: Agent, channel: grpc.aio.Channel
) -> None:
    wallet = Wallet()
    # Signed by the right wallet, but filed under the agent's inbox id: it would rewrite that inbox's log.
    await refused(channel, create_inbox(wallet, inbox_id=agent.inbox_id), "the inbox already exists")
    await refused(channel, create_inbox(wallet, inbox_id="0" * 64), "its actions are for")
    mixed_case = create_inbox(wallet, address=wallet.account.address)
    await refused(channel, mixed_case, "is signed by")
    assert await inbox_of(channel, wallet.address) is None
    assert len(await log_of(channel, agent.inbox_id)) == 1


async def test_replayed_update_is_refused(agent: Agent, channel: grpc.aio.Channel) -> None:
    phone = Installation()
    added = add_member(agent.inbox_id, agent.wallet, phone)
    await publish(channel, added)
    await publish(channel, revoke(agent.inbox_id, phone.member(), agent.wallet))
    await refused(channel, added, "already used")
    assert len(await log_of(channel, agent.inbox_id)) == 3


async def test_recovery_address_still_revokes_and_the_lookup_follows(agent: Agent, channel: grpc.aio.Channel) -> None:
    lookup = agent.wallet.account.address  # checksummed: the lookup is case-insensitive
    assert await inbox_of(channel, lookup) == agent.inbox_id
    await publish(channel, revoke(agent.inbox_id, agent.wallet.member(), agent.wallet))
    assert await inbox_of(channel, lookup) is None
    assert len(await log_of(channel, agent.inbox_id)) == 2


async def test_state_is_rebuilt_from_the_stored_log_after_a_restart(tmp_path: Path) -> None:
    agent = Agent()
    config = DevnetConfig(port=0, hosts=("127.0.0.1",), data_dir=tmp_path)
    async with DevnetServer(config) as first:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            await publish(channel, create_inbox(agent.wallet, agent.installation))
        # As a devnet that did not check would have: an unsigned revoke in the log, which is left out.
        junk = revoke(agent.inbox_id, agent.installation.member(), None).SerializeToString()
        first.store.add_identity_update(agent.inbox_id, junk, 0)
    async with DevnetServer(config) as second, grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        await refused(channel, revoke(agent.inbox_id, agent.wallet.member(), Wallet()), "only the recovery")
        # The installation is still a member (the stored junk did not count): it may add a wallet.
        await publish(channel, add_member(agent.inbox_id, agent.installation, Wallet()))
        assert len(await log_of(channel, agent.inbox_id)) == 3
