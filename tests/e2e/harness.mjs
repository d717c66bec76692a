// Test harness for the palaver end-to-end suite.
//
// Starts a real server process (PALAVER_SERVER_CMD, default ../../target/release/palaver serve)
// on a free 127.0.0.1 port with a fresh data directory, talks to it over REST (fetch) and
// Socket.IO (the real socket.io-client), and stops it afterwards. Everything a test needs is
// exported from here; the wire contract itself is /shared/PROTOCOL.md.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';

export { assert };

const HERE = path.dirname(fileURLToPath(import.meta.url));

/**
 * Limits that make every test except the rate-limit tests immune to send throttling, and to the
 * per-address limits (every test client comes from 127.0.0.1).
 */
export const RAISED_LIMITS = {
  PALAVER_SEND_RATE_PER_SEC: '100000',
  PALAVER_SEND_BURST: '100000',
  PALAVER_REGISTRATIONS_PER_ADDRESS: '100000',
  PALAVER_CONNECTIONS_PER_ADDRESS: '100000',
};

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A "quiet period" after which a missing or duplicated delivery is taken as final. */
export const QUIET_MS = 300;
export const quiet = (ms = QUIET_MS) => sleep(ms);

export const ID_RE = /^[0-9A-Za-z_-]{1,32}$/;
export const TIME_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

function serverCommand() {
  const raw = process.env.PALAVER_SERVER_CMD;
  if (raw && raw.trim()) return raw.trim().split(/\s+/);
  return [path.resolve(HERE, '../../target/release/palaver'), 'serve'];
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const running = new Set();

/**
 * With PALAVER_E2E_LOG_DIR set (tests/run.sh sets it), every server's whole output is kept there
 * (`server-*.log`) and every token and password the suite sends is listed in `secrets.txt`, for
 * run.sh to check that none of them reached a log.
 */
const LOG_DIR = process.env.PALAVER_E2E_LOG_DIR || '';
const recordedSecrets = new Set();

/** Notes a token or password the suite sends (short strings would match by chance: skipped). */
function recordSecret(value) {
  if (!LOG_DIR || typeof value !== 'string' || value.length < 8 || recordedSecrets.has(value)) return;
  recordedSecrets.add(value);
  fs.appendFileSync(path.join(LOG_DIR, 'secrets.txt'), `${value}\n`);
}

/**
 * A server process. `start()` spawns it and waits for GET /health 200; `stop()` sends SIGTERM
 * then SIGKILL; `kill()` sends SIGKILL at once (crash). The data directory outlives restarts and
 * is removed by `dispose()`.
 */
export class Server {
  constructor({ env = {}, defaultLimits = false, dataDir, port } = {}) {
    this.extraEnv = env;
    this.defaultLimits = defaultLimits;
    this.dataDir = dataDir || fs.mkdtempSync(path.join(os.tmpdir(), 'palaver-e2e-'));
    this.port = port || 0;
    this.proc = null;
    this.log = [];
    this.logSize = 0;
    this.generation = 0;
    this.logFile = LOG_DIR
      ? path.join(LOG_DIR, `server-${process.pid}-${crypto.randomBytes(4).toString('hex')}.log`)
      : null;
  }

  get url() { return `http://127.0.0.1:${this.port}`; }

  append(chunk) {
    this.log.push(chunk);
    this.logSize += chunk.length;
    while (this.logSize > 256 * 1024 && this.log.length > 1) this.logSize -= this.log.shift().length;
  }

  logs() { return Buffer.concat(this.log.map((c) => Buffer.from(c))).toString('utf8'); }

  env() {
    const env = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PALAVER_')) env[k] = v;
    Object.assign(env, this.defaultLimits ? {} : RAISED_LIMITS, {
      PALAVER_LISTEN: `127.0.0.1:${this.port}`,
      PALAVER_DATA_DIR: this.dataDir,
    }, this.extraEnv);
    for (const [k, v] of Object.entries(env)) if (v === undefined || v === null) delete env[k];
    recordSecret(env.PALAVER_JWT_SECRET);
    return env;
  }

  /** Starts the process (on a new free port unless `samePort`) and waits for /health. */
  async start({ samePort = false, timeoutMs = 30000 } = {}) {
    assert.equal(this.proc, null, 'server already running');
    if (!samePort || !this.port) this.port = await freePort();
    this.generation += 1;
    const [cmd, ...args] = serverCommand();
    this.append(`\n===== start #${this.generation}: ${cmd} ${args.join(' ')} (port ${this.port}, data ${this.dataDir})\n`);
    const proc = spawn(cmd, args, { cwd: HERE, env: this.env(), stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    this.proc = proc;
    running.add(this);
    const output = (d) => {
      this.append(d);
      if (this.logFile) fs.appendFileSync(this.logFile, d);
    };
    proc.stdout.on('data', output);
    proc.stderr.on('data', output);
    this.exited = new Promise((resolve) => {
      proc.on('exit', (code, signal) => {
        this.append(`===== exit #${this.generation}: code=${code} signal=${signal}\n`);
        if (this.proc === proc) this.proc = null;
        running.delete(this);
        resolve({ code, signal });
      });
      proc.on('error', (e) => {
        this.append(`===== spawn error: ${e.message}\n`);
        if (this.proc === proc) this.proc = null;
        running.delete(this);
        resolve({ code: null, signal: null, error: e });
      });
    });
    const deadline = Date.now() + timeoutMs;
    let gone = false;
    this.exited.then(() => { gone = true; });
    for (;;) {
      if (gone) throw new Error(`server exited before /health answered\n${this.logs()}`);
      try {
        const r = await fetch(`${this.url}/health`, { signal: AbortSignal.timeout(1000) });
        if (r.status === 200) { await r.arrayBuffer(); break; }
      } catch { /* not up yet */ }
      if (Date.now() > deadline) {
        await this.kill();
        throw new Error(`server did not answer GET /health 200 within ${timeoutMs} ms\n${this.logs()}`);
      }
      await sleep(50);
    }
    return this;
  }

  signal(sig) {
    if (!this.proc) return;
    try { process.kill(-this.proc.pid, sig); } catch { try { this.proc.kill(sig); } catch { /* gone */ } }
  }

  /** Graceful stop: SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 5000) {
    if (!this.proc) return;
    const exited = this.exited;
    this.signal('SIGTERM');
    const t = setTimeout(() => this.signal('SIGKILL'), graceMs);
    await exited;
    clearTimeout(t);
  }

  /** Crash: SIGKILL the whole process group at once. */
  async kill() {
    if (!this.proc) return;
    const exited = this.exited;
    this.signal('SIGKILL');
    await exited;
  }

  async dispose() {
    await this.stop();
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }

  // ---- REST -------------------------------------------------------------------------------

  /** `api(method, path, token, body)` → `{ status, body, headers }`; body parsed as JSON when possible. */
  async api(method, p, token, body, { headers = {}, raw } = {}) {
    const h = { ...headers };
    if (token) h.authorization = `Bearer ${token}`;
    recordSecret(token);
    if (body && typeof body === 'object') recordSecret(body.password);
    let payload;
    if (raw !== undefined) payload = raw;
    else if (body !== undefined) { payload = JSON.stringify(body); h['content-type'] = 'application/json'; }
    if (payload !== undefined && !h['content-type']) h['content-type'] = 'application/json';
    const r = await fetch(this.url + p, { method, headers: h, body: payload, signal: AbortSignal.timeout(15000) });
    const text = await r.text();
    let parsed = text;
    try { parsed = text ? JSON.parse(text) : undefined; } catch { /* leave as text */ }
    return { status: r.status, body: parsed, headers: r.headers, text };
  }

  /** Registers a user and returns `{ token, user }`; asserts 201. */
  async register(name, email, password = 'password123') {
    const r = await this.api('POST', '/api/auth/register', null, { name, email, password });
    assert.equal(r.status, 201, `register ${email}: ${r.status} ${r.text}`);
    return r.body;
  }

  /** Registers `n` users (a few at a time) named `${prefix}<i>`. */
  async users(n, prefix = 'user') {
    const tag = crypto.randomBytes(3).toString('hex');
    const out = new Array(n);
    let next = 0;
    const worker = async () => {
      while (next < n) {
        const i = next++;
        out[i] = await this.register(`${prefix}${i}`, `${prefix}${i}.${tag}@example.com`);
      }
    };
    await Promise.all(Array.from({ length: Math.min(n, 8) }, worker));
    return out;
  }

  /** The 1:1 chat between two registered users (`{token, user}` each). */
  async chat(a, b) {
    const r = await this.api('POST', `/api/chats/with/${b.user._id}`, a.token);
    assert.equal(r.status, 200, `chat: ${r.status} ${r.text}`);
    return r.body;
  }

  /** Sends over REST and asserts 201. */
  async post(a, chatId, text, clientMsgId) {
    const body = clientMsgId === undefined ? { text } : { text, clientMsgId };
    const r = await this.api('POST', `/api/messages/chat/${chatId}`, a.token, body);
    assert.equal(r.status, 201, `post: ${r.status} ${r.text}`);
    return r.body;
  }

  /**
   * The whole history of a chat, paginated with `after=` (ascending seq). Reads are rate limited
   * per user (bursts of 100, then 20 a second): a 429 is waited out, as a client would.
   */
  async history(token, chatId, pageSize = 500) {
    const all = [];
    let after = 0;
    let limited = 0;
    for (;;) {
      const r = await this.api('GET', `/api/messages/chat/${chatId}?after=${after}&limit=${pageSize}`, token);
      if (r.status === 429 && limited < 100) {
        limited += 1;
        await sleep(100);
        continue;
      }
      assert.equal(r.status, 200, `history: ${r.status} ${r.text}`);
      if (r.body.length === 0) break;
      all.push(...r.body);
      after = r.body[r.body.length - 1].seq;
    }
    return all;
  }

  // ---- Socket.IO --------------------------------------------------------------------------

  /**
   * A connected socket.io-client socket for `token`. Every received event is recorded on
   * `socket.events` (see `got`). opts: `transports` (default ['websocket']), `header: true` to
   * send the token as `Authorization: Bearer` instead of `auth.token`, `auth` to override.
   */
  socket(token, opts = {}) {
    const { transports = ['websocket'], header = false, timeoutMs = 5000, ...rest } = opts;
    const o = { transports, reconnection: false, forceNew: true, autoConnect: false, timeout: timeoutMs, ...rest };
    if (token != null && !header && !o.auth) o.auth = { token };
    if (token != null && header) o.extraHeaders = { authorization: `Bearer ${token}` };
    recordSecret(token);
    recordSecret(o.auth && o.auth.token);
    const s = io(this.url, o);
    s.events = new Map();
    s.onAny((ev, ...args) => {
      if (!s.events.has(ev)) s.events.set(ev, []);
      s.events.get(ev).push(args.length <= 1 ? args[0] : args);
    });
    openSockets.add(s);
    return s;
  }

  /** Connects and resolves when connected; rejects with the connect_error. */
  async connect(token, opts = {}) {
    const s = this.socket(token, opts);
    await new Promise((resolve, reject) => {
      const t = setTimeout(() => { cleanup(); reject(new Error('socket connect timed out')); }, opts.timeoutMs || 5000);
      const ok = () => { cleanup(); resolve(); };
      const ko = (e) => { cleanup(); reject(e); };
      const cleanup = () => { clearTimeout(t); s.off('connect', ok); s.off('connect_error', ko); };
      s.on('connect', ok);
      s.on('connect_error', ko);
      s.connect();
    });
    return s;
  }

  /** Connects expecting a refusal; resolves with the connect_error message. */
  async connectError(token, opts = {}) {
    const s = this.socket(token, opts);
    return await new Promise((resolve, reject) => {
      const t = setTimeout(() => { s.close(); reject(new Error('no connect_error within 5 s')); }, 5000);
      s.on('connect', () => { clearTimeout(t); s.close(); reject(new Error('connected, but a connect_error was expected')); });
      s.on('connect_error', (e) => { clearTimeout(t); s.close(); resolve(e.message); });
      s.connect();
    });
  }
}

const openSockets = new Set();

/** Every payload of event `name` received by `socket` so far (a live array). */
export function got(socket, name) {
  if (!socket.events.has(name)) socket.events.set(name, []);
  return socket.events.get(name);
}

/** `socket.timeout(ms).emitWithAck(event, payload)`. */
export function emitWithAck(socket, event, payload, timeoutMs = 5000) {
  return socket.timeout(timeoutMs).emitWithAck(event, payload);
}

/** Polls `predicate` until it returns a truthy value (returned) or `timeoutMs` passes (throws). */
export async function waitFor(predicate, timeoutMs = 5000, what = 'condition') {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Resolves when the socket is disconnected (e.g. closed by the server). */
export function disconnected(socket, timeoutMs = 5000) {
  if (!socket.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('socket still connected')), timeoutMs);
    socket.once('disconnect', () => { clearTimeout(t); resolve(); });
  });
}

export function closeSocket(s) {
  openSockets.delete(s);
  s.close();
}

// ---- JWT --------------------------------------------------------------------------------------

const b64u = (b) => Buffer.from(b).toString('base64url');

/** A signed compact JWS. `alg`: HS256 (key = secret string/Buffer), RS256, ES256 (key = KeyObject/PEM), none. */
export function signJwt(claims, alg, key, headerExtra = {}) {
  const header = { alg, typ: 'JWT', ...headerExtra };
  const input = `${b64u(JSON.stringify(header))}.${b64u(JSON.stringify(claims))}`;
  let sig;
  if (alg === 'HS256') sig = crypto.createHmac('sha256', key).update(input).digest();
  else if (alg === 'RS256') sig = crypto.sign('sha256', Buffer.from(input), key);
  else if (alg === 'ES256') sig = crypto.sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  else if (alg === 'none') sig = Buffer.alloc(0);
  else throw new Error(`unsupported alg ${alg}`);
  return `${input}.${b64u(sig)}`;
}

export const nowSec = () => Math.floor(Date.now() / 1000);

// ---- per-file server lifecycle and failure diagnostics ----------------------------------------

/**
 * Starts one server for the calling test file (in `before`), then runs `setup(srv)` if given, and
 * disposes the server (in `after`). Returns the Server, usable once `before` has run.
 * (Put file-level setup in `setup`: Node 20 runs several root-level `before` hooks concurrently.)
 */
export function useServer(opts = {}, setup) {
  const srv = new Server(opts);
  before(async () => {
    await srv.start();
    try {
      if (setup) await setup(srv);
    } catch (e) {
      dumpLogs([srv], e);
      throw e;
    }
  });
  after(async () => { await srv.dispose(); });
  return srv;
}

/** Starts a server for one test and disposes it when `fn` finishes. */
export async function withServer(opts, fn) {
  const srv = new Server(opts);
  try {
    await srv.start();
    return await fn(srv);
  } catch (e) {
    dumpLogs([srv], e);
    throw e;
  } finally {
    await srv.dispose();
  }
}

const dumped = new WeakSet();
function dumpLogs(servers, err) {
  if (err && typeof err === 'object') {
    if (dumped.has(err)) return;
    dumped.add(err);
  }
  for (const s of servers) {
    const text = s.logs().slice(-20000);
    console.log(`----- server output (port ${s.port}, data ${s.dataDir}) -----\n${text}\n----- end of server output -----`);
  }
}

afterEach((t) => {
  for (const s of openSockets) s.close();
  openSockets.clear();
  if (t && t.passed === false && running.size) dumpLogs([...running]);
});

// ---- shapes (PROTOCOL.md "Objects") -----------------------------------------------------------

const SECRET_KEY_RE = /pass|hash|salt|secret|^pw$/i;

function noSecrets(o, what) {
  for (const k of Object.keys(o)) assert.ok(!SECRET_KEY_RE.test(k), `${what} leaks field ${k}`);
}

/** Public user: `{ _id, name, email, avatar }`. */
export function assertPublicUser(u, what = 'public user') {
  assert.ok(u && typeof u === 'object', `${what} is an object`);
  assert.match(u._id, ID_RE, `${what}._id`);
  assert.equal(typeof u.name, 'string', `${what}.name`);
  assert.equal(typeof u.email, 'string', `${what}.email`);
  assert.equal(typeof u.avatar, 'string', `${what}.avatar`);
  noSecrets(u, what);
}

/** User: `{ _id, name, email, avatar, createdAt, updatedAt }`. */
export function assertUser(u, what = 'user') {
  assertPublicUser(u, what);
  assert.match(u.createdAt, TIME_RE, `${what}.createdAt`);
  assert.match(u.updatedAt, TIME_RE, `${what}.updatedAt`);
}

/** Message: `{ _id, chat, sender, text, seq, clientMsgId, createdAt, updatedAt }`. */
export function assertMessage(m, what = 'message') {
  assert.ok(m && typeof m === 'object', `${what} is an object`);
  assert.match(m._id, ID_RE, `${what}._id`);
  assert.equal(typeof m.chat, 'string', `${what}.chat is a plain string id`);
  assert.match(m.chat, ID_RE, `${what}.chat`);
  assertPublicUser(m.sender, `${what}.sender`);
  assert.equal(typeof m.text, 'string', `${what}.text`);
  assert.ok(Number.isInteger(m.seq) && m.seq >= 1, `${what}.seq is a positive integer (got ${m.seq})`);
  assert.ok(m.clientMsgId === null || typeof m.clientMsgId === 'string', `${what}.clientMsgId is a string or null`);
  assert.match(m.createdAt, TIME_RE, `${what}.createdAt`);
  assert.match(m.updatedAt, TIME_RE, `${what}.updatedAt`);
}

/** Chat as listed for a user. */
export function assertChat(c, what = 'chat') {
  assert.ok(c && typeof c === 'object', `${what} is an object`);
  assert.match(c._id, ID_RE, `${what}._id`);
  assert.ok('participant' in c, `${what}.participant present`);
  if (c.participant !== null) assertPublicUser(c.participant, `${what}.participant`);
  assert.ok(Array.isArray(c.participants), `${what}.participants is an array`);
  c.participants.forEach((p, i) => assertPublicUser(p, `${what}.participants[${i}]`));
  assert.ok('lastMessage' in c, `${what}.lastMessage present`);
  if (c.lastMessage !== null) assertMessage(c.lastMessage, `${what}.lastMessage`);
  assert.match(c.lastMessageAt, TIME_RE, `${what}.lastMessageAt`);
  assert.match(c.createdAt, TIME_RE, `${what}.createdAt`);
}

/** Asserts an error answer: status, JSON `{ message }` (and the exact message when given). */
export function assertError(r, status, message) {
  assert.equal(r.status, status, `expected ${status}, got ${r.status} ${r.text}`);
  assert.ok(r.body && typeof r.body === 'object', `error body is JSON: ${r.text}`);
  assert.equal(typeof r.body.message, 'string', `error body has a message: ${r.text}`);
  if (message !== undefined) assert.equal(r.body.message, message);
}

/** Asserts a refused ack `{ ok: false, error }` plus the matching `socket-error { message }`. */
export async function assertRefused(socket, ack, message) {
  assert.deepEqual({ ok: ack && ack.ok, error: ack && ack.error }, { ok: false, error: message }, `ack ${JSON.stringify(ack)}`);
  const errs = got(socket, 'socket-error');
  const from = socket.errSeen || 0;
  const i = await waitFor(() => {
    for (let k = from; k < errs.length; k++) if (errs[k] && errs[k].message === message) return k + 1;
    return 0;
  }, 2000, `socket-error { message: ${message} }`);
  socket.errSeen = i;
}
