"""Invite codes: a wallet, a name and a network, signed by the wallet (EIP-191), to pass to a peer's owner.

``coworker invite`` prints one; ``coworker connect`` and the dashboard's Peers page take one wherever they take a
wallet, after checking its signature."""

from __future__ import annotations

import base64
import json

from coworker._errors import ConfigurationError, CoworkerError
from coworker.core.wallets import checksum, recover_signer
from coworker.store.identity import Identity

INVITE_PREFIX = "cwi1."


def _invite_text(wallet: str, name: str, network: str) -> str:
    return f"CoWorker invite\nwallet: {wallet}\nname: {name}\nnetwork: {network}"


def make_invite(identity: Identity, name: str, network: str) -> str:
    """An invite code: the wallet, name and network, signed by the wallet (EIP-191)."""
    body = {"wallet": identity.address, "name": name, "network": network,
            "sig": identity.sign_text(_invite_text(identity.address, name, network))}
    encoded = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")
    return INVITE_PREFIX + encoded


def read_invite(code: str) -> dict[str, str]:
    """The wallet, name and network of an invite code, after checking its signature.

    Raises:
        ConfigurationError: not an invite, damaged, or not signed by the wallet it names.
    """
    if not code.startswith(INVITE_PREFIX):
        raise ConfigurationError(f"not an invite code (they start with {INVITE_PREFIX})")
    payload = code[len(INVITE_PREFIX):].strip()
    try:
        body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        wallet, name, network, sig = (str(body[k]) for k in ("wallet", "name", "network", "sig"))
        signer = recover_signer(_invite_text(wallet, name, network), sig)
    except (ValueError, KeyError, TypeError, CoworkerError):
        raise ConfigurationError("the invite code is damaged (copy it whole)") from None
    if signer.lower() != wallet.lower():
        raise ConfigurationError("the invite code is not signed by the wallet it names: it was altered")
    return {"wallet": checksum(wallet), "name": name, "network": network}


def peer_wallet(target: str, network: str) -> tuple[str, str | None]:
    """The wallet a target names: a wallet address, or an invite code for ``network`` (then also its name).

    Raises:
        ConfigurationError: not a wallet, a damaged or altered invite, or an invite for another network.
    """
    if target.startswith(INVITE_PREFIX):
        invite = read_invite(target)
        if invite["network"] != network:
            raise ConfigurationError(f"the invite is for the {invite['network']!r} network but this agent is on "
                                     f"{network!r}: choose it with `coworker init --name NAME --network "
                                     f"{invite['network']}`")
        return invite["wallet"], invite["name"]
    return checksum(target), None
