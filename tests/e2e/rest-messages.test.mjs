// REST: POST /api/messages/chat/:chatId (shape, validation, delivery), outsiders.
import { test } from 'node:test';
import {
  assert, useServer, assertMessage, assertError, got, quiet, waitFor, TIME_RE,
} from './harness.mjs';

let a, b, c, chat;
const srv = useServer({}, async (s) => {
  [a, b, c] = await Promise.all([
    s.register('Rest Alice', 'rest.alice@example.com'),
    s.register('Rest Bob', 'rest.bob@example.com'),
    s.register('Rest Carol', 'rest.carol@example.com'),
  ]);
  chat = await s.chat(a, b);
});

test('POST message: 201 Message shape, seq, clientMsgId, chat as a plain id, public sender', async () => {
  const r = await srv.api('POST', `/api/messages/chat/${chat._id}`, a.token, { text: 'hello over rest' });
  assert.equal(r.status, 201, r.text);
  const m = r.body;
  assertMessage(m);
  assert.equal(m.chat, chat._id);
  // A public user's email is shown to nobody (docs/protocol.md, "Privacy").
  assert.deepEqual(m.sender, { _id: a.user._id, name: a.user.name, email: '', avatar: a.user.avatar });
  assert.equal(m.text, 'hello over rest');
  assert.strictEqual(m.clientMsgId, null, 'clientMsgId is null when absent');
  assert.match(m.createdAt, TIME_RE);
  assert.match(m.updatedAt, TIME_RE);
  const r2 = await srv.api('POST', `/api/messages/chat/${chat._id}`, b.token, { text: 'reply', clientMsgId: 'rest-c-1' });
  assert.equal(r2.status, 201);
  assert.equal(r2.body.clientMsgId, 'rest-c-1');
  assert.equal(r2.body.seq, m.seq + 1, 'seq follows');
  const hist = await srv.history(a.token, chat._id);
  const tail = hist.slice(-2);
  assert.deepEqual(tail, [m, r2.body], 'history returns the same objects');
});

test('POST message: text is stored trimmed', async () => {
  const m = await srv.post(a, chat._id, ' \n\t  padded text \t\n ');
  assert.equal(m.text, 'padded text');
  const inner = await srv.post(a, chat._id, '  keeps  inner   space  ');
  assert.equal(inner.text, 'keeps  inner   space');
});

test('POST message: control characters other than newline and tab are dropped; invisible-only text is empty', async () => {
  const r = await srv.api('POST', `/api/messages/chat/${chat._id}`, a.token, { text: 'a\u0000b\u001b[2J\tc\nd' });
  assert.equal(r.status, 201, r.text);
  assert.equal(r.body.text, 'ab[2J\tc\nd');
  assertError(await srv.api('POST', `/api/messages/chat/${chat._id}`, a.token, { text: '\u200b\u200d\ufeff \u0000' }), 400, 'Message is empty');
});

test('POST message: delivered over sockets exactly once to every socket of both participants', async () => {
  const sa1 = await srv.connect(a.token);
  const sa2 = await srv.connect(a.token);
  const sb1 = await srv.connect(b.token);
  const sb2 = await srv.connect(b.token);
  const sc = await srv.connect(c.token);
  const ack = await sb1.timeout(5000).emitWithAck('join-chat', chat._id);
  assert.equal(ack.ok, true);
  const m = await srv.post(a, chat._id, 'fan out via rest', 'rest-fanout-1');
  const socks = [sa1, sa2, sb1, sb2];
  await waitFor(() => socks.every((s) => got(s, 'new-message').some((x) => x._id === m._id)), 3000, 'new-message on all 4 sockets');
  await quiet();
  for (const s of socks) {
    const mine = got(s, 'new-message').filter((x) => x._id === m._id);
    assert.equal(mine.length, 1, 'exactly once per socket');
    assert.deepEqual(mine[0], m, 'the delivered message equals the 201 body');
  }
  assert.equal(got(sc, 'new-message').length, 0, 'an outsider gets nothing');
});

test('POST message: 400 "Message is empty" / "Message too long"; 4000 multi-byte chars accepted', async () => {
  for (const text of ['', '   ', '\n\t ']) {
    assertError(await srv.api('POST', `/api/messages/chat/${chat._id}`, a.token, { text }), 400, 'Message is empty');
  }
  assertError(await srv.api('POST', `/api/messages/chat/${chat._id}`, a.token, { text: 'a'.repeat(4001) }), 400, 'Message too long');
  assertError(await srv.api('POST', `/api/messages/chat/${chat._id}`, a.token, { text: '😀'.repeat(4001) }), 400, 'Message too long');
  // The limit counts Unicode scalar values, after trimming.
  for (const text of ['a'.repeat(4000), 'é'.repeat(4000), '😀'.repeat(4000), `   ${'b'.repeat(4000)}   `]) {
    const r = await srv.api('POST', `/api/messages/chat/${chat._id}`, a.token, { text });
    assert.equal(r.status, 201, `${[...text].length} scalars of ${text.trim()[0]}: ${r.status} ${r.text.slice(0, 200)}`);
    assert.equal(r.body.text, text.trim());
    assert.equal([...r.body.text].length, 4000);
  }
});

test('POST message: 400 "Invalid payload" for a text that is not a string or a bad clientMsgId', async () => {
  const bad = [
    ['text missing', {}],
    ['text a number', { text: 42 }],
    ['text null', { text: null }],
    ['text an object', { text: { a: 1 } }],
    ['clientMsgId 65 chars', { text: 'ok', clientMsgId: 'x'.repeat(65) }],
    ['clientMsgId a number', { text: 'ok', clientMsgId: 7 }],
  ];
  const before = (await srv.history(a.token, chat._id)).length;
  for (const [what, body] of bad) {
    const r = await srv.api('POST', `/api/messages/chat/${chat._id}`, a.token, body);
    assert.equal(r.status, 400, `${what}: ${r.status} ${r.text}`);
    assertError(r, 400, 'Invalid payload');
  }
  const ok = await srv.api('POST', `/api/messages/chat/${chat._id}`, a.token, { text: 'ok', clientMsgId: 'y'.repeat(64) });
  assert.equal(ok.status, 201, 'clientMsgId of 64 characters is fine');
  assert.equal((await srv.history(a.token, chat._id)).length, before + 1, 'refusals committed nothing');
});

test('POST message: same clientMsgId twice returns the original message and creates nothing', async () => {
  const sb = await srv.connect(b.token);
  const m1 = await srv.post(a, chat._id, 'once only', 'rest-idem-1');
  const r2 = await srv.api('POST', `/api/messages/chat/${chat._id}`, a.token, { text: 'once only', clientMsgId: 'rest-idem-1' });
  assert.ok(r2.status === 200 || r2.status === 201, `retry status ${r2.status}`);
  assert.equal(r2.body._id, m1._id);
  assert.equal(r2.body.seq, m1.seq);
  const hist = await srv.history(a.token, chat._id);
  assert.equal(hist.filter((m) => m.clientMsgId === 'rest-idem-1').length, 1);
  assert.equal(hist[hist.length - 1]._id, m1._id);
  await waitFor(() => got(sb, 'new-message').some((x) => x._id === m1._id), 3000);
  await quiet();
  assert.equal(got(sb, 'new-message').filter((x) => x._id === m1._id).length, 1, 'delivered once');
  // The same clientMsgId from the other participant is a different message.
  const mb = await srv.post(b, chat._id, 'mine too', 'rest-idem-1');
  assert.notEqual(mb._id, m1._id);
  assert.equal(mb.sender._id, b.user._id);
});

test('404 "Chat not found" for an outsider or an unknown chat, on history and on POST', async () => {
  const before = (await srv.history(a.token, chat._id)).length;
  for (const id of [chat._id, 'nosuchchat000000000000']) {
    assertError(await srv.api('GET', `/api/messages/chat/${id}`, c.token), 404, 'Chat not found');
    assertError(await srv.api('GET', `/api/messages/chat/${id}?after=0&limit=10`, c.token), 404, 'Chat not found');
    assertError(await srv.api('POST', `/api/messages/chat/${id}`, c.token, { text: 'let me in' }), 404, 'Chat not found');
  }
  assertError(await srv.api('GET', '/api/messages/chat/nosuchchat000000000000', a.token), 404, 'Chat not found');
  assertError(await srv.api('POST', '/api/messages/chat/nosuchchat000000000000', a.token, { text: 'x' }), 404, 'Chat not found');
  assert.equal((await srv.history(a.token, chat._id)).length, before, 'the outsider wrote nothing');
  const list = await srv.api('GET', '/api/chats', c.token);
  assert.deepEqual(list.body, []);
});
