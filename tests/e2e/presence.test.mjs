// Presence: online-users, user-online, user-offline, counted per connection (multi-tab), with
// the offline grace period and changes coalesced per tick.
import { test } from 'node:test';
import { assert, useServer, withServer, got, waitFor, quiet, closeSocket, sleep } from './harness.mjs';

// A short grace keeps these tests quick; the default (5 s) is tested below.
const srv = useServer({ env: { PALAVER_PRESENCE_GRACE: '1s' } });

const onlineOf = async (s) => {
  await waitFor(() => got(s, 'online-users').length > 0, 3000, 'online-users');
  assert.equal(got(s, 'online-users').length, 1, 'online-users sent once');
  const { userIds } = got(s, 'online-users')[0];
  assert.ok(Array.isArray(userIds));
  return userIds;
};
const onlineEvents = (s, userId) => got(s, 'user-online').filter((e) => e.userId === userId);
const offlineEvents = (s, userId) => got(s, 'user-offline').filter((e) => e.userId === userId);

test('online-users on connect lists the others online, never the connecting user', async () => {
  const [a, b] = await Promise.all([srv.register('Pres A', 'pres.a@example.com'), srv.register('Pres B', 'pres.b@example.com')]);
  const sa = await srv.connect(a.token);
  const ua = await onlineOf(sa);
  assert.ok(!ua.includes(a.user._id), 'self excluded');
  assert.ok(!ua.includes(b.user._id), 'B is not online yet');
  const sb = await srv.connect(b.token);
  const ub = await onlineOf(sb);
  // A connected less than a tick ago may not be in B's snapshot yet; then user-online follows.
  await waitFor(() => ub.includes(a.user._id) || onlineEvents(sb, a.user._id).length === 1, 3000, 'B learns that A is online');
  await quiet();
  assert.equal(Number(ub.includes(a.user._id)) + onlineEvents(sb, a.user._id).length, 1, 'A listed or announced, once');
  assert.ok(!ub.includes(b.user._id), 'self excluded');
  assert.equal(new Set(ub).size, ub.length, 'no duplicates');
  // A second tab of A: lists B, not A (although A is already online).
  const sa2 = await srv.connect(a.token);
  const ua2 = await onlineOf(sa2);
  assert.ok(ua2.includes(b.user._id));
  assert.ok(!ua2.includes(a.user._id), 'self excluded even when another tab is online');
  closeSocket(sa); closeSocket(sb); closeSocket(sa2);
});

test('user-online is broadcast to everyone else on a user\'s first connection only', async () => {
  const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((x) => srv.register(`On ${x}`, `on.${x}@example.com`)));
  const sa = await srv.connect(a.token);
  const sc = await srv.connect(c.token);
  await waitFor(() => onlineEvents(sa, c.user._id).length === 1, 3000, 'A told that C is online');
  const sb1 = await srv.connect(b.token);
  await waitFor(() => onlineEvents(sa, b.user._id).length === 1 && onlineEvents(sc, b.user._id).length === 1, 3000, 'user-online B to A and C');
  assert.deepEqual(onlineEvents(sa, b.user._id)[0], { userId: b.user._id });
  const sb2 = await srv.connect(b.token);
  const sb3 = await srv.connect(b.token, { transports: ['polling'] });
  await quiet();
  assert.equal(onlineEvents(sa, b.user._id).length, 1, 'no user-online for B\'s second and third tabs');
  assert.equal(onlineEvents(sc, b.user._id).length, 1);
  for (const s of [sb1, sb2, sb3]) assert.equal(onlineEvents(s, b.user._id).length, 0, 'a user is not told about themself');
  assert.equal(onlineEvents(sb1, a.user._id).length, 0, 'B learns of A from online-users, not user-online');
});

test('multi-tab: closing one of two sockets emits no user-offline; closing the last emits it once', async () => {
  const [a, b, d] = await Promise.all(['a', 'b', 'd'].map((x) => srv.register(`Tab ${x}`, `tab.${x}@example.com`)));
  const sa = await srv.connect(a.token);
  const sb1 = await srv.connect(b.token);
  const sb2 = await srv.connect(b.token);
  await waitFor(() => onlineEvents(sa, b.user._id).length === 1, 3000, 'B online');

  closeSocket(sb1);
  await quiet();
  assert.equal(offlineEvents(sa, b.user._id).length, 0, 'B still has a tab open: no user-offline');
  assert.ok(offlineEvents(sb2, b.user._id).length === 0);
  const sd = await srv.connect(d.token);
  assert.ok((await onlineOf(sd)).includes(b.user._id), 'B is still listed online');

  closeSocket(sb2);
  await waitFor(() => offlineEvents(sa, b.user._id).length === 1 && offlineEvents(sd, b.user._id).length === 1, 3000, 'user-offline B');
  assert.deepEqual(offlineEvents(sa, b.user._id)[0], { userId: b.user._id });
  await quiet();
  assert.equal(offlineEvents(sa, b.user._id).length, 1, 'user-offline exactly once');
  const sd2 = await srv.connect(d.token);
  const now = await onlineOf(sd2);
  assert.ok(!now.includes(b.user._id), 'B is no longer listed');
  assert.ok(now.includes(a.user._id));

  // Coming back is a first connection again.
  const sb3 = await srv.connect(b.token);
  await waitFor(() => onlineEvents(sa, b.user._id).length === 2, 3000, 'user-online B again');
  closeSocket(sb3);
  await waitFor(() => offlineEvents(sa, b.user._id).length === 2, 3000, 'user-offline B again');
});

test('presence survives many tabs opening and closing concurrently', async () => {
  const [a, b] = await Promise.all([srv.register('Many A', 'many.a@example.com'), srv.register('Many B', 'many.b@example.com')]);
  const sa = await srv.connect(a.token);
  const tabs = await Promise.all(Array.from({ length: 8 }, () => srv.connect(b.token)));
  await waitFor(() => onlineEvents(sa, b.user._id).length >= 1, 3000, 'B online');
  for (const s of tabs.slice(0, 7)) closeSocket(s);
  await quiet();
  assert.equal(onlineEvents(sa, b.user._id).length, 1, 'one user-online for 8 tabs');
  assert.equal(offlineEvents(sa, b.user._id).length, 0, 'one tab still open');
  closeSocket(tabs[7]);
  await waitFor(() => offlineEvents(sa, b.user._id).length === 1, 3000, 'user-offline after the last tab');
  await quiet();
  assert.equal(offlineEvents(sa, b.user._id).length, 1);
});

test('a user who reconnects within the grace period is never announced offline', async () => {
  const [a, b] = await Promise.all([srv.register('Grace A', 'grace.a@example.com'), srv.register('Grace B', 'grace.b@example.com')]);
  const sa = await srv.connect(a.token);
  const sb = await srv.connect(b.token);
  await waitFor(() => onlineEvents(sa, b.user._id).length === 1, 3000, 'B online');
  closeSocket(sb);
  await sleep(300);
  const sb2 = await srv.connect(b.token);
  // Past the grace period (1 s) and a tick: nothing was announced about B, and a new socket
  // meanwhile listed B as online.
  const sc = await srv.connect(a.token);
  assert.ok((await onlineOf(sc)).includes(b.user._id), 'B listed online in the grace period');
  await sleep(1600);
  assert.equal(offlineEvents(sa, b.user._id).length, 0, 'no user-offline for a blip');
  assert.equal(onlineEvents(sa, b.user._id).length, 1, 'no second user-online');
  closeSocket(sb2);
});

test('user-offline comes when the grace period is over, not before', async () => {
  const [a, b] = await Promise.all([srv.register('Late A', 'late.a@example.com'), srv.register('Late B', 'late.b@example.com')]);
  const sa = await srv.connect(a.token);
  const sb = await srv.connect(b.token);
  await waitFor(() => onlineEvents(sa, b.user._id).length === 1, 3000, 'B online');
  const closedAt = Date.now();
  closeSocket(sb);
  await sleep(600);
  assert.equal(offlineEvents(sa, b.user._id).length, 0, 'still within the grace period');
  await waitFor(() => offlineEvents(sa, b.user._id).length === 1, 3000, 'user-offline B');
  const after = Date.now() - closedAt;
  assert.ok(after >= 1000, `user-offline after the grace period (${after} ms)`);
});

test('the default grace period is 5 s', async () => {
  await withServer({}, async (server) => {
    const [a, b] = await Promise.all([server.register('Def A', 'def.a@example.com'), server.register('Def B', 'def.b@example.com')]);
    const sa = await server.connect(a.token);
    const sb = await server.connect(b.token);
    await waitFor(() => onlineEvents(sa, b.user._id).length === 1, 3000, 'B online');
    const closedAt = Date.now();
    closeSocket(sb);
    await waitFor(() => offlineEvents(sa, b.user._id).length === 1, 8000, 'user-offline B');
    const after = Date.now() - closedAt;
    assert.ok(after >= 5000 && after < 7000, `user-offline ${after} ms after the last tab closed`);
  });
});

test('a user who comes and goes within one tick is not announced at all', async () => {
  const env = { PALAVER_PRESENCE_GRACE: '0', PALAVER_PRESENCE_TICK: '2s' };
  await withServer({ env }, async (server) => {
    const [a, b] = await Promise.all([server.register('Tick A', 'tick.a@example.com'), server.register('Tick B', 'tick.b@example.com')]);
    const sa = await server.connect(a.token);
    await onlineOf(sa);
    const sb = await server.connect(b.token);
    closeSocket(sb);
    await sleep(2500);
    assert.equal(onlineEvents(sa, b.user._id).length, 0, 'no user-online');
    assert.equal(offlineEvents(sa, b.user._id).length, 0, 'no user-offline');
  });
});

test('grace 0 and tick 0 announce each change at once', async () => {
  const env = { PALAVER_PRESENCE_GRACE: '0', PALAVER_PRESENCE_TICK: '0' };
  await withServer({ env }, async (server) => {
    const [a, b] = await Promise.all([server.register('Now A', 'now.a@example.com'), server.register('Now B', 'now.b@example.com')]);
    const sa = await server.connect(a.token);
    await onlineOf(sa);
    const sb = await server.connect(b.token);
    await waitFor(() => onlineEvents(sa, b.user._id).length === 1, 1000, 'user-online B');
    closeSocket(sb);
    await waitFor(() => offlineEvents(sa, b.user._id).length === 1, 1000, 'user-offline B');
  });
});
