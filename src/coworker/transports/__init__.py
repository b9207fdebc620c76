"""How messages travel: one small interface (:mod:`.base`), the in-memory network (:mod:`.memory`) and XMTP
(:mod:`.xmtp`, a Node sidecar running the official SDK, beside the Python that drives it)."""
