// The web client's own Socket.IO client (web/assets/socket.js) under Node's WebSocket, against
// the real release binary: handshake with the `auth` token, acks and their timeouts, events,
// refusal of a bad token, reconnection after a server restart; and its pieces on their own
// (packet parsing, backoff bounds, answering pings) with a scripted WebSocket.
import { after, before, describe, test } from 'node:test';
import { Server, assert, sleep, eventually } from './harness.mjs';
import { SocketClient, backoffDelay, engineUrl, parsePacket } from '../../web/assets/socket.js';

const server = new Server({ PALAVER_SEND_RATE_PER_SEC: '1000', PALAVER_SEND_BURST: '1000' });
const clients = [];

function client(token, options = {}) {
  const socket = new SocketClient({ url: server.url, token: () => token, backoffMinMs: 100, backoffMaxMs: 400, ...options });
  clients.push(socket);
  return socket;
}

/** Resolves with the arguments of the next `event` on `socket`. */
function next(socket, event, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${timeoutMs} ms`)), timeoutMs);
    const handler = (...args) => {
      clearTimeout(timer);
      socket.off(event, handler);
      resolve(args);
    };
    socket.on(event, handler);
  });
}

async function connected(socket) {
  const up = next(socket, 'connect');
  socket.connect();
  await up;
  return socket;
}

describe('socket.js against palaver', () => {
  let ada;
  let bob;
  let chatId;

  before(async () => {
    await server.start();
    ada = await server.register('Ada', 'ada-socket@example.com');
    bob = await server.register('Bob', 'bob-socket@example.com');
    chatId = (await server.post(`/api/chats/with/${bob.user._id}`, {}, ada.token)).body._id;
  });

  after(async () => {
    for (const socket of clients) socket.close();
    await server.dispose();
  });

  test('connects with the token, sends with an ack and receives the event', async () => {
    const adaSocket = await connected(client(ada.token));
    const bobSocket = await connected(client(bob.token));
    const delivered = next(bobSocket, 'new-message');
    const ack = await adaSocket.emitWithAck('send-message', { chatId, text: 'hello', clientMsgId: 'c-1' });
    assert.equal(ack.ok, true);
    assert.equal(ack.message.text, 'hello');
    const [message] = await delivered;
    assert.equal(message._id, ack.message._id);
    assert.equal(message.seq, ack.message.seq);

    const again = await adaSocket.emitWithAck('send-message', { chatId, text: 'hello', clientMsgId: 'c-1' });
    assert.equal(again.message._id, ack.message._id, 'same clientMsgId: the original message');

    const sync = await bobSocket.emitWithAck('sync', { chatId, afterSeq: 0 });
    assert.deepEqual(sync.messages.map((m) => m._id), [ack.message._id]);
    assert.equal(sync.hasMore, false);
  });

  test('a refusal comes back in the ack', async () => {
    const socket = await connected(client(ada.token));
    const ack = await socket.emitWithAck('join-chat', 'no-such-chat');
    assert.deepEqual(ack, { ok: false, error: 'Chat not found' });
  });

  test('an event the server does not acknowledge times out', async () => {
    const socket = await connected(client(ada.token));
    const started = Date.now();
    await assert.rejects(socket.emitWithAck('typing', { chatId, isTyping: true }, 300), (error) => error.code === 'timeout');
    assert.ok(Date.now() - started >= 290);
    assert.equal(socket.acks.size, 0, 'the timed-out ack is forgotten');
  });

  test('a bad token is refused for good: connect_error, no reconnection', async () => {
    const socket = client('not-a-token');
    const refused = next(socket, 'connect_error');
    let attempts = 0;
    socket.on('reconnecting', () => { attempts += 1; });
    socket.connect();
    const [error] = await refused;
    assert.deepEqual(error, { message: 'Unauthorized', fatal: true });
    await sleep(500);
    assert.equal(attempts, 0);
    assert.equal(socket.connected, false);
  });

  test('emitting while disconnected fails at once', async () => {
    const socket = client(ada.token);
    assert.equal(socket.emit('typing', { chatId, isTyping: true }), false);
    await assert.rejects(socket.emitWithAck('sync', { chatId }), (error) => error.code === 'disconnected');
  });

  test('reconnects by itself after a server restart, and pending acks fail', async () => {
    const socket = await connected(client(ada.token));
    let reconnecting = 0;
    socket.on('reconnecting', () => { reconnecting += 1; });
    const down = next(socket, 'disconnect');
    const pending = socket.emitWithAck('typing', { chatId, isTyping: false }, 10000)
      .then(() => 'answered', (error) => error.code);
    await server.stop();
    await down;
    assert.equal(await pending, 'disconnected');
    const up = next(socket, 'connect', 15000);
    await sleep(300);
    await server.start();
    const restarted = Date.now();
    await up;
    // Attempts that failed while the server was down must not hold the next one back.
    assert.ok(Date.now() - restarted < 3000, `reconnected ${Date.now() - restarted} ms after the restart`);
    assert.ok(reconnecting >= 1);
    const ack = await socket.emitWithAck('sync', { chatId, afterSeq: 0 });
    assert.equal(ack.ok, true);
  });
});

/** A WebSocket stand-in that records what the client sends and lets a test play the server. */
class ScriptedWebSocket {
  static last = null;
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = false;
    ScriptedWebSocket.last = this;
  }
  send(frame) { this.sent.push(frame); }
  close() { this.closed = true; }
  serve(frame) { this.onmessage?.({ data: frame }); }
}

describe('socket.js pieces', () => {
  test('the Engine.IO URL is WebSocket-only, v4', () => {
    assert.equal(engineUrl('http://127.0.0.1:3000'), 'ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket');
    assert.equal(engineUrl('https://chat.example.com/app'), 'wss://chat.example.com/socket.io/?EIO=4&transport=websocket');
  });

  test('packets parse with and without ack id and namespace', () => {
    assert.deepEqual(parsePacket('2["new-message",{"seq":1}]'), { type: '2', id: null, data: ['new-message', { seq: 1 }] });
    assert.deepEqual(parsePacket('312[{"ok":true}]'), { type: '3', id: 12, data: [{ ok: true }] });
    assert.deepEqual(parsePacket('0/admin,{"sid":"x"}'), { type: '0', id: null, data: { sid: 'x' } });
    assert.deepEqual(parsePacket('1'), { type: '1', id: null, data: undefined });
    assert.equal(parsePacket('2[broken'), null);
  });

  test('backoff grows, is capped, and is jittered between half and all of its ceiling', () => {
    const bounds = { minMs: 500, maxMs: 5000 };
    assert.equal(backoffDelay(0, bounds, () => 0), 250);
    assert.equal(backoffDelay(0, bounds, () => 1), 500);
    assert.equal(backoffDelay(3, bounds, () => 1), 4000);
    assert.equal(backoffDelay(10, bounds, () => 1), 5000);
    assert.equal(backoffDelay(10, bounds, () => 0), 2500);
    const seen = new Set(Array.from({ length: 50 }, () => backoffDelay(2, bounds)));
    assert.ok(seen.size > 10, 'random jitter');
    for (const delay of seen) assert.ok(delay >= 1000 && delay <= 2000, `${delay}`);
  });

  test('sends auth in CONNECT, answers pings with pongs, drops a silent link', async () => {
    const socket = new SocketClient({ url: 'http://127.0.0.1:9', token: () => 'tok', WebSocket: ScriptedWebSocket, backoffMinMs: 60000 });
    socket.connect();
    const ws = ScriptedWebSocket.last;
    ws.serve('0{"sid":"s","upgrades":[],"pingInterval":100,"pingTimeout":50,"maxPayload":65536}');
    assert.deepEqual(ws.sent, ['40{"token":"tok"}']);
    const up = next(socket, 'connect');
    ws.serve('40{"sid":"x"}');
    await up;
    ws.serve('2');
    assert.equal(ws.sent.at(-1), '3');
    const received = next(socket, 'user-online');
    ws.serve('42["user-online",{"userId":"u1"}]');
    assert.deepEqual(await received, [{ userId: 'u1' }]);

    const spoofed = [];
    socket.on('connect', () => spoofed.push('connect'));
    ws.serve('42["connect"]');
    assert.deepEqual(spoofed, [], 'the server cannot fake a local event');

    const down = next(socket, 'disconnect');
    const [reason] = await down;
    assert.equal(reason, 'ping timeout', 'no ping within pingInterval + pingTimeout');
    assert.equal(ws.closed, true);
    socket.close();
  });

  test('acks resolve by id, out of order', async () => {
    const socket = new SocketClient({ url: 'http://127.0.0.1:9', token: () => 't', WebSocket: ScriptedWebSocket, backoffMinMs: 60000 });
    socket.connect();
    const ws = ScriptedWebSocket.last;
    ws.serve('0{"sid":"s","pingInterval":25000,"pingTimeout":20000}');
    ws.serve('40{"sid":"x"}');
    const first = socket.emitWithAck('sync', { chatId: 'a' });
    const second = socket.emitWithAck('sync', { chatId: 'b' });
    assert.deepEqual(ws.sent.slice(-2), ['420["sync",{"chatId":"a"}]', '421["sync",{"chatId":"b"}]']);
    ws.serve('431[{"ok":true,"which":"b"}]');
    ws.serve('430[{"ok":true,"which":"a"}]');
    assert.equal((await first).which, 'a');
    assert.equal((await second).which, 'b');
    await eventually(() => socket.acks.size === 0, 'acks cleared');
    socket.close();
  });
});
