"""The dashboard's web app: pages, the JSON API under ``/api/``, live changes as server-sent events, and the assets.

Pages are rendered on the server (Jinja2, every value escaped); the page script (``assets/dashboard.js``, no
framework, nothing loaded from elsewhere) listens to ``/api/events`` and, when what a part of the page shows has
changed, fetches the page again and swaps that part in, leaving forms being typed in alone. Actions are JSON POSTs
to ``/api/...``. Who may ask anything is decided in :mod:`.security` first; a page or API route then checks the
session cookie: without one, the API answers 401 and a page sends to the login notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

import coworker.dashboard.forms as forms  # modules, not the package: it imports this one
import coworker.dashboard.views as views
from coworker._errors import CoworkerError, InvalidInput
from coworker.core.protocol import parse_json
from coworker.dashboard.actions import Actions
from coworker.dashboard.security import COOKIE, Sessions
from coworker.dashboard.views import DashboardAgent

if TYPE_CHECKING:
    from coworker.agent.owner_tasks import OwnerTasks

log = logging.getLogger("coworker.dashboard")

MAX_BODY = 1_100_000  # a POST carries at most a skill's input, which fits in one network message (1 MB)
COALESCE = 0.15  # seconds changes gather before one event tells the page (a burst of tasks is one refresh)
HEARTBEAT = 15.0  # seconds between keep-alive comments on an idle event stream
EXPORT_LIMIT = 10_000  # receipts in one export
ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8",
          "favicon.svg": "image/svg+xml"}
PAGES = [("/", "Overview"), ("/trust", "Trust"), ("/tasks", "Tasks"), ("/messages", "Messages"),
         ("/skills", "Skills"), ("/peers", "Peers"), ("/collaborations", "Collaborations"), ("/groups", "Groups"),
         ("/receipts", "Receipts")]


def _when(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _short(wallet: str | None) -> str:
    return f"{wallet[:6]}…{wallet[-4:]}" if wallet and len(wallet) > 12 else (wallet or "")


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


class DashboardApp:
    """The ASGI app of one agent's dashboard (wrapped in :class:`~coworker.dashboard.security.Gate` by the
    server)."""

    def __init__(self, agent: DashboardAgent, owner_tasks: OwnerTasks, sessions: Sessions) -> None:
        self.agent, self.owner_tasks, self.sessions = agent, owner_tasks, sessions
        self.closing = asyncio.Event()
        self.actions = Actions(agent, owner_tasks)
        self._assets = {name: resources.files("coworker.dashboard").joinpath("assets", name).read_bytes()
                        for name in ASSETS}
        self.templates = Environment(loader=PackageLoader("coworker.dashboard", "templates"),
                                     autoescape=select_autoescape(default=True, default_for_string=True),
                                     trim_blocks=True, lstrip_blocks=True)
        self.templates.filters.update(when=_when, short=_short, pretty=_pretty)
        page, api, actions = self._page, self._api, self.actions
        self.routes = [
            Route("/login", self.login), Route("/logout", self.logout, methods=["POST"]),
            Route("/assets/{name}", self.asset),
            Route("/", page("overview.html", self._overview)),
            Route("/trust", page("trust.html", lambda r: _sync(views.trust(self.agent)))),
            Route("/tasks", page("tasks.html", self._tasks)),
            Route("/tasks/{direction}/{task_id}", page("task.html", self._task)),
            Route("/messages", page("messages.html", self._messages)),
            Route("/skills", page("skills.html", self._skills)),
            Route("/peers", page("peers.html", self._peers)),
            Route("/collaborations", page("collaborations.html", lambda r: _sync(views.collaborations(self.agent)))),
            Route("/receipts", page("receipts.html", self._receipts)),
            Route("/groups", page("groups.html", self._groups)),
            Route("/api/overview", api(self._overview)),
            Route("/api/trust", api(lambda r: _sync(views.trust(self.agent)))),
            Route("/api/tasks", api(self._tasks)),
            Route("/api/tasks/{direction}/{task_id}", api(self._task)),
            Route("/api/messages", api(self._messages)),
            Route("/api/skills", api(lambda r: _sync(views.skills(self.agent)))),
            Route("/api/peers", api(self._peers)),
            Route("/api/collaborations", api(lambda r: _sync(views.collaborations(self.agent)))),
            Route("/api/receipts", api(self._receipts)),
            Route("/api/groups", api(self._groups)),
            Route("/api/groups/create", api(actions.create_group, body=True), methods=["POST"]),
            Route("/api/groups/discover", api(actions.discover_group, body=True), methods=["POST"]),
            Route("/api/groups/add", api(actions.group_add, body=True), methods=["POST"]),
            Route("/api/groups/remove", api(actions.group_remove, body=True), methods=["POST"]),
            Route("/api/groups/leave", api(actions.group_leave, body=True), methods=["POST"]),
            Route("/api/receipts.json", self._guard(self.export_json)),
            Route("/api/receipts.csv", self._guard(self.export_csv)),
            Route("/api/events", self._guard(self.events)),
            Route("/api/trust/approve", api(actions.approve, body=True), methods=["POST"]),
            Route("/api/trust/deny", api(actions.deny, body=True), methods=["POST"]),
            Route("/api/trust/set", api(actions.set_tier, body=True), methods=["POST"]),
            Route("/api/tasks/cancel", api(actions.cancel, body=True), methods=["POST"]),
            Route("/api/skills/try", api(actions.try_skill, body=True), methods=["POST"]),
            Route("/api/skills/visibility", api(actions.visibility, body=True), methods=["POST"]),
            Route("/api/peers/connect", api(actions.connect, body=True), methods=["POST"]),
            Route("/api/peers/call", api(actions.call, body=True), methods=["POST"]),
            Route("/api/peers/mcp", api(actions.mcp_pin, body=True), methods=["POST"]),
            Route("/api/collaborations/resume", api(actions.resume, body=True), methods=["POST"]),
            Route("/api/receipts/verify", api(actions.verify, body=True), methods=["POST"]),
        ]
        self.app = Starlette(routes=self.routes)

    async def close(self) -> None:
        """End the event streams and the collaborations resumed from the dashboard (bounded)."""
        self.closing.set()
        await self.actions.close()

    # ---- who is asking ------------------------------------------------------------------------------------

    def _session_ok(self, request: Request) -> bool:
        return self.sessions.check(request.cookies.get(COOKIE))

    def _guard(self, endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if not self._session_ok(request):
                return _json_error(401, "Unauthorized", "log in first: run `coworker dashboard` for a login link")
            return await endpoint(request)

        return guarded

    async def login(self, request: Request) -> Response:
        token = request.query_params.get("t")
        if token is None:
            return self._render("login.html", {"problem": None}, status=401)
        session = self.sessions.redeem(token)
        if session is None:
            return self._render("login.html", {"problem": "This login link was used already or has expired: each "
                                               "link works once. Run `coworker dashboard` for a new one."},
                                status=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/")
        return response

    async def logout(self, request: Request) -> Response:
        self.sessions.end(request.cookies.get(COOKIE))
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE, path="/")
        return response

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:  # a fixed set of names: no path reaches the file system
            return Response("not found\n", status_code=404, media_type="text/plain")
        return Response(self._assets[name], media_type=ASSETS[name])

    # ---- pages and their data -----------------------------------------------------------------------------

    def _page(self, template: str,
              data: Callable[[Request], Awaitable[dict[str, Any]]]) -> Callable[[Request], Awaitable[Response]]:
        async def page(request: Request) -> Response:
            if not self._session_ok(request):
                return RedirectResponse("/login", status_code=303)
            # The counters as they were before the page's data was read: the script compares the event stream's
            # first counters with these, so a change between this read and the stream's start still refreshes
            counters = json.dumps(self.counters())
            try:
                context = await data(request)
            except CoworkerError as exc:  # no such task, a filter that is no state or wallet
                return self._render("error.html", {"message": str(exc)}, status=404)
            except (KeyError, TypeError, ValueError) as exc:  # a query parameter that is not a number
                return self._render("error.html", {"message": f"bad request: {exc}"}, status=400)
            return self._render(template, {**context, "counters": counters}, path=request.url.path)

        return page

    def _api(self, handler: Callable[..., Awaitable[Any]], *,
             body: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if not self._session_ok(request):
                return _json_error(401, "Unauthorized", "log in first: run `coworker dashboard` for a login link")
            try:
                if body:
                    result = await handler(await _json_body(request))
                else:
                    result = await handler(request)
            except CoworkerError as exc:
                return _json_error(400, type(exc).__name__, str(exc), getattr(exc, "path", ""))
            except (KeyError, TypeError, ValueError) as exc:
                return _json_error(400, "BadRequest", f"bad request: {exc}")
            return JSONResponse(result)

        return endpoint

    def _render(self, template: str, context: dict[str, Any], *, status: int = 200, path: str = "") -> HTMLResponse:
        html = self.templates.get_template(template).render(
            **context, agent_name=self.agent.name, agent_wallet=self.agent.wallet, pages=PAGES, path=path)
        return HTMLResponse(html, status_code=status)

    async def _overview(self, request: Request) -> dict[str, Any]:
        return await views.overview(self.agent)

    async def _tasks(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        before = q.get("before")
        return views.tasks(self.agent, direction=q.get("direction") or None, state=q.get("state") or None,
                           peer=q.get("peer") or None, skill=q.get("skill") or None,
                           before=float(before) if before else None)

    async def _task(self, request: Request) -> dict[str, Any]:
        direction, task_id = request.path_params["direction"], request.path_params["task_id"]
        peer = request.query_params.get("peer") or None
        progress: list[dict[str, Any]] = []
        if self.owner_tasks.is_local(task_id):
            reports = await self.owner_tasks.progress(task_id, 0, 0)
            progress = [{"progress": p, "message": m} for p, m in reports["reports"]]
        else:
            for m in reversed(self.agent.messages(task_id=task_id, limit=200)):
                if m.kind == "call.progress":
                    progress.append({"at": m.at, **m.detail})
        return {"task": views.task(self.agent, direction, task_id, peer, progress)}

    async def _messages(self, request: Request) -> dict[str, Any]:
        return views.messages(self.agent, peer=request.query_params.get("peer") or None)

    async def _skills(self, request: Request) -> dict[str, Any]:
        data = views.skills(self.agent)
        for skill in data["skills"]:
            found = forms.fields(skill.get("input_schema"))
            skill["fields"] = [_field_dict(f) for f in found or []]
            skill["json_only"] = found is None
        return data

    async def _peers(self, request: Request) -> dict[str, Any]:
        return views.peers(self.agent)

    async def _groups(self, request: Request) -> dict[str, Any]:
        return await views.groups(self.agent, self.actions.discovered)

    async def _receipts(self, request: Request) -> dict[str, Any]:
        before = request.query_params.get("before")
        return views.receipts(self.agent, before=float(before) if before else None)

    # ---- exports and events -------------------------------------------------------------------------------

    async def export_json(self, request: Request) -> Response:
        rows = views.receipts(self.agent, limit=EXPORT_LIMIT)["receipts"]
        return Response(json.dumps(rows, indent=1, ensure_ascii=False), media_type="application/json",
                        headers={"content-disposition": f'attachment; filename="{self.agent.name}-receipts.json"'})

    async def export_csv(self, request: Request) -> Response:
        rows = views.receipts(self.agent, limit=EXPORT_LIMIT)["receipts"]
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["task_id", "direction", "peer", "skill", "state", "ended_at", "valid", "problem",
                         "receipt"])
        for r in rows:
            writer.writerow([_cell(r["task_id"]), r["direction"], r["peer"], _cell(r["skill"]), r["state"],
                             datetime.fromtimestamp(r["ended_at"]).isoformat(), r["valid"], _cell(r["problem"] or ""),
                             _cell(json.dumps(r["receipt"], separators=(",", ":")))])
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="{self.agent.name}-receipts.csv"'})

    def counters(self) -> dict[str, int]:
        """What the pages' live parts follow: each moves when what it counts changed."""
        store, journal = self.agent.store, self.agent.journal
        return {"tasks": store.task_changes, "trust": store.trust_changes, "collaborations": store.collab_changes,
                "messages": journal.seq if journal is not None else 0}

    async def events(self, request: Request) -> Response:
        return StreamingResponse(self._changes(), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})

    async def _changes(self) -> AsyncIterator[str]:
        """Server-sent events: ``change`` with the counters whenever one moved (bursts gathered for
        :data:`COALESCE` seconds), a comment every :data:`HEARTBEAT` seconds, until the dashboard closes."""
        loop, woken = asyncio.get_running_loop(), asyncio.Event()

        def wake() -> None:  # on whichever thread wrote
            loop.call_soon_threadsafe(woken.set)

        store, journal = self.agent.store, self.agent.journal
        store.add_change_listener(wake)
        if journal is not None:
            journal.add_listener(wake)
        try:
            last = self.counters()
            yield f"event: change\ndata: {json.dumps(last)}\n\n"
            while not self.closing.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first(woken.wait(), self.closing.wait()), HEARTBEAT)
                if self.closing.is_set():
                    return
                if not woken.is_set():
                    yield ": idle\n\n"
                    continue
                await asyncio.sleep(COALESCE)  # gather a burst into one event
                woken.clear()
                now = self.counters()
                if now != last:
                    last = now
                    yield f"event: change\ndata: {json.dumps(now)}\n\n"
        finally:
            store.remove_change_listener(wake)
            if journal is not None:
                journal.remove_listener(wake)


async def _first(*aws: Awaitable[Any]) -> None:
    """Wait for the first of ``aws``; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


async def _sync(value: dict[str, Any]) -> dict[str, Any]:
    return value


def _field_dict(field: forms.Field) -> dict[str, Any]:
    return {"name": field.name, "kind": field.kind, "required": field.required, "description": field.description,
            "choices": list(field.choices), "default": field.default}


async def _json_body(request: Request) -> dict[str, Any]:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise InvalidInput(f"the request is over {MAX_BODY} bytes")
        chunks.append(chunk)
    try:
        body = parse_json(b"".join(chunks))  # depth-limited
    except ValueError:
        raise InvalidInput("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("the request body is a JSON object")
    return body


def _json_error(status: int, kind: str, message: str, path: str = "") -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, "path": path}}, status_code=status)


def _cell(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: a leading = + - @ would start a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text

