// Socket.IO messaging: exactly-once fan-out, membership checks, join/leave, typing, idempotent
// retries, refusals.
import { test } from 'node:test';
import {
  assert, useServer, got, waitFor, quiet, emitWithAck, assertMessage, assertRefused, sleep, disconnected,
} from './harness.mjs';

let a, b, c, chat, chatAC;
const srv = useServer({}, async (s) => {
  [a, b, c] = await Promise.all([
    s.register('Msg Alice', 'msg.alice@example.com'),
    s.register('Msg Bob', 'msg.bob@example.com'),
    s.register('Msg Carol', 'msg.carol@example.com'),
  ]);
  chat = await s.chat(a, b);
  chatAC = await s.chat(a, c);
});

const newMessages = (s, id) => got(s, 'new-message').filter((m) => m._id === id);

test('send-message: ack {ok:true, message} and new-message exactly once on every socket of both users', async () => {
  const a1 = await srv.connect(a.token); // joined the chat room
  const a2 = await srv.connect(a.token); // never joined
  const b1 = await srv.connect(b.token); // joined
  const b2 = await srv.connect(b.token); // never joined
  assert.deepEqual(await emitWithAck(a1, 'join-chat', chat._id), { ok: true });
  assert.deepEqual(await emitWithAck(b1, 'join-chat', { chatId: chat._id }), { ok: true });
  const all = [a1, a2, b1, b2];
  const sent = [];
  for (let i = 0; i < 5; i++) {
    const from = [a1, a2, b1, b2][i % 4];
    const ack = await emitWithAck(from, 'send-message', { chatId: chat._id, text: `fan ${i}`, clientMsgId: `fan-${i}` });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    assertMessage(ack.message);
    assert.equal(ack.message.chat, chat._id);
    assert.equal(ack.message.text, `fan ${i}`);
    assert.equal(ack.message.clientMsgId, `fan-${i}`);
    assert.equal(ack.message.sender._id, (from === a1 || from === a2 ? a : b).user._id);
    if (sent.length) assert.equal(ack.message.seq, sent[sent.length - 1].seq + 1, 'seq increments by one');
    sent.push(ack.message);
  }
  await waitFor(() => all.every((s) => sent.every((m) => newMessages(s, m._id).length >= 1)), 3000, 'every message on every socket');
  await quiet();
  for (const s of all) {
    for (const m of sent) {
      const seen = newMessages(s, m._id);
      assert.equal(seen.length, 1, `socket ${all.indexOf(s)} got message ${m.text} ${seen.length} times`);
      assert.deepEqual(seen[0], m, 'new-message equals the acked message');
    }
    assert.equal(got(s, 'new-message').length, sent.length, 'nothing else delivered');
  }
});

test('send-message without clientMsgId: clientMsgId is null', async () => {
  const a1 = await srv.connect(a.token);
  const ack = await emitWithAck(a1, 'send-message', { chatId: chat._id, text: '  no client id  ' });
  assert.equal(ack.ok, true);
  assert.strictEqual(ack.message.clientMsgId, null);
  assert.equal(ack.message.text, 'no client id', 'text stored trimmed');
});

test('join-chat accepts "<chatId>" and {chatId}; leave-chat; membership-only fan-out stays exactly once', async () => {
  const a1 = await srv.connect(a.token);
  const b1 = await srv.connect(b.token);
  assert.deepEqual(await emitWithAck(b1, 'join-chat', chat._id), { ok: true });
  assert.deepEqual(await emitWithAck(b1, 'join-chat', { chatId: chat._id }), { ok: true }, 'joining twice is fine');
  const m1 = (await emitWithAck(a1, 'send-message', { chatId: chat._id, text: 'while joined' })).message;
  await waitFor(() => newMessages(b1, m1._id).length === 1, 3000);
  assert.deepEqual(await emitWithAck(b1, 'leave-chat', chat._id), { ok: true });
  assert.deepEqual(await emitWithAck(b1, 'leave-chat', { chatId: chat._id }), { ok: true }, 'leaving twice is fine');
  // A participant still gets the chat's messages through their personal room after leaving.
  const m2 = (await emitWithAck(a1, 'send-message', { chatId: chat._id, text: 'after leave' })).message;
  await waitFor(() => newMessages(b1, m2._id).length === 1, 3000);
  await quiet();
  assert.equal(newMessages(b1, m1._id).length, 1);
  assert.equal(newMessages(b1, m2._id).length, 1);
  assert.equal(got(b1, 'socket-error').length, 0);
});

test('outsider: join-chat refused, send-message refused, typing dropped, nothing delivered', async () => {
  const a1 = await srv.connect(a.token);
  const b1 = await srv.connect(b.token);
  const c1 = await srv.connect(c.token); // attempts to join
  const c2 = await srv.connect(c.token); // just listens
  assert.deepEqual(await emitWithAck(b1, 'join-chat', chat._id), { ok: true });
  await assertRefused(c1, await emitWithAck(c1, 'join-chat', chat._id), 'Chat not found');
  await assertRefused(c1, await emitWithAck(c1, 'join-chat', { chatId: chat._id }), 'Chat not found');
  await assertRefused(c1, await emitWithAck(c1, 'join-chat', 'nosuchchat000000000000'), 'Chat not found');
  const before = (await srv.history(a.token, chat._id)).length;
  await assertRefused(c1, await emitWithAck(c1, 'send-message', { chatId: chat._id, text: 'intruding' }), 'Chat not found');
  await assertRefused(c1, await emitWithAck(c1, 'send-message', { chatId: 'nosuchchat000000000000', text: 'x' }), 'Chat not found');
  c1.emit('typing', { chatId: chat._id, isTyping: true });
  c1.emit('typing', { chatId: 'nosuchchat000000000000', isTyping: true });
  const m = (await emitWithAck(a1, 'send-message', { chatId: chat._id, text: 'private' })).message;
  a1.emit('typing', { chatId: chat._id, isTyping: true });
  await waitFor(() => newMessages(b1, m._id).length === 1 && got(b1, 'typing').length >= 1, 3000, 'B gets the message and A\'s typing');
  await quiet();
  for (const s of [c1, c2]) {
    assert.equal(got(s, 'new-message').length, 0, 'the outsider receives none of the chat\'s messages');
    assert.equal(got(s, 'typing').length, 0, 'the outsider receives no typing');
  }
  assert.ok(got(b1, 'typing').every((t) => t.userId === a.user._id), 'B gets nothing from C');
  assert.equal(got(a1, 'typing').length, 0, 'A gets nothing from C');
  assert.equal((await srv.history(a.token, chat._id)).length, before + 1, 'the outsider wrote nothing');
  // The refused join joined nothing: later messages don't reach C either.
  const m2 = (await emitWithAck(b1, 'send-message', { chatId: chat._id, text: 'still private' })).message;
  await waitFor(() => newMessages(a1, m2._id).length === 1, 3000);
  await quiet();
  assert.equal(got(c1, 'new-message').length, 0);
  // A stops typing here: otherwise the server clears it when a1 closes, and that false could
  // reach B's sockets of the next test.
  a1.emit('typing', { chatId: chat._id, isTyping: false });
  await waitFor(() => got(b1, 'typing').some((t) => t.isTyping === false), 3000, 'A\'s typing false');
});

test('typing: {userId, chatId, isTyping} once to every socket of the other participant, never to the sender', async () => {
  const a1 = await srv.connect(a.token);
  const a2 = await srv.connect(a.token);
  const b1 = await srv.connect(b.token);
  const b2 = await srv.connect(b.token);
  const c1 = await srv.connect(c.token); // A's partner in another chat
  await emitWithAck(a1, 'join-chat', chat._id);
  await emitWithAck(b1, 'join-chat', chat._id);
  a1.emit('typing', { chatId: chat._id, isTyping: true });
  await waitFor(() => got(b1, 'typing').length >= 1 && got(b2, 'typing').length >= 1, 3000, 'typing on both of B\'s sockets');
  await quiet();
  for (const s of [b1, b2]) assert.deepEqual(got(s, 'typing'), [{ userId: a.user._id, chatId: chat._id, isTyping: true }]);
  for (const s of [a1, a2, c1]) assert.equal(got(s, 'typing').length, 0, 'not to the sender\'s sockets nor to others');
  a1.emit('typing', { chatId: chat._id, isTyping: false });
  await waitFor(() => got(b1, 'typing').length >= 2 && got(b2, 'typing').length >= 2, 3000, 'isTyping false');
  await quiet();
  for (const s of [b1, b2]) assert.deepEqual(got(s, 'typing')[1], { userId: a.user._id, chatId: chat._id, isTyping: false });
  for (const s of [b1, b2]) assert.equal(got(s, 'typing').length, 2);
  for (const s of [a1, a2, c1]) assert.equal(got(s, 'typing').length, 0);
  // And the other way.
  b2.emit('typing', { chatId: chat._id, isTyping: true });
  await waitFor(() => got(a1, 'typing').length >= 1 && got(a2, 'typing').length >= 1, 3000);
  await quiet();
  for (const s of [a1, a2]) assert.deepEqual(got(s, 'typing'), [{ userId: b.user._id, chatId: chat._id, isTyping: true }]);
  assert.equal(got(b1, 'typing').length, 2);
  assert.equal(got(b2, 'typing').length, 2);
  assert.equal(got(c1, 'typing').length, 0);
});

test('typing: at most 5 true per second per socket', async () => {
  const a1 = await srv.connect(a.token);
  const a2 = await srv.connect(a.token);
  const b1 = await srv.connect(b.token);
  // The limit applies to isTyping true only (a false is never dropped; order.test.mjs).
  for (let i = 0; i < 20; i++) a1.emit('typing', { chatId: chat._id, isTyping: true });
  await waitFor(() => got(b1, 'typing').length >= 1, 3000);
  await quiet();
  const n = got(b1, 'typing').length;
  assert.ok(n >= 1 && n <= 6, `B received ${n} of a 20-event burst (limit 5/s per socket)`);
  // The limit is per socket: another tab of the same user still gets through.
  a2.emit('typing', { chatId: chat._id, isTyping: true });
  await waitFor(() => got(b1, 'typing').length === n + 1, 3000, 'typing from a second socket');
  // And it recovers after a second.
  await sleep(1100);
  a1.emit('typing', { chatId: chat._id, isTyping: true });
  await waitFor(() => got(b1, 'typing').length === n + 2, 3000, 'typing after the window');
});

test('idempotent retry: the same clientMsgId returns the same _id and seq, one message, one delivery', async () => {
  const a1 = await srv.connect(a.token);
  const a2 = await srv.connect(a.token);
  const b1 = await srv.connect(b.token);
  const before = (await srv.history(a.token, chat._id)).length;
  const p = { chatId: chat._id, text: 'exactly once please', clientMsgId: 'retry-1' };
  const r1 = await emitWithAck(a1, 'send-message', p);
  const r2 = await emitWithAck(a1, 'send-message', p);
  const r3 = await emitWithAck(a2, 'send-message', p); // another tab of the same user
  for (const r of [r1, r2, r3]) assert.equal(r.ok, true, JSON.stringify(r));
  assert.equal(r2.message._id, r1.message._id);
  assert.equal(r2.message.seq, r1.message.seq);
  assert.equal(r3.message._id, r1.message._id);
  assert.deepEqual(r2.message, r1.message);
  // Concurrent duplicates too.
  const q = { chatId: chat._id, text: 'racing', clientMsgId: 'retry-2' };
  const rs = await Promise.all(Array.from({ length: 6 }, (_, i) => emitWithAck(i % 2 ? a1 : a2, 'send-message', q)));
  assert.equal(new Set(rs.map((r) => r.ok && r.message._id)).size, 1, 'one message for six concurrent duplicates');
  const hist = await srv.history(a.token, chat._id);
  assert.equal(hist.length, before + 2, 'two messages created');
  assert.equal(hist.filter((m) => m.clientMsgId === 'retry-1').length, 1);
  assert.equal(hist.filter((m) => m.clientMsgId === 'retry-2').length, 1);
  await waitFor(() => newMessages(b1, r1.message._id).length >= 1 && newMessages(b1, rs[0].message._id).length >= 1, 3000);
  await quiet();
  for (const s of [a1, a2, b1]) {
    assert.equal(newMessages(s, r1.message._id).length, 1, 'retry delivered once');
    assert.equal(newMessages(s, rs[0].message._id).length, 1, 'concurrent duplicates delivered once');
  }
  // Same clientMsgId from the other user, or in another chat, is a new message.
  const rb = await emitWithAck(b1, 'send-message', p);
  assert.equal(rb.ok, true);
  assert.notEqual(rb.message._id, r1.message._id);
  const rc = await emitWithAck(a1, 'send-message', { ...p, chatId: chatAC._id });
  assert.equal(rc.ok, true);
  assert.notEqual(rc.message._id, r1.message._id);
  assert.equal(rc.message.chat, chatAC._id);
  // REST sees the socket's clientMsgId too.
  const rr = await srv.api('POST', `/api/messages/chat/${chat._id}`, a.token, { text: 'exactly once please', clientMsgId: 'retry-1' });
  assert.equal(rr.body._id, r1.message._id);
});

test('send-message refusals: Invalid payload, Message is empty, Message too long, Chat not found', async () => {
  const a1 = await srv.connect(a.token);
  const b1 = await srv.connect(b.token);
  const before = (await srv.history(a.token, chat._id)).length;
  const cases = [
    ['Invalid payload', 42],
    ['Invalid payload', 'just a string'],
    ['Invalid payload', null],
    ['Invalid payload', { text: 'no chat id' }],
    ['Invalid payload', { chatId: 17, text: 'chat id not a string' }],
    ['Invalid payload', { chatId: chat._id }],
    ['Invalid payload', { chatId: chat._id, text: 12 }],
    ['Invalid payload', { chatId: chat._id, text: ['a'] }],
    ['Invalid payload', { chatId: chat._id, text: 'ok', clientMsgId: 'x'.repeat(65) }],
    ['Invalid payload', { chatId: chat._id, text: 'ok', clientMsgId: 5 }],
    ['Message is empty', { chatId: chat._id, text: '' }],
    ['Message is empty', { chatId: chat._id, text: ' \n\t ' }],
    ['Message too long', { chatId: chat._id, text: 'a'.repeat(4001) }],
    ['Message too long', { chatId: chat._id, text: '😀'.repeat(4001) }],
    ['Chat not found', { chatId: 'nosuchchat000000000000', text: 'hello' }],
  ];
  for (const [message, payload] of cases) {
    const ack = await emitWithAck(a1, 'send-message', payload);
    await assertRefused(a1, ack, message);
  }
  assert.equal(got(a1, 'socket-error').length, cases.length, 'one socket-error per refusal');
  assert.equal(got(b1, 'socket-error').length, 0, 'refusals go to the sending socket only');
  // Boundaries that pass: 4000 scalars of multi-byte text, a 64-char clientMsgId.
  for (const text of ['é'.repeat(4000), '😀'.repeat(4000), `  ${'z'.repeat(4000)}  `]) {
    const ack = await emitWithAck(a1, 'send-message', { chatId: chat._id, text });
    assert.equal(ack.ok, true, `${text.trim()[0]} x4000: ${JSON.stringify(ack).slice(0, 200)}`);
    assert.equal(ack.message.text, text.trim());
  }
  const ok64 = await emitWithAck(a1, 'send-message', { chatId: chat._id, text: 'ok', clientMsgId: 'k'.repeat(64) });
  assert.equal(ok64.ok, true);
  assert.equal((await srv.history(a.token, chat._id)).length, before + 4, 'no refusal committed anything');
  await quiet(100);
  assert.equal(got(a1, 'socket-error').length, cases.length, 'accepted sends emit no socket-error');
});

test('a refusal without an ack callback is still reported on socket-error', async () => {
  const a1 = await srv.connect(a.token);
  a1.emit('send-message', { chatId: chat._id, text: '   ' });
  await waitFor(() => got(a1, 'socket-error').some((e) => e.message === 'Message is empty'), 3000, 'socket-error');
  a1.emit('join-chat', 'nosuchchat000000000000');
  await waitFor(() => got(a1, 'socket-error').some((e) => e.message === 'Chat not found'), 3000, 'socket-error');
  // And a send without an ack is still delivered.
  const b1 = await srv.connect(b.token);
  a1.emit('send-message', { chatId: chat._id, text: 'fire and forget' });
  await waitFor(() => got(b1, 'new-message').some((m) => m.text === 'fire and forget'), 3000);
});

test('a Socket.IO message over 64 KiB commits nothing and the server keeps serving', async () => {
  const a1 = await srv.connect(a.token);
  const a2 = await srv.connect(a.token);
  const before = (await srv.history(a.token, chat._id)).length;
  const gone = disconnected(a1, 5000).then(() => 'disconnected', () => 'still connected');
  const acked = emitWithAck(a1, 'send-message', { chatId: chat._id, text: 'x'.repeat(80 * 1024) }, 3000).then((r) => r, () => 'no ack');
  const outcome = await Promise.race([gone, acked]);
  if (outcome && typeof outcome === 'object') assert.equal(outcome.ok, false, 'an oversized message is refused');
  else assert.equal(outcome, 'disconnected', 'either refused or the connection is closed');
  assert.equal((await srv.history(a.token, chat._id)).length, before, 'nothing committed');
  const ack = await emitWithAck(a2, 'send-message', { chatId: chat._id, text: 'still alive' });
  assert.equal(ack.ok, true);
});
