// External identity provider (Clerk-compatible): PEM public key (RS256, ES256), issuer, audience,
// JWKS (file and URL); POST /api/auth/callback; refusal of forged tokens.
import { test } from 'node:test';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import {
  assert, useServer, withServer, assertUser, assertError, signJwt, nowSec, got, waitFor, emitWithAck,
} from './harness.mjs';

const ISS = 'https://clerk.e2e.example';
const keyDir = fs.mkdtempSync(path.join(os.tmpdir(), 'palaver-e2e-keys-'));
const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const otherRsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const pemText = rsa.publicKey.export({ type: 'spki', format: 'pem' });
const pemFile = path.join(keyDir, 'provider.pem');
fs.writeFileSync(pemFile, pemText);
process.on('exit', () => fs.rmSync(keyDir, { recursive: true, force: true }));

const claims = (extra = {}) => ({
  sub: 'ext_123', email: 'ext.user@example.com', name: 'Ext User', picture: 'https://img.example/ext_123.png',
  iss: ISS, iat: nowSec() - 5, nbf: nowSec() - 5, exp: nowSec() + 600, ...extra,
});
const rs256 = (extra, key = rsa.privateKey) => signJwt(claims(extra), 'RS256', key);

// Without PALAVER_AUTH_AUDIENCE the server refuses to start unless told to accept any audience.
const ANY_AUDIENCE = { PALAVER_AUTH_AUDIENCE_ANY: 'true' };
const srv = useServer({ env: { PALAVER_AUTH_PUBLIC_KEY: pemFile, PALAVER_AUTH_ISSUER: ISS, ...ANY_AUDIENCE } });

test('a provider token of a user not yet created: socket refused with "User not found!"', async () => {
  const t = rs256({ sub: 'ext_not_yet' });
  assert.equal(await srv.connectError(t), 'User not found!');
  const me = await srv.api('GET', '/api/auth/me', t);
  assert.ok(me.status === 401 || me.status === 404, `GET /api/auth/me before the callback: ${me.status}`);
  assertError(me, me.status);
});

test('POST /api/auth/callback: 200 User created from the claims on first call, the same user afterwards', async () => {
  const t = rs256();
  const r1 = await srv.api('POST', '/api/auth/callback', t);
  assert.equal(r1.status, 200, r1.text);
  assertUser(r1.body);
  assert.equal(r1.body.name, 'Ext User');
  assert.equal(r1.body.email, 'ext.user@example.com');
  assert.equal(r1.body.avatar, 'https://img.example/ext_123.png');
  const r2 = await srv.api('POST', '/api/auth/callback', rs256());
  assert.equal(r2.status, 200, r2.text);
  assert.equal(r2.body._id, r1.body._id, 'same _id on the second call');
  assert.equal(r2.body.createdAt, r1.body.createdAt);
});

test('callback: name from given_name + family_name, else the email\'s local part', async () => {
  const r1 = await srv.api('POST', '/api/auth/callback', rs256({ sub: 'ext_ada', email: 'ada@example.com', name: undefined, given_name: 'Ada', family_name: 'Lovelace', picture: undefined }));
  assert.equal(r1.status, 200, r1.text);
  assert.equal(r1.body.name, 'Ada Lovelace');
  assert.equal(r1.body.avatar, '', 'no picture: empty avatar');
  const r2 = await srv.api('POST', '/api/auth/callback', rs256({ sub: 'ext_anon', email: 'grace.hopper@example.com', name: undefined, picture: undefined }));
  assert.equal(r2.status, 200, r2.text);
  assert.equal(r2.body.name, 'grace.hopper');
  assert.notEqual(r2.body._id, r1.body._id);
});

test('the provider token works on REST and on a socket, alongside built-in accounts', async () => {
  const t = rs256();
  const ext = (await srv.api('POST', '/api/auth/callback', t)).body;
  const me = await srv.api('GET', '/api/auth/me', t);
  assert.equal(me.status, 200, me.text);
  assert.deepEqual(me.body, ext);
  const local = await srv.register('Local Friend', 'local.friend@example.com');
  assert.equal((await srv.api('GET', '/api/auth/me', local.token)).status, 200, 'built-in tokens still work');
  const users = await srv.api('GET', '/api/users?q=local.friend@example.com', t);
  assert.deepEqual(users.body.map((u) => u._id), [local.user._id]);
  const chat = await srv.api('POST', `/api/chats/with/${local.user._id}`, t);
  assert.equal(chat.status, 200, chat.text);
  assert.equal(chat.body.participant._id, local.user._id);

  const se = await srv.connect(t);
  const sl = await srv.connect(local.token);
  await waitFor(() => got(sl, 'user-online').some((e) => e.userId === ext._id) || got(sl, 'online-users')[0]?.userIds.includes(ext._id), 3000, 'the external user is online');
  const ack = await emitWithAck(se, 'send-message', { chatId: chat.body._id, text: 'from the provider' });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal(ack.message.sender._id, ext._id);
  await waitFor(() => got(sl, 'new-message').some((m) => m._id === ack.message._id), 3000);
  const viaHeader = await srv.connect(t, { header: true });
  assert.ok(viaHeader.connected);
});

test('refused with 401 (and socket "Unauthorized"): wrong issuer, no issuer, expired, other key, alg none, alg confusion', async () => {
  await srv.api('POST', '/api/auth/callback', rs256()); // the user exists, so only the token is at fault
  const bad = {
    'wrong issuer': rs256({ iss: 'https://evil.example' }),
    'no issuer': rs256({ iss: undefined }),
    expired: rs256({ iat: nowSec() - 7200, nbf: nowSec() - 7200, exp: nowSec() - 3600 }),
    'signed by another key': rs256({}, otherRsa.privateKey),
    'alg none': signJwt(claims(), 'none'),
    'alg none, RS256 signature kept': `${signJwt(claims(), 'none')}${rs256().split('.')[2]}`,
    'HS256 with the PEM text as secret': signJwt(claims(), 'HS256', pemText),
    'HS256 with the PEM text trimmed as secret': signJwt(claims(), 'HS256', pemText.trim()),
    'HS256 with the DER key as secret': signJwt(claims(), 'HS256', rsa.publicKey.export({ type: 'spki', format: 'der' })),
    'RS256 payload swapped': (() => { const [h, , s] = rs256().split('.'); return `${h}.${Buffer.from(JSON.stringify(claims({ sub: 'ext_ada' }))).toString('base64url')}.${s}`; })(),
  };
  for (const [what, t] of Object.entries(bad)) {
    for (const [m, p] of [['POST', '/api/auth/callback'], ['GET', '/api/auth/me'], ['GET', '/api/chats']]) {
      const r = await srv.api(m, p, t);
      assert.equal(r.status, 401, `${what}: ${m} ${p} answered ${r.status} ${r.text}`);
      assertError(r, 401);
    }
    assert.equal(await srv.connectError(t), 'Unauthorized', `${what}: socket`);
  }
  assertError(await srv.api('POST', '/api/auth/callback', null), 401);
});

test('email_verified: false is refused; an avatar that is not https is dropped', async () => {
  const unverified = rs256({ sub: 'ext_unverified', email: 'unverified@example.com', email_verified: false });
  assertError(await srv.api('POST', '/api/auth/callback', unverified), 401);
  assert.equal(await srv.connectError(unverified), 'Unauthorized');
  const r = await srv.api('POST', '/api/auth/callback', rs256({ sub: 'ext_js', email: 'js@example.com', email_verified: true, picture: 'javascript:alert(1)' }));
  assert.equal(r.status, 200, r.text);
  assert.equal(r.body.avatar, '', 'a javascript: avatar never reaches a client');
});

test('callback refuses a built-in token (it is for provider tokens)', async () => {
  const local = await srv.register('Local Only', 'local.only@example.com');
  const r = await srv.api('POST', '/api/auth/callback', local.token);
  assert.equal(r.status, 401, `${r.status} ${r.text}`);
  assertError(r, 401);
});

test('ES256 PEM key', async () => {
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const file = path.join(keyDir, 'es256.pem');
  fs.writeFileSync(file, ec.publicKey.export({ type: 'spki', format: 'pem' }));
  await withServer({ env: { PALAVER_AUTH_PUBLIC_KEY: file, ...ANY_AUDIENCE } }, async (s) => {
    const t = signJwt(claims({ sub: 'ext_ec', email: 'ec@example.com', iss: undefined }), 'ES256', ec.privateKey);
    const r = await s.api('POST', '/api/auth/callback', t);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.email, 'ec@example.com');
    assert.equal((await s.api('GET', '/api/auth/me', t)).status, 200);
    const other = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    assertError(await s.api('GET', '/api/auth/me', signJwt(claims({ sub: 'ext_ec', iss: undefined }), 'ES256', other.privateKey)), 401);
  });
});

test('PALAVER_AUTH_AUDIENCE is enforced when set', async () => {
  await withServer({ env: { PALAVER_AUTH_PUBLIC_KEY: pemFile, PALAVER_AUTH_ISSUER: ISS, PALAVER_AUTH_AUDIENCE: 'palaver-e2e' } }, async (s) => {
    const good = rs256({ aud: 'palaver-e2e' });
    assert.equal((await s.api('POST', '/api/auth/callback', good)).status, 200);
    assertError(await s.api('POST', '/api/auth/callback', rs256({ aud: 'someone-else' })), 401);
    assertError(await s.api('POST', '/api/auth/callback', rs256({ aud: undefined })), 401);
    assert.equal(await s.connectError(rs256({ aud: 'someone-else' })), 'Unauthorized');
  });
});

function jwks(kid) {
  return { keys: [{ ...rsa.publicKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' }] };
}

test('PALAVER_AUTH_JWKS as a file path', async () => {
  const file = path.join(keyDir, 'jwks.json');
  fs.writeFileSync(file, JSON.stringify(jwks('e2e-kid-1')));
  await withServer({ env: { PALAVER_AUTH_JWKS: file, PALAVER_AUTH_ISSUER: ISS, ...ANY_AUDIENCE } }, async (s) => {
    const t = signJwt(claims(), 'RS256', rsa.privateKey, { kid: 'e2e-kid-1' });
    const r = await s.api('POST', '/api/auth/callback', t);
    assert.equal(r.status, 200, r.text);
    assert.equal((await s.api('GET', '/api/auth/me', t)).status, 200);
    assertError(await s.api('GET', '/api/auth/me', signJwt(claims(), 'RS256', otherRsa.privateKey, { kid: 'e2e-kid-1' })), 401);
    assertError(await s.api('GET', '/api/auth/me', signJwt(claims(), 'HS256', JSON.stringify(jwks('e2e-kid-1').keys[0]), { kid: 'e2e-kid-1' })), 401);
  });
});

test('PALAVER_AUTH_JWKS as a URL', async () => {
  const body = JSON.stringify(jwks('e2e-kid-2'));
  const jwksServer = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(body);
  });
  await new Promise((r) => jwksServer.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${jwksServer.address().port}/.well-known/jwks.json`;
  try {
    await withServer({ env: { PALAVER_AUTH_JWKS: url, PALAVER_AUTH_ISSUER: ISS, ...ANY_AUDIENCE } }, async (s) => {
      const t = signJwt(claims(), 'RS256', rsa.privateKey, { kid: 'e2e-kid-2' });
      const r = await s.api('POST', '/api/auth/callback', t);
      assert.equal(r.status, 200, r.text);
      const sock = await s.connect(t);
      assert.ok(sock.connected);
      assertError(await s.api('GET', '/api/auth/me', signJwt(claims(), 'RS256', otherRsa.privateKey, { kid: 'e2e-kid-2' })), 401);
    });
  } finally {
    jwksServer.close();
    jwksServer.closeAllConnections();
  }
});
