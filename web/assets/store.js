// The client's state that outlives a connection: each chat's messages (kept sorted by `seq`,
// one per `_id`), and the outbox of messages the user wrote that the server has not yet
// acknowledged, persisted in localStorage so that a reload keeps them.
//
// Nothing here touches the DOM or the network, so it is tested on its own.

/** Messages kept in memory per chat; older ones are dropped and paged in again on scroll. */
export const MESSAGES_PER_CHAT_MAX = 2000;
/** Messages of one chat kept in localStorage for an offline start. */
export const CACHED_MESSAGES_PER_CHAT = 50;
/** Chats whose messages are kept in localStorage. */
export const CACHED_CHATS_MAX = 20;
/** Unsent messages kept; writing more while offline is refused with a message. */
export const OUTBOX_MAX = 200;

/** One chat's messages: sorted by seq, deduplicated by _id. */
export class MessageList {
  constructor() {
    this.messages = [];
    this.ids = new Set();
  }

  /** Adds stored messages; returns how many were new. Order of arrival does not matter. */
  add(incoming) {
    let added = 0;
    for (const message of incoming) {
      if (!message || typeof message._id !== 'string' || !Number.isInteger(message.seq)) continue;
      if (this.ids.has(message._id)) continue;
      this.ids.add(message._id);
      this.messages.push(message);
      added += 1;
    }
    if (added > 0) {
      this.messages.sort((a, b) => a.seq - b.seq);
      this.trim();
    }
    return added;
  }

  /** Keeps the newest MESSAGES_PER_CHAT_MAX. */
  trim() {
    const excess = this.messages.length - MESSAGES_PER_CHAT_MAX;
    if (excess <= 0) return;
    for (const dropped of this.messages.splice(0, excess)) this.ids.delete(dropped._id);
  }

  get firstSeq() {
    return this.messages.length ? this.messages[0].seq : null;
  }

  get lastSeq() {
    return this.messages.length ? this.messages[this.messages.length - 1].seq : 0;
  }

  /**
   * The seq up to which nothing is missing, counting from the first message held: where a
   * `sync` must start to fill a gap. Equal to lastSeq when there is no gap.
   */
  get contiguousSeq() {
    for (let i = 1; i < this.messages.length; i += 1) {
      if (this.messages[i].seq !== this.messages[i - 1].seq + 1) return this.messages[i - 1].seq;
    }
    return this.lastSeq;
  }

  /** Whether older messages exist on the server (seqs start at 1 and have no gaps). */
  get hasOlder() {
    return this.firstSeq !== null && this.firstSeq > 1;
  }

  /** The stored message that an outbox entry became, if it is here. */
  findByClientMsgId(senderId, clientMsgId) {
    return this.messages.find((m) => m.clientMsgId === clientMsgId && m.sender?._id === senderId);
  }
}

/** A fresh clientMsgId: random, URL-safe, well under the 64-character limit. */
export function newClientMsgId(random = globalThis.crypto) {
  const bytes = new Uint8Array(12);
  random.getRandomValues(bytes);
  return 'w-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Messages written but not yet acknowledged, in the order written, persisted under `key`.
 * Each entry: `{ clientMsgId, chatId, text, createdAt, error }`; `error` is the server's
 * refusal, set when the message needs the user's retry.
 */
export class Outbox {
  constructor(storage, key) {
    this.storage = storage;
    this.key = key;
    this.entries = load(storage, key, []).filter(isEntry);
  }

  add(chatId, text) {
    if (this.entries.length >= OUTBOX_MAX) return null;
    const entry = {
      clientMsgId: newClientMsgId(),
      chatId,
      text,
      createdAt: new Date().toISOString(),
      error: null,
    };
    this.entries.push(entry);
    this.save();
    return entry;
  }

  /** The entries waiting to be sent (not refused), oldest first. */
  ready() {
    return this.entries.filter((e) => !e.error);
  }

  forChat(chatId) {
    return this.entries.filter((e) => e.chatId === chatId);
  }

  get(clientMsgId) {
    return this.entries.find((e) => e.clientMsgId === clientMsgId);
  }

  remove(clientMsgId) {
    const before = this.entries.length;
    this.entries = this.entries.filter((e) => e.clientMsgId !== clientMsgId);
    if (this.entries.length !== before) this.save();
  }

  /** Marks an entry refused (shown with a retry) or, with `null`, ready again. */
  setError(clientMsgId, error) {
    const entry = this.get(clientMsgId);
    if (!entry) return;
    entry.error = error;
    this.save();
  }

  save() {
    save(this.storage, this.key, this.entries);
  }
}

function isEntry(e) {
  return e && typeof e.clientMsgId === 'string' && typeof e.chatId === 'string' && typeof e.text === 'string';
}

/** The chat list and the newest messages of recent chats, for a start without network. */
export class OfflineCache {
  constructor(storage, key) {
    this.storage = storage;
    this.key = key;
    const value = load(storage, key, {});
    this.chats = Array.isArray(value.chats) ? value.chats : [];
    this.messages = value.messages && typeof value.messages === 'object' ? value.messages : {};
  }

  remember(chats, lists) {
    this.chats = chats;
    const recent = chats.slice(0, CACHED_CHATS_MAX);
    this.messages = {};
    for (const chat of recent) {
      const list = lists.get(chat._id);
      if (list) this.messages[chat._id] = list.messages.slice(-CACHED_MESSAGES_PER_CHAT);
    }
    save(this.storage, this.key, { chats: this.chats, messages: this.messages });
  }
}

function load(storage, key, fallback) {
  try {
    const text = storage.getItem(key);
    return text ? JSON.parse(text) : fallback;
  } catch {
    return fallback;
  }
}

function save(storage, key, value) {
  try {
    storage.setItem(key, JSON.stringify(value));
  } catch {
    // Storage full or disabled: the state still lives in memory for this page.
  }
}
