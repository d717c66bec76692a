// send-message rate limiting with the DEFAULT limits: 10 per second per user, bursts of 30.
import { test } from 'node:test';
import { assert, useServer, got, waitFor, emitWithAck, assertError, sleep } from './harness.mjs';

let a, b, chat;
// No raised limits here: the server runs with its defaults.
const srv = useServer({ defaultLimits: true }, async (s) => {
  a = await s.register('Rate Alice', 'rate.alice@example.com');
  b = await s.register('Rate Bob', 'rate.bob@example.com');
  chat = await s.chat(a, b);
});

test('a burst of 40 sends: about 30 accepted, the rest refused with "Rate limited"', async () => {
  const a1 = await srv.connect(a.token);
  const b1 = await srv.connect(b.token);
  const t0 = Date.now();
  const acks = await Promise.all(Array.from({ length: 40 }, (_, i) => emitWithAck(a1, 'send-message', { chatId: chat._id, text: `burst ${i}`, clientMsgId: `burst-${i}` }, 10000)));
  const elapsed = (Date.now() - t0) / 1000;
  // Straight away, while the bucket is empty: REST sends count against the same per-user limit,
  // and a retry of an already committed clientMsgId is not a new send.
  const rest = await Promise.all(Array.from({ length: 5 }, (_, i) => srv.api('POST', `/api/messages/chat/${chat._id}`, a.token, { text: `rest ${i}` })));
  const ok = acks.filter((x) => x.ok);
  const first = ok[0].message;
  const retry = await emitWithAck(a1, 'send-message', { chatId: chat._id, text: first.text, clientMsgId: first.clientMsgId });

  const limited = acks.filter((x) => !x.ok);
  for (const x of limited) assert.equal(x.error, 'Rate limited', JSON.stringify(x));
  assert.ok(limited.length >= 1, 'at least one send is rate limited');
  // Burst 30, plus whatever refilled at 10/s while the burst was being answered.
  const allowance = 30 + Math.ceil(elapsed * 10) + 1;
  assert.ok(ok.length >= 25 && ok.length <= allowance, `${ok.length} accepted in ${elapsed}s (allowance ${allowance})`);
  await waitFor(() => got(a1, 'socket-error').filter((e) => e.message === 'Rate limited').length === limited.length, 3000, 'one socket-error per refusal');

  const restOk = rest.filter((r) => r.status === 201).length;
  assert.ok(restOk <= 2, `${restOk} of 5 REST sends accepted right after the burst`);
  for (const r of rest.filter((x) => x.status !== 201)) assertError(r, 429, 'Rate limited');

  assert.equal(retry.ok, true, `idempotent retry while limited: ${JSON.stringify(retry)}`);
  assert.equal(retry.message._id, first._id);
  assert.equal(retry.message.seq, first.seq);

  const hist = await srv.history(a.token, chat._id);
  assert.equal(hist.length, ok.length + restOk, 'only accepted sends were committed');
  assert.deepEqual(hist.map((m) => m.seq), hist.map((_, i) => i + 1), 'seq has no gaps');
  await waitFor(() => got(b1, 'new-message').length === ok.length + restOk, 3000, 'accepted sends delivered');

  // Limits are per user: B is unaffected.
  const rb = await emitWithAck(b1, 'send-message', { chatId: chat._id, text: 'bob is fine' });
  assert.equal(rb.ok, true, JSON.stringify(rb));

  // Tokens refill at 10/s.
  await sleep(600);
  const later = await emitWithAck(a1, 'send-message', { chatId: chat._id, text: 'after refill' });
  assert.equal(later.ok, true, JSON.stringify(later));
});

test('after a burst of 30, a steady 8 per second is never limited', async () => {
  const c = await srv.register('Steady', 'steady@example.com');
  const chat2 = await srv.chat(c, b);
  const s = await srv.connect(c.token);
  // Spend the burst (30 sends, all accepted), then 16 sends spaced 125 ms apart: under 10/s.
  const drain = await Promise.all(Array.from({ length: 30 }, (_, i) => emitWithAck(s, 'send-message', { chatId: chat2._id, text: `burst ${i}` })));
  assert.equal(drain.filter((x) => x.ok).length, 30, 'a burst of 30 is allowed');
  await sleep(150);
  for (let i = 0; i < 16; i++) {
    const ack = await emitWithAck(s, 'send-message', { chatId: chat2._id, text: `steady ${i}` });
    assert.equal(ack.ok, true, `send ${i}: ${JSON.stringify(ack)}`);
    await sleep(125);
  }
});

test('sustained overload: about 10 per second get through after the burst', async () => {
  const d = await srv.register('Flood', 'flood@example.com');
  const chat3 = await srv.chat(d, b);
  const s = await srv.connect(d.token);
  // Drain the burst.
  await Promise.all(Array.from({ length: 35 }, (_, i) => emitWithAck(s, 'send-message', { chatId: chat3._id, text: `drain ${i}` })));
  // Now 1.5 s of a send every 20 ms (50/s offered).
  const t0 = Date.now();
  const pending = [];
  while (Date.now() - t0 < 1500) {
    pending.push(emitWithAck(s, 'send-message', { chatId: chat3._id, text: 'flood' }));
    await sleep(20);
  }
  const acks = await Promise.all(pending);
  const elapsed = (Date.now() - t0) / 1000;
  const ok = acks.filter((x) => x.ok).length;
  assert.ok(acks.filter((x) => !x.ok).every((x) => x.error === 'Rate limited'));
  assert.ok(ok >= Math.floor(elapsed * 10) - 5 && ok <= Math.ceil(elapsed * 10) + 3, `${ok} accepted of ${acks.length} in ${elapsed}s at 10/s`);
});
