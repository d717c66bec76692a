// The web client's message lists and outbox (web/assets/store.js) on their own: sorted by seq
// and deduplicated by _id whatever the order of arrival, gaps found, the outbox kept across a
// "reload" (a new Outbox on the same storage) and bounded.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MessageList, OUTBOX_MAX, Outbox, OfflineCache, newClientMsgId } from '../../web/assets/store.js';

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
