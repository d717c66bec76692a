// The client's state that outlives a connection: each chat's messages (kept sorted by `seq`,
// one per `_id`), the outbox of messages the user wrote that the server has not yet
// acknowledged, persisted in localStorage so that a reload keeps them, and the state transitions
// of chats under read state and membership events (unread counts, "seen by", members).
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

  /** Drops the entries of a chat the user is no longer in: the server would refuse them. */
  removeChat(chatId) {
    const before = this.entries.length;
    this.entries = this.entries.filter((e) => e.chatId !== chatId);
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

// ---- read state ---------------------------------------------------------------------------------
//
// A chat's unread count comes from the server (`unreadCount` of a Chat object, counted up to its
// last message) and grows with the messages this client holds above that message. `countedSeq`
// records the seq the server's count reaches, so whatever arrives later (live, or a gap filled by
// `sync`) is counted once, whatever the order of arrival.

/** Whether a message above the user's read position is one of their unread: others' messages, no system ones. */
export function countsAsUnread(message, userId) {
  return message.kind !== 'system' && message.sender?._id !== userId;
}

/** A Chat object as the server sent it, ready to keep: its count is valid up to its last message. */
export function chatFromServer(chat) {
  const { removed: _removed, ...rest } = chat;
  return {
    ...rest,
    lastReadSeq: chat.lastReadSeq ?? 0,
    unreadCount: chat.unreadCount ?? 0,
    countedSeq: chat.lastMessage?.seq ?? 0,
  };
}

/**
 * A Chat object from the server in place of the copy held: a read position the held copy is
 * ahead with stays (the server's copy may have been read before this client's latest `mark-read`
 * was committed; positions only grow). A `removed` mark goes: the server sends a chat only to
 * its members.
 */
export function chatMerged(serverChat, previous, messages, userId) {
  const chat = chatFromServer(serverChat);
  if (!previous || !((previous.lastReadSeq ?? 0) > chat.lastReadSeq)) return chat;
  return chatAfterRead(chat, previous.lastReadSeq, messages, userId).chat;
}

/** The chat's unread messages: the server's count plus the countable messages held above it. */
export function unreadOf(chat, messages, userId) {
  const floor = Math.max(chat.countedSeq ?? 0, chat.lastReadSeq ?? 0);
  let count = chat.unreadCount ?? 0;
  for (let i = messages.length - 1; i >= 0 && messages[i].seq > floor; i -= 1) {
    if (countsAsUnread(messages[i], userId)) count += 1;
  }
  return count;
}

/**
 * The chat once its user has read up to `seq` (a `read` event, a `mark-read` ack, a message of
 * their own). `exact` is false when the new count could not be worked out from the messages held
 * (some between the old and the new position are missing): read the chat from the server then.
 */
export function chatAfterRead(chat, seq, messages, userId) {
  const from = chat.lastReadSeq ?? 0;
  if (!(seq > from)) return { chat, exact: true };
  if (seq >= (chat.countedSeq ?? 0)) {
    return { chat: { ...chat, lastReadSeq: seq, unreadCount: 0, countedSeq: seq }, exact: true };
  }
  const between = messages.filter((m) => m.seq > from && m.seq <= seq);
  const read = between.filter((m) => countsAsUnread(m, userId)).length;
  const unreadCount = Math.max(0, (chat.unreadCount ?? 0) - read);
  return { chat: { ...chat, lastReadSeq: seq, unreadCount }, exact: between.length === seq - from };
}

/**
 * The read positions a client reports with `mark-read`: one request per chat in flight at a
 * time, and the marks made meanwhile coalesced into one follow-up with the highest seq, so
 * reading a burst of messages costs two requests, not one per message.
 *
 * `send(chatId, seq)` resolves once the server answered (whatever it answered) and rejects when
 * it could not be asked (not connected, no answer): that position waits for `flush`.
 */
export class ReadMarks {
  constructor(send) {
    this.send = send;
    /** chatId → the highest seq marked and not yet answered. */
    this.wanted = new Map();
    /** chatId → the highest seq the server answered for. */
    this.reported = new Map();
    this.inFlight = new Set();
  }

  mark(chatId, seq) {
    const known = Math.max(this.wanted.get(chatId) ?? 0, this.reported.get(chatId) ?? 0);
    if (!(seq > known)) return;
    this.wanted.set(chatId, seq);
    this.pump(chatId);
  }

  /** Sends every position still unanswered (after a reconnect). */
  flush() {
    for (const chatId of this.wanted.keys()) this.pump(chatId);
  }

  /** Forgets a chat (the user left it): its marks would only be refused. */
  forget(chatId) {
    this.wanted.delete(chatId);
    this.reported.delete(chatId);
  }

  async pump(chatId) {
    if (this.inFlight.has(chatId)) return;
    this.inFlight.add(chatId);
    try {
      for (let seq = this.wanted.get(chatId); seq !== undefined; seq = this.wanted.get(chatId)) {
        try {
          await this.send(chatId, seq);
        } catch {
          return;
        }
        if (this.wanted.get(chatId) === seq) this.wanted.delete(chatId);
        this.reported.set(chatId, Math.max(this.reported.get(chatId) ?? 0, seq));
      }
    } finally {
      this.inFlight.delete(chatId);
    }
  }
}

// ---- membership ---------------------------------------------------------------------------------

/** Whether `userId` owns the group (and may add, remove and rename). */
export function isOwner(chat, userId) {
  return chat?.kind === 'group' && !chat.removed && chat.ownerId === userId;
}

/** The chat after `member-added`: the user joins its participants (once). */
export function chatAfterMemberAdded(chat, user) {
  if (!user?._id || (chat.participants || []).some((p) => p._id === user._id)) return chat;
  const participants = [...(chat.participants || []), user];
  return { ...chat, participants, memberCount: participants.length };
}

/**
 * The chat after `member-removed`: without that user, with the owner after it. When the user
 * removed is the viewer, the chat is kept marked `removed` (its history stays on screen, it takes
 * no more messages) until the viewer moves on.
 */
export function chatAfterMemberRemoved(chat, userId, ownerId, viewerId) {
  if (userId === viewerId) return { ...chat, removed: true, ownerId: ownerId ?? null };
  const participants = (chat.participants || []).filter((p) => p._id !== userId);
  return { ...chat, participants, memberCount: participants.length, ownerId: ownerId ?? null };
}

/** Members (`GET /api/chats/:id/members`) after `member-added`; a new member has read up to `seq`, the add. */
export function membersAfterAdded(members, user, role, seq) {
  if (!user?._id || members.some((m) => m.user._id === user._id)) return members;
  return [...members, { user, role: role || 'member', joinedAt: null, lastReadSeq: seq }];
}

/** Members as `GET /api/chats/:id/members` answered, keeping positions that events moved further meanwhile. */
export function membersLoaded(loaded, previous) {
  if (!previous) return loaded;
  const known = new Map(previous.map((m) => [m.user._id, m.lastReadSeq ?? 0]));
  return loaded.map((m) => ((known.get(m.user._id) ?? 0) > (m.lastReadSeq ?? 0) ? { ...m, lastReadSeq: known.get(m.user._id) } : m));
}

/** Members after `member-removed`: without that user, and the owner after it marked so. */
export function membersAfterRemoved(members, userId, ownerId) {
  return members
    .filter((m) => m.user._id !== userId)
    .map((m) => {
      const role = m.user._id === ownerId ? 'owner' : 'member';
      return m.role === role ? m : { ...m, role };
    });
}

/** Members after a member read up to `seq` (a `read` event, or a message they sent); positions only grow. */
export function membersAfterRead(members, userId, seq) {
  return members.map((m) => (m.user._id === userId && seq > (m.lastReadSeq ?? 0) ? { ...m, lastReadSeq: seq } : m));
}

/** The members other than the viewer and the message's sender who have read it. */
export function seenBy(members, message, viewerId) {
  return members
    .filter((m) => m.user._id !== viewerId && m.user._id !== message.sender?._id && (m.lastReadSeq ?? 0) >= message.seq)
    .map((m) => m.user);
}
