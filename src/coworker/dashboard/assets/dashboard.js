// CoWorker dashboard: live parts and actions. No framework and nothing from elsewhere (the page's CSP allows
// only this origin). Parts of a page marked data-live="topic ..." are fetched again and swapped in when the
// agent says (server-sent events on /api/events) that one of their topics changed. Forms marked data-action
// are sent as JSON to the dashboard's API; text from the server is only ever set as text.
"use strict";

(function () {
  const liveBadge = () => document.getElementById("live");
  // What the page shows was read after these counters: the stream's first event refreshes what changed since
  let counters = JSON.parse(document.body?.dataset.counters || "null");
  let refreshing = null;
  let again = false;

  function toast(text, bad) {
    const box = document.getElementById("toast");
    if (!box) return;
    box.textContent = text;
    box.className = bad ? "show bad" : "show";
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.className = ""; }, bad ? 8000 : 3000);
  }

  async function refresh(topics) {
    if (refreshing) { again = true; return refreshing; }
    const parts = [...document.querySelectorAll("[data-live]")].filter((el) =>
      topics === null || el.dataset.live.split(/\s+/).some((t) => topics.includes(t)));
    if (!parts.length) return;
    refreshing = (async () => {
      try {
        const response = await fetch(location.href, { headers: { "X-Coworker-Live": "1" }, credentials: "same-origin" });
        if (response.redirected && new URL(response.url).pathname === "/login") { location.assign("/login"); return; }
        if (!response.ok) return;
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        for (const part of parts) {
          const next = part.id && fresh.getElementById(part.id);
          if (next) part.replaceWith(document.importNode(next, true));
        }
        document.dispatchEvent(new CustomEvent("coworker:refreshed"));
      } finally {
        refreshing = null;
        if (again) { again = false; refresh(topics); }
      }
    })();
    return refreshing;
  }

  function listen() {
    const source = new EventSource("/api/events");
    source.addEventListener("change", (event) => {
      const now = JSON.parse(event.data);
      const badge = liveBadge();
      if (badge) { badge.textContent = "live"; badge.className = "live on"; }
      if (counters !== null) {
        const changed = Object.keys(now).filter((k) => now[k] !== counters[k]);
        if (changed.length) refresh(changed.concat(changed.includes("tasks") ? ["skills"] : []));
      }
      counters = now;
    });
    source.onerror = () => {
      const badge = liveBadge();
      if (badge) { badge.textContent = "reconnecting"; badge.className = "live off"; }
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(async () => {  // closed for good: logged out, or the agent stopped
          const probe = await fetch("/api/overview", { credentials: "same-origin" }).catch(() => null);
          if (probe && probe.status === 401) location.assign("/login"); else listen();
        }, 2000);
      }
    };
  }

  function setPath(target, path, value) {
    const keys = path.split(".");
    let node = target;
    for (const key of keys.slice(0, -1)) node = (node[key] = node[key] || {});
    node[keys[keys.length - 1]] = value;
  }

  function collect(form) {
    const body = {};
    for (const el of form.elements) {
      if (!el.name) continue;
      const kind = el.dataset.kind || "text";
      let value;
      if (kind === "boolean") value = el.checked;
      else if (kind === "boolean-value") value = el.value === "true";
      else if (el.value === "" && el.name.startsWith("input.")) continue;  // an optional input left empty
      else if (kind === "integer") value = parseInt(el.value, 10);
      else if (kind === "number") value = Number(el.value);
      else if (kind === "json") {
        if (el.value.trim() === "") continue;
        try { value = JSON.parse(el.value); } catch (e) { throw new Error(`${el.name} is not valid JSON: ${e.message}`); }
      } else value = el.value;
      setPath(body, el.name, value);
    }
    if (form.classList.contains("try") && body.input === undefined) body.input = {};
    return body;
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.action) return;
    event.preventDefault();
    let body;
    try { body = collect(form); } catch (e) { toast(e.message, true); return; }
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try {
      const response = await fetch(form.dataset.action, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      if (response.status === 401) { location.assign("/login"); return; }
      const reply = await response.json().catch(() => ({}));
      if (!response.ok) {
        const error = reply.error || {};
        toast(`${error.type || response.status}: ${error.message || "refused"}${error.path ? ` (at ${error.path})` : ""}`, true);
        return;
      }
      if (reply.url) { location.assign(reply.url); return; }
      toast(describe(form.dataset.action, reply));
      await refresh(null);
    } catch (e) {
      toast(`the agent did not answer: ${e.message}`, true);
    } finally {
      if (button && button.isConnected) button.disabled = false;
    }
  });

  function describe(action, reply) {
    if (action.endsWith("/approve")) return `approved at ${reply.tier}`;
    if (action.endsWith("/deny")) return "denied";
    if (action.endsWith("/set")) return `tier set to ${reply.tier}`;
    if (action.endsWith("/cancel")) return reply.cancelled ? "cancelled" : "it had ended already";
    if (action.endsWith("/connect")) return `connected to ${reply.name}: ${reply.skills.length} skills visible`;
    if (action.endsWith("/verify")) return reply.valid ? "the signature verifies" : `does not verify: ${reply.problem}`;
    if (action.endsWith("/resume")) return "resumed";
    if (action.endsWith("/groups/create")) return `group ${reply.name} created`;
    if (action.endsWith("/groups/discover")) return `asked ${Object.keys(reply.members).length} members: each shows what its trust of us allows`;
    if (action.endsWith("/groups/add")) return "member added";
    if (action.endsWith("/groups/remove")) return "member removed";
    if (action.endsWith("/groups/leave")) return "left the group";
    if (action.endsWith("/mcp")) return reply.pinned ? "its skills are now tools of coworker mcp" : "no longer offered to MCP hosts";
    if (action.endsWith("/visibility")) return reply.hidden ? `${reply.name} is hidden` : `${reply.name} is visible`;
    return "done";
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (document.querySelector("[data-live]")) listen();
  });
})();
