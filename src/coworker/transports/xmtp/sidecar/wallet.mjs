// Ethereum wallets for @xmtp/node-sdk signers, shared by sidecar.mjs and driver.mjs.
//
// An externally-owned account: address = last 20 bytes of keccak256(public key); signatures are
// EIP-191 personal_sign (r || s || v, v = 27 + recovery id).

import { secp256k1 } from "@noble/curves/secp256k1.js";
import { keccak_256 } from "@noble/hashes/sha3.js";

export const IDENTIFIER_KIND_ETHEREUM = 0; // IdentifierKind.Ethereum (a const enum in the bindings)

export function hexToBytes(hex) {
  const clean = hex.startsWith("0x") ? hex.slice(2) : hex;
  if (clean.length % 2 !== 0 || /[^0-9a-fA-F]/.test(clean)) throw new Error("not a hex string");
  return Uint8Array.from(Buffer.from(clean, "hex"));
}

export function bytesToHex(bytes) {
  return "0x" + Buffer.from(bytes).toString("hex");
}

export function ethereumIdentifier(address) {
  return { identifier: address.toLowerCase(), identifierKind: IDENTIFIER_KIND_ETHEREUM };
}

// A wallet from a private key (hex), or a fresh one. The key never appears in an error message.
export function wallet(privateKeyHex) {
  let secret;
  try {
    secret = privateKeyHex ? hexToBytes(privateKeyHex) : secp256k1.utils.randomSecretKey();
    if (secret.length !== 32) throw new Error();
  } catch {
    throw new Error("the private key is not 32 bytes of hex");
  }
  const publicKey = secp256k1.getPublicKey(secret, false).slice(1);
  const address = bytesToHex(keccak_256(publicKey).slice(-20));
  const signer = {
    type: "EOA",
    getIdentifier: () => ethereumIdentifier(address),
    signMessage: (message) => {
      const body = Buffer.from(message, "utf8");
      const prefix = Buffer.from(`\x19Ethereum Signed Message:\n${body.length}`, "utf8");
      const digest = keccak_256(Buffer.concat([prefix, body]));
      const recovered = secp256k1.sign(digest, secret, { prehash: false, format: "recovered" });
      // noble puts the recovery byte first; Ethereum wants it last, plus 27.
      const signature = new Uint8Array(65);
      signature.set(recovered.slice(1, 65), 0);
      signature[64] = recovered[0] + 27;
      return signature;
    },
  };
  return { address, privateKey: bytesToHex(secret), signer };
}
