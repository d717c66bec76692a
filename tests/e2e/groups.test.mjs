// Group chats and read state with the real socket.io-client: the routes, their refusals, the
// events of each change, mark-read and unread counts.
import { test } from 'node:test';
import {
  assert, useServer, got, waitFor, quiet, emitWithAck, assertChat, assertMessage, assertPublicUser,
  assertError, assertRefused, TIME_RE,
} from './harness.mjs';

let a, b, c, d;
const srv = useServer({}, async (s) => {
  [a, b, c, d] = await Promise.all([
    s.register('Grp Ada', 'grp.ada@example.com'),
    s.register('Grp Bob', 'grp.bob@example.com'),
    s.register('Grp Cy', 'grp.cy@example.com'),
    s.register('Grp Dee', 'grp.dee@example.com'),
  ]);
});

const group = async (owner, name, members) => {
  const r = await srv.api('POST', '/api/chats', owner.token, { name, memberIds: members.map((u) => u.user._id) });
  assert.equal(r.status, 201, r.text);
  return r.body;
};

const listed = async (user, chatId) => {
  const r = await srv.api('GET', '/api/chats', user.token);
  assert.equal(r.status, 200, r.text);
  return r.body.find((x) => x._id === chatId) || null;
};

function assertGroup(chat, what = 'group') {
  assertChat(chat, what);
  assert.equal(chat.kind, 'group', `${what}.kind`);
  assert.equal(typeof chat.name, 'string', `${what}.name`);
  assert.equal(chat.participant, null, `${what}.participant`);
  assert.equal(chat.memberCount, chat.participants.length, `${what}.memberCount`);
  assert.ok(Number.isInteger(chat.lastReadSeq) && Number.isInteger(chat.unreadCount), `${what} read state`);
}

test('POST /api/chats creates a group; GET chat and members; every refusal', async () => {
  const g = await group(a, 'Core Team', [b, c]);
  assertGroup(g);
  assert.equal(g.name, 'Core Team');
  assert.equal(g.memberCount, 3);
  assert.equal(g.ownerId, a.user._id);
  assert.deepEqual(g.participants.map((p) => p._id), [a.user._id, b.user._id, c.user._id]);

  const one = await srv.api('GET', `/api/chats/${g._id}`, b.token);
  assert.equal(one.status, 200);
  assertGroup(one.body);
  const members = await srv.api('GET', `/api/chats/${g._id}/members`, c.token);
  assert.equal(members.status, 200);
  assert.deepEqual(members.body.map((m) => [m.user._id, m.role]), [
    [a.user._id, 'owner'], [b.user._id, 'member'], [c.user._id, 'member'],
  ]);
  for (const m of members.body) {
    assertPublicUser(m.user);
    assert.match(m.joinedAt, TIME_RE);
    assert.equal(m.lastReadSeq, 0);
  }

  // Not a member: 404 for everything, as if it did not exist.
  assertError(await srv.api('GET', `/api/chats/${g._id}`, d.token), 404, 'Chat not found');
  assertError(await srv.api('GET', `/api/chats/${g._id}/members`, d.token), 404, 'Chat not found');
  assertError(await srv.api('GET', `/api/messages/chat/${g._id}`, d.token), 404, 'Chat not found');
  assertError(await srv.api('POST', `/api/chats/${g._id}/read`, d.token, { seq: 1 }), 404, 'Chat not found');
  // Only the owner.
  assertError(await srv.api('POST', `/api/chats/${g._id}/members`, b.token, { userIds: [d.user._id] }), 403, 'Only the owner can do that');
  assertError(await srv.api('PATCH', `/api/chats/${g._id}`, b.token, { name: 'x' }), 403, 'Only the owner can do that');
  assertError(await srv.api('DELETE', `/api/chats/${g._id}/members/${c.user._id}`, b.token), 403, 'Only the owner can do that');
  // Bad input.
  assertError(await srv.api('POST', '/api/chats', a.token, { name: '', memberIds: [] }), 400, 'Group name must be 1 to 64 characters');
  assertError(await srv.api('POST', '/api/chats', a.token, { name: 'x'.repeat(65) }), 400);
  assertError(await srv.api('POST', '/api/chats', a.token, { name: 'ok', memberIds: Array.from({ length: 101 }, (_, i) => `u${i}`) }), 400);
  assertError(await srv.api('POST', `/api/chats/${g._id}/members`, a.token, { userIds: [] }), 400, 'userIds must list 1 to 100 user ids');
  assertError(await srv.api('POST', `/api/chats/${g._id}/members`, a.token, { userIds: ['nobody'] }), 404, 'User not found');
  assertError(await srv.api('POST', `/api/chats/${g._id}/read`, a.token, { seq: 'x' }), 400, 'seq must be a non-negative whole number');
  // 1:1 chats refuse changes.
  const direct = await srv.chat(a, b);
  assertError(await srv.api('POST', `/api/chats/${direct._id}/members`, a.token, { userIds: [c.user._id] }), 400, 'Not a group chat');
  assertError(await srv.api('DELETE', `/api/chats/${direct._id}/members/${b.user._id}`, a.token), 400, 'Not a group chat');
  assertError(await srv.api('PATCH', `/api/chats/${direct._id}`, a.token, { name: 'x' }), 400, 'Not a group chat');
  const directListed = await listed(a, direct._id);
  assert.equal(directListed.kind, 'direct');
  assert.equal(directListed.participant._id, b.user._id, 'a 1:1 chat keeps its participant');
  assert.equal(directListed.name, null);
});

test('changes are system messages and events reach members and the changed user', async () => {
  const g = await group(a, 'Events', [b]);
  const sa = await srv.connect(a.token);
  const sb = await srv.connect(b.token);
  const sc = await srv.connect(c.token);
  assert.deepEqual(await emitWithAck(sc, 'join-chat', g._id), { ok: false, error: 'Chat not found' });

  const add = await srv.api('POST', `/api/chats/${g._id}/members`, a.token, { userIds: [c.user._id] });
  assert.equal(add.status, 200, add.text);
  assert.equal(add.body.memberCount, 3);
  for (const s of [sa, sb, sc]) {
    await waitFor(() => got(s, 'member-added').some((e) => e.chatId === g._id), 3000, 'member-added');
    const e = got(s, 'member-added').find((x) => x.chatId === g._id);
    assert.equal(e.user._id, c.user._id);
    assert.equal(e.role, 'member');
    const system = got(s, 'new-message').find((m) => m.chat === g._id);
    assertMessage(system);
    assert.equal(system.kind, 'system');
    assert.deepEqual(system.event, { type: 'added', userId: c.user._id, by: a.user._id });
  }
  await waitFor(() => got(sc, 'chat-updated').some((x) => x._id === g._id), 3000, 'chat-updated to the added user');

  const renamed = await srv.api('PATCH', `/api/chats/${g._id}`, a.token, { name: 'Renamed' });
  assert.equal(renamed.status, 200);
  assert.equal(renamed.body.name, 'Renamed');
  for (const s of [sa, sb, sc]) {
    await waitFor(() => got(s, 'chat-updated').some((x) => x._id === g._id && x.name === 'Renamed'), 3000, 'chat-updated');
  }

  // Cy joined the room; removed, Cy's socket leaves it and hears nothing more of the chat.
  assert.deepEqual(await emitWithAck(sc, 'join-chat', g._id), { ok: true });
  const removed = await srv.api('DELETE', `/api/chats/${g._id}/members/${c.user._id}`, a.token);
  assert.equal(removed.status, 204);
  for (const s of [sa, sb, sc]) {
    await waitFor(() => got(s, 'member-removed').some((e) => e.chatId === g._id), 3000, 'member-removed');
    assert.deepEqual(got(s, 'member-removed').find((e) => e.chatId === g._id), { chatId: g._id, userId: c.user._id, ownerId: a.user._id });
  }
  const before = got(sc, 'new-message').length;
  sb.emit('typing', { chatId: g._id, isTyping: true });
  const ack = await emitWithAck(sb, 'send-message', { chatId: g._id, text: 'after the removal' });
  assert.equal(ack.ok, true);
  await waitFor(() => got(sa, 'new-message').some((m) => m._id === ack.message._id), 3000, 'members still get messages');
  await quiet();
  assert.equal(got(sc, 'new-message').length, before, `nothing after the removal: ${JSON.stringify(got(sc, 'new-message').map((m) => [m.seq, m.text]))} before ${before}`);
  assert.equal(got(sc, 'typing').filter((t) => t.chatId === g._id).length, 0, 'no typing after the removal');
  await assertRefused(sc, await emitWithAck(sc, 'sync', { chatId: g._id, afterSeq: 0 }), 'Chat not found');
  assertError(await srv.api('GET', `/api/messages/chat/${g._id}`, c.token), 404, 'Chat not found');

  // The owner leaves: Bob, the longest-standing member, owns it.
  const left = await srv.api('DELETE', `/api/chats/${g._id}/members/${a.user._id}`, a.token);
  assert.equal(left.status, 204);
  await waitFor(() => got(sb, 'member-removed').some((e) => e.userId === a.user._id), 3000, 'owner left');
  assert.equal(got(sb, 'member-removed').find((e) => e.userId === a.user._id).ownerId, b.user._id);
  const members = await srv.api('GET', `/api/chats/${g._id}/members`, b.token);
  assert.deepEqual(members.body.map((m) => [m.user._id, m.role]), [[b.user._id, 'owner']]);
  // Added back, Cy reads the whole history.
  assert.equal((await srv.api('POST', `/api/chats/${g._id}/members`, b.token, { userIds: [c.user._id] })).status, 200);
  const history = await srv.api('GET', `/api/messages/chat/${g._id}`, c.token);
  assert.equal(history.status, 200);
  assert.deepEqual(history.body.map((m) => m.seq), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(history.body.map((m) => (m.event ? m.event.type : 'message')), ['added', 'renamed', 'removed', 'message', 'left', 'added']);
});

test('mark-read moves forward only, is capped, reaches every member; unread counts what others sent', async () => {
  const g = await group(a, 'Reads', [b]);
  const sa1 = await srv.connect(a.token);
  const sa2 = await srv.connect(a.token);
  const sb = await srv.connect(b.token);
  for (let i = 0; i < 4; i++) {
    assert.equal((await emitWithAck(sb, 'send-message', { chatId: g._id, text: `m${i}` })).ok, true);
  }
  let mine = await listed(a, g._id);
  assert.deepEqual([mine.lastReadSeq, mine.unreadCount], [0, 4]);
  assert.equal((await listed(b, g._id)).unreadCount, 0, 'own messages count as read');

  assert.deepEqual(await emitWithAck(sa1, 'mark-read', { chatId: g._id, seq: 3 }), { ok: true, lastReadSeq: 3 });
  await waitFor(() => got(sa2, 'read').some((r) => r.lastReadSeq === 3), 3000, 'the other tab hears of it');
  await waitFor(() => got(sb, 'read').some((r) => r.lastReadSeq === 3), 3000, 'other members see it');
  assert.deepEqual(got(sb, 'read').find((r) => r.lastReadSeq === 3), { chatId: g._id, userId: a.user._id, lastReadSeq: 3 });
  assert.equal((await listed(a, g._id)).unreadCount, 1);
  assert.deepEqual(await emitWithAck(sa1, 'mark-read', { chatId: g._id, seq: 1 }), { ok: true, lastReadSeq: 3 }, 'backwards: the stored value');
  assert.deepEqual(await emitWithAck(sa2, 'mark-read', { chatId: g._id, seq: 1000 }), { ok: true, lastReadSeq: 4 }, 'capped');
  await assertRefused(sa1, await emitWithAck(sa1, 'mark-read', { chatId: g._id }), 'Invalid payload');
  const sd = await srv.connect(d.token);
  await assertRefused(sd, await emitWithAck(sd, 'mark-read', { chatId: g._id, seq: 1 }), 'Chat not found');

  // System messages are not counted; Ada's own message moves her position.
  assert.equal((await srv.api('POST', `/api/chats/${g._id}/members`, a.token, { userIds: [c.user._id] })).status, 200);
  assert.equal((await listed(a, g._id)).unreadCount, 0);
  assert.equal((await listed(c, g._id)).unreadCount, 0, 'a new member starts with nothing unread');
  assert.equal((await emitWithAck(sb, 'send-message', { chatId: g._id, text: 'x' })).ok, true);
  assert.equal((await emitWithAck(sa1, 'send-message', { chatId: g._id, text: 'y' })).ok, true);
  mine = await listed(a, g._id);
  assert.deepEqual([mine.lastReadSeq, mine.unreadCount], [7, 0]);
  assert.equal((await listed(c, g._id)).unreadCount, 2);
  const viaRest = await srv.api('POST', `/api/chats/${g._id}/read`, c.token, { seq: 6 });
  assert.deepEqual([viaRest.status, viaRest.body], [200, { ok: true, lastReadSeq: 6 }]);
  assert.equal((await listed(c, g._id)).unreadCount, 1);
  const members = await srv.api('GET', `/api/chats/${g._id}/members`, a.token);
  assert.deepEqual(members.body.map((m) => m.lastReadSeq), [7, 6, 6], 'each member\'s own message and mark-read');
});
