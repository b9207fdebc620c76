// JSON lines on stdin/stdout, shared by sidecar.mjs and driver.mjs.
//
// stdin:  {"id": <any>, "cmd": "<name>", ...arguments}
// stdout: {"id": <same>, "ok": true, "result": {...}} | {"id": <same>, "ok": false, "error": {"name", "message"}}
//         and events {"event": "<name>", ...}. Commands run concurrently; replies are matched by id.

import { createInterface } from "node:readline";

export function emit(object) {
  process.stdout.write(JSON.stringify(object) + "\n");
}

async function dispatch(commands, line) {
  let request;
  try {
    request = JSON.parse(line);
  } catch {
    emit({ id: null, ok: false, error: { name: "BadRequest", message: "not JSON" } });
    return;
  }
  const { id = null, cmd, ...args } = request;
  const command = Object.hasOwn(commands, cmd) ? commands[cmd] : undefined;
  if (!command) {
    emit({ id, ok: false, error: { name: "UnknownCommand", message: `unknown command ${cmd}` } });
    return;
  }
  try {
    emit({ id, ok: true, result: await command(args) });
  } catch (error) {
    emit({ id, ok: false, error: { name: error?.name ?? "Error", message: String(error?.message ?? error) } });
  }
}

// Run `commands` (name -> async function(args)) for each line on stdin; `onClose` when stdin closes.
export function serve(commands, onClose) {
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  lines.on("line", (line) => {
    if (line.trim()) dispatch(commands, line);
  });
  lines.on("close", onClose);
}
