// Socket.IO handshake authentication, the Authorization header, and the polling transport.
import { test } from 'node:test';
import {
  assert, useServer, got, waitFor, emitWithAck, signJwt, nowSec, assertMessage,
} from './harness.mjs';

const JWT_SECRET = 'e2e-socket-auth-secret-0123456789abcdef';
let a, b, chat;
const srv = useServer({ env: { PALAVER_JWT_SECRET: JWT_SECRET } }, async (s) => {
  a = await s.register('Sock Alice', 'sock.alice@example.com');
  b = await s.register('Sock Bob', 'sock.bob@example.com');
  chat = await s.chat(a, b);
});

test('connect without a token: connect_error "Unauthorized"', async () => {
  assert.equal(await srv.connectError(null), 'Unauthorized');
  assert.equal(await srv.connectError(null, { auth: {} }), 'Unauthorized');
  assert.equal(await srv.connectError(null, { auth: { token: '' } }), 'Unauthorized');
});

test('connect with a bad token: connect_error "Unauthorized"', async () => {
  assert.equal(await srv.connectError('not-a-jwt'), 'Unauthorized');
  assert.equal(await srv.connectError(signJwt({ sub: a.user._id, exp: nowSec() + 3600 }, 'HS256', 'wrong-secret')), 'Unauthorized');
  assert.equal(await srv.connectError(signJwt({ sub: a.user._id, exp: nowSec() + 3600 }, 'none')), 'Unauthorized');
  // A valid token with its payload altered.
  const [h, , sig] = a.token.split('.');
  const forged = `${h}.${Buffer.from(JSON.stringify({ sub: b.user._id, exp: nowSec() + 3600 })).toString('base64url')}.${sig}`;
  assert.equal(await srv.connectError(forged), 'Unauthorized');
});

test('connect with an expired token: connect_error "Unauthorized"', async () => {
  const expired = signJwt({ sub: a.user._id, iat: nowSec() - 7200, exp: nowSec() - 3600 }, 'HS256', JWT_SECRET);
  assert.equal(await srv.connectError(expired), 'Unauthorized');
});

test('connect with a valid token of an unknown user: connect_error "User not found!"', async () => {
  const ghost = signJwt({ sub: 'ghostuser0000000000000', iat: nowSec(), exp: nowSec() + 3600 }, 'HS256', JWT_SECRET);
  assert.equal(await srv.connectError(ghost), 'User not found!');
  // Our own HS256 signing is right: the same recipe for a real user connects.
  const real = signJwt({ sub: a.user._id, iat: nowSec(), exp: nowSec() + 3600 }, 'HS256', JWT_SECRET);
  const s = await srv.connect(real);
  assert.ok(s.connected);
});

test('connect with auth.token: online-users arrives and the socket works', async () => {
  const s = await srv.connect(a.token);
  await waitFor(() => got(s, 'online-users').length === 1, 3000, 'online-users');
  assert.ok(Array.isArray(got(s, 'online-users')[0].userIds));
});

test('connect with an Authorization: Bearer header instead of auth.token', async () => {
  const s = await srv.connect(a.token, { header: true });
  assert.ok(s.connected);
  await waitFor(() => got(s, 'online-users').length === 1, 3000, 'online-users');
  const ack = await emitWithAck(s, 'send-message', { chatId: chat._id, text: 'via header auth' });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal(ack.message.sender._id, a.user._id, 'the header token identifies the user');
  assert.equal(await srv.connectError('not-a-jwt', { header: true }), 'Unauthorized');
});

test('polling transport: connect, send, receive', async () => {
  const sa = await srv.connect(a.token, { transports: ['polling'] });
  const sb = await srv.connect(b.token, { transports: ['polling'] });
  assert.equal(sa.io.engine.transport.name, 'polling');
  await waitFor(() => got(sa, 'online-users').length === 1, 3000, 'online-users over polling');
  const join = await emitWithAck(sb, 'join-chat', { chatId: chat._id });
  assert.equal(join.ok, true);
  const ack = await emitWithAck(sa, 'send-message', { chatId: chat._id, text: 'over long-polling', clientMsgId: 'poll-1' });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assertMessage(ack.message);
  await waitFor(() => got(sb, 'new-message').some((m) => m._id === ack.message._id), 3000, 'delivery over polling');
  await waitFor(() => got(sa, 'new-message').some((m) => m._id === ack.message._id), 3000, 'echo to the sender over polling');
  assert.equal(await srv.connectError(null, { transports: ['polling'] }), 'Unauthorized');
});

test('polling transport upgrades to websocket when allowed', async () => {
  const s = await srv.connect(a.token, { transports: ['polling', 'websocket'] });
  await waitFor(() => s.io.engine.transport.name === 'websocket', 5000, 'upgrade to websocket');
  const ack = await emitWithAck(s, 'send-message', { chatId: chat._id, text: 'after upgrade' });
  assert.equal(ack.ok, true);
});
