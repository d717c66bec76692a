// History pagination (REST) and `sync` (Socket.IO) over one chat of 510 messages.
import { test } from 'node:test';
import { assert, useServer, assertError, assertMessage, assertRefused, emitWithAck } from './harness.mjs';

const N = 510;
let a, b, c, chat;
const bySeq = new Map(); // seq -> message as answered by POST

const srv = useServer({}, async (s) => {
  [a, b, c] = await Promise.all([
    s.register('Page Alice', 'page.alice@example.com'),
    s.register('Page Bob', 'page.bob@example.com'),
    s.register('Page Carol', 'page.carol@example.com'),
  ]);
  chat = await s.chat(a, b);
  let next = 0;
  const worker = async () => {
    while (next < N) {
      const i = next++;
      const m = await s.post(i % 3 ? a : b, chat._id, `msg ${i}`, `pg-${i}`);
      bySeq.set(m.seq, m);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
});

const range = (lo, hi) => Array.from({ length: hi - lo + 1 }, (_, i) => lo + i);

async function page(query, token = a.token) {
  const r = await srv.api('GET', `/api/messages/chat/${chat._id}${query}`, token);
  assert.equal(r.status, 200, `${query}: ${r.status} ${r.text}`);
  assert.ok(Array.isArray(r.body));
  return r.body;
}

function assertSeqs(msgs, lo, hi, what) {
  const seqs = msgs.map((m) => m.seq);
  assert.deepEqual(seqs, hi < lo ? [] : range(lo, hi), `${what}: seqs ${seqs[0]}..${seqs[seqs.length - 1]} (${seqs.length})`);
  for (const m of msgs) assert.deepEqual(m, bySeq.get(m.seq), `${what}: seq ${m.seq} is the message POST answered`);
}

test('the 510 posted messages got seq 1..510 with no gaps or duplicates', () => {
  assert.deepEqual([...bySeq.keys()].sort((x, y) => x - y), range(1, N));
  const ids = new Set([...bySeq.values()].map((m) => m._id));
  assert.equal(ids.size, N);
});

test('history: default is the newest 100, ascending by seq', async () => {
  const msgs = await page('');
  msgs.forEach((m) => assertMessage(m));
  assertSeqs(msgs, N - 99, N, 'default');
});

test('history: limit, before, after', async () => {
  assertSeqs(await page('?limit=10'), N - 9, N, 'limit=10');
  assertSeqs(await page('?limit=1'), N, N, 'limit=1');
  assertSeqs(await page('?before=100&limit=10'), 90, 99, 'before=100&limit=10');
  assertSeqs(await page('?before=100'), 1, 99, 'before=100 (default limit 100, only 99 below)');
  assertSeqs(await page('?before=300'), 200, 299, 'before=300');
  assertSeqs(await page('?before=5&limit=10'), 1, 4, 'before=5&limit=10');
  assertSeqs(await page('?before=1'), 1, 0, 'before=1');
  assertSeqs(await page(`?before=${N + 1}&limit=3`), N - 2, N, 'before past the end');
  assertSeqs(await page('?after=0&limit=10'), 1, 10, 'after=0&limit=10');
  assertSeqs(await page('?after=0'), 1, 100, 'after=0 (default limit 100)');
  assertSeqs(await page('?after=240&limit=10'), 241, 250, 'after=240&limit=10');
  assertSeqs(await page(`?after=${N - 10}`), N - 9, N, 'after near the end');
  assertSeqs(await page(`?after=${N}`), 1, 0, 'after=last');
});

test('history: limit is capped at 500', async () => {
  assertSeqs(await page('?limit=500'), N - 499, N, 'limit=500');
  assertSeqs(await page('?limit=100000'), N - 499, N, 'limit=100000 capped to 500');
  assertSeqs(await page('?after=0&limit=501'), 1, 500, 'after=0&limit=501 capped to 500');
  assertSeqs(await page(`?before=${N + 1}&limit=1000`), N - 499, N, 'before with limit=1000 capped to 500');
});

test('history: both participants read the same pages; an outsider gets 404', async () => {
  assert.deepEqual(await page('?after=100&limit=50', b.token), await page('?after=100&limit=50', a.token));
  assertError(await srv.api('GET', `/api/messages/chat/${chat._id}?after=0`, c.token), 404, 'Chat not found');
});

test('sync: messages above afterSeq ascending, hasMore, limit default 100 and capped at 500', async () => {
  const s = await srv.connect(b.token);
  const sync = async (payload) => {
    const ack = await emitWithAck(s, 'sync', payload);
    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.ok(Array.isArray(ack.messages));
    assert.equal(typeof ack.hasMore, 'boolean');
    return ack;
  };
  let r = await sync({ chatId: chat._id, afterSeq: 0 });
  assertSeqs(r.messages, 1, 100, 'afterSeq=0 default limit');
  assert.equal(r.hasMore, true);
  r = await sync({ chatId: chat._id, afterSeq: 500, limit: 100 });
  assertSeqs(r.messages, 501, N, 'afterSeq=500');
  assert.equal(r.hasMore, false);
  r = await sync({ chatId: chat._id, afterSeq: 400, limit: 110 });
  assertSeqs(r.messages, 401, N, 'exactly to the end');
  assert.equal(r.hasMore, false, 'no more when the page ends exactly at the last message');
  r = await sync({ chatId: chat._id, afterSeq: 400, limit: 109 });
  assertSeqs(r.messages, 401, N - 1, 'one short of the end');
  assert.equal(r.hasMore, true);
  r = await sync({ chatId: chat._id, afterSeq: 0, limit: 5000 });
  assertSeqs(r.messages, 1, 500, 'limit capped at 500');
  assert.equal(r.hasMore, true);
  r = await sync({ chatId: chat._id, afterSeq: N });
  assertSeqs(r.messages, 1, 0, 'nothing above the last');
  assert.equal(r.hasMore, false);
  // Catching up page by page yields everything once.
  const all = [];
  let after = 0;
  for (;;) {
    r = await sync({ chatId: chat._id, afterSeq: after, limit: 200 });
    all.push(...r.messages);
    if (!r.hasMore) break;
    after = r.messages[r.messages.length - 1].seq;
  }
  assertSeqs(all, 1, N, 'paged sync');
});

test('sync: an outsider or an unknown chat is refused with "Chat not found"', async () => {
  const s = await srv.connect(c.token);
  await assertRefused(s, await emitWithAck(s, 'sync', { chatId: chat._id, afterSeq: 0 }), 'Chat not found');
  await assertRefused(s, await emitWithAck(s, 'sync', { chatId: 'nosuchchat000000000000', afterSeq: 0 }), 'Chat not found');
});
