"""Callbacks told that something changed: the store's change and trust listeners, the message journal's."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("coworker")


class Listeners:
    """Callbacks without arguments, called in the order they were added each time the owner calls this object.

    They run on the path of the change (a write, a message being handled): each must be cheap (set an event, wake
    a waiter). One that raises is logged as ``what`` and the others still run; the change that happened stands.
    Falsy when there is none, so that the owner skips the call on its hot path."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._callbacks: list[Callable[[], None]] = []

    def add(self, listener: Callable[[], None]) -> None:
        self._callbacks.append(listener)

    def remove(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener`` (nothing happens when it is not listening)."""
        if listener in self._callbacks:
            self._callbacks.remove(listener)

    def __bool__(self) -> bool:
        return bool(self._callbacks)

    def __call__(self) -> None:
        for listener in list(self._callbacks):  # a listener may remove itself
            try:
                listener()
            except Exception:  # a listener's bug must not fail the change that happened
                log.exception("%s failed", self._what)
