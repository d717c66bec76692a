//! Socket.IO: authentication on connect, presence, and the client events of the contract.
//!
//! Each socket's events are handled in the order they arrived by a task of the socket's own
//! (its *inbox*); consecutive sends and `mark-read`s are pipelined through the writer, the rest
//! one at a time. socketioxide spawns a task per event, so the order is taken where
//! it still holds: its extractors run inline, in arrival order, before the spawn, and the
//! [`Queued`] extractor puts the event into the inbox there. So a later `send-message` of a
//! socket always gets a higher seq and a later ack, and `typing` `true`/`false` never swap. The
//! inbox is bounded; an event that finds it full is refused with `Server busy`. Nothing global
//! is serialised: each socket has its own inbox, and the writer still batches across sockets.
//! Delivery of new messages is not done here but from the writer's commit feed (`super::deliver`).

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use serde::Serialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, Extension, MaybeExtension, SocketRef, State, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::socket::Socket;
use tokio::sync::{Notify, mpsc};

use super::wire::{self, Keep};
use super::{PRESENCE_ROOM, chat_room, namespace, payload, presence_room, user_room};
use crate::domain::rate::{BucketShape, TokenBucket};
use crate::domain::typing::Typing;
use crate::limits::{
    REPLY_BYTES_MAX, SOCKET_EVENTS_QUEUED_MAX, SOCKET_READ_BYTES_PER_SEC_MIN,
    SOCKET_SENDS_IN_FLIGHT_MAX, SOCKET_UNREAD_BYTES_MAX, TYPING_CHATS_MAX, TYPING_PER_SEC,
    TYPING_STALE_MS,
};
use crate::metrics::{Metrics, handshake_refusal_reason, refusal_reason};
use crate::service::views::MessageView;
use crate::service::{
    Announcement, App, Audience, AuthFailure, PresenceScope, Refusal, Sent, Transition,
};
use crate::storage::UserRecord;

/// What a socket carries from its authenticated handshake.
#[derive(Clone)]
struct Session {
    user: Arc<UserRecord>,
    /// Boxed events: the channel allocates its first block of slots up front, and a slot of a
    /// pointer keeps that at 256 bytes for every idle socket instead of about 2 KiB.
    inbox: mpsc::Sender<Box<Inbound>>,
    /// Told when the socket closes, so its inbox task ends (it holds the socket).
    closed: Arc<Notify>,
}

/// The client events, in the order they are handled.
#[derive(Debug, Clone, Copy)]
enum EventKind {
    JoinChat,
    LeaveChat,
    SendMessage,
    Typing,
    Sync,
    MarkRead,
}

/// One event waiting in a socket's inbox.
struct Inbound {
    kind: EventKind,
    data: Result<Value, ()>,
    ack: AckSender,
}

/// Registers the `/` namespace: authentication middleware, then the event handlers.
pub fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(authenticate));
}

/// The handshake token: `auth: { token }` (the seed's way) or an `Authorization: Bearer` header.
fn handshake_token(socket: &SocketRef, auth: Option<&Value>) -> Option<String> {
    let from_auth = auth
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty());
    let from_header = || {
        let header = socket
            .req_parts()
            .headers
            .get(axum::http::header::AUTHORIZATION)?;
        let token = header.to_str().ok()?.strip_prefix("Bearer ")?.trim();
        (!token.is_empty()).then(|| token.to_owned())
    };
    from_auth.map(str::to_owned).or_else(from_header)
}

/// Refuses the connection (`connect_error` with `Unauthorized` or `User not found!`) unless the
/// handshake carries a valid token of an existing user. On success it also registers the event
/// handlers, starts the socket's inbox and joins the user's room, here rather than in
/// `on_connect`: socketioxide sends the client its CONNECT ack before it spawns the connect
/// handler, and a client that emits at once (socket.io-client does, from its `connect`
/// callback) must find its handlers in place.
async fn authenticate(
    socket: SocketRef,
    io: SocketIo,
    TryData(auth): TryData<Value>,
    State(app): State<Arc<App>>,
) -> Result<(), AuthFailure> {
    let admitted = admit(socket, io, auth.ok(), &app).await;
    if let Err(failure) = admitted {
        app.metrics().refused(handshake_refusal_reason(failure));
    }
    admitted
}

/// The handshake's checks and the socket's setup (see `authenticate`).
async fn admit(
    socket: SocketRef,
    io: SocketIo,
    auth: Option<Value>,
    app: &Arc<App>,
) -> Result<(), AuthFailure> {
    let token = handshake_token(&socket, auth.as_ref()).ok_or(AuthFailure::Unauthorized)?;
    let (user, expires_ms) = app.authenticate_until(&token).await?;
    let user = Arc::new(user);
    // Held until the socket is counted, so that concurrent handshakes cannot pass the cap on
    // sockets per user together.
    let mut presence = app.presence_for(&user.id).await?;
    if presence.is_full(&user.id) {
        return Err(AuthFailure::TooManySockets);
    }
    socket.join(user_room(&user.id));
    // A logout between the check above and the join would have missed this socket: checked
    // again now that `revoke_sessions` finds it in the room.
    if let Err(failure) = app.authenticate(&token).await {
        socket.leave_all();
        return Err(failure);
    }
    let (inbox, events) = mpsc::channel(SOCKET_EVENTS_QUEUED_MAX);
    let closed = Arc::new(Notify::new());
    socket.extensions.insert(Session {
        user: Arc::clone(&user),
        inbox,
        closed: Arc::clone(&closed),
    });
    let handler = Handler {
        socket: socket.clone(),
        io: io.clone(),
        app: Arc::clone(app),
        user: Arc::clone(&user),
        typing: Typing::new(TYPING_PER_SEC, TYPING_STALE_MS, TYPING_CHATS_MAX),
        unread: TokenBucket::full(UNREAD_SHAPE, app.now_ms()),
        expires_ms,
        dropped: false,
    };
    tokio::spawn(handler.run(events, closed));
    socket.on("join-chat", queued::<JoinChat>);
    socket.on("leave-chat", queued::<LeaveChat>);
    socket.on("send-message", queued::<SendMessage>);
    socket.on("typing", queued::<TypingEvent>);
    socket.on("sync", queued::<SyncEvent>);
    socket.on("mark-read", queued::<MarkReadEvent>);
    socket.on_disconnect(on_disconnect);
    // Counted before the client learns it is connected, so that a tab closed right after
    // another one opened never sees its user flicker offline.
    let transitions = presence.connect(&socket.id.to_string(), &user.id);
    announce(&io, transitions).await;
    Ok(())
}

/// Sends the new socket its `online-users` snapshot and only then joins it to the presence
/// room, both under the presence desk: every transition reaches the socket after its snapshot,
/// in the order it happened. (Joining in the middleware let a transition broadcast between
/// the two slip in before the snapshot, so a client saw `user-offline` for a user it had never
/// seen online; found by the simulation, seed 141.)
async fn on_connect(
    socket: SocketRef,
    io: SocketIo,
    Extension(session): Extension<Session>,
    State(app): State<Arc<App>>,
) {
    {
        let presence = app.presence().await;
        let online = presence.online_except(&session.user.id);
        let _ = socket.emit("online-users", &json!({ "userIds": online }));
        // A socket already closed would stay in the room: its cleanup has run.
        if socket.connected() {
            match presence.scope() {
                PresenceScope::All => socket.join(PRESENCE_ROOM),
                PresenceScope::Contacts => socket.join(presence_room(&session.user.id)),
            }
        }
    }
    // A socket that closed before this handler ran was retired by its disconnect handler;
    // retiring is idempotent, so checking again here closes the window completely.
    if !socket.connected() {
        retire(&socket, &io, &app).await;
    }
}

async fn on_disconnect(
    socket: SocketRef,
    io: SocketIo,
    MaybeExtension(session): MaybeExtension<Session>,
    State(app): State<Arc<App>>,
) {
    if let Some(session) = session {
        session.closed.notify_one();
    }
    retire(&socket, &io, &app).await;
}

/// Disconnects a socket and stops its inbox, so none of its events is handled any more.
/// socketioxide refuses to queue the DISCONNECT packet to a socket whose outgoing queue is full
/// (and then leaves it connected); such a socket is taken out of every room instead, so nothing
/// more is queued for it, and Engine.IO closes it when its heartbeat fails.
pub(super) fn force_close(socket: &SocketRef) {
    if let Some(session) = socket.extensions.get::<Session>() {
        session.closed.notify_one();
    }
    if socket.clone().disconnect().is_err() {
        socket.leave_all();
    }
}

/// Uncounts a closed socket (its user's grace period begins when it was their last).
async fn retire(socket: &SocketRef, io: &SocketIo, app: &App) {
    let mut presence = app.presence().await;
    let transitions = presence.disconnect(&socket.id.to_string());
    announce(io, transitions).await;
}

/// Tells each transition to its audience: every socket in the presence room except the user's
/// own (a socket's snapshot leaves its own user out, and so do the transitions that follow
/// it), or the presence rooms of the user's contacts.
async fn announce(io: &SocketIo, announcements: Vec<Announcement>) {
    for Announcement {
        transition,
        audience,
    } in announcements
    {
        let Some(sockets) = namespace(io) else {
            return;
        };
        let own_sockets = user_room(transition.user());
        let (event, body) = presence_event(transition);
        let recipients = match audience {
            Audience::Everyone => sockets.to(PRESENCE_ROOM).except(own_sockets),
            // `to` with no room at all would broadcast to every socket.
            Audience::Users(users) if users.is_empty() => continue,
            Audience::Users(users) => {
                sockets.to(users.iter().map(|u| presence_room(u)).collect::<Vec<_>>())
            }
        };
        let _ = recipients.emit(event, &body).await;
    }
}

/// Two users now share a chat: with presence scoped to contacts, each online one is announced
/// to the other (under the presence desk, like every announcement).
pub async fn introduce(io: &SocketIo, app: &App, first: &str, second: &str) {
    introduce_to(io, app, first, std::slice::from_ref(&second.to_owned())).await;
}

/// `newcomer` now shares a chat with each of `members` (a group created or joined): the
/// introductions of [`introduce`], under one hold of the presence desk.
pub async fn introduce_to(io: &SocketIo, app: &App, newcomer: &str, members: &[String]) {
    let mut presence = app.presence().await;
    if presence.scope() == PresenceScope::All {
        return;
    }
    let announcements: Vec<_> = members
        .iter()
        .flat_map(|member| presence.introduce(newcomer, member))
        .collect();
    announce(io, announcements).await;
}

/// Announces what changed in presence since the last tick (see `service::PresenceDesk::tick`).
pub async fn tick_presence(io: &SocketIo, app: &App) {
    let mut presence = app.presence().await;
    let transitions = presence.tick();
    announce(io, transitions).await;
}

fn presence_event(transition: Transition) -> (&'static str, Value) {
    match transition {
        Transition::Online(user) => ("user-online", json!({ "userId": user })),
        Transition::Offline(user) => ("user-offline", json!({ "userId": user })),
    }
}

/// Reconciles presence with the sockets socketioxide still holds (see
/// `service::PresenceDesk::sweep`). A connection can vanish without its disconnect handler ever
/// running (its CONNECT ack failed to send right after the middleware counted it); such a
/// connection would keep its user online forever.
pub async fn sweep_presence(io: &SocketIo, app: &App, suspects: &mut HashSet<String>) {
    let live: HashSet<String> = io.sockets().into_iter().map(|s| s.id.to_string()).collect();
    let mut presence = app.presence().await;
    let transitions = presence.sweep(&live, suspects);
    announce(io, transitions).await;
}

// ---- the inbox: events in arrival order ----

/// Which event a [`Queued`] extractor files.
trait QueuedEvent: Send + 'static {
    const KIND: EventKind;
}

struct JoinChat;
struct LeaveChat;
struct SendMessage;
struct TypingEvent;
struct SyncEvent;
struct MarkReadEvent;

impl QueuedEvent for JoinChat {
    const KIND: EventKind = EventKind::JoinChat;
}
impl QueuedEvent for LeaveChat {
    const KIND: EventKind = EventKind::LeaveChat;
}
impl QueuedEvent for SendMessage {
    const KIND: EventKind = EventKind::SendMessage;
}
impl QueuedEvent for TypingEvent {
    const KIND: EventKind = EventKind::Typing;
}
impl QueuedEvent for SyncEvent {
    const KIND: EventKind = EventKind::Sync;
}
impl QueuedEvent for MarkReadEvent {
    const KIND: EventKind = EventKind::MarkRead;
}

/// An extractor that files its event into the socket's inbox as it is extracted: inline, in
/// arrival order (socketioxide spawns the handler only afterwards, so the handler is empty).
struct Queued<E>(PhantomData<E>);

impl<E: QueuedEvent> FromMessageParts<LocalAdapter> for Queued<E> {
    type Error = std::convert::Infallible;

    fn from_message_parts(
        s: &Arc<Socket<LocalAdapter>>,
        v: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Self::Error> {
        let Ok(ack) = AckSender::from_message_parts(s, v, ack_id);
        let Ok(TryData(data)) = TryData::<Value>::from_message_parts(s, v, ack_id);
        let Ok(Extension(session)) = Extension::<Session>::from_message_parts(s, v, ack_id) else {
            // Every socket past the handshake has a session; without one there is no inbox.
            return Ok(Queued(PhantomData));
        };
        let event = Box::new(Inbound {
            kind: E::KIND,
            data: data.map_err(drop),
            ack,
        });
        if let Err(full) = session.inbox.try_send(event) {
            let Ok(socket) = SocketRef::from_message_parts(s, v, ack_id);
            let event = full.into_inner();
            let metrics = match State::<Arc<App>>::from_message_parts(s, v, ack_id) {
                Ok(State(app)) => app.metrics().clone(),
                Err(_) => Metrics::disabled(),
            };
            refuse(&socket, &metrics, event.ack, Refusal::Busy);
        }
        Ok(Queued(PhantomData))
    }
}

async fn queued<E: QueuedEvent>(_: Queued<E>) {}

/// A send or mark-read filed with the writer, on its way to its ack.
type SendInFlight = BoxFuture<'static, (AckSender, Filing)>;

/// The answer of a request filed with the writer (a send's is boxed: it holds the message).
enum Filing {
    Sent(Box<Result<Sent, Refusal>>),
    Read(Result<u64, Refusal>),
}

/// The reply bytes a socket may have unread (see `SOCKET_UNREAD_BYTES_MAX`): a bucket of bytes
/// that refills as fast as the slowest client we serve reads.
const UNREAD_SHAPE: BucketShape = BucketShape {
    per_sec: SOCKET_READ_BYTES_PER_SEC_MIN,
    burst: SOCKET_UNREAD_BYTES_MAX,
};

/// Handles one socket's events in arrival order until the socket closes. Consecutive sends
/// pipeline: each is filed with the writer as it comes (so seqs follow arrival order) and
/// acked in the same order when its commit answers. Any other event first waits for the sends
/// before it, so it sees them committed.
struct Handler {
    socket: SocketRef,
    io: SocketIo,
    app: Arc<App>,
    user: Arc<UserRecord>,
    typing: Typing,
    /// What is left of the socket's budget of reply bytes not yet read.
    unread: TokenBucket,
    /// When the token the socket authenticated with expires (ms): the socket is closed then,
    /// and its client reconnects with a fresh token.
    expires_ms: u64,
    /// Set when the socket overran its budget and was disconnected: its events are not handled.
    dropped: bool,
}

/// The socket's sends and mark-reads in flight, oldest first. Kept out of [`Handler`], which must stay `Sync`
/// for the `&self` its methods hold across awaits.
type Sends = FuturesOrdered<SendInFlight>;

impl Handler {
    async fn run(mut self, mut events: mpsc::Receiver<Box<Inbound>>, closed: Arc<Notify>) {
        let mut sends = Sends::new();
        loop {
            let stale_in = self
                .typing
                .next_stale_at()
                .map(|at| at.saturating_sub(self.app.now_ms()));
            let wait_stale = async {
                match stale_in {
                    Some(ms) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
                    None => std::future::pending().await,
                }
            };
            let expired = tokio::time::sleep(std::time::Duration::from_millis(
                self.expires_ms.saturating_sub(self.app.now_ms()),
            ));
            let room_for_sends = sends.len() < SOCKET_SENDS_IN_FLIGHT_MAX;
            tokio::select! {
                biased;
                () = closed.notified() => break,
                () = expired => {
                    force_close(&self.socket);
                    break;
                }
                Some((ack, filing)) = sends.next() => self.ack_filed(ack, filing),
                event = events.recv(), if room_for_sends => match event {
                    Some(event) => {
                        self.handle(event, &mut sends).await;
                        if self.dropped {
                            break;
                        }
                    }
                    None => break,
                },
                () = wait_stale => {
                    let now = self.app.now_ms();
                    for chat in self.typing.expire(now) {
                        self.show_typing(&chat, false).await;
                    }
                }
            }
        }
        // Events still queued are dropped unanswered: their client is gone, and an unanswered
        // send is retried by its client with the same clientMsgId.
        for chat in self.typing.stop_all() {
            self.show_typing(&chat, false).await;
        }
    }

    async fn handle(&mut self, event: Box<Inbound>, sends: &mut Sends) {
        let Inbound { kind, data, ack } = *event;
        match kind {
            EventKind::SendMessage => return self.send_message(data, ack, sends).await,
            EventKind::MarkRead => return self.mark_read(data, ack, sends).await,
            _ => {}
        }
        self.finish_sends(sends).await;
        let Ok(value) = data else {
            if !matches!(kind, EventKind::Typing) {
                refuse(
                    &self.socket,
                    self.app.metrics(),
                    ack,
                    Refusal::InvalidPayload,
                );
            }
            return;
        };
        match kind {
            EventKind::JoinChat => {
                let result = self.join_chat(&value);
                answer(&self.socket, self.app.metrics(), ack, result);
            }
            EventKind::LeaveChat => {
                let result = self.leave_chat(&value).await;
                answer(&self.socket, self.app.metrics(), ack, result);
            }
            EventKind::SendMessage | EventKind::MarkRead => {
                unreachable!("sends and mark-reads are filed above")
            }
            EventKind::Typing => self.typing(&value).await,
            EventKind::Sync => match self.sync(&value) {
                Ok(reply) if !self.within_unread_budget(reply.bytes) => self.drop_socket(),
                Ok(reply) => answer(&self.socket, self.app.metrics(), ack, Ok(reply.ack)),
                Err(refusal) => refuse(&self.socket, self.app.metrics(), ack, refusal),
            },
        }
    }

    fn join_chat(&self, value: &Value) -> Result<NoFields, Refusal> {
        let chat_id = payload::chat_id(value).map_err(|_| Refusal::ChatNotFound)?;
        #[cfg(feature = "sim-faults")]
        if crate::faults::is_planted(crate::faults::PlantedFault::JoinWithoutMembership) {
            self.socket.join(chat_room(chat_id));
            return Ok(NoFields {});
        }
        self.app
            .chat_members(&self.user.id, chat_id, Refusal::Unavailable)?;
        self.socket.join(chat_room(chat_id));
        Ok(NoFields {})
    }

    async fn leave_chat(&mut self, value: &Value) -> Result<NoFields, Refusal> {
        let chat_id = payload::chat_id(value)?;
        self.socket.leave(chat_room(chat_id));
        if self.typing.stop(chat_id) {
            self.show_typing(chat_id, false).await;
        }
        Ok(NoFields {})
    }

    /// Files a send; its ack follows those of the sends before it, refused ones included.
    async fn send_message(&self, data: Result<Value, ()>, ack: AckSender, sends: &mut Sends) {
        let command = data
            .map_err(|()| Refusal::InvalidPayload)
            .and_then(|value| payload::send(&value));
        let filed = match command {
            Ok(command) => Ok(self.app.file_send(&self.user, command).await),
            Err(refusal) => Err(refusal),
        };
        let app = Arc::clone(&self.app);
        sends.push_back(Box::pin(async move {
            let result = match filed {
                Ok(filed) => filed.outcome(&app).await,
                Err(refusal) => Err(refusal),
            };
            (ack, Filing::Sent(Box::new(result)))
        }));
    }

    /// Files a `mark-read`, pipelined like sends: a client marking each message it scrolls
    /// past gets them committed together.
    async fn mark_read(&self, data: Result<Value, ()>, ack: AckSender, sends: &mut Sends) {
        let command = data
            .map_err(|()| Refusal::InvalidPayload)
            .and_then(|value| payload::mark_read(&value).map(|(chat, seq)| (chat.to_owned(), seq)));
        let filed = match command {
            Ok((chat, seq)) => Ok(self.app.file_mark_read(&self.user.id, &chat, seq).await),
            Err(refusal) => Err(refusal),
        };
        sends.push_back(Box::pin(async move {
            let result = match filed {
                Ok(filed) => filed.outcome().await,
                Err(refusal) => Err(refusal),
            };
            (ack, Filing::Read(result))
        }));
    }

    /// Acks every send and mark-read in flight, in order.
    async fn finish_sends(&self, sends: &mut Sends) {
        while let Some((ack, filing)) = sends.next().await {
            self.ack_filed(ack, filing);
        }
    }

    fn ack_filed(&self, ack: AckSender, filing: Filing) {
        match filing {
            Filing::Sent(result) => self.ack_send(ack, *result),
            Filing::Read(result) => answer(
                &self.socket,
                self.app.metrics(),
                ack,
                result.map(|last_read_seq| ReadAck { last_read_seq }),
            ),
        }
    }

    fn ack_send(&self, ack: AckSender, result: Result<Sent, Refusal>) {
        match result {
            Ok(sent) => {
                #[cfg(feature = "sim-faults")]
                if crate::faults::is_planted(crate::faults::PlantedFault::FanOutInWakeOrder)
                    && sent.created
                {
                    fan_out_in_wake_order(&self.io, &sent);
                }
                answer(
                    &self.socket,
                    self.app.metrics(),
                    ack,
                    Ok(SentAck {
                        message: &sent.message,
                    }),
                );
            }
            Err(refusal) => refuse(&self.socket, self.app.metrics(), ack, refusal),
        }
    }

    /// Typing indicators: members only, never echoed to the sender's own sockets; `true` rate
    /// limited, `false` always sent for a `true` that was shown (see `domain::typing`). Anything
    /// else is dropped silently, as the contract says.
    async fn typing(&mut self, value: &Value) {
        let Ok((chat_id, is_typing)) = payload::typing(value) else {
            return;
        };
        // A `false` needs no check: it only ends a `true` this socket showed as a member.
        if is_typing
            && self
                .app
                .chat_members(&self.user.id, chat_id, Refusal::Unavailable)
                .is_err()
        {
            return;
        }
        let show = if is_typing {
            let (app, user) = (&self.app, &self.user.id);
            self.typing
                .start_if(chat_id, app.now_ms(), || app.take_typing(user))
        } else {
            self.typing.stop(chat_id)
        };
        if show {
            self.show_typing(chat_id, is_typing).await;
        }
    }

    /// Sends `typing` to the sockets of the chat's other members, not to the sender's. Only to
    /// the members' own rooms, from the exact member list: a member removed a moment ago may
    /// still have sockets in the chat's room (they leave it when the removal is delivered), and
    /// every socket that joined that room legitimately is in its member's room anyway.
    /// A `false` ends a `true` this socket showed while its user was a member, so it goes out
    /// even if the user was removed since: the others' indicator clears.
    async fn show_typing(&self, chat_id: &str, is_typing: bool) {
        let members = if is_typing {
            self.app
                .chat_members(&self.user.id, chat_id, Refusal::Unavailable)
                .ok()
        } else {
            self.app.members_now(chat_id)
        };
        let Some(members) = members else {
            return;
        };
        let user_id = &self.user.id;
        let rooms: Vec<String> = members
            .iter()
            .filter(|m| *m != user_id)
            .map(|m| user_room(m))
            .collect();
        if rooms.is_empty() {
            return;
        }
        let event = json!({ "userId": user_id, "chatId": chat_id, "isTyping": is_typing });
        // A socket may still end its indicator after the server closed Socket.IO.
        let Some(sockets) = namespace(&self.io) else {
            return;
        };
        let _ = sockets
            .to(rooms)
            .except(user_room(user_id))
            .emit("typing", &event)
            .await;
    }

    /// The `sync` ack, cut to `REPLY_BYTES_MAX` (a cut page says `hasMore`), with its size.
    fn sync(&self, value: &Value) -> Result<SyncReply, Refusal> {
        let command = payload::sync(value)?;
        let (mut messages, has_more) = self.app.sync(
            &self.user.id,
            command.chat_id,
            command.after_seq,
            command.limit,
        )?;
        // Room for the ack's envelope and the packet's framing around the array.
        let fitted = wire::fit_to_bytes(&mut messages, REPLY_BYTES_MAX - 256, Keep::Lowest);
        Ok(SyncReply {
            ack: SyncAck {
                messages,
                has_more: has_more || fitted.cut,
            },
            bytes: fitted.bytes + 256,
        })
    }

    /// Spends `bytes` of the socket's budget of unread reply bytes, if it has them.
    fn within_unread_budget(&mut self, bytes: usize) -> bool {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.unread
            .try_take_many(UNREAD_SHAPE, bytes, self.app.now_ms())
    }

    /// Disconnects a socket that asked for more than it reads (past `SOCKET_UNREAD_BYTES_MAX`)
    /// and stops handling its events.
    fn drop_socket(&mut self) {
        tracing::warn!(user = %self.user.id, "socket disconnected: it does not read its replies");
        self.dropped = true;
        force_close(&self.socket);
    }
}

/// The planted bug of the simulation: each sender's task fans its message out itself, in
/// whatever order the tasks wake after a group commit, instead of the commit feed's order. On
/// the simulation's single thread tasks wake in the order they were answered, so the wake-up
/// order of a multi-threaded runtime is modelled by a few yields that depend on the seq.
#[cfg(feature = "sim-faults")]
fn fan_out_in_wake_order(io: &SocketIo, sent: &Sent) {
    let delivery = crate::service::Delivery {
        message: sent.message.clone(),
        members: Arc::clone(&sent.members),
    };
    let io = io.clone();
    tokio::spawn(async move {
        for _ in 0..delivery.message.seq % 3 {
            tokio::task::yield_now().await;
        }
        super::fan_out(&io, &delivery).await;
    });
}

// ---- acks ----

/// A successful ack, `{ ok: true, ...body }`, serialised straight into the packet: building a
/// `serde_json::Value` first cost 4.4 µs per `send-message` ack (criterion, BENCHMARKS.md).
#[derive(Serialize)]
struct Accepted<T> {
    ok: bool,
    #[serde(flatten)]
    body: T,
}

/// A refused event's ack: `{ ok: false, error }`.
#[derive(Serialize)]
struct Refused<'a> {
    ok: bool,
    error: &'a str,
}

/// The ack of `join-chat` and `leave-chat`: nothing beyond `ok`.
#[derive(Serialize)]
struct NoFields {}

/// The ack of `mark-read`: the position after it.
#[derive(Serialize)]
struct ReadAck {
    #[serde(rename = "lastReadSeq")]
    last_read_seq: u64,
}

#[derive(Serialize)]
struct SentAck<'a> {
    message: &'a MessageView,
}

/// A `sync` ack with its size in bytes as sent.
struct SyncReply {
    ack: SyncAck,
    bytes: usize,
}

#[derive(Serialize)]
struct SyncAck {
    messages: Vec<MessageView>,
    #[serde(rename = "hasMore")]
    has_more: bool,
}

/// Answers an event: `{ ok: true, ...body }`, or `{ ok: false, error }` plus a `socket-error`.
fn answer<T: Serialize>(
    socket: &SocketRef,
    metrics: &Metrics,
    ack: AckSender,
    result: Result<T, Refusal>,
) {
    // A client that asked for no ack gets none; one that went away cannot be answered.
    let _ = match result {
        Ok(body) => ack.send(&Accepted { ok: true, body }),
        Err(refusal) => {
            metrics.refused(refusal_reason(refusal));
            let message = refusal.to_string();
            let _ = socket.emit("socket-error", &json!({ "message": message }));
            ack.send(&Refused {
                ok: false,
                error: &message,
            })
        }
    };
}

/// Refuses an event whose ack has no body beyond `ok` and `error`.
fn refuse(socket: &SocketRef, metrics: &Metrics, ack: AckSender, refusal: Refusal) {
    answer(socket, metrics, ack, Err::<NoFields, _>(refusal));
}
