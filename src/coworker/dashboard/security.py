"""Who may use the dashboard: the owner, and nobody else. Everything here is decided before a page or the API runs.

Theory of operation. The dashboard listens on loopback, where any local process and any web page the owner's
browser shows can reach it. So:

- **Logging in** takes a one-time link. ``coworker dashboard`` asks the running agent (over its control port,
  which only the owner's processes can use: see :mod:`coworker.agent.control`) for a link; :meth:`Sessions.link`
  makes a random token, keeps only its hash and lets it work once, for :data:`LINK_TTL` seconds. Opening it gives
  the browser a session cookie (random, HttpOnly, SameSite=Strict, Path=/) and sends it on to a URL without the
  token, so the token is neither in the history nor in a Referer (which is off anyway).
- **Every request** must name an allowed Host (the address the dashboard listens on, ``localhost`` and the
  loopback addresses, each with its port): another name means a DNS-rebinding page is asking, and gets 421.
- **Every state-changing request** (any method but GET and HEAD) must carry an Origin that is one of those hosts;
  a missing or foreign Origin gets 403. With SameSite=Strict this stops cross-site requests twice over.
- **Every response** says ``Content-Security-Policy: default-src 'self'; frame-ancestors 'none'`` (no inline script,
  no framing), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and ``Cache-Control:
  no-store``, and carries no CORS header.

Sessions live in the agent's memory: they end when the agent stops, after :data:`SESSION_IDLE` seconds unused, or
after :data:`SESSION_MAX` seconds in all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

LINK_TTL = 300.0  # seconds a login link works (once)
SESSION_IDLE = 12 * 3600.0  # seconds a session lasts unused
SESSION_MAX = 7 * 24 * 3600.0  # seconds a session lasts in all
MAX_LINKS = 32  # unused links kept; older ones stop working
MAX_SESSIONS = 64  # sessions kept; the least recently used goes first
COOKIE = "coworker_session"

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(slots=True)
class _Session:
    created: float
    used: float


@dataclass
class Sessions:
    """One-time login links and the sessions they open (in memory). ``clock`` is injectable for tests."""

    clock: Callable[[], float] = time.monotonic
    _links: dict[bytes, float] = field(default_factory=dict)  # hash of a link's token -> when it stops working
    _sessions: dict[bytes, _Session] = field(default_factory=dict)  # hash of a session id -> its times

    def link_token(self) -> str:
        """A new login token, good once for :data:`LINK_TTL` seconds."""
        now = self.clock()
        self._links = {h: until for h, until in self._links.items() if until > now}
        while len(self._links) >= MAX_LINKS:
            self._links.pop(next(iter(self._links)))
        token = secrets.token_urlsafe(32)
        self._links[_digest(token)] = now + LINK_TTL
        return token

    def redeem(self, token: str) -> str | None:
        """Open a session with a login token (which then stops working): the session id, or None when the token
        is unknown, used or expired."""
        until = self._links.pop(_digest(token), None)
        now = self.clock()
        if until is None or until <= now:
            return None
        self._sessions = {h: s for h, s in self._sessions.items() if self._alive(s, now)}
        while len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda h: self._sessions[h].used)
            del self._sessions[oldest]
        session = secrets.token_urlsafe(32)
        self._sessions[_digest(session)] = _Session(now, now)
        return session

    def check(self, session: str | None) -> bool:
        """Whether ``session`` (a cookie's value) is a live session; using it keeps it alive."""
        if not session:
            return False
        key = _digest(session)
        found = self._sessions.get(key)
        now = self.clock()
        if found is None or not self._alive(found, now):
            self._sessions.pop(key, None)
            return False
        found.used = now
        return True

    def end(self, session: str | None) -> None:
        """Log out."""
        if session:
            self._sessions.pop(_digest(session), None)

    @staticmethod
    def _alive(session: _Session, now: float) -> bool:
        return now - session.used < SESSION_IDLE and now - session.created < SESSION_MAX


def allowed_hosts(bound: str, port: int) -> frozenset[str]:
    """The Host header values the dashboard answers: the address it listens on and the loopback names, with
    its port (lower case)."""
    names = {"127.0.0.1", "localhost", "[::1]"}
    if bound not in ("0.0.0.0", "::", ""):
        names.add(f"[{bound}]" if ":" in bound else bound)
    return frozenset(f"{name}:{port}".lower() for name in names)


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class Gate:
    """ASGI middleware: the Host and Origin checks and the security headers, around the whole app."""

    def __init__(self, app: Any, hosts: Callable[[], Iterable[str]]) -> None:
        self.app = app
        self._hosts = hosts  # read per request: the port is known once the socket is bound

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = set(self._hosts())
        host = (_header(scope, b"host") or "").lower()
        if host not in hosts:
            await _refuse(send, 421, "this dashboard answers only for its own address (Host not allowed)")
            return
        if scope["method"] not in ("GET", "HEAD"):
            origin = (_header(scope, b"origin") or "").lower()
            if not any(hmac.compare_digest(origin, f"http://{h}") for h in hosts):
                await _refuse(send, 403, "a change must come from the dashboard's own pages (Origin refused)")
                return

        async def secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if not k.lower().startswith(b"access-control-")]
                message = {**message, "headers": [*headers, *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, secured)


async def _refuse(send: Any, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": text.encode() + b"\n"})
