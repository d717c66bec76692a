//! Socket.IO: authentication on connect, presence, and the client events of the contract.
//!
//! socketioxide runs every handler on a task of its own, so nothing here may assume that two
//! events of one socket are handled in order; the service and storage make each one safe alone.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Extension, MaybeExtension, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;

use super::{PRESENCE_ROOM, chat_room, fan_out, payload, user_room};
use crate::domain::rate::SlidingWindow;
use crate::domain::validate::Refusal;
use crate::limits::TYPING_PER_SEC;
use crate::service::views::MessageView;
use crate::service::{App, AuthFailure};
use crate::storage::UserRecord;

/// What a socket carries from its authenticated handshake.
#[derive(Clone)]
struct Session {
    user: Arc<UserRecord>,
    /// `typing` events of this socket in the last second.
    typing: Arc<Mutex<SlidingWindow>>,
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
/// handlers and joins the user's room, here rather than in `on_connect`: socketioxide sends the
/// client its CONNECT ack before it spawns the connect handler, and a client that emits at once
/// (socket.io-client does, from its `connect` callback) must find its handlers in place.
async fn authenticate(
    socket: SocketRef,
    io: SocketIo,
    TryData(auth): TryData<Value>,
    State(app): State<Arc<App>>,
) -> Result<(), AuthFailure> {
    let token = handshake_token(&socket, auth.as_ref().ok()).ok_or(AuthFailure::Unauthorized)?;
    let user = app.authenticate(&token).await?;
    let user_id = user.id.clone();
    socket.join(user_room(&user_id));
    let window = SlidingWindow::new(TYPING_PER_SEC, 1000);
    socket.extensions.insert(Session {
        user: Arc::new(user),
        typing: Arc::new(Mutex::new(window)),
    });
    socket.on("join-chat", join_chat);
    socket.on("leave-chat", leave_chat);
    socket.on("send-message", send_message);
    socket.on("typing", typing);
    socket.on("sync", sync);
    socket.on_disconnect(on_disconnect);
    // Counted before the client learns it is connected, so that a tab closed right after
    // another one opened never sees its user flicker offline.
    let mut presence = app.presence.lock().await;
    if presence.connect(&socket.id.to_string(), &user_id) {
        // Not yet in the presence room: the newcomer is not told about itself.
        let _ = io
            .to(PRESENCE_ROOM)
            .emit("user-online", &json!({ "userId": user_id }))
            .await;
    }
    Ok(())
}

/// Sends the new socket its `online-users` snapshot and only then joins it to the presence
/// room, both under the presence lock: every transition reaches the socket after its snapshot,
/// in the order it happened. (Joining in the middleware let a transition broadcast between
/// the two slip in before the snapshot, so a client saw `user-offline` for a user it had never
/// seen online; found by the simulation, seed 141.)
async fn on_connect(
    socket: SocketRef,
    Extension(session): Extension<Session>,
    State(app): State<Arc<App>>,
) {
    {
        let presence = app.presence.lock().await;
        let online = presence.online_except(&session.user.id);
        let _ = socket.emit("online-users", &json!({ "userIds": online }));
        // A socket already closed would stay in the room: its cleanup has run.
        if socket.connected() {
            socket.join(PRESENCE_ROOM);
        }
    }
    // A socket that closed before this handler ran was retired by its disconnect handler;
    // retiring is idempotent, so checking again here closes the window completely.
    if !socket.connected() {
        retire(&socket, &app).await;
    }
}

async fn on_disconnect(
    socket: SocketRef,
    MaybeExtension(_session): MaybeExtension<Session>,
    State(app): State<Arc<App>>,
) {
    retire(&socket, &app).await;
}

/// Uncounts a closed socket; broadcasts `user-offline` when it was its user's last.
async fn retire(socket: &SocketRef, app: &App) {
    let mut presence = app.presence.lock().await;
    if let Some((user_id, true)) = presence.disconnect(&socket.id.to_string()) {
        let _ = socket
            .to(PRESENCE_ROOM)
            .emit("user-offline", &json!({ "userId": user_id }))
            .await;
    }
}

/// Reconciles presence with the sockets socketioxide still holds. A connection can vanish
/// without its disconnect handler ever running (its CONNECT ack failed to send right after
/// the middleware counted it); such a connection would keep its user online forever. One
/// that is missing at two consecutive sweeps is retired (a single miss can be a socket
/// between its middleware and its entry into the namespace).
pub async fn sweep_presence(io: &SocketIo, app: &App, suspects: &mut HashSet<String>) {
    let live: HashSet<String> = io.sockets().into_iter().map(|s| s.id.to_string()).collect();
    let mut presence = app.presence.lock().await;
    let missing: HashSet<String> = presence
        .connections()
        .into_iter()
        .filter(|c| !live.contains(c))
        .collect();
    for stale in missing.intersection(suspects) {
        tracing::warn!(connection = %stale, "retiring a connection that vanished without a disconnect");
        if let Some((user_id, true)) = presence.disconnect(stale) {
            let _ = io
                .to(PRESENCE_ROOM)
                .emit("user-offline", &json!({ "userId": user_id }))
                .await;
        }
    }
    *suspects = missing.difference(suspects).cloned().collect();
}

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

#[derive(Serialize)]
struct SentAck<'a> {
    message: &'a MessageView,
}

#[derive(Serialize)]
struct SyncAck {
    messages: Vec<MessageView>,
    #[serde(rename = "hasMore")]
    has_more: bool,
}

/// Answers an event: `{ ok: true, ...body }`, or `{ ok: false, error }` plus a `socket-error`.
fn answer<T: Serialize>(socket: &SocketRef, ack: AckSender, result: Result<T, Refusal>) {
    // A client that asked for no ack gets none; one that went away cannot be answered.
    let _ = match result {
        Ok(body) => ack.send(&Accepted { ok: true, body }),
        Err(refusal) => {
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
fn refuse(socket: &SocketRef, ack: AckSender, refusal: Refusal) {
    answer(socket, ack, Err::<NoFields, _>(refusal));
}

fn decoded<T>(
    data: Result<Value, impl std::fmt::Display>,
    decode: impl FnOnce(&Value) -> Result<T, Refusal>,
) -> Result<T, Refusal> {
    data.map_err(|_| Refusal::InvalidPayload)
        .and_then(|value| decode(&value))
}

async fn join_chat(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    Extension(session): Extension<Session>,
    State(app): State<Arc<App>>,
) {
    let result = data.map_err(|_| Refusal::InvalidPayload).and_then(|value| {
        let chat_id = payload::chat_id(&value).map_err(|_| Refusal::ChatNotFound)?;
        #[cfg(feature = "sim-faults")]
        if crate::faults::is_planted(crate::faults::PlantedFault::JoinWithoutMembership) {
            socket.join(chat_room(chat_id));
            return Ok(NoFields {});
        }
        app.chat_members(&session.user.id, chat_id, Refusal::ChatNotFound)?;
        socket.join(chat_room(chat_id));
        Ok(NoFields {})
    });
    answer(&socket, ack, result);
}

async fn leave_chat(socket: SocketRef, TryData(data): TryData<Value>, ack: AckSender) {
    let result = decoded(data, |value| {
        let chat_id = payload::chat_id(value)?;
        socket.leave(chat_room(chat_id));
        Ok(NoFields {})
    });
    answer(&socket, ack, result);
}

async fn send_message(
    socket: SocketRef,
    io: SocketIo,
    TryData(data): TryData<Value>,
    ack: AckSender,
    Extension(session): Extension<Session>,
    State(app): State<Arc<App>>,
) {
    let value = match data {
        Ok(value) => value,
        Err(_) => return refuse(&socket, ack, Refusal::InvalidPayload),
    };
    let command = match payload::send(&value) {
        Ok(command) => command,
        Err(refusal) => return refuse(&socket, ack, refusal),
    };
    let result = app
        .send(
            &session.user,
            command.chat_id,
            command.text,
            command.client_msg_id,
        )
        .await;
    match result {
        Ok(sent) => {
            if sent.created {
                fan_out(&io, &sent).await;
            }
            let body = SentAck {
                message: &sent.message,
            };
            answer(&socket, ack, Ok(body));
        }
        Err(refusal) => refuse(&socket, ack, refusal),
    }
}

/// Typing indicators: members only, at most `TYPING_PER_SEC` per socket, never echoed to the
/// sender's own sockets. Anything else is dropped silently, as the contract says.
async fn typing(
    io: SocketIo,
    TryData(data): TryData<Value>,
    Extension(session): Extension<Session>,
    State(app): State<Arc<App>>,
) {
    let Ok(value) = data else { return };
    let Ok((chat_id, is_typing)) = payload::typing(&value) else {
        return;
    };
    let Ok(members) = app.chat_members(&session.user.id, chat_id, Refusal::ChatNotFound) else {
        return;
    };
    let allowed = session
        .typing
        .lock()
        .expect("never poisoned")
        .try_record(app.now_ms());
    if !allowed {
        return;
    }
    let user_id = &session.user.id;
    let mut rooms = vec![chat_room(chat_id)];
    rooms.extend(
        members
            .iter()
            .filter(|m| *m != user_id)
            .map(|m| user_room(m)),
    );
    let event = json!({ "userId": user_id, "chatId": chat_id, "isTyping": is_typing });
    let _ = io
        .to(rooms)
        .except(user_room(user_id))
        .emit("typing", &event)
        .await;
}

async fn sync(
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    Extension(session): Extension<Session>,
    State(app): State<Arc<App>>,
) {
    let result = decoded(data, |value| {
        let command = payload::sync(value)?;
        let (messages, has_more) = app.sync(
            &session.user.id,
            command.chat_id,
            command.after_seq,
            command.limit,
        )?;
        Ok(SyncAck { messages, has_more })
    });
    answer(&socket, ack, result);
}
