// Order: what one socket sends is handled in the order it was sent, every socket receives a
// chat's messages in ascending seq, and typing never sticks (docs/protocol.md, "Ordering").
// Every test has its own users and chat, so no event of one test can reach another; failures
// name how far the order was off (descents, misplaced positions, the first out-of-order run).
import { test } from 'node:test';
import { assert, useServer, got, waitFor, quiet, emitWithAck, closeSocket } from './harness.mjs';

const srv = useServer();

/** Longest a burst may take to be acknowledged, or to reach every socket (a generous bound). */
const BURST_MS = 30000;
/** Longest the server may take to clear typing after a disconnect or leave-chat; shorter than
 * the stale bound, so that the stale clear cannot pass for it. */
const CLEAR_MS = 3000;
/** The server clears a `true` older than 5 s (TYPING_STALE_MS); the test allows up to 8 s. */
const STALE_MIN_MS = 4000;
const STALE_MAX_MS = 8000;

/** `n` fresh users named `${prefix}<i>`, the first of them in a chat with each of the others. */
async function fresh(prefix, n = 2) {
  const users = await srv.users(n, prefix);
  const chats = await Promise.all(users.slice(1).map((u) => srv.chat(users[0], u)));
  return { users, chats };
}

/** Resolves true once `predicate` holds, false if `timeoutMs` passes first. */
async function eventually(predicate, timeoutMs, what) {
  try {
    await waitFor(predicate, timeoutMs, what);
    return true;
  } catch {
    return false;
  }
}

/**
 * How far `list` is from ascending: descents (an element not above the one before it), elements
 * out of their sorted place, and the list around the first descent.
 */
function disorder(list) {
  const sorted = [...list].sort((x, y) => x - y);
  const misplaced = list.filter((x, k) => x !== sorted[k]).length;
  const descents = list.filter((x, k) => k > 0 && x <= list[k - 1]).length;
  const first = list.findIndex((x, k) => k > 0 && x <= list[k - 1]);
  const around = first < 0 ? '' : `, first at [${first}]: …${list.slice(Math.max(0, first - 4), first + 5).join(', ')}…`;
  return { descents, misplaced, text: `${descents} descents, ${misplaced} of ${list.length} out of place${around}` };
}

/**
 * Emits `n` `send-message` events from `socket` back to back, without waiting for acks, each
 * with its own clientMsgId `${tag}-<i>`. Resolves with `acks` (by emission index) and `arrival`
 * (the emission indexes in the order their acks arrived).
 */
function burst(socket, chatId, tag, n) {
  const acks = new Array(n);
  const arrival = [];
  return new Promise((resolve, reject) => {
    for (let i = 0; i < n; i++) {
      const payload = { chatId, text: `${tag} ${i}`, clientMsgId: `${tag}-${i}` };
      socket.timeout(BURST_MS).emit('send-message', payload, (err, ack) => {
        if (err) return reject(new Error(`${tag}: no ack for send ${i} within ${BURST_MS} ms`));
        acks[i] = ack;
        arrival.push(i);
        if (arrival.length === n) resolve({ acks, arrival });
      });
    }
  });
}

/**
 * What is wrong with a burst's acks: a refused send, acks out of emission order, seqs not rising
 * in emission order. Empty when all is well.
 */
function burstFaults(tag, { acks, arrival }) {
  const refused = acks.map((ack, i) => (ack.ok ? null : `${tag} send ${i}: ${JSON.stringify(ack)}`)).filter(Boolean);
  if (refused.length) return refused;
  const faults = [];
  const late = disorder(arrival);
  if (late.descents) faults.push(`${tag}: acks out of emission order (emission indexes by arrival): ${late.text}`);
  const seqs = disorder(acks.map((ack) => ack.message.seq));
  if (seqs.descents) faults.push(`${tag}: seqs out of emission order (seqs by emission index): ${seqs.text}`);
  return faults;
}

const seqsOf = (s, chatId) => got(s, 'new-message').filter((m) => m.chat === chatId).map((m) => m.seq);

/**
 * What is wrong with what each socket received of the chat, given the `expected` seqs: one
 * missing, one received twice, one received after a higher one. Empty when all is well.
 */
function receivedFaults(sockets, chatId, expected) {
  const faults = [];
  for (const [name, s] of Object.entries(sockets)) {
    const seqs = seqsOf(s, chatId);
    const seen = new Set(seqs);
    const missing = expected.filter((q) => !seen.has(q)).length;
    const twice = seqs.length - seen.size;
    const order = disorder(seqs);
    if (missing || twice || order.descents || seen.size !== expected.length) {
      faults.push(`${name} received ${seqs.length}, ${missing} missing, ${twice} twice, ${order.text}`);
    }
  }
  return faults;
}

/** Fails with every fault at once, so that one run reports how far off everything was. */
function assertNoFaults(faults, what) {
  assert.equal(faults.length, 0, `${what}:\n${faults.join('\n')}`);
}

/** Waits until every socket holds at least `n` of the chat's messages, then a quiet period. */
async function deliveries(sockets, chatId, n) {
  await eventually(() => sockets.every((s) => seqsOf(s, chatId).length >= n), BURST_MS, 'every delivery');
  await quiet();
}

/**
 * The sockets of one 1:1 chat: the sender's tab in the chat room (a1) and its second tab outside
 * it (a2), the recipient's tab in the room (b1) and its second tab outside it (b2), which
 * receives through its personal room.
 */
async function fourTabs(a, b, chat) {
  const [a1, a2, b1, b2] = [await srv.connect(a.token), await srv.connect(a.token), await srv.connect(b.token), await srv.connect(b.token)];
  assert.deepEqual(await emitWithAck(a1, 'join-chat', chat._id), { ok: true });
  assert.deepEqual(await emitWithAck(b1, 'join-chat', chat._id), { ok: true });
  return { a1, a2, b1, b2 };
}

const BURST = 200;
let burstRun;

/** The 200-message burst of the first two tests, run once for both. */
function theBurst() {
  burstRun ??= (async () => {
    const { users: [a, b], chats: [chat] } = await fresh('burst');
    const tabs = await fourTabs(a, b, chat);
    const sent = await burst(tabs.a1, chat._id, 'burst', BURST);
    await deliveries(Object.values(tabs), chat._id, BURST);
    return { a, chat, tabs, sent };
  })();
  return burstRun;
}

test('a 200-message burst from one socket: acks in emission order, seqs and history in send order', async () => {
  const { a, chat, sent } = await theBurst();
  const history = await srv.history(a.token, chat._id, 500);
  assert.equal(history.length, BURST, 'every send stored once');
  assert.deepEqual(history.map((m) => m.seq), Array.from({ length: BURST }, (_, i) => i + 1), 'seqs 1..200');
  const stored = history.map((m) => Number(m.clientMsgId.slice('burst-'.length)));
  const faults = burstFaults('burst', sent);
  const order = disorder(stored);
  if (order.descents) faults.push(`history out of send order (emission indexes by seq): ${order.text}`);
  assertNoFaults(faults, 'the burst was not handled in send order');
  history.forEach((m, k) => assert.equal(m.seq, sent.acks[stored[k]].message.seq, 'history agrees with the acks'));
});

test('every socket of both users receives the burst strictly ascending, none missing, none twice', async () => {
  const { tabs, chat, sent } = await theBurst();
  const expected = sent.acks.map((ack) => ack.message.seq).sort((x, y) => x - y);
  assertNoFaults(receivedFaults(tabs, chat._id, expected), 'sockets that did not receive the chat in ascending seq');
});

test('20 back-to-back pairs from one socket: the second send always gets the higher seq and the later ack', async () => {
  const { users: [a, b], chats: [chat] } = await fresh('pairs');
  const a1 = await srv.connect(a.token);
  const swapped = [];
  for (let round = 0; round < 20; round++) {
    const { acks, arrival } = await burst(a1, chat._id, `pair${round}`, 2);
    acks.forEach((ack) => assert.equal(ack.ok, true, JSON.stringify(ack)));
    const [first, second] = acks.map((ack) => ack.message.seq);
    if (second <= first || arrival[0] !== 0) swapped.push(`round ${round}: seqs ${first}, ${second}, acks ${arrival}`);
  }
  assertNoFaults(swapped, `${swapped.length} of 20 pairs swapped`);
  assert.equal((await srv.history(b.token, chat._id)).length, 40);
});

test('two sockets bursting into one chat at once: every socket receives the chat strictly ascending', async () => {
  const { users: [a, b], chats: [chat] } = await fresh('two');
  const tabs = await fourTabs(a, b, chat);
  const [fromA, fromB] = await Promise.all([burst(tabs.a1, chat._id, 'twoA', 100), burst(tabs.b1, chat._id, 'twoB', 100)]);
  await deliveries(Object.values(tabs), chat._id, 200);
  const faults = [
    ...burstFaults('twoA', fromA),
    ...burstFaults('twoB', fromB),
    ...receivedFaults(tabs, chat._id, Array.from({ length: 200 }, (_, i) => i + 1)),
  ];
  assertNoFaults(faults, 'the two bursts were not handled or received in order');
});

const typingOf = (s, userId, chatId) => got(s, 'typing').filter((t) => t.userId === userId && t.chatId === chatId).map((t) => t.isTyping);

test('typing: 10 true then false within 100 ms, the other side sees false last', async () => {
  const { users: [a, b], chats: [chat] } = await fresh('keys');
  const a1 = await srv.connect(a.token);
  const b1 = await srv.connect(b.token); // in the chat room
  const b2 = await srv.connect(b.token); // only in its personal room
  assert.deepEqual(await emitWithAck(b1, 'join-chat', chat._id), { ok: true });
  for (let i = 0; i < 10; i++) a1.emit('typing', { chatId: chat._id, isTyping: true });
  a1.emit('typing', { chatId: chat._id, isTyping: false });
  const seen = () => [b1, b2].map((s) => typingOf(s, a.user._id, chat._id));
  await eventually(() => seen().every((events) => events.includes(false)), CLEAR_MS, 'false on both tabs');
  await quiet();
  // The first true always passes the rate limit, and the false may not overtake it.
  for (const events of seen()) {
    const ok = events[0] === true && events[events.length - 1] === false;
    assert.ok(ok, `B must see a true first and the false last; received [${events}]`);
  }
});

test('typing: a true/false pair from each of 40 sockets, every recipient sees false last', async () => {
  // 40 senders, one socket each: one user may not type from 40 sockets at once (32 sockets and
  // 10 typing trues a second per user).
  const users = await srv.users(80, 'pair');
  const pairs = Array.from({ length: 40 }, (_, i) => [users[2 * i], users[2 * i + 1]]);
  const chats = await Promise.all(pairs.map(([a, b]) => srv.chat(a, b)));
  const senders = await Promise.all(pairs.map(([a]) => srv.connect(a.token)));
  const recipients = await Promise.all(pairs.map(([, b]) => srv.connect(b.token)));
  senders.forEach((s, i) => {
    s.emit('typing', { chatId: chats[i]._id, isTyping: true });
    s.emit('typing', { chatId: chats[i]._id, isTyping: false });
  });
  const seen = () => recipients.map((s, i) => typingOf(s, pairs[i][0].user._id, chats[i]._id));
  await eventually(() => seen().every((events) => events.length >= 2), CLEAR_MS, 'both events everywhere');
  await quiet();
  const wrong = seen().map((events, i) => ({ i, events })).filter(({ events }) => events.join() !== 'true,false');
  const show = wrong.map(({ i, events }) => `recipient ${i}: [${events}]`).join('\n');
  assert.equal(wrong.length, 0, `${wrong.length} of 40 recipients did not see true then false:\n${show}`);
});

/** A types, B (two tabs, one in the chat room) sees it; resolves when both tabs saw the true. */
async function typingStarted(prefix) {
  const { users: [a, b], chats: [chat] } = await fresh(prefix);
  const a1 = await srv.connect(a.token);
  const a2 = await srv.connect(a.token); // another tab of A stays online throughout
  const b1 = await srv.connect(b.token);
  const b2 = await srv.connect(b.token);
  assert.deepEqual(await emitWithAck(a1, 'join-chat', chat._id), { ok: true });
  assert.deepEqual(await emitWithAck(b1, 'join-chat', chat._id), { ok: true });
  a1.emit('typing', { chatId: chat._id, isTyping: true });
  await waitFor(() => [b1, b2].every((s) => typingOf(s, a.user._id, chat._id).length === 1), CLEAR_MS, 'true on both of B\'s tabs');
  return { a, chat, a1, a2, b1, b2 };
}

/** Both of B's tabs receive exactly `typing { userId: A, chatId, isTyping: false }` after the true. */
async function assertCleared(t, what, timeoutMs = CLEAR_MS) {
  const stopped = (s) => typingOf(s, t.a.user._id, t.chat._id).length >= 2;
  const cleared = await eventually(() => stopped(t.b1) && stopped(t.b2), timeoutMs, what);
  const show = [t.b1, t.b2].map((s) => `[${typingOf(s, t.a.user._id, t.chat._id)}]`).join(' and ');
  assert.ok(cleared, `no typing false within ${timeoutMs} ms of ${what}; B's tabs received ${show}`);
  await quiet();
  for (const s of [t.b1, t.b2]) {
    assert.deepEqual(got(s, 'typing'), [
      { userId: t.a.user._id, chatId: t.chat._id, isTyping: true },
      { userId: t.a.user._id, chatId: t.chat._id, isTyping: false },
    ]);
  }
  assert.equal(got(t.a2, 'typing').length, 0, 'nothing to the typing user\'s other tab');
}

test('typing: a socket that disconnects while typing is cleared for the others', async () => {
  const t = await typingStarted('gone');
  closeSocket(t.a1);
  await assertCleared(t, 'the disconnect');
});

test('typing: a socket that leaves the chat while typing is cleared for the others', async () => {
  const t = await typingStarted('left');
  assert.deepEqual(await emitWithAck(t.a1, 'leave-chat', t.chat._id), { ok: true });
  await assertCleared(t, 'leave-chat');
  assert.equal(got(t.a1, 'typing').length, 0, 'nothing to the typing socket itself');
});

test('typing: a true with no follow-up is cleared by the server after a few seconds', async () => {
  const t = await typingStarted('stale');
  const trueAt = Date.now();
  const clearedAt = new Promise((resolve) => t.b2.on('typing', (e) => { if (e.isTyping === false) resolve(Date.now()); }));
  await assertCleared(t, 'the last true', STALE_MAX_MS);
  const after = (await clearedAt) - trueAt;
  assert.ok(after >= STALE_MIN_MS, `cleared ${after} ms after the true: typing must stay on for the stale bound (5 s)`);
  assert.equal(got(t.a1, 'typing').length, 0, 'nothing to the typing socket itself');
});
