// Durability: acknowledged messages survive SIGKILL mid-stream; seq stays 1..n without gaps;
// nothing appears that was never sent; idempotency keys and tokens survive restarts.
import { test } from 'node:test';
import { assert, Server, emitWithAck, closeSocket, sleep, assertMessage } from './harness.mjs';

// Collects every attempt and every acknowledgement, and checks a history against them.
class Ledger {
  constructor(chatId, users) {
    this.chatId = chatId;
    this.users = users; // userId -> {token, user}
    this.attempted = new Map(); // clientMsgId -> { text, senderId }
    this.acked = new Map(); // clientMsgId -> message as acknowledged
  }

  check(history, what) {
    const seqs = history.map((m) => m.seq);
    for (let i = 0; i < seqs.length; i++) {
      if (seqs[i] !== i + 1) assert.fail(`${what}: seq at position ${i} is ${seqs[i]}, expected ${i + 1} (gap or duplicate)`);
    }
    assert.equal(new Set(history.map((m) => m._id)).size, history.length, `${what}: duplicate _id`);
    const byCmid = new Map();
    for (const m of history) {
      assertMessage(m, `${what}: seq ${m.seq}`);
      assert.equal(m.chat, this.chatId);
      const sent = this.attempted.get(m.clientMsgId);
      assert.ok(sent, `${what}: seq ${m.seq} (clientMsgId ${m.clientMsgId}) was never sent`);
      assert.equal(m.text, sent.text, `${what}: seq ${m.seq} text`);
      assert.equal(m.sender._id, sent.senderId, `${what}: seq ${m.seq} sender`);
      assert.ok(!byCmid.has(m.clientMsgId), `${what}: clientMsgId ${m.clientMsgId} stored twice (seq ${byCmid.get(m.clientMsgId)?.seq} and ${m.seq})`);
      byCmid.set(m.clientMsgId, m);
    }
    let missing = 0;
    for (const [cmid, a] of this.acked) {
      const m = byCmid.get(cmid);
      if (!m) { missing++; continue; }
      assert.equal(m._id, a._id, `${what}: acknowledged ${cmid} has another _id`);
      assert.equal(m.seq, a.seq, `${what}: acknowledged ${cmid} has another seq`);
    }
    assert.equal(missing, 0, `${what}: ${missing} of ${this.acked.size} acknowledged messages are missing`);
    return byCmid;
  }
}

// Streams sends from several sockets (each with `depth` sends in flight) until told to stop or
// until the socket drops. Resolves as soon as every socket has stopped or dropped.
function stream(sockets, ledger, tag, depth = 4) {
  let stop = false;
  const failures = [];
  const runs = sockets.map(({ socket, who }, k) => new Promise((resolve) => {
    let i = 0;
    let live = depth;
    const finish = () => { if (--live === 0) resolve(); };
    socket.once('disconnect', () => { stop = true; resolve(); });
    for (let w = 0; w < depth; w++) {
      (async () => {
        while (!stop && socket.connected) {
          const cmid = `${tag}-s${k}-${i++}`;
          const text = `durable ${cmid}`;
          ledger.attempted.set(cmid, { text, senderId: who.user._id });
          let ack;
          try {
            ack = await emitWithAck(socket, 'send-message', { chatId: ledger.chatId, text, clientMsgId: cmid }, 4000);
          } catch {
            break; // no ack: the server went away
          }
          if (ack && ack.ok) ledger.acked.set(cmid, { _id: ack.message._id, seq: ack.message.seq });
          else failures.push(ack);
        }
        finish();
      })();
    }
  }));
  return { done: Promise.all(runs), stop: () => { stop = true; }, failures };
}

test('acknowledged messages survive SIGKILL mid-stream, three times over', { timeout: 120000 }, async (t) => {
  const srv = new Server(); // raised limits, no PALAVER_JWT_SECRET: tokens must survive restarts too
  try {
    await srv.start();
    const a = await srv.register('Durable A', 'durable.a@example.com');
    const b = await srv.register('Durable B', 'durable.b@example.com');
    const chat = await srv.chat(a, b);
    const ledger = new Ledger(chat._id, { [a.user._id]: a, [b.user._id]: b });
    const tokenOf = (id) => (id === a.user._id ? a.token : b.token);

    for (let cycle = 1; cycle <= 3; cycle++) {
      const who = [a, a, b, b];
      const sockets = [];
      for (const w of who) sockets.push({ socket: await srv.connect(w.token), who: w });
      const ackedBefore = ledger.acked.size;
      const s = stream(sockets, ledger, `c${cycle}`);
      const t0 = Date.now();
      const killAfter = 700 + Math.floor(Math.random() * 600);
      while (Date.now() - t0 < killAfter || ledger.acked.size - ackedBefore < 20) {
        if (Date.now() - t0 > 20000) assert.fail(`cycle ${cycle}: only ${ledger.acked.size - ackedBefore} acks in 20 s`);
        await sleep(20);
      }
      await srv.kill(); // SIGKILL while sends are in flight
      await s.done;
      for (const { socket } of sockets) closeSocket(socket);
      assert.deepEqual(s.failures, [], `cycle ${cycle}: refused sends`);
      const inThisCycle = ledger.acked.size - ackedBefore;
      assert.ok(inThisCycle >= 20, `cycle ${cycle}: ${inThisCycle} acknowledged before the kill`);

      await srv.start(); // same data directory, new port
      const history = await srv.history(a.token, chat._id);
      const byCmid = ledger.check(history, `after crash ${cycle}`);
      assert.ok(history.length >= ledger.acked.size);
      const fromB = await srv.history(b.token, chat._id, 137);
      assert.deepEqual(fromB, history, 'paging with another page size gives the same history');

      // Retry every unacknowledged send with its clientMsgId: committed ones come back unchanged,
      // the others are created now, after the last seq.
      const unacked = [...ledger.attempted.keys()].filter((k) => k.startsWith(`c${cycle}-`) && !ledger.acked.has(k));
      let n = history.length;
      for (const cmid of unacked) {
        const { text, senderId } = ledger.attempted.get(cmid);
        const r = await srv.api('POST', `/api/messages/chat/${chat._id}`, tokenOf(senderId), { text, clientMsgId: cmid });
        assert.ok(r.status === 200 || r.status === 201, `retry ${cmid}: ${r.status} ${r.text}`);
        const was = byCmid.get(cmid);
        if (was) {
          assert.equal(r.body._id, was._id, `retry of committed ${cmid} returns the original`);
          assert.equal(r.body.seq, was.seq);
        } else {
          n += 1;
          assert.equal(r.body.seq, n, `retry of uncommitted ${cmid} is the next message`);
        }
        ledger.acked.set(cmid, { _id: r.body._id, seq: r.body.seq });
      }
      // A few acknowledged ones too.
      for (const cmid of [...ledger.acked.keys()].slice(-3)) {
        const { text, senderId } = ledger.attempted.get(cmid);
        const r = await srv.api('POST', `/api/messages/chat/${chat._id}`, tokenOf(senderId), { text, clientMsgId: cmid });
        assert.equal(r.body._id, ledger.acked.get(cmid)._id, `retry of acknowledged ${cmid} after restart`);
      }
      const committedUnacked = unacked.filter((k) => byCmid.has(k)).length;
      t.diagnostic(`cycle ${cycle}: ${inThisCycle} acknowledged, ${unacked.length} unacknowledged at the kill (${committedUnacked} of them committed), history ${history.length} -> ${n}`);
      const after = await srv.history(a.token, chat._id);
      ledger.check(after, `after retries ${cycle}`);
      assert.equal(after.length, n);
      const chats = await srv.api('GET', '/api/chats', a.token);
      assert.equal(chats.body[0].lastMessage.seq, n, 'lastMessage is the newest message');
    }
    // Final: a graceful restart changes nothing.
    const final = await srv.history(a.token, chat._id);
    await srv.stop();
    await srv.start();
    assert.deepEqual(await srv.history(b.token, chat._id), final);
  } finally {
    await srv.dispose();
  }
});

test('a graceful restart keeps accounts, tokens, chats, messages and idempotency keys', async () => {
  const srv = new Server();
  try {
    await srv.start();
    const a = await srv.register('Keep A', 'keep.a@example.com', 'keep-password');
    const b = await srv.register('Keep B', 'keep.b@example.com');
    const chat = await srv.chat(a, b);
    const m1 = await srv.post(a, chat._id, 'before restart', 'keep-1');
    await srv.stop();
    await srv.start();
    const me = await srv.api('GET', '/api/auth/me', a.token);
    assert.equal(me.status, 200, 'a token issued before the restart still works (secret kept in the data dir)');
    assert.deepEqual(me.body, a.user);
    const login = await srv.api('POST', '/api/auth/login', null, { email: 'keep.a@example.com', password: 'keep-password' });
    assert.equal(login.status, 200);
    assertAgain(await srv.api('POST', `/api/chats/with/${b.user._id}`, a.token), chat._id);
    const again = await srv.api('POST', `/api/messages/chat/${chat._id}`, a.token, { text: 'before restart', clientMsgId: 'keep-1' });
    assert.equal(again.body._id, m1._id, 'clientMsgId remembered across restarts');
    const m2 = await srv.post(b, chat._id, 'after restart');
    assert.equal(m2.seq, 2);
    const s = await srv.connect(b.token);
    assert.ok(s.connected);
    assert.equal((await srv.register('Keep C', 'keep.c@example.com')).user.email, 'keep.c@example.com');
    const dup = await srv.api('POST', '/api/auth/register', null, { name: 'Dup', email: 'KEEP.A@example.com', password: 'password123' });
    assert.equal(dup.status, 409, 'the unique email index survived');
  } finally {
    await srv.dispose();
  }

  function assertAgain(r, id) {
    assert.equal(r.status, 200);
    assert.equal(r.body._id, id, 'the same chat after restart');
  }
});
