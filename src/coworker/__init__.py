"""CoWorker: agents that call each other's skills over XMTP."""
