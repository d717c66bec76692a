// A small Socket.IO client for palaver: Engine.IO v4 over WebSocket only, Socket.IO v5 packets
// on the default namespace, the `auth` payload in CONNECT, acknowledgements with timeouts,
// answering the server's pings, and reconnection with jittered exponential backoff.
//
// It knows nothing of chats: the app listens to events with `on`, sends with `emit` or
// `emitWithAck`, and learns about the connection from the `connect`, `disconnect`,
// `connect_error` and `reconnecting` events. A refusal of the CONNECT packet whose message
// says the token is bad (`Unauthorized`, `User not found!`) stops reconnecting: retrying the
// same token cannot succeed, the user has to log in again.

/** Engine.IO packet types (the first character of every WebSocket text frame). */
const EIO = { OPEN: '0', CLOSE: '1', PING: '2', PONG: '3', MESSAGE: '4', NOOP: '6' };
/** Socket.IO packet types (the character after Engine.IO's MESSAGE). */
const SIO = { CONNECT: '0', DISCONNECT: '1', EVENT: '2', ACK: '3', CONNECT_ERROR: '4' };

/** connect_error messages that no retry with the same token can fix. */
export const FATAL_CONNECT_ERRORS = new Set(['Unauthorized', 'User not found!']);

/** Events the client emits itself; the server cannot fake them (they are not dispatched from packets). */
const LOCAL_EVENTS = new Set(['connect', 'disconnect', 'connect_error', 'reconnecting']);

/** Acks waited for at once; beyond it `emitWithAck` refuses rather than grow without bound. */
const PENDING_ACKS_MAX = 1000;

/**
 * The delay before reconnect attempt `attempt` (0-based): exponential from `minMs`, capped at
 * `maxMs`, then jittered to a uniformly random value between half and all of it, so that many
 * clients dropped at once by a restart do not come back in step.
 */
export function backoffDelay(attempt, { minMs, maxMs }, random = Math.random) {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/** The WebSocket URL of Engine.IO on `baseUrl` (an http(s) URL of the server). */
export function engineUrl(baseUrl) {
  const url = new URL('/socket.io/', baseUrl);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.search = '?EIO=4&transport=websocket';
  return url.toString();
}

/**
 * Splits a Socket.IO packet (without the Engine.IO `4`) into type, ack id and data. Only the
 * default namespace is used, but a `/nsp,` prefix is skipped so such a packet still parses.
 */
export function parsePacket(text) {
  const type = text[0];
  let rest = text.slice(1);
  if (rest.startsWith('/')) {
    const comma = rest.indexOf(',');
    rest = comma === -1 ? '' : rest.slice(comma + 1);
  }
  const digits = /^\d+/.exec(rest);
  const id = digits ? Number(digits[0]) : null;
  if (digits) rest = rest.slice(digits[0].length);
  let data;
  if (rest.length > 0) {
    try {
      data = JSON.parse(rest);
    } catch {
      return null;
    }
  }
  return { type, id, data };
}

export class SocketClient {
  /**
   * @param {object} options
   * @param {string} options.url        the server's http(s) base URL
   * @param {() => string} options.token returns the token for each (re)connection
   * @param {number} [options.ackTimeoutMs] default timeout of `emitWithAck`
   * @param {number} [options.connectTimeoutMs] open + CONNECT must complete within it
   * @param {number} [options.backoffMinMs] first reconnect delay (before jitter)
   * @param {number} [options.backoffMaxMs] longest reconnect delay
   * @param {typeof WebSocket} [options.WebSocket] the WebSocket class (the global one by default)
   */
  constructor(options) {
    this.url = engineUrl(options.url);
    this.token = options.token;
    this.ackTimeoutMs = options.ackTimeoutMs ?? 10000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10000;
    this.backoff = { minMs: options.backoffMinMs ?? 500, maxMs: options.backoffMaxMs ?? 5000 };
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.listeners = new Map();
    this.acks = new Map();
    this.nextAckId = 0;
    this.ws = null;
    this.connected = false;
    this.stopped = true;
    this.attempt = 0;
    this.reconnectTimer = null;
    this.heartbeatTimer = null;
    this.connectTimer = null;
  }

  /** Starts connecting (and keeps reconnecting until `close` or a fatal refusal). */
  connect() {
    this.stopped = false;
    if (!this.ws && !this.reconnectTimer) this.open();
    return this;
  }

  /** Closes for good: no reconnection, pending acks fail. */
  close() {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.drop('client close');
  }

  /**
   * Drops the current connection (or waiting attempt) and reconnects at once: for when the
   * browser says it is back online, so the user does not wait out a long backoff.
   */
  reconnectNow() {
    if (this.stopped) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.attempt = 0;
    if (this.ws && this.connected) return;
    this.drop('reconnect');
    this.open();
  }

  /** Drops the connection and reconnects with backoff (e.g. the browser went offline). */
  interrupt(reason) {
    if (this.stopped || !this.ws) return;
    this.drop(reason);
    this.scheduleReconnect();
  }

  on(event, handler) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(handler);
    return this;
  }

  off(event, handler) {
    this.listeners.get(event)?.delete(handler);
    return this;
  }

  /** Sends an event without waiting for an answer; false when not connected (nothing sent). */
  emit(event, data) {
    if (!this.connected) return false;
    this.send(EIO.MESSAGE + SIO.EVENT + JSON.stringify([event, data]));
    return true;
  }

  /**
   * Sends an event and resolves with the server's acknowledgement. Rejects with an Error whose
   * `code` is `disconnected` (not connected, or the connection dropped before the answer),
   * `timeout` or `overloaded`.
   */
  emitWithAck(event, data, timeoutMs = this.ackTimeoutMs) {
    if (!this.connected) return Promise.reject(codedError('disconnected', 'not connected'));
    if (this.acks.size >= PENDING_ACKS_MAX) {
      return Promise.reject(codedError('overloaded', 'too many unanswered requests'));
    }
    const id = this.nextAckId;
    this.nextAckId = (this.nextAckId + 1) % Number.MAX_SAFE_INTEGER;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.acks.delete(id);
        reject(codedError('timeout', `no answer to ${event} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.acks.set(id, { resolve, reject, timer });
      this.send(EIO.MESSAGE + SIO.EVENT + id + JSON.stringify([event, data]));
    });
  }

  // ---- connection --------------------------------------------------------------------------

  open() {
    let ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (error) {
      this.dispatch('connect_error', { message: error.message, fatal: false });
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.connectTimer = setTimeout(() => this.interrupt('connect timeout'), this.connectTimeoutMs);
    ws.onmessage = (frame) => {
      if (this.ws === ws && typeof frame.data === 'string') this.receive(frame.data);
    };
    // A failed connection fires `error` and then `close` in browsers, only `error` in some
    // engines (Node 20's): either one ends this attempt.
    const lost = (reason) => () => {
      if (this.ws !== ws) return;
      this.drop(reason);
      this.scheduleReconnect();
    };
    ws.onclose = lost('transport close');
    ws.onerror = lost('transport error');
  }

  /** Forgets the current WebSocket, failing what waited on it; emits `disconnect` if it was up. */
  drop(reason) {
    clearTimeout(this.heartbeatTimer);
    clearTimeout(this.connectTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close();
      } catch {
        // Closing a socket that never opened throws in some engines; it is gone either way.
      }
    }
    for (const { reject, timer } of this.acks.values()) {
      clearTimeout(timer);
      reject(codedError('disconnected', reason));
    }
    this.acks.clear();
    if (this.connected) {
      this.connected = false;
      this.dispatch('disconnect', reason);
    }
  }

  scheduleReconnect() {
    if (this.stopped || this.reconnectTimer) return;
    const delay = backoffDelay(this.attempt, this.backoff);
    this.attempt += 1;
    this.dispatch('reconnecting', { attempt: this.attempt, delay });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.stopped) this.open();
    }, delay);
  }

  send(frame) {
    try {
      this.ws.send(frame);
    } catch {
      this.interrupt('send failed');
    }
  }

  /** Handles one Engine.IO frame. */
  receive(frame) {
    switch (frame[0]) {
      case EIO.OPEN:
        return this.opened(frame.slice(1));
      case EIO.PING:
        this.armHeartbeat();
        return this.send(EIO.PONG);
      case EIO.CLOSE:
        return this.interrupt('server close');
      case EIO.MESSAGE:
        return this.receivePacket(frame.slice(1));
      default:
        return undefined;
    }
  }

  opened(handshakeText) {
    try {
      const handshake = JSON.parse(handshakeText);
      this.heartbeatMs = handshake.pingInterval + handshake.pingTimeout;
    } catch {
      return this.interrupt('bad handshake');
    }
    this.armHeartbeat();
    return this.send(EIO.MESSAGE + SIO.CONNECT + JSON.stringify({ token: this.token() }));
  }

  /** The server pings every pingInterval; silence past pingInterval + pingTimeout is a dead link. */
  armHeartbeat() {
    clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = setTimeout(() => this.interrupt('ping timeout'), this.heartbeatMs);
  }

  receivePacket(text) {
    const packet = parsePacket(text);
    if (!packet) return undefined;
    switch (packet.type) {
      case SIO.CONNECT:
        clearTimeout(this.connectTimer);
        this.connected = true;
        this.attempt = 0;
        return this.dispatch('connect');
      case SIO.CONNECT_ERROR:
        return this.refused(packet.data?.message ?? 'Connection refused');
      case SIO.DISCONNECT:
        return this.interrupt('server disconnect');
      case SIO.EVENT:
        return this.event(packet);
      case SIO.ACK:
        return this.acked(packet);
      default:
        return undefined;
    }
  }

  refused(message) {
    const fatal = FATAL_CONNECT_ERRORS.has(message);
    if (fatal) this.stopped = true;
    this.drop('connect error');
    this.dispatch('connect_error', { message, fatal });
    if (!fatal) this.scheduleReconnect();
  }

  event({ id, data }) {
    if (!Array.isArray(data) || typeof data[0] !== 'string' || LOCAL_EVENTS.has(data[0])) return;
    const [name, ...args] = data;
    // palaver never asks a client for an ack; one requested anyway gets an empty answer.
    if (id !== null) this.send(EIO.MESSAGE + SIO.ACK + id + '[]');
    this.dispatch(name, ...args);
  }

  acked({ id, data }) {
    const pending = this.acks.get(id);
    if (!pending) return;
    this.acks.delete(id);
    clearTimeout(pending.timer);
    pending.resolve(Array.isArray(data) ? data[0] : undefined);
  }

  dispatch(event, ...args) {
    for (const handler of [...(this.listeners.get(event) ?? [])]) {
      try {
        handler(...args);
      } catch (error) {
        // One faulty handler must not stop the others or the connection.
        console.error(`handler of ${event} failed`, error);
      }
    }
  }
}

function codedError(code, message) {
  const error = new Error(message);
  error.code = code;
  return error;
}
