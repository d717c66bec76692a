// REST: /api/users search and limits, /api/chats listing and order, POST /api/chats/with/:id.
import { test } from 'node:test';
import { assert, useServer, assertPublicUser, assertChat, assertError, sleep } from './harness.mjs';

const srv = useServer();

test('GET /api/users: everyone but the caller; q matches names (substring) or a whole email, case-insensitively; limit', async () => {
  // This server's first users, so the whole population is known.
  const me = await srv.register('Searcher', 'searcher@example.com');
  const zeph = await srv.register('Alice Zephyrine', 'alice@example.com');
  const bob = await srv.register('Bob Builder', 'bob.zephyr@Example.ORG');
  const carl = await srv.register('Carl', 'carl@example.net');

  const all = await srv.api('GET', '/api/users', me.token);
  assert.equal(all.status, 200);
  assert.ok(Array.isArray(all.body));
  all.body.forEach((u) => assertPublicUser(u));
  const ids = all.body.map((u) => u._id).sort();
  assert.deepEqual(ids, [zeph.user._id, bob.user._id, carl.user._id].sort(), 'everyone but the caller');
  const bobView = all.body.find((u) => u._id === bob.user._id);
  assert.deepEqual(bobView, { _id: bob.user._id, name: 'Bob Builder', email: '', avatar: '' }, 'other users\' emails are not listed');

  const search = async (q, token = me.token) => {
    const r = await srv.api('GET', `/api/users?q=${encodeURIComponent(q)}`, token);
    assert.equal(r.status, 200, r.text);
    return r.body.map((u) => u._id).sort();
  };
  assert.deepEqual(await search('ZEPHYR'), [zeph.user._id], 'names only: bob\'s email holds "zephyr" too');
  assert.deepEqual(await search('zephyrine'), [zeph.user._id], 'name substring');
  assert.deepEqual(await search('EXAMPLE.org'), [], 'no email fragments');
  assert.deepEqual(await search(' BOB.ZEPHYR@Example.org '), [bob.user._id], 'a whole email, case-insensitive');
  const byEmail = await srv.api('GET', `/api/users?q=${encodeURIComponent('bob.zephyr@example.org')}`, me.token);
  assert.equal(byEmail.body[0].email, 'bob.zephyr@example.org', 'the email named is shown back');
  assert.deepEqual(await search('arl'), [carl.user._id], 'inner substring');
  assert.deepEqual(await search('searcher'), [], 'the caller never appears');
  assert.deepEqual(await search('nomatch-xyz'), []);
  assert.deepEqual(await search('searcher', zeph.token), [me.user._id]);
  assert.equal((await search('')).length, 3, 'empty q matches everyone');

  const one = await srv.api('GET', '/api/users?limit=1', me.token);
  assert.equal(one.status, 200);
  assert.equal(one.body.length, 1);
  const two = await srv.api('GET', '/api/users?q=e&limit=1', me.token);
  assert.equal(two.body.length, 1);
});

test('GET /api/users: q of more than 254 characters is a 400; searches are rate limited per user (429)', async () => {
  const me = await srv.register('Limited Searcher', 'limited.searcher@example.com');
  const other = await srv.register('Other Searcher', 'other.searcher@example.com');
  assertError(await srv.api('GET', `/api/users?q=${'a'.repeat(255)}`, me.token), 400);
  const statuses = [];
  for (let i = 0; i < 30; i += 1) statuses.push((await srv.api('GET', '/api/users?q=searcher', me.token)).status);
  assert.ok(statuses.slice(0, 15).every((s) => s === 200), statuses.join());
  assert.ok(statuses.includes(429), `a burst of 30 meets the limit: ${statuses.join()}`);
  assertError(await srv.api('GET', '/api/users?q=searcher', me.token), 429);
  assert.equal((await srv.api('GET', '/api/users?q=searcher', other.token)).status, 200, 'per user');
});

test('GET /api/users: limit defaults to 50 and is capped at 200', async () => {
  const me = await srv.register('Counter', 'counter@example.com');
  const before = (await srv.api('GET', '/api/users?limit=200', me.token)).body.length;
  assert.ok(before < 100);
  await srv.users(55, 'crowd');
  const others = before + 55;
  const def = await srv.api('GET', '/api/users', me.token);
  assert.equal(def.status, 200);
  assert.equal(def.body.length, 50, 'default limit 50');
  const big = await srv.api('GET', '/api/users?limit=1000', me.token);
  assert.equal(big.status, 200, 'a limit over the maximum is capped, not refused');
  assert.equal(big.body.length, others, `all ${others} others (fewer than the 200 cap)`);
  const some = await srv.api('GET', '/api/users?limit=7', me.token);
  assert.equal(some.body.length, 7);
  const crowd = await srv.api('GET', '/api/users?q=CROWD&limit=200', me.token);
  assert.equal(crowd.body.length, 55);
  assert.equal(new Set(crowd.body.map((u) => u._id)).size, 55, 'no duplicates');
});

test('POST /api/chats/with/:id: creates once (idempotent), Chat shape for each side', async () => {
  const a = await srv.register('Chat A', 'chat.a@example.com');
  const b = await srv.register('Chat B', 'chat.b@example.com');
  const r1 = await srv.api('POST', `/api/chats/with/${b.user._id}`, a.token);
  assert.equal(r1.status, 200, r1.text);
  assertChat(r1.body);
  assert.deepEqual(r1.body.participant, { _id: b.user._id, name: 'Chat B', email: '', avatar: '' }, 'no email of the other member');
  assert.deepEqual(r1.body.participants.map((p) => p._id).sort(), [a.user._id, b.user._id].sort());
  assert.equal(r1.body.lastMessage, null);
  const r2 = await srv.api('POST', `/api/chats/with/${b.user._id}`, a.token);
  assert.equal(r2.status, 200);
  assert.equal(r2.body._id, r1.body._id, 'same chat on the second call');
  assert.equal(r2.body.createdAt, r1.body.createdAt);
  const r3 = await srv.api('POST', `/api/chats/with/${a.user._id}`, b.token);
  assert.equal(r3.status, 200);
  assert.equal(r3.body._id, r1.body._id, 'same chat from the other side');
  assert.equal(r3.body.participant._id, a.user._id, 'participant is the other member for the caller');
});

test('POST /api/chats/with/:id: 400 "You cannot chat with yourself", 404 "User not found"', async () => {
  const a = await srv.register('Lonely', 'lonely@example.com');
  assertError(await srv.api('POST', `/api/chats/with/${a.user._id}`, a.token), 400, 'You cannot chat with yourself');
  assertError(await srv.api('POST', '/api/chats/with/nosuchuser000000000000', a.token), 404, 'User not found');
  const chats = await srv.api('GET', '/api/chats', a.token);
  assert.deepEqual(chats.body, [], 'nothing was created');
});

test('POST /api/chats/with/:id: 20 concurrent calls from both sides give one chat', async () => {
  const a = await srv.register('Race A', 'race.a@example.com');
  const b = await srv.register('Race B', 'race.b@example.com');
  const calls = [];
  for (let i = 0; i < 20; i++) {
    calls.push(srv.api('POST', `/api/chats/with/${b.user._id}`, a.token));
    calls.push(srv.api('POST', `/api/chats/with/${a.user._id}`, b.token));
  }
  const rs = await Promise.all(calls);
  for (const r of rs) assert.equal(r.status, 200, r.text);
  const ids = new Set(rs.map((r) => r.body._id));
  assert.equal(ids.size, 1, `one chat id, got ${[...ids].join(', ')}`);
  for (const who of [a, b]) {
    const list = await srv.api('GET', '/api/chats', who.token);
    assert.equal(list.body.length, 1, 'one chat listed');
    assert.equal(list.body[0]._id, [...ids][0]);
    assert.equal(list.body[0].participants.length, 2);
  }
});

test('GET /api/chats: the caller\'s chats, newest lastMessageAt first, with lastMessage', async () => {
  const me = await srv.register('Lister', 'lister@example.com');
  const [b, c, d] = await Promise.all(['b', 'c', 'd'].map((x) => srv.register(`Peer ${x}`, `peer.${x}@example.com`)));
  const other = await srv.register('Stranger', 'stranger@example.com');
  await srv.chat(other, b); // a chat the caller is not in
  const chats = {};
  for (const p of [b, c, d]) chats[p.user._id] = await srv.chat(me, p);

  const order = async () => {
    const r = await srv.api('GET', '/api/chats', me.token);
    assert.equal(r.status, 200);
    r.body.forEach((x) => assertChat(x));
    return r.body;
  };
  const listed = await order();
  assert.equal(listed.length, 3, 'only the caller\'s chats');

  // Distinct milliseconds between sends so lastMessageAt orders strictly.
  const say = async (from, peer, text) => { const m = await srv.post(from, chats[peer.user._id]._id, text); await sleep(15); return m; };
  await say(me, c, 'to c');
  await say(b, b, 'from b');
  const last = await say(me, d, 'to d');
  let l = await order();
  assert.deepEqual(l.map((x) => x.participant._id), [d.user._id, b.user._id, c.user._id]);
  assert.equal(l[0].lastMessage._id, last._id);
  assert.equal(l[0].lastMessage.text, 'to d');
  assert.equal(l[0].lastMessage.chat, l[0]._id);
  for (let i = 1; i < l.length; i++) assert.ok(l[i - 1].lastMessageAt >= l[i].lastMessageAt, 'newest first');
  assert.ok(l[0].lastMessageAt >= last.createdAt);
  await say(c, c, 'from c');
  l = await order();
  assert.deepEqual(l.map((x) => x.participant._id), [c.user._id, d.user._id, b.user._id]);
  assert.equal(l[0].lastMessage.text, 'from c');
  assert.equal(l[0].lastMessage.sender._id, c.user._id);
  // The other side sees the same chat with the caller as participant.
  const fromC = await srv.api('GET', '/api/chats', c.token);
  assert.equal(fromC.body.length, 1);
  assert.equal(fromC.body[0].participant._id, me.user._id);
  assert.equal(fromC.body[0]._id, chats[c.user._id]._id);
});
