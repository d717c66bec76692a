// The REST half of palaver's contract (docs/protocol.md), same origin as the page.
// Every failure becomes an ApiError carrying the HTTP status and the server's `message`;
// a network failure has status 0.

const REQUEST_TIMEOUT_MS = 15000;

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export class Api {
  /** @param {() => string | null} token returns the current session token */
  constructor(token) {
    this.token = token;
  }

  async request(method, path, body) {
    const headers = { Accept: 'application/json' };
    const token = this.token();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
    } catch {
      throw new ApiError(0, 'The server cannot be reached');
    }
    const answer = await response.json().catch(() => null);
    if (!response.ok) {
      throw new ApiError(response.status, answer?.message ?? `Request failed (${response.status})`);
    }
    return answer;
  }

  register(name, email, password) {
    return this.request('POST', '/api/auth/register', { name, email, password });
  }

  login(email, password) {
    return this.request('POST', '/api/auth/login', { email, password });
  }

  me() {
    return this.request('GET', '/api/auth/me');
  }

  users(query, limit = 50) {
    const q = encodeURIComponent(query);
    return this.request('GET', `/api/users?q=${q}&limit=${limit}`);
  }

  chats() {
    return this.request('GET', '/api/chats');
  }

  openChat(userId) {
    return this.request('POST', `/api/chats/with/${encodeURIComponent(userId)}`, {});
  }

  /** A new group with the caller as owner; `memberIds` its other members. */
  createGroup(name, memberIds) {
    return this.request('POST', '/api/chats', { name, memberIds });
  }

  chat(chatId) {
    return this.request('GET', `/api/chats/${encodeURIComponent(chatId)}`);
  }

  members(chatId) {
    return this.request('GET', `/api/chats/${encodeURIComponent(chatId)}/members`);
  }

  addMembers(chatId, userIds) {
    return this.request('POST', `/api/chats/${encodeURIComponent(chatId)}/members`, { userIds });
  }

  /** The owner removes a member; a member removing themself leaves. */
  removeMember(chatId, userId) {
    return this.request('DELETE', `/api/chats/${encodeURIComponent(chatId)}/members/${encodeURIComponent(userId)}`);
  }

  renameGroup(chatId, name) {
    return this.request('PATCH', `/api/chats/${encodeURIComponent(chatId)}`, { name });
  }

  /** The newest `limit` messages, or the `limit` just below seq `before`. */
  history(chatId, { before, limit }) {
    const query = before ? `before=${before}&limit=${limit}` : `limit=${limit}`;
    return this.request('GET', `/api/messages/chat/${encodeURIComponent(chatId)}?${query}`);
  }
}
