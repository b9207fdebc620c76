"""coworker devnet: a local XMTP-compatible node that the official XMTP clients talk to.

It serves the part of XMTP's v3 node API that ``@xmtp/node-sdk`` uses (``env: "local"`` dials
``localhost:5556``), stores everything in SQLite (or in memory) and enforces the hosted network's
1 MB per-message limit. Start one from Python::

    from coworker.devnet import running_devnet

    async with running_devnet() as devnet:
        ...
        assert not devnet.unimplemented_calls

or from the shell: ``coworker devnet start`` / ``python -m coworker.devnet run``.

The wire definitions are the project's own minimal ``proto/*.proto`` (same field numbers as XMTP's
public API); ``_gen/`` is generated from them by ``python scripts/gen_proto.py`` and committed.
Tests and benchmarks drive bare SDK clients against it with :class:`coworker.transports.xmtp.driver.NodeDriver`.
"""

from __future__ import annotations

from coworker.devnet._server import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PORT,
    IMPLEMENTED_METHODS,
    DevnetConfig,
    DevnetError,
    DevnetServer,
    DevnetStatus,
    PortInUseError,
    Refusal,
    running_devnet,
)
from coworker.devnet._store import StoreCounts

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PORT",
    "IMPLEMENTED_METHODS",
    "DevnetConfig",
    "DevnetError",
    "DevnetServer",
    "DevnetStatus",
    "PortInUseError",
    "Refusal",
    "StoreCounts",
    "running_devnet",
]
