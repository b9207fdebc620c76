"""The little of MLS's TLS wire format that the devnet must read (no I/O).

The node stores MLS payloads as opaque bytes, except for two facts it needs to index them:

* a key package's leaf signature key, which is the installation key that
  ``FetchKeyPackages`` is asked for;
* an MLS message's group id (the conversation), and whether it is a commit.

Layouts (RFC 9420, TLS presentation language)::

    KeyPackage  = version u16, cipher_suite u16, init_key<V>,
                  leaf_node = { encryption_key<V>, signature_key<V>, ... }, ...
    MLSMessage  = version u16, wire_format u16, then for wire_format
                  1 (PublicMessage) or 2 (PrivateMessage): group_id<V>, epoch u64, ...
                  PrivateMessage: content_type u8 (1 application, 2 proposal, 3 commit), ...
                  PublicMessage:  ..., sender (u8 type + body), authenticated_data<V>,
                                  content_type u8

``<V>`` is a variable-length vector: a QUIC-style length prefix (the top two bits of the first byte
give its size, 1, 2 or 4 bytes), then that many bytes. Truncated or hostile input raises
:class:`WireFormatError`, never anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

WIRE_FORMAT_PUBLIC = 1
WIRE_FORMAT_PRIVATE = 2
CONTENT_TYPE_COMMIT = 3

_SENDER_MEMBER = 1
_SENDER_EXTERNAL = 2
_SENDER_NEW_MEMBER_PROPOSAL = 3
_SENDER_NEW_MEMBER_COMMIT = 4


class WireFormatError(ValueError):
    """An MLS payload is truncated or not of the expected form."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise WireFormatError(f"truncated {what}: need {n} bytes at offset {self._pos}")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def varint(self, what: str) -> int:
        first = self.uint(1, what)
        prefix = first >> 6
        if prefix == 3:
            raise WireFormatError(f"invalid length prefix in {what}")
        size = 1 << prefix
        value = first & 0x3F
        for byte in self.take(size - 1, what):
            value = (value << 8) | byte
        return value

    def vector(self, what: str) -> bytes:
        return self.take(self.varint(what), what)


def key_package_installation_key(key_package: bytes) -> bytes:
    """Return the leaf signature key (the installation key) of a TLS-serialised key package.

    Raises:
        WireFormatError: the bytes are not a key package.
    """
    reader = _Reader(key_package)
    reader.uint(2, "key package version")
    reader.uint(2, "key package cipher suite")
    reader.vector("key package init key")
    reader.vector("leaf node encryption key")
    signature_key = reader.vector("leaf node signature key")
    if not signature_key:
        raise WireFormatError("key package has an empty signature key")
    return signature_key


@dataclass(frozen=True, slots=True)
class MlsMessageInfo:
    """What the devnet reads from an MLS message: its group (conversation) and kind."""

    group_id: bytes
    epoch: int
    is_commit: bool


def mls_message_info(message: bytes) -> MlsMessageInfo:
    """Parse the header of a TLS-serialised MLSMessage (a public or private message).

    Raises:
        WireFormatError: the bytes are not a public or private MLS message.
    """
    reader = _Reader(message)
    reader.uint(2, "MLS message version")
    wire_format = reader.uint(2, "MLS wire format")
    if wire_format not in (WIRE_FORMAT_PUBLIC, WIRE_FORMAT_PRIVATE):
        raise WireFormatError(f"MLS wire format {wire_format} is not a group message")
    group_id = reader.vector("group id")
    if not group_id:
        raise WireFormatError("MLS message has an empty group id")
    epoch = reader.uint(8, "epoch")
    if wire_format == WIRE_FORMAT_PRIVATE:
        content_type = reader.uint(1, "content type")
    else:
        sender_type = reader.uint(1, "sender type")
        if sender_type in (_SENDER_MEMBER, _SENDER_EXTERNAL):
            reader.uint(4, "sender index")
        elif sender_type not in (_SENDER_NEW_MEMBER_PROPOSAL, _SENDER_NEW_MEMBER_COMMIT):
            raise WireFormatError(f"unknown MLS sender type {sender_type}")
        reader.vector("authenticated data")
        content_type = reader.uint(1, "content type")
    return MlsMessageInfo(group_id=group_id, epoch=epoch, is_commit=content_type == CONTENT_TYPE_COMMIT)
