// The web client's message lists, outbox and chat state transitions (web/assets/store.js) on
// their own: sorted by seq and deduplicated by _id whatever the order of arrival, gaps found, the
// outbox kept across a "reload" (a new Outbox on the same storage) and bounded; unread counts
// under messages, read events and acks; `mark-read` coalesced; membership events.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  MessageList, OUTBOX_MAX, Outbox, OfflineCache, ReadMarks, chatAfterMemberAdded, chatAfterMemberRemoved,
  chatAfterRead, chatFromServer, chatMerged, countsAsUnread, isOwner, membersAfterAdded, membersAfterRead,
  membersAfterRemoved, membersLoaded, newClientMsgId, seenBy, unreadOf,
} from '../../web/assets/store.js';

const message = (seq, extra = {}) => ({ _id: `m${seq}`, seq, chat: 'c', text: `t${seq}`, sender: { _id: 'u' }, ...extra });

class MemoryStorage {
  constructor() { this.items = new Map(); }
  getItem(key) { return this.items.has(key) ? this.items.get(key) : null; }
  setItem(key, value) { this.items.set(key, String(value)); }
}

test('messages are kept sorted by seq and once per _id, in any order of arrival', () => {
  const list = new MessageList();
  assert.equal(list.add([message(3), message(1)]), 2);
  assert.equal(list.add([message(2), message(3), message(1)]), 1);
  assert.deepEqual(list.messages.map((m) => m.seq), [1, 2, 3]);
  assert.equal(list.add([{ seq: 4 }, null, { _id: 'x' }]), 0, 'malformed messages are ignored');
  assert.equal(list.lastSeq, 3);
  assert.equal(list.hasOlder, false);
});

test('a gap in seq is found, and where the sync must start', () => {
  const list = new MessageList();
  list.add([message(10), message(11), message(14)]);
  assert.equal(list.contiguousSeq, 11);
  assert.equal(list.hasOlder, true);
  list.add([message(12), message(13)]);
  assert.equal(list.contiguousSeq, 14);
});

test('an outbox survives a reload and keeps the order written', () => {
  const storage = new MemoryStorage();
  const outbox = new Outbox(storage, 'k');
  const first = outbox.add('c', 'one');
  outbox.add('c', 'two');
  outbox.add('d', 'elsewhere');
  outbox.setError(first.clientMsgId, 'Message too long');
  const reloaded = new Outbox(storage, 'k');
  assert.deepEqual(reloaded.entries.map((e) => e.text), ['one', 'two', 'elsewhere']);
  assert.deepEqual(reloaded.ready().map((e) => e.text), ['two', 'elsewhere'], 'a refused one waits for retry');
  assert.equal(reloaded.forChat('c').length, 2);
  reloaded.remove(first.clientMsgId);
  assert.equal(new Outbox(storage, 'k').entries.length, 2);
});

test('the outbox is bounded and tolerates garbage in storage', () => {
  const storage = new MemoryStorage();
  storage.setItem('k', '{not json');
  const outbox = new Outbox(storage, 'k');
  assert.deepEqual(outbox.entries, []);
  for (let i = 0; i < OUTBOX_MAX; i += 1) assert.ok(outbox.add('c', `m${i}`));
  assert.equal(outbox.add('c', 'one too many'), null);
});

test('clientMsgIds are unique and within the contract limit', () => {
  const ids = new Set(Array.from({ length: 1000 }, () => newClientMsgId()));
  assert.equal(ids.size, 1000);
  for (const id of ids) assert.ok(id.length <= 64 && /^[\w-]+$/.test(id));
});

test('the offline cache keeps the newest messages of the recent chats', () => {
  const storage = new MemoryStorage();
  const list = new MessageList();
  list.add(Array.from({ length: 80 }, (_, i) => message(i + 1)));
  new OfflineCache(storage, 'cache').remember([{ _id: 'c' }], new Map([['c', list]]));
  const cache = new OfflineCache(storage, 'cache');
  assert.equal(cache.messages.c.length, 50);
  assert.equal(cache.messages.c[0].seq, 31);
});

test('an outbox drops the entries of a chat the user left', () => {
  const storage = new MemoryStorage();
  const outbox = new Outbox(storage, 'k');
  outbox.add('left', 'one');
  outbox.add('kept', 'two');
  outbox.add('left', 'three');
  outbox.removeChat('left');
  assert.deepEqual(new Outbox(storage, 'k').entries.map((e) => e.text), ['two']);
});

// ---- read state ----

const ME = 'me';
const from = (seq, sender, extra = {}) => message(seq, { sender: { _id: sender, name: sender }, ...extra });
const system = (seq) => from(seq, 'ada', { kind: 'system', event: { type: 'added', userId: 'bob', by: 'ada' } });
/** A chat as GET /api/chats gives it: read up to `lastReadSeq`, `unreadCount` counted up to `lastSeq`. */
const serverChat = (lastSeq, lastReadSeq, unreadCount, extra = {}) => chatFromServer({
  _id: 'c', kind: 'group', name: 'Crew', ownerId: 'ada', lastReadSeq, unreadCount,
  lastMessage: lastSeq ? from(lastSeq, 'ada') : null, ...extra,
});
const held = (...messages) => {
  const list = new MessageList();
  list.add(messages);
  return list.messages;
};

test('what counts as unread: others\' messages, never system ones or one\'s own', () => {
  assert.equal(countsAsUnread(from(1, 'ada'), ME), true);
  assert.equal(countsAsUnread(from(1, ME), ME), false);
  assert.equal(countsAsUnread(system(1), ME), false);
});

test('others\' messages raise the count once each, in any order, system messages do not', () => {
  const chat = serverChat(4, 2, 2);
  assert.equal(unreadOf(chat, held(from(4, 'ada')), ME), 2, 'the last message is in the server\'s count');
  const messages = held(from(4, 'ada'), from(7, 'bob'), from(5, 'ada'), system(6), from(8, ME));
  assert.equal(unreadOf(chat, messages, ME), 4, '5 and 7 above the server\'s count, 6 system, 8 mine');
  const again = held(...messages, from(5, 'ada'), from(7, 'bob'));
  assert.equal(unreadOf(chat, again, ME), 4, 'a message delivered twice counts once');
});

test('a read up to the last message clears the count; messages after it count again', () => {
  const messages = held(from(4, 'ada'), from(5, 'bob'));
  const { chat, exact } = chatAfterRead(serverChat(4, 2, 2), 5, messages, ME);
  assert.equal(exact, true);
  assert.equal(chat.lastReadSeq, 5);
  assert.equal(unreadOf(chat, messages, ME), 0);
  assert.equal(unreadOf(chat, held(...messages, from(6, 'bob'), system(7)), ME), 1);
});

test('a read part of the way subtracts what it covers, when every message between is held', () => {
  // Server: read up to 2, and 4 unread up to seq 7 (3, 4, 6, 7 from others; 5 is a system message).
  const chat = serverChat(7, 2, 4);
  const messages = held(from(3, 'ada'), from(4, 'bob'), system(5), from(6, 'ada'), from(7, 'ada'));
  const { chat: after, exact } = chatAfterRead(chat, 5, messages, ME);
  assert.equal(exact, true);
  assert.equal(unreadOf(after, messages, ME), 2, '6 and 7 are left');
  const { chat: partial, exact: known } = chatAfterRead(chat, 5, held(from(4, 'bob'), from(7, 'ada')), ME);
  assert.equal(known, false, 'seq 3 and 5 are not held: the count must be read again');
  assert.equal(partial.lastReadSeq, 5);
});

test('a read never moves backwards', () => {
  const chat = serverChat(6, 5, 1);
  const { chat: after, exact } = chatAfterRead(chat, 3, held(from(6, 'ada')), ME);
  assert.equal(after, chat);
  assert.equal(exact, true);
});

test('a chat from the server forgets that its viewer was removed from it', () => {
  const chat = chatFromServer({ _id: 'c', removed: true, lastMessage: from(9, 'ada'), unreadCount: 1, lastReadSeq: 8 });
  assert.equal(chat.removed, undefined);
  assert.equal(chat.countedSeq, 9);
  const empty = chatFromServer({ _id: 'd', lastMessage: null });
  assert.deepEqual([empty.countedSeq, empty.lastReadSeq, empty.unreadCount], [0, 0, 0]);
});

test('a chat read from the server before this tab\'s mark-read was committed keeps the newer position', () => {
  const messages = held(from(3, 'ada'), from(4, 'bob'), from(5, 'ada'));
  const ahead = chatAfterRead(serverChat(5, 2, 3), 5, messages, ME).chat;
  const merged = chatMerged({ _id: 'c', lastReadSeq: 2, unreadCount: 3, lastMessage: from(5, 'ada') }, ahead, messages, ME);
  assert.equal(merged.lastReadSeq, 5);
  assert.equal(unreadOf(merged, messages, ME), 0);
  const behind = chatMerged({ _id: 'c', lastReadSeq: 5, unreadCount: 0, lastMessage: from(5, 'ada') }, serverChat(5, 2, 3), messages, ME);
  assert.equal(behind.lastReadSeq, 5, 'the server\'s position when it is ahead');
  const removed = chatMerged({ _id: 'c', lastMessage: null }, { _id: 'c', removed: true, lastReadSeq: 0 }, [], ME);
  assert.equal(removed.removed, undefined, 'a chat the server sends is one the user is in');
});

test('mark-read: one request in flight per chat, the marks meanwhile coalesced into the highest', async () => {
  const sent = [];
  const answers = [];
  const marks = new ReadMarks((chatId, seq) => {
    sent.push(`${chatId}:${seq}`);
    return new Promise((resolve, reject) => answers.push({ resolve, reject }));
  });
  const settle = async (how) => {
    answers.shift()[how]();
    await new Promise((resolve) => setTimeout(resolve, 0));
  };
  marks.mark('c', 5);
  for (let seq = 6; seq <= 40; seq += 1) marks.mark('c', seq);
  marks.mark('d', 2);
  marks.mark('c', 30);
  assert.deepEqual(sent, ['c:5', 'd:2']);
  await settle('resolve');
  assert.deepEqual(sent, ['c:5', 'd:2', 'c:40'], 'one follow-up with the last seq');
  await settle('resolve');
  await settle('resolve');
  assert.equal(sent.length, 3, 'nothing more to send');
  marks.mark('c', 40);
  marks.mark('c', 12);
  assert.equal(sent.length, 3, 'positions already reported are not sent again');

  marks.mark('c', 41);
  await settle('reject');
  assert.equal(sent.length, 4);
  marks.flush();
  assert.deepEqual(sent.slice(4), ['c:41'], 'a position that could not be sent goes again on flush');
  await settle('resolve');
  marks.forget('c');
  marks.flush();
  assert.equal(sent.length, 5);
});

// ---- membership ----

const ada = { _id: 'ada', name: 'Ada' };
const bob = { _id: 'bob', name: 'Bob' };
const cat = { _id: 'cat', name: 'Cat' };
const member = (user, role, lastReadSeq) => ({ user, role, joinedAt: '2026-11-30T00:00:00.000Z', lastReadSeq });

test('member-added and member-removed keep the chat\'s members and count', () => {
  const chat = { _id: 'c', kind: 'group', ownerId: 'ada', participants: [ada, bob], memberCount: 2 };
  const added = chatAfterMemberAdded(chat, cat);
  assert.deepEqual(added.participants.map((p) => p._id), ['ada', 'bob', 'cat']);
  assert.equal(added.memberCount, 3);
  assert.equal(chatAfterMemberAdded(added, cat), added, 'an add seen twice changes nothing');
  const removed = chatAfterMemberRemoved(added, 'ada', 'bob', 'cat');
  assert.deepEqual(removed.participants.map((p) => p._id), ['bob', 'cat']);
  assert.equal(removed.memberCount, 2);
  assert.equal(removed.ownerId, 'bob', 'the owner after the removal');
  assert.equal(removed.removed, undefined);
});

test('the viewer removed: the chat is marked, and nobody may manage it any more', () => {
  const chat = { _id: 'c', kind: 'group', ownerId: 'ada', participants: [ada, bob], memberCount: 2 };
  assert.equal(isOwner(chat, 'ada'), true);
  assert.equal(isOwner(chat, 'bob'), false);
  assert.equal(isOwner({ ...chat, kind: 'direct', ownerId: null }, 'ada'), false);
  const gone = chatAfterMemberRemoved(chat, 'ada', 'bob', 'ada');
  assert.equal(gone.removed, true);
  assert.equal(isOwner(gone, 'ada'), false);
  assert.equal(isOwner(gone, 'bob'), false, 'a removed viewer\'s copy offers nothing');
});

test('members: adds, removals with the owner handed on, reads that only grow', () => {
  let members = [member(ada, 'owner', 4), member(bob, 'member', 2)];
  members = membersAfterAdded(members, cat, 'member', 5);
  assert.deepEqual(members.map((m) => [m.user._id, m.role, m.lastReadSeq]), [['ada', 'owner', 4], ['bob', 'member', 2], ['cat', 'member', 5]]);
  assert.equal(membersAfterAdded(members, cat, 'member', 9), members);
  members = membersAfterRead(members, 'bob', 6);
  members = membersAfterRead(members, 'bob', 3);
  assert.equal(members[1].lastReadSeq, 6);
  members = membersAfterRemoved(members, 'ada', 'bob');
  assert.deepEqual(members.map((m) => [m.user._id, m.role]), [['bob', 'owner'], ['cat', 'member']]);
});

test('members read from the server keep the positions events moved further meanwhile', () => {
  const loaded = [member(ada, 'owner', 3), member(bob, 'member', 5)];
  const previous = [member(ada, 'owner', 4), member(bob, 'member', 2)];
  assert.deepEqual(membersLoaded(loaded, previous).map((m) => m.lastReadSeq), [4, 5]);
  assert.equal(membersLoaded(loaded, undefined), loaded);
});

test('seen by: the others at or past the message, never its sender or the viewer', () => {
  const members = [member(ada, 'owner', 7), member(bob, 'member', 7), member(cat, 'member', 6), member({ _id: ME, name: 'Me' }, 'member', 7)];
  assert.deepEqual(seenBy(members, from(7, 'ada'), ME).map((u) => u._id), ['bob']);
  assert.deepEqual(seenBy(members, from(6, ME), ME).map((u) => u._id), ['ada', 'bob', 'cat']);
  assert.deepEqual(seenBy(membersAfterRead(members, 'cat', 7), from(7, 'ada'), ME).map((u) => u._id), ['bob', 'cat']);
});
