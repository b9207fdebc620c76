"""The version of CoWorker (the distribution ``coworker-xmtp``)."""

__version__ = "0.2.0.dev0"
