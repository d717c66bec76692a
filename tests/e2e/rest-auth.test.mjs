// REST: health, register, login (and its throttling), /api/auth/me, 401s, CORS, body limit.
import { test } from 'node:test';
import {
  assert, useServer, withServer, assertUser, assertError, signJwt, nowSec, TIME_RE,
} from './harness.mjs';

const JWT_SECRET = 'e2e-rest-auth-secret-0123456789abcdef';
const ALLOWED_ORIGIN = 'http://allowed.example:8081';
const srv = useServer({ env: { PALAVER_JWT_SECRET: JWT_SECRET, PALAVER_CORS_ORIGINS: `${ALLOWED_ORIGIN},http://other-allowed.example` } });

test('GET /health answers 200 {status:"ok"}', async () => {
  const r = await srv.api('GET', '/health');
  assert.equal(r.status, 200);
  assert.equal(r.body.status, 'ok');
});

test('register: 201 {token, user} with the User shape, email lower-cased, name trimmed', async () => {
  const r = await srv.api('POST', '/api/auth/register', null, { name: '  Alice Example \t', email: 'Alice.Example@Example.COM', password: 'password123' });
  assert.equal(r.status, 201, r.text);
  assert.equal(typeof r.body.token, 'string');
  assert.ok(r.body.token.length > 10);
  assertUser(r.body.user);
  assert.equal(r.body.user.name, 'Alice Example');
  assert.equal(r.body.user.email, 'alice.example@example.com');
  assert.equal(r.body.user.avatar, '');
  // The token is an HS256 JWT whose sub is the user id, with an exp.
  const [h, p] = r.body.token.split('.').slice(0, 2).map((x) => JSON.parse(Buffer.from(x, 'base64url').toString()));
  assert.equal(h.alg, 'HS256');
  assert.equal(p.sub, r.body.user._id);
  assert.ok(Number.isInteger(p.exp) && p.exp > nowSec(), 'token has a future exp');
  const me = await srv.api('GET', '/api/auth/me', r.body.token);
  assert.equal(me.status, 200);
  assert.deepEqual(me.body, r.body.user);
});

test('register: boundary values are accepted (name 64 chars, 64 multi-byte chars, password 8 and 128)', async () => {
  const cases = [
    { name: 'n'.repeat(64), email: 'name64@example.com', password: 'p'.repeat(8) },
    { name: 'é'.repeat(64), email: 'name64e@example.com', password: 'p'.repeat(128) },
    { name: `  ${'x'.repeat(64)}  `, email: 'name64ws@example.com', password: 'password123' },
    { name: 'Z', email: 'one.char@example.com', password: 'password123' },
  ];
  for (const c of cases) {
    const r = await srv.api('POST', '/api/auth/register', null, c);
    assert.equal(r.status, 201, `${JSON.stringify(c).slice(0, 80)}: ${r.text}`);
    assert.equal(r.body.user.name, c.name.trim());
  }
});

test('register: 400 {message} on each invalid field', async () => {
  const ok = { name: 'Valid Name', email: 'valid@example.com', password: 'password123' };
  const bad = [
    ['name missing', { email: 'a1@example.com', password: ok.password }],
    ['name empty', { ...ok, name: '', email: 'a2@example.com' }],
    ['name blank', { ...ok, name: '   \t ', email: 'a3@example.com' }],
    ['name 65 chars', { ...ok, name: 'n'.repeat(65), email: 'a4@example.com' }],
    ['name not a string', { ...ok, name: 42, email: 'a5@example.com' }],
    ['email missing', { name: ok.name, password: ok.password }],
    ['email empty', { ...ok, email: '' }],
    ['email without @', { ...ok, email: 'plainaddress.example.com' }],
    ['email without local part', { ...ok, email: '@example.com' }],
    ['email without domain', { ...ok, email: 'user@' }],
    ['email with a space', { ...ok, email: 'us er@example.com' }],
    ['email with two @', { ...ok, email: 'a@@example.com' }],
    ['email 255 chars', { ...ok, email: `${'a'.repeat(64)}@${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(58)}.com` }],
    ['email not a string', { ...ok, email: ['a@example.com'] }],
    ['password missing', { name: ok.name, email: 'a6@example.com' }],
    ['password 7 chars', { ...ok, email: 'a7@example.com', password: 'p'.repeat(7) }],
    ['password 129 chars', { ...ok, email: 'a8@example.com', password: 'p'.repeat(129) }],
    ['password not a string', { ...ok, email: 'a9@example.com', password: 12345678 }],
  ];
  assert.equal(bad[12][1].email.length, 255);
  for (const [what, body] of bad) {
    const r = await srv.api('POST', '/api/auth/register', null, body);
    assert.equal(r.status, 400, `${what}: expected 400, got ${r.status} ${r.text}`);
    assertError(r, 400);
  }
  // None of those created anything: the valid address is still free.
  const r = await srv.api('POST', '/api/auth/register', null, ok);
  assert.equal(r.status, 201, r.text);
});

test('register: 400 on names with format characters (bidi overrides, zero-width, BOM)', async () => {
  for (const [i, name] of ['\u202Enimda', 'Ada\u2066x\u2069', '\ufeffAda', '\u200b\u200d'].entries()) {
    assertError(await srv.api('POST', '/api/auth/register', null, { name, email: `cf${i}@example.com`, password: 'password123' }), 400, 'Name must be 1 to 64 characters');
  }
});

test('register: 400 on a body that is not a JSON object', async () => {
  for (const raw of ['not json', '[]', '"x"', '{"name":']) {
    const r = await srv.api('POST', '/api/auth/register', null, undefined, { raw });
    assert.equal(r.status, 400, `${raw}: status ${r.status} ${r.text}`);
    assertError(r, 400);
  }
});

test('register: 409 when the email is taken, compared case-insensitively', async () => {
  await srv.register('Dup One', 'dup@example.com');
  for (const email of ['dup@example.com', 'DUP@Example.Com']) {
    const r = await srv.api('POST', '/api/auth/register', null, { name: 'Dup Two', email, password: 'password123' });
    assertError(r, 409);
  }
});

test('login: 200 {token, user}, email case-insensitive; 401 "Invalid credentials"', async () => {
  const reg = await srv.register('Login User', 'Login.User@example.com', 'correct-horse');
  for (const email of ['login.user@example.com', 'LOGIN.USER@EXAMPLE.COM']) {
    const r = await srv.api('POST', '/api/auth/login', null, { email, password: 'correct-horse' });
    assert.equal(r.status, 200, r.text);
    assert.equal(typeof r.body.token, 'string');
    assertUser(r.body.user);
    assert.deepEqual(r.body.user, reg.user);
    const me = await srv.api('GET', '/api/auth/me', r.body.token);
    assert.equal(me.body._id, reg.user._id);
  }
  assertError(await srv.api('POST', '/api/auth/login', null, { email: 'login.user@example.com', password: 'wrong-horse' }), 401, 'Invalid credentials');
  assertError(await srv.api('POST', '/api/auth/login', null, { email: 'nobody@example.com', password: 'correct-horse' }), 401, 'Invalid credentials');
});

test('login: after 10 failed attempts the 11th within a minute gets 429, even with the right password', async () => {
  // A server of its own, so that no other test's failures count.
  await withServer({}, async (s) => {
    await s.register('Throttled', 'throttled@example.com', 'right-password');
    const other = await s.register('Other', 'other@example.com', 'right-password');
    for (let i = 1; i <= 10; i++) {
      const r = await s.api('POST', '/api/auth/login', null, { email: 'throttled@example.com', password: `wrong-${i}-password` });
      assertError(r, 401, 'Invalid credentials');
    }
    const r = await s.api('POST', '/api/auth/login', null, { email: 'throttled@example.com', password: 'right-password' });
    assertError(r, 429);
    const again = await s.api('POST', '/api/auth/login', null, { email: 'THROTTLED@example.com', password: 'right-password' });
    assertError(again, 429);
    // Existing tokens keep working meanwhile.
    assert.equal((await s.api('GET', '/api/auth/me', other.token)).status, 200);
  });
});

test('GET /api/auth/me: 200 User for the caller', async () => {
  const { token, user } = await srv.register('Me Myself', 'me@example.com');
  const r = await srv.api('GET', '/api/auth/me', token);
  assert.equal(r.status, 200);
  assertUser(r.body);
  assert.deepEqual(r.body, user);
  assert.match(r.body.createdAt, TIME_RE);
});

test('401 {message} without a token, with a bad token, an expired one, or one of an unknown user', async () => {
  const { user } = await srv.register('Victim', 'victim@example.com');
  const expired = signJwt({ sub: user._id, iat: nowSec() - 7200, exp: nowSec() - 3600 }, 'HS256', JWT_SECRET);
  const unknown = signJwt({ sub: 'nosuchuser0000000000', iat: nowSec(), exp: nowSec() + 3600 }, 'HS256', JWT_SECRET);
  const wrongKey = signJwt({ sub: user._id, iat: nowSec(), exp: nowSec() + 3600 }, 'HS256', 'some-other-secret');
  const none = signJwt({ sub: user._id, iat: nowSec(), exp: nowSec() + 3600 }, 'none');
  const routes = [
    ['GET', '/api/auth/me'], ['GET', '/api/users'], ['GET', '/api/chats'],
    ['POST', `/api/chats/with/${user._id}`], ['GET', '/api/messages/chat/abc'], ['POST', '/api/messages/chat/abc'],
  ];
  for (const [m, p] of routes) {
    for (const [what, tok] of [['none', null], ['garbage', 'not-a-jwt'], ['expired', expired], ['unknown user', unknown], ['wrong key', wrongKey], ['alg none', none]]) {
      const r = await srv.api(m, p, tok, m === 'POST' ? { text: 'hi' } : undefined);
      assert.equal(r.status, 401, `${m} ${p} with ${what} token: ${r.status} ${r.text}`);
      assertError(r, 401);
    }
  }
  // A non-Bearer scheme is not a token either.
  const { token } = await srv.register('Scheme', 'scheme@example.com');
  const r = await srv.api('GET', '/api/auth/me', null, undefined, { headers: { authorization: `Basic ${token}` } });
  assertError(r, 401);
});

test('request bodies over 64 KiB get 413 with a JSON {message}', async () => {
  const { token, user } = await srv.register('Big Body', 'bigbody@example.com');
  const peer = await srv.register('Big Peer', 'bigpeer@example.com');
  const chat = await srv.chat({ token, user }, peer);
  const big = JSON.stringify({ text: 'a'.repeat(66 * 1024) });
  const r1 = await srv.api('POST', `/api/messages/chat/${chat._id}`, token, undefined, { raw: big });
  assertError(r1, 413);
  const r2 = await srv.api('POST', '/api/auth/register', null, undefined, { raw: JSON.stringify({ name: 'x'.repeat(70000), email: 'huge@example.com', password: 'password123' }) });
  assertError(r2, 413);
  // Nothing was stored, and a normal body just under the limit's order of magnitude still works.
  const hist = await srv.api('GET', `/api/messages/chat/${chat._id}`, token);
  assert.deepEqual(hist.body, []);
  assert.equal((await srv.api('POST', `/api/messages/chat/${chat._id}`, token, { text: 'é'.repeat(4000) })).status, 201);
});

test('CORS (REST): an allowed Origin is echoed in Access-Control-Allow-Origin, a foreign one is not', async () => {
  const { token } = await srv.register('Cors User', 'cors@example.com');
  const foreign = 'http://evil.example';
  const acao = (r) => r.headers.get('access-control-allow-origin');

  // Simple requests.
  for (const p of ['/health', '/api/auth/me']) {
    const ok = await srv.api('GET', p, token, undefined, { headers: { origin: ALLOWED_ORIGIN } });
    assert.equal(ok.status, 200);
    assert.equal(acao(ok), ALLOWED_ORIGIN, `${p}: allowed origin echoed`);
    const no = await srv.api('GET', p, token, undefined, { headers: { origin: foreign } });
    assert.ok(acao(no) !== foreign && acao(no) !== '*', `${p}: foreign origin got ACAO ${acao(no)}`);
  }
  // Preflight for an authenticated JSON POST.
  const preflight = (origin) => fetch(`${srv.url}/api/messages/chat/abc`, {
    method: 'OPTIONS',
    headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type' },
  });
  const pok = await preflight(ALLOWED_ORIGIN);
  assert.ok(pok.status >= 200 && pok.status < 300, `preflight status ${pok.status}`);
  assert.equal(pok.headers.get('access-control-allow-origin'), ALLOWED_ORIGIN);
  const methods = (pok.headers.get('access-control-allow-methods') || '').toUpperCase();
  assert.ok(methods.includes('POST') || methods === '*', `allow-methods ${methods}`);
  const hdrs = (pok.headers.get('access-control-allow-headers') || '').toLowerCase();
  assert.ok((hdrs.includes('authorization') && hdrs.includes('content-type')) || hdrs === '*', `allow-headers ${hdrs}`);
  assert.equal(pok.headers.get('access-control-allow-credentials'), null, 'tokens are headers, never cookies: no credentials');
  const pno = await preflight(foreign);
  const pacao = pno.headers.get('access-control-allow-origin');
  assert.ok(pacao !== foreign && pacao !== '*', `foreign preflight got ACAO ${pacao}`);
});

test('CORS: the Socket.IO polling handshake echoes an allowed Origin, not a foreign one', async () => {
  const foreign = 'http://evil.example';
  const hs = (origin) => fetch(`${srv.url}/socket.io/?EIO=4&transport=polling&t=${Date.now()}`, { headers: { origin } });
  const hok = await hs(ALLOWED_ORIGIN);
  await hok.arrayBuffer();
  assert.equal(hok.headers.get('access-control-allow-origin'), ALLOWED_ORIGIN, 'socket.io polling: allowed origin echoed');
  const hno = await hs(foreign);
  await hno.arrayBuffer();
  const hacao = hno.headers.get('access-control-allow-origin');
  assert.ok(hacao !== foreign && hacao !== '*', `socket.io polling: foreign origin got ACAO ${hacao}`);
});
