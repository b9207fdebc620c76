// CoWorker's XMTP sidecar: one agent's XMTP client (@xmtp/node-sdk), driven by its agent over stdin/stdout.
//
// There is no port: only the process that started the sidecar can speak as its wallet. The private key arrives
// in the `start` command on stdin, never in argv or the environment. The sidecar exits when stdin closes, so it
// never outlives its agent.
//
// Protocol (one JSON object per line, UTF-8):
//   stdin, commands:  {"id": <int>, "cmd": "<name>", ...arguments}
//   stdout, replies:  {"id": <same>, "ok": true, "result": {...}}
//                     {"id": <same>, "ok": false, "error": {"name": "...", "message": "..."}}
//   stdout, events:   {"event": "<name>", ...}
// Diagnostics go to stderr (the agent writes them to its log file).
//
// Commands:
//   start  {privateKey, env: "local"|"dev"|"production", dbPath, dbEncryptionKey, syncFromNs?: "<ns>",
//           syncIntervalMs?: 30000, maxBytes?: 1000000}
//          -> {address, inboxId, installationId}. Opens (or creates) the client, starts the live stream,
//             then syncs every DM from syncFromNs minus a minute (messages that arrived while the agent was away).
//   send   {to: "0x..", text}   -> {messageId}; errors: PeerUnreachable (no inbox on this network), TooLarge
//   createGroup {name, description, appData, members: ["0x.."]} -> {groupId}; admin-only permissions
//   addMembers / removeMembers {groupId, addresses: ["0x.."]} -> {}
//   leaveGroup {groupId} -> {} (asks the admins to remove us: an admin's sidecar does it as soon as it reads the
//          request, see honourLeave); ignoreGroup {groupId} -> {} (consent denied: its
//          messages are no longer streamed or synced)
//   groupMembers {groupId} -> {members: [{inboxId, addresses}], active}
//   sendGroup {groupId, text} -> {messageId}; errors for the group commands: NotMember (no such group of ours)
//   status {}                  -> {address, inboxId, installationId, env, streaming, lastSyncMs, reported, pid,
//                                  installations: how many installations our inbox has (XMTP allows 10)}
//   close  {}                  -> {} then the process exits 0 once the commands in flight are answered
//                                 (bounded by DRAIN_MS); commands that arrive after it fail with Closing
// Events:
//   ready    {pid, sdk}                                    once, at start
//   closing  {pending}                                     stdin closed or `close` came; `pending` commands
//                                                          are still answered before the process exits
//   message  {id, conversationId, senderInboxId, addresses, sentAtNs, text, group?}
//            a text message from another inbox in a DM, or in a group (then `group` is the group's id), once per
//            message id; `addresses` are the Ethereum addresses associated with the sender's inbox (from its inbox
//            state on the network)
//   group    {conversationId, name, description, appData, addedByInboxId, addresses}
//            we were added to a group (by that inbox, whose addresses these are); once per group and process,
//            always before any message of that group, and at most about GROUP_SWEEP_MS after the stream took its
//            welcome (sweepGroups)
//   dropped  {id, senderInboxId, reason}                   a message not passed on (too large, not text)
//   stream   {state: "up"|"error"|"restart"|"down", message?}
//   sync_error {message}

import { chmodSync } from "node:fs";
import { Conversation as BindingConversation } from "@xmtp/node-bindings"; // the SDK's own, pinned in package.json
import { Client, Group, isLeaveRequest } from "@xmtp/node-sdk";
import { emit, serve } from "./jsonlines.mjs";
import { IDENTIFIER_KIND_ETHEREUM, ethereumIdentifier, hexToBytes, wallet } from "./wallet.mjs";

const SDK_VERSION = "5.5.0";
const ENVS = new Set(["local", "dev", "production"]);
const CONSENT_UNKNOWN = 0;
const CONSENT_ALLOWED = 1;
const CONSENT_DENIED = 2;
const PERMISSIONS_ADMIN_ONLY = 1; // GroupPermissionsOptions.AdminOnly
const KIND_APPLICATION = 0; // GroupMessageKind.Application
const SLACK_NS = 60_000_000_000n; // re-read this much history on sync: stream and sync may deliver out of order
const INBOX_TTL_MS = 60_000; // how long a sender's address list is trusted before it is fetched again
const BACKOFF_MS = [500, 1000, 2000, 5000, 10000, 30000];
const DRAIN_MS = 5_000; // how long a closing sidecar waits for the commands in flight
const GROUP_SWEEP_MS = 500; // how often the local database is checked for groups not announced yet

process.umask(0o077); // the SDK's database files are the agent's alone

let client = null;
let env = null;
let myAddress = null;
let maxBytes = 1_000_000;
let stream = null;
let streaming = false;
let closing = false;
let highNs = 0n; // the newest sentAtNs reported
let lastSyncMs = null;
let syncTimer = null;
let syncInFlight = null;
let syncAgain = false;
let reported = 0;
let markStreamTried;
const streamTried = new Promise((resolve) => (markStreamTried = resolve)); // the first stream attempt ended
let inbound = Promise.resolve(); // messages are handled one after another, in arrival order
const seen = new Map(); // message id -> sentAtNs
const dms = new Map(); // lower-case address -> Promise<Dm>
const reachable = new Set(); // lower-case addresses known to have an inbox
const inboxes = new Map(); // inbox id -> {addresses, at}
const inFlight = new Set(); // promises of the commands being run
const kinds = new Map(); // conversation id -> Group (a group of ours) or null (a DM)
const announced = new Set(); // group ids told to the agent (or made by it) in this process
let groupSweepTimer = null;

function log(text) {
  process.stderr.write(`${new Date().toISOString()} ${text}\n`);
}

function fail(name, message) {
  const error = new Error(message);
  error.name = name;
  return error;
}

function requireClient() {
  if (!client) throw fail("NotStarted", "send a start command first");
  return client;
}

async function addressesOf(inboxId) {
  const cached = inboxes.get(inboxId);
  if (cached && Date.now() - cached.at < INBOX_TTL_MS) return cached.addresses;
  let states;
  try {
    states = await client.preferences.fetchInboxStates([inboxId]);
  } catch (error) {
    log(`fetching the inbox state of ${inboxId} failed (${error?.message ?? error}); using the local copy`);
    states = await client.preferences.getInboxStates([inboxId]);
  }
  const state = states.find((s) => s.inboxId === inboxId);
  if (!state) throw new Error(`no inbox state for ${inboxId}`);
  const addresses = state.identifiers
    .filter((id) => id.identifierKind === IDENTIFIER_KIND_ETHEREUM)
    .map((id) => id.identifier.toLowerCase());
  inboxes.set(inboxId, { addresses, at: Date.now() });
  return addresses;
}

async function handle(message) {
  if (seen.has(message.id) || message.senderInboxId === client.inboxId) return;
  if (message.kind !== KIND_APPLICATION) return;
  seen.set(message.id, message.sentAtNs);
  if (isLeaveRequest(message)) {
    await honourLeave(message);
    return;
  }
  if (typeof message.content !== "string") {
    emit({ event: "dropped", id: message.id, senderInboxId: message.senderInboxId, reason: "not a text message" });
    return;
  }
  if (Buffer.byteLength(message.content, "utf8") > maxBytes) {
    emit({ event: "dropped", id: message.id, senderInboxId: message.senderInboxId,
      reason: `larger than ${maxBytes} bytes` });
    return;
  }
  let addresses;
  let group;
  try {
    group = await groupOf(message.conversationId);
    if (group) await announce(group);
    addresses = await addressesOf(message.senderInboxId);
  } catch (error) {
    seen.delete(message.id); // not reported: the next sync tries again
    log(`message ${message.id} held back: ${error?.message ?? error}`);
    return;
  }
  if (message.sentAtNs > highNs) highNs = message.sentAtNs;
  reported += 1;
  emit({
    event: "message",
    id: message.id,
    conversationId: message.conversationId,
    senderInboxId: message.senderInboxId,
    addresses,
    sentAtNs: String(message.sentAtNs),
    text: message.content,
    ...(group ? { group: group.id } : {}),
  });
}

// A member asked to leave a group we administer (its `leaveGroup`, the SDK's requestRemoval): remove it now. The
// SDK's own worker does it too, about 1.5 s later; whichever comes second finds the member gone and does nothing.
async function honourLeave(message) {
  const group = await groupOf(message.conversationId);
  const leaver = message.senderInboxId;
  if (!group || !(group.isSuperAdmin(client.inboxId) || group.isAdmin(client.inboxId))) return;
  try {
    await group.sync();
    if (!(await group.members()).some((member) => member.inboxId === leaver)) return;
    await group.removeMembers([leaver]);
    log(`group ${group.id}: removed inbox ${leaver}, which asked to leave`);
  } catch (error) {
    log(`group ${group.id}: removing inbox ${leaver}, which asked to leave, failed: ${error?.message ?? error}`);
  }
}

// The group a message was posted in, or null for a DM (looked up once per conversation).
async function groupOf(conversationId) {
  if (kinds.has(conversationId)) return kinds.get(conversationId);
  const conversation = await client.conversations.getConversationById(conversationId);
  const group = conversation instanceof Group ? conversation : null;
  kinds.set(conversationId, group);
  return group;
}

// Tell the agent, once per process and before any of its messages, that we are in a group someone else added us
// to (the agent records it and decides whether to read it; it ignores repeats after a restart).
async function announce(group) {
  if (announced.has(group.id)) return;
  const by = group.addedByInboxId;
  if (!by || by === client.inboxId) {
    announced.add(group.id);
    return;
  }
  const addresses = await addressesOf(by);
  announced.add(group.id);
  kinds.set(group.id, group);
  emit({ event: "group", conversationId: group.id, name: group.name, description: group.description,
    appData: group.appData, addedByInboxId: by, addresses });
}

function enqueueGroup(group) {
  inbound = inbound.then(() => announce(group)).catch((error) => log(`announcing a group: ${error?.stack ?? error}`));
  return inbound;
}

// Groups we are in that were not announced yet, from the local database (no network call).
//
// Why not a stream of new groups: every stream takes every welcome, and two that race for one lose it. With
// streamGroups beside streamAllMessages, a welcome the message stream processed first was seen to be dropped by the
// group stream in silence (no value, no error: libxmtp 1.9.1; 2 of 7 group tests failed that way in about one run
// in three), and the other way round a stream can miss the DM or group it must then follow (a member that never
// heard a discover). So streamAllMessages alone takes welcomes (it follows each new DM and group at once), and the
// group it stored is announced from the local database: every GROUP_SWEEP_MS, which bounds how late an invitation
// is, and with each sync; and, before its first message, by handle().
function sweepGroups() {
  try {
    for (const group of requireClient().conversations.listGroups({ consentStates: [CONSENT_ALLOWED, CONSENT_UNKNOWN] })) {
      if (!announced.has(group.id)) enqueueGroup(group);
    }
  } catch (error) {
    log(`looking for new groups failed: ${error?.stack ?? error}`);
  }
}

function enqueue(message) {
  inbound = inbound.then(() => handle(message)).catch((error) => log(`handling a message: ${error?.stack ?? error}`));
  return inbound;
}

function prune() {
  const horizon = highNs - 2n * SLACK_NS;
  for (const [id, sentAtNs] of seen) if (sentAtNs < horizon) seen.delete(id);
}

// One sync at a time; a request during a sync runs one more after it.
function syncNow(reason) {
  if (syncInFlight) {
    syncAgain = true;
    return syncInFlight;
  }
  syncInFlight = (async () => {
    do {
      syncAgain = false;
      try {
        const c = requireClient();
        await c.conversations.syncAll([CONSENT_ALLOWED, CONSENT_UNKNOWN]);
        const from = highNs > SLACK_NS ? highNs - SLACK_NS : 0n;
        for (const dm of c.conversations.listDms()) {
          for (const message of await dm.messages({ sentAfterNs: from })) enqueue(message);
        }
        for (const group of c.conversations.listGroups({ consentStates: [CONSENT_ALLOWED, CONSENT_UNKNOWN] })) {
          enqueueGroup(group);
          for (const message of await group.messages({ sentAfterNs: from })) enqueue(message);
        }
        await inbound;
        lastSyncMs = Date.now();
        prune();
      } catch (error) {
        emit({ event: "sync_error", message: String(error?.message ?? error) });
        log(`sync (${reason}) failed: ${error?.stack ?? error}`);
      }
    } while (syncAgain && !closing);
  })().finally(() => {
    syncInFlight = null;
  });
  return syncInFlight;
}

async function runStream(attempt = 0) {
  if (closing) return;
  try {
    stream = await client.conversations.streamAllMessages({ // DMs and groups (handle() tells them apart)
      consentStates: [CONSENT_ALLOWED, CONSENT_UNKNOWN],
      retryAttempts: 6,
      retryDelay: 500,
      onError: (error) => {
        emit({ event: "stream", state: "error", message: String(error?.message ?? error) });
        syncNow("stream error");
      },
      onRestart: () => {
        emit({ event: "stream", state: "restart" });
        syncNow("stream restart");
      },
    });
    streaming = true;
    markStreamTried();
    emit({ event: "stream", state: "up" });
    attempt = 0;
    for await (const message of stream) {
      if (message) enqueue(message);
    }
  } catch (error) {
    emit({ event: "stream", state: "error", message: String(error?.message ?? error) });
    log(`stream failed: ${error?.stack ?? error}`);
  }
  streaming = false;
  markStreamTried();
  if (closing) return;
  const delay = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
  emit({ event: "stream", state: "down", message: `restarting in ${delay} ms` });
  setTimeout(() => {
    syncNow("stream down");
    runStream(attempt + 1);
  }, delay);
}

async function groupById(id) {
  const c = requireClient();
  if (typeof id !== "string") throw fail("BadRequest", "a group command needs groupId");
  const conversation = await c.conversations.getConversationById(id);
  if (!(conversation instanceof Group)) throw fail("NotMember", `not a member of the group ${id}`);
  return conversation;
}

function identifiers(addresses) {
  if (!Array.isArray(addresses) || !addresses.every((a) => typeof a === "string")) {
    throw fail("BadRequest", "addresses is a list of wallet addresses");
  }
  return addresses.map((a) => ethereumIdentifier(a.toLowerCase()));
}

async function reachableAll(addresses) {
  const answer = await requireClient().canMessage(identifiers(addresses));
  const able = new Set([...answer].filter(([, ok]) => ok).map(([key]) => String(key).toLowerCase()));
  const missing = addresses.filter((a) => !able.has(a.toLowerCase()));
  if (missing.length) {
    throw fail("PeerUnreachable", `${missing.join(", ")} ${missing.length === 1 ? "has" : "have"} no XMTP inbox on ` +
      `the ${env} network (an agent gets one the first time it runs there)`);
  }
}

// A DM is created in two steps: the group is stored locally, then a commit adding the peer is published and the
// welcome sent. A sidecar killed between the two (SIGKILL, a crash) leaves a stored DM that holds only this inbox:
// the SDK finds it again on every later createDm and sends into it, and the peer never hears a word. So on first
// use in a process, a DM whose members lack the peer is synced (the commit may be on the network already) and, if
// the peer is still missing, the peer is added to it again, which publishes the commit and sends the welcome.
async function joined(dm) {
  const peer = dm.peerInboxId;
  const has = async () => (await dm.members()).some((member) => member.inboxId === peer);
  if (await has()) return dm;
  await dm.sync();
  if (await has()) return dm;
  log(`DM ${dm.id} with inbox ${peer} does not hold the peer (its creation was cut short); adding the peer again`);
  await bindingOf(dm).addMembersByInboxId([peer]);
  if (!(await has())) throw fail("DmBroken", `the DM with inbox ${peer} could not be repaired`);
  log(`DM ${dm.id}: the peer is a member again`);
  return dm;
}

// The SDK (5.5) keeps a conversation's native handle private and offers no way to add a member to a DM, which
// libxmtp itself does when it creates one. The handle is caught as `this` of a native method the wrapper calls.
function bindingOf(dm) {
  const prototype = BindingConversation.prototype;
  const original = prototype.dmPeerInboxId;
  let handle = null;
  prototype.dmPeerInboxId = function capture(...args) {
    handle = this;
    return original.apply(this, args);
  };
  try {
    void dm.peerInboxId;
  } finally {
    prototype.dmPeerInboxId = original;
  }
  if (!handle) throw fail("DmBroken", "the SDK's conversation handle was not found");
  return handle;
}

function dmWith(address) {
  let dm = dms.get(address);
  if (!dm) {
    dm = (async () => {
      const c = requireClient();
      if (!reachable.has(address)) {
        const answer = await c.canMessage([ethereumIdentifier(address)]);
        if (![...answer.values()].some(Boolean)) {
          throw fail("PeerUnreachable", `${address} has no XMTP inbox on the ${env} network (an agent gets one the ` +
            "first time it runs there)");
        }
        reachable.add(address);
      }
      return joined(await c.conversations.createDmWithIdentifier(ethereumIdentifier(address)));
    })();
    dms.set(address, dm);
    dm.catch(() => dms.delete(address));
  }
  return dm;
}

function chmodDatabase(dbPath) {
  for (const suffix of ["", "-wal", "-shm"]) {
    try {
      chmodSync(dbPath + suffix, 0o600);
    } catch {
      // not created (yet)
    }
  }
}

const handlers = {
  async start(args) {
    if (client) throw fail("AlreadyStarted", "this sidecar already has a client");
    if (!ENVS.has(args.env)) throw fail("BadRequest", `unknown XMTP network ${args.env}`);
    if (typeof args.dbPath !== "string" || !args.dbEncryptionKey) {
      throw fail("BadRequest", "start needs dbPath and dbEncryptionKey");
    }
    env = args.env;
    maxBytes = args.maxBytes ?? maxBytes;
    highNs = BigInt(args.syncFromNs ?? "0");
    const { address, signer } = wallet(args.privateKey);
    myAddress = address;
    client = await Client.create(signer, {
      env,
      dbPath: args.dbPath,
      dbEncryptionKey: hexToBytes(args.dbEncryptionKey),
      disableDeviceSync: true,
      loggingLevel: "Off",
    });
    chmodDatabase(args.dbPath);
    runStream();
    groupSweepTimer = setInterval(sweepGroups, GROUP_SWEEP_MS);
    await streamTried; // live before the sync, so nothing falls between the two
    await syncNow("start");
    const interval = args.syncIntervalMs ?? 30_000;
    if (interval > 0) syncTimer = setInterval(() => syncNow("periodic"), interval);
    return { address, inboxId: client.inboxId, installationId: client.installationId };
  },

  async send(args) {
    if (typeof args.text !== "string" || typeof args.to !== "string") throw fail("BadRequest", "send needs to and text");
    const size = Buffer.byteLength(args.text, "utf8");
    if (size > maxBytes) throw fail("TooLarge", `message of ${size} bytes is over the ${maxBytes}-byte limit`);
    const dm = await dmWith(args.to.toLowerCase());
    return { messageId: await dm.sendText(args.text) };
  },

  async createGroup(args) {
    const c = requireClient();
    await reachableAll(args.members);
    const group = await c.conversations.createGroupWithIdentifiers(identifiers(args.members), {
      permissions: PERMISSIONS_ADMIN_ONLY,
      groupName: String(args.name ?? ""),
      groupDescription: String(args.description ?? ""),
      appData: String(args.appData ?? ""),
    });
    announced.add(group.id);
    kinds.set(group.id, group);
    return { groupId: group.id };
  },

  async addMembers(args) {
    const group = await groupById(args.groupId);
    await reachableAll(args.addresses);
    await group.addMembersByIdentifiers(identifiers(args.addresses));
    return {};
  },

  async removeMembers(args) {
    const group = await groupById(args.groupId);
    await group.removeMembersByIdentifiers(identifiers(args.addresses));
    return {};
  },

  async leaveGroup(args) {
    const group = await groupById(args.groupId);
    await group.requestRemoval();
    group.updateConsentState(CONSENT_DENIED);
    return {};
  },

  async ignoreGroup(args) {
    (await groupById(args.groupId)).updateConsentState(CONSENT_DENIED);
    return {};
  },

  async groupMembers(args) {
    const group = await groupById(args.groupId);
    const members = (await group.members()).map((member) => ({
      inboxId: member.inboxId,
      addresses: member.accountIdentifiers
        .filter((id) => id.identifierKind === IDENTIFIER_KIND_ETHEREUM)
        .map((id) => id.identifier.toLowerCase()),
    }));
    return { members, active: group.isActive };
  },

  async sendGroup(args) {
    if (typeof args.text !== "string") throw fail("BadRequest", "sendGroup needs groupId and text");
    const size = Buffer.byteLength(args.text, "utf8");
    if (size > maxBytes) throw fail("TooLarge", `message of ${size} bytes is over the ${maxBytes}-byte limit`);
    const group = await groupById(args.groupId);
    if (!group.isActive) throw fail("NotMember", `not a member of the group ${args.groupId} any more`);
    return { messageId: await group.sendText(args.text) };
  },

  async status() {
    const c = requireClient();
    let state;
    try {
      state = await c.preferences.fetchInboxState();
    } catch (error) {
      log(`fetching our inbox state failed (${error?.message ?? error}); using the local copy`);
      state = await c.preferences.inboxState();
    }
    return {
      address: myAddress,
      inboxId: c.inboxId,
      installationId: c.installationId,
      env,
      streaming,
      lastSyncMs,
      reported,
      pid: process.pid,
      installations: state.installations.length, // an inbox may have at most 10
    };
  },
};

// Every command but `close` is tracked, so that a closing sidecar answers what it accepted before it exits.
const commands = Object.fromEntries(Object.entries(handlers).map(([name, handler]) => [name, async (args) => {
  if (closing) throw fail("Closing", "the sidecar is shutting down");
  const running = handler(args);
  inFlight.add(running);
  try {
    return await running;
  } finally {
    inFlight.delete(running);
  }
}]));
commands.close = async () => {
  setImmediate(shutdown);
  return {};
};

// Shutdown (stdin closed, or `close`): no new commands; those in flight (a send that is creating a DM, say) run to
// their reply, for at most DRAIN_MS, so that none is cut between two steps the network must see together. SIGKILL
// cannot be helped; joined() repairs what it leaves.
async function shutdown() {
  if (closing) return;
  closing = true;
  if (syncTimer) clearInterval(syncTimer);
  if (groupSweepTimer) clearInterval(groupSweepTimer);
  emit({ event: "closing", pending: inFlight.size });
  if (inFlight.size) {
    let timer;
    const late = new Promise((resolve) => (timer = setTimeout(resolve, DRAIN_MS, "late")));
    const outcome = await Promise.race([Promise.allSettled([...inFlight]), late]);
    clearTimeout(timer);
    if (outcome === "late") log(`exiting with ${inFlight.size} command(s) unanswered after ${DRAIN_MS} ms`);
    await new Promise((resolve) => setImmediate(resolve)); // their replies are written first
  }
  try {
    if (stream) await stream.return();
  } catch (error) {
    log(`closing the stream: ${error}`);
  }
  process.exit(0);
}

process.on("unhandledRejection", (error) => log(`unhandled rejection: ${error?.stack ?? error}`));
process.stdout.on("error", (error) => log(`writing to stdout: ${error?.message ?? error}`)); // the agent is gone
serve(commands, shutdown);
emit({ event: "ready", pid: process.pid, sdk: SDK_VERSION });
