// CoWorker's XMTP client driver: one @xmtp/node-sdk client, driven by JSON lines.
//
// Protocol (one JSON object per line; UTF-8):
//   stdin, commands:  {"id": <any>, "cmd": "<name>", ...arguments}
//   stdout, replies:  {"id": <same>, "ok": true, "result": {...}}
//                     {"id": <same>, "ok": false, "error": {"name": "...", "message": "..."}}
//   stdout, events:   {"event": "<name>", ...}  (replies never carry "event"; an event may carry "id")
// Commands run concurrently: a reply may overtake the reply of an earlier command; match by id.
// Diagnostics go to stderr, never to stdout.
//
// Commands:
//   create     {env?: "local", privateKey?: "0x..", dbPath?: string|null, dbEncryptionKey?: "0x..",
//               disableDeviceSync?: true, loggingLevel?: "Off"|"Error"|"Warn"|"Info"|"Debug"}
//              -> {address, inboxId, installationId, privateKey}  (a fresh wallet when no privateKey)
//   canMessage {addresses: [..]}                 -> {results: {address: bool}}
//   newDm      {address}                         -> {conversationId}
//   newGroup   {addresses: [..], name?}          -> {conversationId}
//   send       {conversationId, text}            -> {messageId}
//   stream     {retryDelayMs?: 500}              -> {}   then "message" events as messages arrive
//   sync       {}                                -> {newMessages}  emits "message" events for unseen ones
//   conversations {}                             -> {conversations: [{id, type}]}
//   messages   {conversationId}                  -> {messages: [message]} (no events)
//   close      {}                                -> {} then the process exits 0
// Events:
//   ready          {pid, sdk}                    once, at start
//   message        {source: "stream"|"sync", id, conversationId, senderInboxId, sentAtNs, kind,
//                   contentType, text?, isSelf}  each message at most once (de-duplicated by id)
//   stream_error   {message}                     the SDK reported a stream error (it retries)
//   stream_restart {}                            the SDK restarted the stream
//   stream_end     {}
//
// Only the `local` environment is allowed unless COWORKER_ALLOW_REMOTE_XMTP=1: tests and the devnet
// must never reach XMTP's hosted networks.

import { Client } from "@xmtp/node-sdk";
import { emit, serve } from "./jsonlines.mjs";
import { IDENTIFIER_KIND_ETHEREUM, hexToBytes, wallet } from "./wallet.mjs";

const SDK_VERSION = "5.5.0";
const KIND_NAMES = ["application", "membership_change"];

let client = null;
let stream = null;
const seen = new Set();

function requireClient() {
  if (!client) throw new Error("no client: send a create command first");
  return client;
}

function describe(message, source) {
  const event = {
    event: "message",
    source,
    id: message.id,
    conversationId: message.conversationId,
    senderInboxId: message.senderInboxId,
    sentAtNs: String(message.sentAtNs),
    kind: KIND_NAMES[message.kind] ?? String(message.kind),
    contentType: message.contentType
      ? `${message.contentType.authorityId}/${message.contentType.typeId}:${message.contentType.versionMajor}.${message.contentType.versionMinor}`
      : null,
    isSelf: client ? message.senderInboxId === client.inboxId : false,
  };
  if (typeof message.content === "string") event.text = message.content;
  return event;
}

function report(message, source) {
  if (seen.has(message.id)) return false;
  seen.add(message.id);
  emit(describe(message, source));
  return true;
}

async function conversation(id) {
  const found = await requireClient().conversations.getConversationById(id);
  if (!found) throw new Error(`unknown conversation ${id}`);
  return found;
}

const commands = {
  async create(args) {
    if (client) throw new Error("this driver already has a client");
    const env = args.env ?? "local";
    if (env !== "local" && process.env.COWORKER_ALLOW_REMOTE_XMTP !== "1") {
      throw new Error(`env ${env} refused: only "local" is allowed (set COWORKER_ALLOW_REMOTE_XMTP=1)`);
    }
    const { address, privateKey, signer } = wallet(args.privateKey);
    const options = {
      env,
      dbPath: args.dbPath === undefined ? null : args.dbPath,
      disableDeviceSync: args.disableDeviceSync ?? true,
      loggingLevel: args.loggingLevel ?? "Off",
    };
    if (args.dbEncryptionKey) options.dbEncryptionKey = hexToBytes(args.dbEncryptionKey);
    client = await Client.create(signer, options);
    return { address, privateKey, inboxId: client.inboxId, installationId: client.installationId };
  },

  async canMessage(args) {
    const identifiers = args.addresses.map((a) => ({ identifier: a, identifierKind: IDENTIFIER_KIND_ETHEREUM }));
    const answer = await requireClient().canMessage(identifiers);
    return { results: Object.fromEntries(answer) };
  },

  async newDm(args) {
    const dm = await requireClient().conversations.createDmWithIdentifier({
      identifier: args.address,
      identifierKind: IDENTIFIER_KIND_ETHEREUM,
    });
    return { conversationId: dm.id };
  },

  async newGroup(args) {
    const identifiers = args.addresses.map((a) => ({ identifier: a, identifierKind: IDENTIFIER_KIND_ETHEREUM }));
    const options = args.name ? { groupName: args.name } : undefined;
    const group = await requireClient().conversations.createGroupWithIdentifiers(identifiers, options);
    return { conversationId: group.id };
  },

  async send(args) {
    if (typeof args.text !== "string") throw new Error("send needs a text string");
    const convo = await conversation(args.conversationId);
    const messageId = await convo.sendText(args.text);
    return { messageId };
  },

  async stream(args) {
    if (stream) throw new Error("already streaming");
    const c = requireClient();
    stream = await c.conversations.streamAllMessages({
      retryDelay: args.retryDelayMs ?? 500,
      retryAttempts: args.retryAttempts ?? 1000,
      onError: (error) => emit({ event: "stream_error", message: String(error?.message ?? error) }),
      onRestart: () => emit({ event: "stream_restart" }),
      onEnd: () => emit({ event: "stream_end" }),
    });
    (async () => {
      try {
        for await (const message of stream) {
          if (message) report(message, "stream");
        }
      } catch (error) {
        emit({ event: "stream_error", message: String(error?.message ?? error) });
      }
    })();
    return {};
  },

  async sync() {
    const c = requireClient();
    await c.conversations.syncAll();
    let newMessages = 0;
    for (const convo of await c.conversations.list()) {
      for (const message of await convo.messages()) {
        if (report(message, "sync")) newMessages += 1;
      }
    }
    return { newMessages };
  },

  async conversations() {
    const c = requireClient();
    await c.conversations.sync();
    const list = await c.conversations.list();
    return { conversations: list.map((convo) => ({ id: convo.id, type: convo.constructor.name.toLowerCase() })) };
  },

  async messages(args) {
    const convo = await conversation(args.conversationId);
    await convo.sync();
    return { messages: (await convo.messages()).map((m) => describe(m, "list")) };
  },

  async close() {
    setImmediate(shutdown);
    return {};
  },
};

async function shutdown() {
  try {
    if (stream) await stream.return();
  } catch (error) {
    process.stderr.write(`closing the stream: ${error}\n`);
  }
  process.exit(0);
}

serve(commands, shutdown);
emit({ event: "ready", pid: process.pid, sdk: SDK_VERSION });
