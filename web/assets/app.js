// palaver's web client: log in, the chat list with unread counts, a conversation, groups and
// their members, and sending that survives going offline. The REST calls are in api.js, the
// Socket.IO client in socket.js, the message lists, the outbox and the chats' state transitions
// in store.js, the people picker in picker.js; this module wires them to the page.
//
// Every name and message text reaches the page through textContent, never as HTML (dom.js).

import { Api, ApiError } from './api.js';
import { $, avatar, button, el, initial, replaceKeepingFocus } from './dom.js';
import { PeoplePicker } from './picker.js';
import { SocketClient } from './socket.js';
import {
  MessageList, OfflineCache, Outbox, ReadMarks, chatAfterMemberAdded, chatAfterMemberRemoved, chatAfterRead,
  chatFromServer, chatMerged, isOwner, membersAfterAdded, membersAfterRead, membersAfterRemoved, membersLoaded, seenBy, unreadOf,
} from './store.js';

const SESSION_KEY = 'palaver.session';
const OPEN_CHAT_KEY = 'palaver.open-chat';
/** Messages per history page. */
const PAGE_SIZE = 50;
/** Messages per `sync` answer (the server's maximum). */
const SYNC_PAGE = 500;
/** `sync` rounds per catch-up; beyond them the newest page is fetched and the rest paged in. */
const SYNC_ROUNDS_MAX = 20;
/** The server allows 5 typing events a second; one every 2 s is plenty. */
const TYPING_EVERY_MS = 2000;
const TYPING_IDLE_MS = 3000;
/** A "… is typing" shown without refresh disappears after this. */
const TYPING_SHOWN_MS = 6000;
const SEND_ACK_TIMEOUT_MS = 10000;
const RETRY_AFTER_TIMEOUT_MS = 2000;
/** Distance from the top of the conversation (px) at which older messages are fetched. */
const PAGE_IN_MARGIN_PX = 300;
const SEARCH_DEBOUNCE_MS = 200;
/** Within this distance of the bottom (px), the conversation counts as read to its end. */
const AT_BOTTOM_PX = 60;
/** Names listed under "Seen by" before the rest are counted. */
const SEEN_BY_NAMES_MAX = 3;
const NOT_A_MEMBER = 'You are no longer a member of this group.';

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long', year: 'numeric' });
const shortDayFormat = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short' });

const dayKey = (date) => `${date.getFullYear()}-${date.getMonth()}-${date.getDate()}`;

function dayLabel(date) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (dayKey(date) === dayKey(today)) return 'Today';
  if (dayKey(date) === dayKey(yesterday)) return 'Yesterday';
  return dayFormat.format(date);
}

function shortTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return '';
  return dayKey(date) === dayKey(new Date()) ? timeFormat.format(date) : shortDayFormat.format(date);
}

// ---- state ------------------------------------------------------------------------------------

const state = {
  session: null,
  api: new Api(() => state.session?.token ?? null),
  socket: null,
  outbox: null,
  cache: null,
  chats: [],
  lists: new Map(),
  /** Chats whose newest page was fetched since the page loaded. */
  fetched: new Set(),
  current: null,
  online: new Set(),
  typing: new Map(),
  /** chatId → its members (`GET /api/chats/:id/members`), for the groups opened. */
  members: new Map(),
  membersOpen: false,
  /** Groups the user is leaving: their events until the leave are ignored. */
  leaving: new Set(),
  readMarks: null,
  flushing: false,
  syncing: new Set(),
  /** Chats asked to sync while their sync ran: it goes round once more. */
  resync: new Set(),
  loadingOlder: false,
  everConnected: false,
  typingSentAt: 0,
  typingIdleTimer: null,
};

function listFor(chatId) {
  if (!state.lists.has(chatId)) state.lists.set(chatId, new MessageList());
  return state.lists.get(chatId);
}

const me = () => state.session?.user;
const chatById = (chatId) => state.chats.find((c) => c._id === chatId);
const isGroup = (chat) => chat?.kind === 'group';

/** Puts a chat object in the list in place of its older copy (or adds it). */
function setChat(chat) {
  const index = state.chats.findIndex((c) => c._id === chat._id);
  if (index === -1) state.chats.push(chat);
  else state.chats[index] = chat;
}

/** The other people of a chat, for its name and avatar. */
function others(chat) {
  if (chat.participant) return [chat.participant];
  return (chat.participants || []).filter((p) => p._id !== me()?._id);
}

function chatName(chat) {
  if (isGroup(chat)) return chat.name || 'Group';
  const names = others(chat).map((p) => p.name);
  return names.length ? names.join(', ') : 'Just you';
}

function memberCountText(chat) {
  const count = chat.memberCount ?? (chat.participants || []).length;
  return count === 1 ? '1 member' : `${count} members`;
}

const chatInitial = (chat) => initial(isGroup(chat) ? chat.name : others(chat)[0]?.name);

const chatPeerOnline = (chat) => others(chat).some((p) => state.online.has(p._id));

// ---- session ------------------------------------------------------------------------------------

function loadSession() {
  try {
    const session = JSON.parse(localStorage.getItem(SESSION_KEY));
    return session && typeof session.token === 'string' && session.user?._id ? session : null;
  } catch {
    return null;
  }
}

function startSession(session) {
  state.session = session;
  localStorage.setItem(SESSION_KEY, JSON.stringify(session));
  const userId = session.user._id;
  state.outbox = new Outbox(localStorage, `palaver.outbox.${userId}`);
  state.cache = new OfflineCache(localStorage, `palaver.cache.${userId}`);
  state.readMarks = new ReadMarks(sendMarkRead);
  // Chats cached by a client without read state count as read up to their last message until
  // the server's list comes.
  state.chats = state.cache.chats
    .filter((chat) => !chat.removed)
    .map((chat) => ('countedSeq' in chat ? chat : chatFromServer(chat)));
  for (const [chatId, messages] of Object.entries(state.cache.messages)) listFor(chatId).add(messages);
  showApp();
  const remembered = localStorage.getItem(OPEN_CHAT_KEY);
  if (remembered && chatById(remembered)) openChat(remembered, { focus: false });
  connectSocket();
  refreshChats();
  refreshMe();
}

/** Ends the session: back to the login screen with `message` (or none, for a log out). */
function endSession(message) {
  state.socket?.close();
  state.socket = null;
  const userId = me()?._id;
  localStorage.removeItem(SESSION_KEY);
  localStorage.removeItem(OPEN_CHAT_KEY);
  if (userId) {
    localStorage.removeItem(`palaver.outbox.${userId}`);
    localStorage.removeItem(`palaver.cache.${userId}`);
  }
  Object.assign(state, {
    session: null, outbox: null, cache: null, chats: [], current: null, everConnected: false,
    readMarks: null, membersOpen: false,
  });
  state.lists.clear();
  state.fetched.clear();
  state.online.clear();
  state.typing.clear();
  state.members.clear();
  state.leaving.clear();
  showAuth(message);
}

/** A REST failure: a refused token ends the session; anything else is the caller's. */
function sessionRefused(error) {
  if (error instanceof ApiError && error.status === 401) {
    endSession('Your session has expired. Please log in again.');
    return true;
  }
  return false;
}

async function refreshMe() {
  try {
    const user = await state.api.me();
    if (!state.session) return;
    state.session.user = user;
    localStorage.setItem(SESSION_KEY, JSON.stringify(state.session));
    renderMe();
  } catch (error) {
    sessionRefused(error);
  }
}

// ---- login / sign up ------------------------------------------------------------------------

let signingUp = false;

function showAuth(message) {
  $('app-view').hidden = true;
  renderBanner();
  $('auth-view').hidden = false;
  setAuthMode(false);
  $('auth-error').textContent = message || '';
  $('auth-password').value = '';
  $('auth-email').focus();
}

function setAuthMode(signUp) {
  signingUp = signUp;
  $('name-field').hidden = !signUp;
  $('auth-title').textContent = signUp ? 'Sign up' : 'Log in';
  $('auth-submit').textContent = signUp ? 'Create account' : 'Log in';
  $('auth-switch-text').textContent = signUp ? 'Already have an account?' : 'No account yet?';
  $('auth-switch').textContent = signUp ? 'Log in' : 'Sign up';
  $('auth-password').autocomplete = signUp ? 'new-password' : 'current-password';
  $('auth-error').textContent = '';
}

async function submitAuth(event) {
  event.preventDefault();
  const name = $('auth-name').value.trim();
  const email = $('auth-email').value.trim();
  const password = $('auth-password').value;
  const problem = (signingUp && !name && 'Please enter your name.')
    || (!email && 'Please enter your email address.')
    || (password.length < 8 && 'The password needs at least 8 characters.');
  if (problem) {
    $('auth-error').textContent = problem;
    return;
  }
  const submit = $('auth-submit');
  submit.disabled = true;
  $('auth-error').textContent = '';
  try {
    const answer = signingUp
      ? await state.api.register(name, email, password)
      : await state.api.login(email, password);
    $('auth-form').reset();
    startSession({ token: answer.token, user: answer.user });
  } catch (error) {
    $('auth-error').textContent = error.status === 429
      ? 'Too many attempts, try again in a minute.'
      : error.message;
  } finally {
    submit.disabled = false;
  }
}

// ---- connection -------------------------------------------------------------------------------

function connectSocket() {
  const socket = new SocketClient({ url: location.origin, token: () => state.session.token });
  state.socket = socket;
  socket.on('connect', () => {
    state.everConnected = true;
    renderBanner();
    refreshChats();
    if (state.current && !state.fetched.has(state.current)) fetchNewest(state.current);
    if (isGroup(chatById(state.current))) loadMembers(state.current);
    syncAll();
    flushOutbox();
    state.readMarks.flush();
  });
  socket.on('disconnect', () => {
    // Presence and typing are unknown until the next connect's online-users.
    state.typing.clear();
    state.online.clear();
    renderBanner();
    renderChats();
    renderConversation();
  });
  socket.on('reconnecting', renderBanner);
  socket.on('connect_error', ({ message, fatal }) => {
    if (fatal) endSession(`Your session has ended (${message}). Please log in again.`);
    else renderBanner();
  });
  socket.on('online-users', ({ userIds }) => {
    state.online = new Set(userIds);
    renderPresence();
  });
  socket.on('user-online', ({ userId }) => {
    state.online.add(userId);
    renderPresence();
  });
  socket.on('user-offline', ({ userId }) => {
    state.online.delete(userId);
    renderPresence();
  });
  socket.on('new-message', (message) => receive([message], { live: true }));
  socket.on('typing', onTyping);
  socket.on('chat-created', chatArrived);
  socket.on('chat-updated', chatArrived);
  socket.on('member-added', onMemberAdded);
  socket.on('member-removed', onMemberRemoved);
  socket.on('read', onRead);
  socket.connect();
  renderBanner();
}

/** Shows the connection's state; `data-connection` on <body> carries it for styles and tests. */
function renderBanner() {
  const banner = $('banner');
  const socket = state.socket;
  document.body.dataset.connection = !socket ? 'none' : socket.connected ? 'connected' : 'connecting';
  if (!socket || socket.connected) {
    banner.hidden = true;
    return;
  }
  banner.hidden = false;
  if (navigator.onLine === false) {
    banner.textContent = 'You are offline. Messages you write are sent when the connection is back.';
  } else {
    banner.textContent = state.everConnected ? 'Reconnecting…' : 'Connecting…';
  }
}

addEventListener('offline', () => {
  state.socket?.interrupt('offline');
  renderBanner();
});
addEventListener('online', () => {
  state.socket?.reconnectNow();
  renderBanner();
});

// ---- chats ------------------------------------------------------------------------------------

async function refreshChats() {
  try {
    const chats = await state.api.chats();
    if (!state.session) return;
    // The open chat the user was removed from stays on screen until they move on.
    const kept = state.chats.filter((c) => c.removed && c._id === state.current);
    const previous = new Map(state.chats.map((c) => [c._id, c]));
    state.chats = [];
    for (const chat of chats) {
      if (!state.leaving.has(chat._id)) upsertServerChat(chat, previous.get(chat._id));
    }
    for (const chat of kept) if (!chatById(chat._id)) state.chats.push(chat);
    sortChats();
    remember();
    renderChats();
    if (state.current) renderConversation();
    markShownRead();
  } catch (error) {
    if (!sessionRefused(error)) renderChats();
  }
}

/**
 * Keeps a Chat object the server sent (REST answer, `chat-created`, `chat-updated`): its last
 * message joins the chat's messages, a newer one held stays its last, and a read position this
 * client is ahead with is kept (the server's copy may predate a `mark-read` of this tab).
 */
function upsertServerChat(serverChat, previous = chatById(serverChat._id)) {
  const list = listFor(serverChat._id);
  if (serverChat.lastMessage) list.add([serverChat.lastMessage]);
  const chat = chatMerged(serverChat, previous, list.messages, me()._id);
  const newest = list.messages[list.messages.length - 1];
  const last = newest && (!chat.lastMessage || newest.seq > chat.lastMessage.seq)
    ? { lastMessage: newest, lastMessageAt: newest.createdAt }
    : {};
  setChat({ ...chat, ...last });
}

/** Reads one chat again (its unread count could not be worked out here); gone means removed. */
async function refreshChat(chatId) {
  try {
    const chat = await state.api.chat(chatId);
    if (!state.session || state.leaving.has(chatId)) return;
    upsertServerChat(chat);
    remember();
    renderChats();
  } catch (error) {
    if (!sessionRefused(error) && error.status === 404) removedFromChat(chatId, null);
  }
}

function sortChats() {
  state.chats.sort((a, b) => (b.lastMessageAt || '').localeCompare(a.lastMessageAt || ''));
}

/** Stores what the offline start needs. */
function remember() {
  state.cache?.remember(state.chats, state.lists);
}

// ---- messages ---------------------------------------------------------------------------------

/**
 * Takes stored messages from any source (history, sync, ack, live event): adds them to their
 * chats (which is what raises unread counts: see `unreadOf`), settles the outbox entries they
 * answer, moves read positions (a sender has read up to their message), updates the chat list
 * and, for live events, the announcement and a sync when a seq is missing.
 */
function receive(messages, { live = false } = {}) {
  const touched = new Set();
  for (const message of messages) {
    if (!message || typeof message.chat !== 'string') continue;
    const list = listFor(message.chat);
    const isNew = list.add([message]) > 0;
    const mine = message.sender?._id === me()?._id;
    const system = message.kind === 'system';
    if (message.clientMsgId && mine) state.outbox?.remove(message.clientMsgId);
    touched.add(message.chat);
    const chat = chatById(message.chat);
    if (!chat) {
      if (live && !state.leaving.has(message.chat)) refreshChats();
      continue;
    }
    if (!chat.lastMessage || message.seq > chat.lastMessage.seq) {
      chat.lastMessage = message;
      chat.lastMessageAt = message.createdAt;
    }
    if (!system) {
      updateMembers(message.chat, (members) => membersAfterRead(members, message.sender?._id, message.seq));
      if (mine) readUpTo(message.chat, message.seq);
    }
    if (live && isNew && !mine) {
      if (!system) clearTyping(message.chat, message.sender._id);
      announce(system ? message.text : `${message.sender.name}: ${message.text}`);
    }
  }
  for (const chatId of touched) {
    const list = listFor(chatId);
    if (live && state.fetched.has(chatId) && list.contiguousSeq < list.lastSeq) syncChat(chatId);
  }
  sortChats();
  remember();
  renderChats();
  if (touched.has(state.current)) {
    renderConversation();
    markShownRead();
  }
}

// ---- read state ---------------------------------------------------------------------------------

/** Moves the user's read position in a chat (a read event, an ack, their own message). */
function readUpTo(chatId, seq) {
  const chat = chatById(chatId);
  if (!chat) return;
  const { chat: after, exact } = chatAfterRead(chat, seq, listFor(chatId).messages, me()._id);
  if (after !== chat) setChat(after);
  if (!exact) refreshChat(chatId);
}

const atBottom = () => {
  const box = $('messages');
  return box.scrollHeight - box.scrollTop - box.clientHeight < AT_BOTTOM_PX;
};

/**
 * Marks the open chat read up to its last message when the user can see it (the page is
 * visible and the conversation scrolled to its end): at once here, and with `mark-read`, which
 * ReadMarks coalesces however many messages arrive meanwhile.
 */
function markShownRead() {
  const chatId = state.current;
  const chat = chatId && chatById(chatId);
  if (!chat || chat.removed || document.visibilityState !== 'visible' || !atBottom()) return;
  const seq = listFor(chatId).lastSeq;
  if (!(seq > (chat.lastReadSeq ?? 0))) return;
  readUpTo(chatId, seq);
  state.readMarks.mark(chatId, seq);
  remember();
  renderChats();
}

/** ReadMarks' request: resolves with the server's answer, rejects when it cannot be asked. */
async function sendMarkRead(chatId, seq) {
  const socket = state.socket;
  if (!socket?.connected) throw new Error('not connected');
  const answer = await socket.emitWithAck('mark-read', { chatId, seq });
  if (answer?.ok && Number.isInteger(answer.lastReadSeq) && state.session) {
    readUpTo(chatId, answer.lastReadSeq);
    renderChats();
  }
}

function onRead({ chatId, userId, lastReadSeq } = {}) {
  if (typeof chatId !== 'string' || !Number.isInteger(lastReadSeq)) return;
  // Another tab of this user read it: the badge clears here too.
  if (userId === me()?._id) readUpTo(chatId, lastReadSeq);
  updateMembers(chatId, (members) => membersAfterRead(members, userId, lastReadSeq));
  remember();
  renderChats();
  if (chatId === state.current) renderSeenBy();
}

// ---- groups -------------------------------------------------------------------------------------

/** Applies `change` to a chat's members, if they were read. */
function updateMembers(chatId, change) {
  const members = state.members.get(chatId);
  if (members) state.members.set(chatId, change(members));
}

async function loadMembers(chatId) {
  try {
    const members = await state.api.members(chatId);
    if (!state.session || !chatById(chatId)) return;
    state.members.set(chatId, membersLoaded(members, state.members.get(chatId)));
    if (chatId === state.current) {
      renderSeenBy();
      renderMembers();
    }
  } catch (error) {
    if (!sessionRefused(error) && error.status === 404) removedFromChat(chatId, null);
  }
}

/** A Chat object came (`chat-created`, `chat-updated`, a REST answer): a new group, an add, a rename. */
function chatArrived(chat) {
  if (!chat || typeof chat._id !== 'string' || state.leaving.has(chat._id)) return;
  upsertServerChat(chat);
  sortChats();
  remember();
  renderChats();
  if (chat._id === state.current) renderConversation();
}

function onMemberAdded({ chatId, user, role } = {}) {
  const chat = chatById(chatId);
  // The added user's own list learns of the chat from the `chat-updated` that follows.
  if (!chat || !user?._id || user._id === me()._id) return;
  setChat(chatAfterMemberAdded(chat, user));
  updateMembers(chatId, (members) => membersAfterAdded(members, user, role, listFor(chatId).lastSeq));
  remember();
  renderChats();
  if (chatId === state.current) renderConversation();
}

function onMemberRemoved({ chatId, userId, ownerId } = {}) {
  if (userId === me()?._id) return removedFromChat(chatId, ownerId);
  const chat = chatById(chatId);
  if (!chat) return undefined;
  setChat(chatAfterMemberRemoved(chat, userId, ownerId, me()._id));
  updateMembers(chatId, (members) => membersAfterRemoved(members, userId, ownerId));
  remember();
  renderChats();
  if (chatId === state.current) renderConversation();
  return undefined;
}

/**
 * The user is no longer a member (removed, or they left in another tab). An open chat stays on
 * screen, its composer disabled, until the user moves on; any other leaves the list at once.
 */
function removedFromChat(chatId, ownerId) {
  const leaving = state.leaving.delete(chatId);
  const chat = chatById(chatId);
  if (!chat) return;
  if (chatId !== state.current || leaving) {
    dropChat(chatId);
    return;
  }
  setChat(chatAfterMemberRemoved(chat, me()._id, ownerId, me()._id));
  state.readMarks.forget(chatId);
  clearChatTyping(chatId);
  state.membersOpen = false;
  remember();
  renderChats();
  renderConversation();
  announce(NOT_A_MEMBER);
}

/** Forgets everything of a chat the user is no longer in. */
function forgetChat(chatId) {
  state.chats = state.chats.filter((c) => c._id !== chatId);
  state.lists.delete(chatId);
  state.fetched.delete(chatId);
  state.members.delete(chatId);
  state.readMarks?.forget(chatId);
  state.outbox?.removeChat(chatId);
  clearChatTyping(chatId);
}

function dropChat(chatId) {
  forgetChat(chatId);
  remember();
  if (state.current === chatId) closeChat();
  else renderChats();
}

/** Removed chats leave the list once the user moved on from them. */
function forgetRemovedChats(except) {
  for (const chat of state.chats.filter((c) => c.removed && c._id !== except)) forgetChat(chat._id);
}

/**
 * Fetches what this client missed of a chat since the last seq it holds without a gap. Runs
 * once per chat at a time; a call during a run makes the run go round once more.
 */
async function syncChat(chatId) {
  if (state.syncing.has(chatId)) {
    state.resync.add(chatId);
    return;
  }
  state.syncing.add(chatId);
  try {
    for (let round = 0; round < SYNC_ROUNDS_MAX && state.socket?.connected; round += 1) {
      const list = listFor(chatId);
      const answer = await state.socket.emitWithAck('sync', { chatId, afterSeq: list.contiguousSeq, limit: SYNC_PAGE });
      if (!answer?.ok) break;
      receive(answer.messages);
      const again = state.resync.delete(chatId);
      if (!answer.hasMore && !again) break;
    }
  } catch {
    // Disconnected or timed out: the next connect syncs again.
  } finally {
    state.syncing.delete(chatId);
  }
}

/**
 * After every (re)connect: catch up the chats whose history this page shows (the others only
 * hold their last message, and fetch their newest page when opened).
 */
function syncAll() {
  for (const [chatId, list] of state.lists) {
    const shown = state.fetched.has(chatId) || chatId === state.current;
    if (shown && list.messages.length) syncChat(chatId);
  }
}

async function fetchNewest(chatId) {
  try {
    const page = await state.api.history(chatId, { limit: PAGE_SIZE });
    state.fetched.add(chatId);
    // Messages held from before (the chat list's last message, the offline cache) that do not
    // reach the newest page would leave a hole that paging by `before` never fills: drop them.
    if (page.length && page[0].seq > listFor(chatId).lastSeq + 1) state.lists.set(chatId, new MessageList());
    receive(page);
    fillViewport();
  } catch (error) {
    if (!sessionRefused(error) && state.current === chatId) {
      $('history-status').textContent = error.status === 0 ? '' : error.message;
    }
  }
}

/** Pages in the messages just above the oldest one shown, keeping the view where it is. */
async function loadOlder() {
  const chatId = state.current;
  const list = chatId && listFor(chatId);
  if (!list || !list.hasOlder || state.loadingOlder) return;
  state.loadingOlder = true;
  $('load-older').hidden = true;
  $('history-status').textContent = 'Loading older messages…';
  try {
    const page = await state.api.history(chatId, { before: list.firstSeq, limit: PAGE_SIZE });
    if (state.current !== chatId) return;
    const box = $('messages');
    const fromBottom = box.scrollHeight - box.scrollTop;
    list.add(page);
    renderConversation({ keepFromBottom: fromBottom });
    $('history-status').textContent = list.hasOlder ? '' : 'This is the start of the conversation.';
  } catch (error) {
    if (!sessionRefused(error)) $('history-status').textContent = `Older messages could not be loaded: ${error.message}`;
  } finally {
    state.loadingOlder = false;
    $('load-older').hidden = !listFor(chatId).hasOlder || state.current !== chatId;
  }
  fillViewport();
}

/** Pages in more history while the conversation does not fill its box (nothing to scroll). */
function fillViewport() {
  const box = $('messages');
  const list = state.current && listFor(state.current);
  if (list && list.hasOlder && box.scrollHeight <= box.clientHeight + PAGE_IN_MARGIN_PX) loadOlder();
}

// ---- sending ------------------------------------------------------------------------------------

function send(text) {
  const chatId = state.current;
  if (!chatId || chatById(chatId)?.removed) return false;
  const entry = state.outbox.add(chatId, text);
  if (!entry) {
    announce('Too many unsent messages. Wait for the connection to come back.');
    return false;
  }
  stopTyping();
  renderConversation({ toBottom: true });
  flushOutbox();
  return true;
}

/**
 * Sends the outbox, oldest first, one at a time so the server assigns seqs in the order the
 * user wrote. Each entry keeps its clientMsgId across attempts, so a message whose ack was lost
 * is stored once however often it is resent.
 */
async function flushOutbox() {
  if (state.flushing) return;
  state.flushing = true;
  try {
    for (;;) {
      const entry = state.outbox?.ready()[0];
      if (!entry || !state.socket?.connected) break;
      const payload = { chatId: entry.chatId, text: entry.text, clientMsgId: entry.clientMsgId };
      let answer;
      try {
        answer = await state.socket.emitWithAck('send-message', payload, SEND_ACK_TIMEOUT_MS);
      } catch (error) {
        if (error.code === 'timeout') setTimeout(flushOutbox, RETRY_AFTER_TIMEOUT_MS);
        break;
      }
      if (answer?.ok) {
        state.outbox.remove(entry.clientMsgId);
        receive([answer.message]);
      } else {
        state.outbox.setError(entry.clientMsgId, answer?.error || 'Not sent');
        if (entry.chatId === state.current) renderConversation();
      }
    }
  } finally {
    state.flushing = false;
  }
}

function retry(clientMsgId) {
  state.outbox.setError(clientMsgId, null);
  renderConversation();
  flushOutbox();
}

function discard(clientMsgId) {
  state.outbox.remove(clientMsgId);
  renderConversation();
  $('composer-text').focus();
}

// ---- typing -------------------------------------------------------------------------------------

function composerInput() {
  const socket = state.socket;
  if (!state.current || !socket?.connected || chatById(state.current)?.removed) return;
  const now = Date.now();
  if ($('composer-text').value.trim() && now - state.typingSentAt > TYPING_EVERY_MS) {
    socket.emit('typing', { chatId: state.current, isTyping: true });
    state.typingSentAt = now;
  }
  clearTimeout(state.typingIdleTimer);
  state.typingIdleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(state.typingIdleTimer);
  if (state.typingSentAt && state.current) state.socket?.emit('typing', { chatId: state.current, isTyping: false });
  state.typingSentAt = 0;
}

function onTyping({ userId, chatId, isTyping }) {
  if (typeof chatId !== 'string' || userId === me()?._id) return;
  clearTyping(chatId, userId);
  if (isTyping) {
    const timer = setTimeout(() => clearTyping(chatId, userId), TYPING_SHOWN_MS);
    state.typing.set(chatId, { userId, timer });
  }
  renderTyping();
  renderChats();
}

function clearTyping(chatId, userId) {
  const shown = state.typing.get(chatId);
  if (!shown || shown.userId !== userId) return;
  clearChatTyping(chatId);
  renderTyping();
}

function clearChatTyping(chatId) {
  clearTimeout(state.typing.get(chatId)?.timer);
  state.typing.delete(chatId);
}

// ---- rendering ----------------------------------------------------------------------------------

function showApp() {
  $('auth-view').hidden = true;
  $('app-view').hidden = false;
  renderMe();
  renderChats();
  renderConversation();
  $('new-chat').focus();
}

function renderMe() {
  $('me-name').textContent = me()?.name ?? '';
  $('me-avatar').textContent = initial(me()?.name);
}

function announce(text) {
  $('announcer').textContent = text;
}

function renderChats() {
  const list = $('chat-list');
  replaceKeepingFocus(list, state.chats.map(chatItem));
  $('no-chats').hidden = state.chats.length > 0;
}

/** The chat list's line under a chat's name for its last message. */
function lastLine(chat, message) {
  if (!message) return 'No messages yet';
  if (!isGroup(chat) || message.kind === 'system') return message.text;
  const author = message.sender?._id === me()?._id ? 'You' : message.sender?.name;
  return `${author}: ${message.text}`;
}

function chatItem(chat) {
  const name = chatName(chat);
  const online = chatPeerOnline(chat);
  const unread = chat.removed ? 0 : unreadOf(chat, listFor(chat._id).messages, me()._id);
  const typing = state.typing.has(chat._id);
  const last = chat.lastMessage;
  const lastText = chat.removed ? NOT_A_MEMBER : typing ? 'typing…' : lastLine(chat, last);
  const time = last ? shortTime(last.createdAt) : '';

  // The button's accessible name is its text: what is only drawn (the dot) is also said in
  // visually hidden text.
  const row = button('chat');
  row.dataset.chatId = chat._id;
  row.dataset.focusKey = `chat:${chat._id}`;
  if (chat._id === state.current) row.setAttribute('aria-current', 'true');

  const picture = avatar(isGroup(chat) ? chat.name : others(chat)[0]?.name);
  if (online) picture.append(el('span', 'dot'));
  const main = el('span', 'chat-main');
  const title = el('span', 'chat-name', name);
  if (isGroup(chat) && !chat.removed) title.append(el('span', 'chat-count', ` · ${memberCountText(chat)}`));
  if (online) title.append(el('span', 'visually-hidden', ' (online)'));
  main.append(title, el('span', typing ? 'chat-last typing-note' : 'chat-last', lastText));
  const side = el('span', 'chat-side');
  side.append(el('span', 'chat-time', time));
  if (unread) {
    const badge = el('span', 'unread', String(unread));
    badge.append(el('span', 'visually-hidden', ' unread'));
    side.append(badge);
  }
  row.append(picture, main, side);
  row.addEventListener('click', () => openChat(chat._id));

  const item = el('li');
  item.append(row);
  return item;
}

function renderPresence() {
  renderChats();
  renderPeer();
}

function renderPeer() {
  const chat = state.current && chatById(state.current);
  if (!chat) return;
  $('peer-name').textContent = chatName(chat);
  $('peer-avatar').textContent = chatInitial(chat);
  $('members-toggle').hidden = !isGroup(chat) || Boolean(chat.removed);
  if (isGroup(chat)) {
    $('peer-status').textContent = chat.removed ? '' : memberCountText(chat);
    $('peer-status').classList.remove('online');
    return;
  }
  // Presence is only known while connected.
  const online = chatPeerOnline(chat);
  const known = Boolean(state.socket?.connected);
  $('peer-status').textContent = !known ? '' : online ? 'online' : 'offline';
  $('peer-status').classList.toggle('online', known && online);
}

function renderTyping() {
  const shown = state.current && state.typing.get(state.current);
  const chat = shown && chatById(state.current);
  const who = chat && others(chat).find((p) => p._id === shown.userId);
  $('typing').textContent = who ? `${who.name} is typing…` : '';
}

function openChat(chatId, { focus = true } = {}) {
  if (state.current !== chatId) {
    stopTyping();
    state.membersOpen = false;
  }
  forgetRemovedChats(chatId);
  state.current = chatId;
  localStorage.setItem(OPEN_CHAT_KEY, chatId);
  $('app-view').dataset.pane = 'chat';
  $('history-status').textContent = '';
  $('composer-text').value = '';
  renderChats();
  renderConversation({ toBottom: true });
  if (focus) $('composer-text').focus();
  if (!state.fetched.has(chatId)) fetchNewest(chatId);
  if (isGroup(chatById(chatId))) loadMembers(chatId);
  markShownRead();
}

function closeChat() {
  const chatId = state.current;
  stopTyping();
  state.current = null;
  state.membersOpen = false;
  forgetRemovedChats(null);
  localStorage.removeItem(OPEN_CHAT_KEY);
  $('app-view').dataset.pane = 'list';
  renderChats();
  renderConversation();
  const row = chatId && document.querySelector(`[data-chat-id="${CSS.escape(chatId)}"]`);
  (row || $('new-chat')).focus();
}

/**
 * Rebuilds the open conversation. The view stays pinned to the bottom when it was there (or
 * `toBottom`), keeps its distance from the bottom when history was added above
 * (`keepFromBottom`), and otherwise keeps its scroll position.
 */
function renderConversation({ toBottom = false, keepFromBottom = null } = {}) {
  const chat = state.current && chatById(state.current);
  $('no-chat').hidden = Boolean(chat);
  $('chat-pane').hidden = !chat;
  if (!chat) return;
  renderPeer();
  renderTyping();
  const box = $('messages');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
  const top = box.scrollTop;

  const list = listFor(chat._id);
  const items = [];
  let lastDay = null;
  const addDay = (iso) => {
    const date = new Date(iso);
    const key = dayKey(date);
    if (key === lastDay || Number.isNaN(date.getTime())) return;
    lastDay = key;
    const separator = el('li', 'day');
    separator.append(el('span', null, dayLabel(date)));
    items.push(separator);
  };
  const group = isGroup(chat);
  const lastSpoken = group ? lastSpokenMessage(list) : null;
  for (const message of list.messages) {
    addDay(message.createdAt);
    items.push(message.kind === 'system' ? systemItem(message) : messageItem(message, group));
    if (message === lastSpoken) items.push(el('li', message.sender?._id === me()._id ? 'seen-by mine' : 'seen-by'));
  }
  for (const entry of state.outbox.forChat(chat._id)) {
    addDay(entry.createdAt);
    items.push(pendingItem(entry));
  }
  replaceKeepingFocus($('message-list'), items);
  $('load-older').hidden = !list.hasOlder || state.loadingOlder;
  renderSeenBy();
  renderMembership(chat);

  if (keepFromBottom !== null) box.scrollTop = box.scrollHeight - keepFromBottom;
  else if (toBottom || atBottom) box.scrollTop = box.scrollHeight;
  else box.scrollTop = top;
}

/** The message "seen by" stands under: the last one a person wrote. */
const lastSpokenMessage = (list) => list.messages.findLast((m) => m.kind !== 'system');

/** A membership change or rename: a centered, muted line ("Ada added Bob"). */
function systemItem(message) {
  const item = el('li', 'system');
  item.dataset.id = message._id;
  item.dataset.seq = String(message.seq);
  item.append(el('span', null, message.text));
  return item;
}

/** "Seen by …" under the last message a person wrote in a group: the members who read it. */
function renderSeenBy() {
  const item = document.querySelector('#message-list .seen-by');
  if (!item) return;
  // A line appearing under the last message keeps a conversation read to its end in view.
  const pinned = atBottom();
  const members = state.members.get(state.current);
  const message = lastSpokenMessage(listFor(state.current));
  const users = members && message ? seenBy(members, message, me()._id) : [];
  const names = users.slice(0, SEEN_BY_NAMES_MAX).map((u) => u.name);
  const more = users.length - names.length;
  item.textContent = users.length ? `Seen by ${names.join(', ')}${more > 0 ? ` and ${more} more` : ''}` : '';
  item.hidden = users.length === 0;
  if (pinned) $('messages').scrollTop = $('messages').scrollHeight;
}

/** The composer, the notice and the members panel as the user's membership allows. */
function renderMembership(chat) {
  const closed = Boolean(chat.removed);
  $('composer-text').disabled = closed;
  $('composer-send').disabled = closed;
  $('chat-notice').hidden = !closed;
  $('chat-notice').textContent = closed ? NOT_A_MEMBER : '';
  renderMembers();
}

function messageItem(message, showSender) {
  const mine = message.sender?._id === me()?._id;
  const item = el('li', mine ? 'msg mine' : 'msg theirs');
  item.dataset.id = message._id;
  item.dataset.seq = String(message.seq);
  if (showSender && !mine) item.append(el('span', 'sender', message.sender?.name));
  item.append(el('p', 'text', message.text));
  const time = el('time', 'meta', timeFormat.format(new Date(message.createdAt)));
  time.dateTime = message.createdAt;
  item.append(time);
  return item;
}

function pendingItem(entry) {
  const item = el('li', entry.error ? 'msg mine failed' : 'msg mine pending');
  item.dataset.clientMsgId = entry.clientMsgId;
  item.append(el('p', 'text', entry.text));
  if (!entry.error) {
    const waiting = state.socket?.connected ? 'Sending…' : 'Waiting for the connection…';
    item.append(el('span', 'meta', waiting));
    return item;
  }
  const problem = el('p', 'meta problem', `Not sent: ${entry.error}`);
  const retryButton = el('button', 'link', 'Retry');
  retryButton.type = 'button';
  retryButton.dataset.focusKey = `retry:${entry.clientMsgId}`;
  retryButton.addEventListener('click', () => retry(entry.clientMsgId));
  const discardButton = el('button', 'link', 'Discard');
  discardButton.type = 'button';
  discardButton.dataset.focusKey = `discard:${entry.clientMsgId}`;
  discardButton.addEventListener('click', () => discard(entry.clientMsgId));
  const actions = el('span', 'actions');
  actions.append(retryButton, discardButton);
  item.append(problem, actions);
  return item;
}

// ---- starting a chat --------------------------------------------------------------------------

let searchTimer = null;
let searchRun = 0;

function togglePeople(open) {
  $('group-section').hidden = true;
  $('people').hidden = !open;
  $('new-chat').setAttribute('aria-expanded', String(open));
  if (open) {
    $('people-search').value = '';
    searchPeople();
    $('people-search').focus();
  } else {
    $('new-chat').focus();
  }
}

async function searchPeople() {
  const run = ++searchRun;
  try {
    const users = await state.api.users($('people-search').value.trim());
    if (run !== searchRun) return;
    replaceKeepingFocus($('people-list'), users.map(personItem));
    $('people-empty').hidden = users.length > 0;
    $('people-empty').textContent = 'Nobody found.';
  } catch (error) {
    if (!sessionRefused(error) && run === searchRun) {
      $('people-list').replaceChildren();
      $('people-empty').hidden = false;
      $('people-empty').textContent = error.message;
    }
  }
}

function personItem(user) {
  const row = button('person');
  row.dataset.focusKey = `person:${user._id}`;
  const text = el('span', 'chat-main');
  text.append(el('span', 'chat-name', user.name));
  // Only someone found by their whole email address comes with it (docs/protocol.md).
  if (user.email) text.append(el('span', 'chat-last', user.email));
  row.append(avatar(user.name), text);
  row.addEventListener('click', () => startChat(user._id));
  const item = el('li');
  item.append(row);
  return item;
}

async function startChat(userId) {
  try {
    const chat = await state.api.openChat(userId);
    upsertServerChat(chat);
    sortChats();
    remember();
    $('people').hidden = true;
    $('new-chat').setAttribute('aria-expanded', 'false');
    openChat(chat._id);
  } catch (error) {
    if (!sessionRefused(error)) {
      $('people-empty').hidden = false;
      $('people-empty').textContent = error.message;
    }
  }
}

// ---- a new group ---------------------------------------------------------------------------------

const groupPicker = new PeoplePicker({
  input: $('group-search'),
  results: $('group-found'),
  status: $('group-found-status'),
  picked: $('group-picked'),
  search: (query) => state.api.users(query),
  refused: sessionRefused,
});

function toggleGroupForm(open) {
  $('people').hidden = true;
  $('new-chat').setAttribute('aria-expanded', 'false');
  $('group-section').hidden = !open;
  if (!open) {
    $('new-chat').focus();
    return;
  }
  $('group-name').value = '';
  $('group-error').textContent = '';
  groupPicker.start();
  $('group-name').focus();
}

/** Creates the group; a refusal (a bad name, too many people) is shown as the server says it. */
async function createGroup(event) {
  event.preventDefault();
  const submit = $('group-create');
  submit.disabled = true;
  $('group-error').textContent = '';
  try {
    const chat = await state.api.createGroup($('group-name').value.trim(), groupPicker.ids);
    chatArrived(chat);
    $('group-section').hidden = true;
    openChat(chat._id);
  } catch (error) {
    if (!sessionRefused(error)) $('group-error').textContent = error.message;
  } finally {
    submit.disabled = false;
  }
}

// ---- a group's members --------------------------------------------------------------------------

const addPicker = new PeoplePicker({
  input: $('add-search'),
  results: $('add-found'),
  status: $('add-found-status'),
  picked: $('add-picked'),
  search: (query) => state.api.users(query),
  excluded: () => new Set((chatById(state.current)?.participants || []).map((p) => p._id)),
  refused: sessionRefused,
});
/** The group the add picker was started for (it starts afresh for another, or a new owner). */
let addPickerChat = null;

function toggleMembers(open) {
  const chat = chatById(state.current);
  state.membersOpen = open && isGroup(chat);
  if (state.membersOpen) {
    $('members-error').textContent = '';
    $('rename-name').value = chat.name || '';
    addPickerChat = null;
    loadMembers(chat._id);
  }
  renderMembers();
  if (!open) $('members-toggle').focus();
}

/** The members panel: every member with their role; the owner's controls only for the owner. */
function renderMembers() {
  const chat = chatById(state.current);
  const open = state.membersOpen && isGroup(chat) && !chat.removed;
  $('members-panel').hidden = !open;
  $('members-toggle').setAttribute('aria-expanded', String(open));
  if (!open) return;
  const owner = isOwner(chat, me()._id);
  $('rename-form').hidden = !owner;
  $('add-form').hidden = !owner;
  const members = state.members.get(chat._id)
    ?? (chat.participants || []).map((user) => ({ user, role: user._id === chat.ownerId ? 'owner' : 'member' }));
  replaceKeepingFocus($('member-list'), members.map((member) => memberItem(chat, member, owner)));
  if (owner && addPickerChat !== chat._id) {
    addPickerChat = chat._id;
    addPicker.start();
  } else if (owner) {
    addPicker.render();
  }
}

function memberItem(chat, member, owner) {
  const self = member.user._id === me()._id;
  const item = el('li', 'member');
  item.dataset.userId = member.user._id;
  const text = el('span', 'chat-main');
  text.append(
    el('span', 'chat-name', self ? `${member.user.name} (you)` : member.user.name),
    el('span', 'chat-last role', member.role === 'owner' ? 'Owner' : 'Member'),
  );
  item.append(avatar(member.user.name), text);
  if (owner && !self) {
    const remove = button(null, 'Remove');
    remove.dataset.focusKey = `remove:${member.user._id}`;
    remove.setAttribute('aria-label', `Remove ${member.user.name}`);
    remove.addEventListener('click', () => groupAction(() => state.api.removeMember(chat._id, member.user._id)));
    item.append(remove);
  }
  return item;
}

/** Runs a change of the open group; the server's refusal, if any, is shown in the panel. */
async function groupAction(action) {
  $('members-error').textContent = '';
  try {
    await action();
    return true;
  } catch (error) {
    if (!sessionRefused(error)) $('members-error').textContent = error.message;
    return false;
  }
}

function renameGroup(event) {
  event.preventDefault();
  const chatId = state.current;
  const name = $('rename-name').value.trim();
  groupAction(async () => chatArrived(await state.api.renameGroup(chatId, name)));
}

function addMembers(event) {
  event.preventDefault();
  const chatId = state.current;
  const ids = addPicker.ids;
  if (!ids.length) {
    $('members-error').textContent = 'Pick the people to add first.';
    return;
  }
  groupAction(async () => {
    chatArrived(await state.api.addMembers(chatId, ids));
    addPicker.start();
  });
}

async function leaveGroup() {
  const chatId = state.current;
  state.leaving.add(chatId);
  const left = await groupAction(() => state.api.removeMember(chatId, me()._id));
  if (left) dropChat(chatId);
  else state.leaving.delete(chatId);
}

// ---- wiring -------------------------------------------------------------------------------------

function wire() {
  $('auth-form').addEventListener('submit', submitAuth);
  $('auth-switch').addEventListener('click', () => {
    setAuthMode(!signingUp);
    (signingUp ? $('auth-name') : $('auth-email')).focus();
  });
  $('logout').addEventListener('click', () => endSession());
  $('new-chat').addEventListener('click', () => togglePeople($('people').hidden));
  $('people-close').addEventListener('click', () => togglePeople(false));
  $('people').addEventListener('keydown', (event) => {
    if (event.key === 'Escape') togglePeople(false);
  });
  $('new-group').addEventListener('click', () => toggleGroupForm(true));
  $('group-cancel').addEventListener('click', () => toggleGroupForm(false));
  $('group-section').addEventListener('keydown', (event) => {
    if (event.key === 'Escape') toggleGroupForm(false);
  });
  $('group-form').addEventListener('submit', createGroup);
  $('members-toggle').addEventListener('click', () => toggleMembers(!state.membersOpen));
  $('members-panel').addEventListener('keydown', (event) => {
    if (event.key === 'Escape') toggleMembers(false);
  });
  $('rename-form').addEventListener('submit', renameGroup);
  $('add-form').addEventListener('submit', addMembers);
  $('leave-group').addEventListener('click', leaveGroup);
  $('people-search').addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(searchPeople, SEARCH_DEBOUNCE_MS);
  });
  $('back').addEventListener('click', closeChat);
  $('load-older').addEventListener('click', loadOlder);
  $('messages').addEventListener('scroll', () => {
    if ($('messages').scrollTop < PAGE_IN_MARGIN_PX) loadOlder();
    markShownRead();
  });
  const composer = $('composer-text');
  composer.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('composer').requestSubmit();
    }
  });
  composer.addEventListener('input', composerInput);
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = composer.value.trim();
    if (text && send(text)) composer.value = '';
    composer.focus();
  });
  document.addEventListener('visibilitychange', markShownRead);
}

function boot() {
  wire();
  if ('serviceWorker' in navigator) {
    navigator.serviceWorker.register('/sw.js').catch(() => {
      // Without the worker the app works the same, it only cannot start while offline.
    });
  }
  const session = loadSession();
  if (session) startSession(session);
  else showAuth();
}

boot();
