"""The dashboard: a running agent's owner sees and steers it in the browser (``coworker dashboard``).

Served by the agent itself (:meth:`AsyncAgent.serve <coworker.agent.agent.AsyncAgent.serve>`, ``coworker serve``,
``coworker bridge start``) on 127.0.0.1:8090 or the next free port; closed to everyone but the owner
(:mod:`.security`). Imported only when an agent serves it: Starlette, uvicorn and Jinja2 load then, not with
``import coworker``.
"""

from __future__ import annotations

from coworker.dashboard.server import DEFAULT_HOST, DEFAULT_PORT, Dashboard

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Dashboard"]
